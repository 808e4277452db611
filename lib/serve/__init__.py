"""The reward server: `lib.rewards` on one judge engine, shared over HTTP by many trainers.

- `lib.serve.scorer`: `RewardScorer` (the rewards on one judge) and the dynamic `Batcher`; request `Limits`.
- `lib.serve.app`: the FastAPI app (parsing, limits, token, routes); `lib.serve.metrics`: its Prometheus metrics.
- `lib.serve.server`: `ServerThread` and `serve()` (`python -m lib.cli serve --profile cpu`).
- `lib.serve.client.RemoteRewards`: TRL reward functions that call the server.
- `lib.serve.verl_reward.compute_score`: verl's custom reward function.
- `lib.serve.openrlhf`: OpenRLHF's remote RM protocol (`--reward.remote_url http://host:8000/get_reward`).
- `lib.serve.original`: the original CreativeTinyZero training script's reward functions, pointed at this server.
- `lib.serve.bench`: `python -m lib.bench serve` (throughput and latency vs concurrent clients).
- `lib.serve.soak`: `python -m lib.bench soak` (minutes of mixed, fuzzed and killed clients and an injected judge failure);
  `lib.serve.soak_server`: its server process; `lib.serve.fuzz`: bad bodies from the request schemas (hypothesis).
- `lib.serve.memprobe`: `python -m lib.serve.memprobe` (a judge process's memory without HTTP: live or only kept).
"""
TOKEN_ENV = "CREATIVE_GRPO_REWARD_TOKEN"  # bearer token of the server (and of the clients)
URL_ENV = "CREATIVE_GRPO_REWARD_URL"  # where clients find the server
DEFAULT_URL = "http://127.0.0.1:8000"
