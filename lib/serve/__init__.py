"""The reward server: `lib.rewards` on one judge engine, shared over HTTP by many trainers.

- `lib.serve.scorer`: `RewardScorer` (the rewards on one judge) and the dynamic `Batcher`; request `Limits`.
- `lib.serve.app`: the FastAPI app (parsing, limits, token, routes); `lib.serve.prometheus`: its Prometheus metrics.
- `lib.serve.server`: `ServerThread` and `serve()` (`python -m lib.cli serve --profile cpu`).
- `lib.serve.client.RemoteRewards`: TRL reward functions that call the server.
- `lib.serve.verl_reward.compute_score`: verl's custom reward function.
- `lib.serve.openrlhf`: OpenRLHF's remote RM protocol (`--reward.remote_url http://host:8000/get_reward`).
- `lib.serve.original`: the original CreativeTinyZero training script's reward functions, pointed at this server.
- Its benchmarks, soak and memory probe live in `bench/` (`python -m bench serve|soak`, `python -m bench.memprobe`).
"""
TOKEN_ENV = "CREATIVE_GRPO_REWARD_TOKEN"  # bearer token of the server (and of the clients)
URL_ENV = "CREATIVE_GRPO_REWARD_URL"  # where clients find the server
DEFAULT_URL = "http://127.0.0.1:8000"
