"""Running the reward server: `ServerThread` and `serve()`.

`ServerThread` (uvicorn in a thread: tests, benchmarks) and `serve()` (the process behind `python -m lib.cli serve`: build the profile's judge once, warm it up, serve until stopped)."""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lib.serve import TOKEN_ENV
from lib.serve.app import create_app
from lib.serve.scorer import Limits, RewardScorer, ServeError, server_judge


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerThread:
    """uvicorn serving `app` in a background thread (tests, the benchmark): `with ServerThread(app) as url: ...`."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    startup_timeout: float = 30.0
    _server: Any = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        import uvicorn

        if not self.port:
            self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="reward-server", daemon=True)
        self._thread.start()
        t0 = time.perf_counter()
        while not self._server.started:
            if not self._thread.is_alive() or time.perf_counter() - t0 > self.startup_timeout:
                raise ServeError(f"the reward server did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)


def serve(profile_name: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          overrides: dict | None = None, limits: Limits = Limits(), log_level: str = "info") -> None:
    """Build the profile's judge once and serve until stopped (Ctrl-C / SIGTERM)."""
    import uvicorn

    from lib.profiles import load_profile
    from lib.rubric import load_rubric

    profile = load_profile(profile_name, overrides=overrides)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    rubric = load_rubric(profile.rubric.path)
    judge = server_judge(profile)
    info = {"profile": profile.name, "model": profile.judge.model, "backend": profile.judge.backend}
    scorer = RewardScorer(judge, rubric, profile.train.reward_weights, info)
    try:
        print(f"reward server: profile {profile.name}, judge {profile.judge.model} ({profile.judge.backend}, {judge.mode}), "
              f"http://{host}:{port}" + (" (bearer token required)" if token else ""), flush=True)
        print(f"reward server: judge warm-up took {scorer.warm_up():.1f} s; serving", flush=True)
        uvicorn.run(create_app(scorer, limits, token), host=host, port=port, log_level=log_level)
    finally:
        scorer.close()
        judge.close()
