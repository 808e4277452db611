"""The soak's server process, with one entity's judging made to fail.

The profile's judge (or a test double) wrapped so that one entity's judging fails,
served on 127.0.0.1 with the soak's token and the default `Limits` (`bench.soak` starts and measures it)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

INJECTED_ENTITY = "注入故障"  # judging this entity raises (the injected judge failure)
TOKEN = "soak-token"  # the bearer token the soak's clients send


class FaultInjector:
    """A judge that raises for `entity` (one request's failure) and otherwise is `judge`."""

    def __init__(self, judge: Any, entity: str = INJECTED_ENTITY):
        self._judge, self._entity = judge, entity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._judge, name)

    def _check(self, entities) -> None:
        if self._entity in entities:
            from lib.judge import JudgeError

            raise JudgeError(f"injected failure for entity {self._entity!r}")

    def judge_section(self, section, entities, texts):
        self._check(entities)
        return self._judge.judge_section(section, entities, texts)

    def judge_sections(self, jobs):
        for job in jobs:
            self._check(job[1])
        if hasattr(self._judge, "judge_sections"):
            return self._judge.judge_sections(jobs)
        return [self._judge.judge_section(*job) for job in jobs]


def main(argv: list[str] | None = None) -> int:
    """The server under test: `python -m bench.soak_server --port P [--profile smoke | --judge module:factory]`."""
    import uvicorn

    from lib.profiles import load_profile
    from lib.rubric import load_rubric
    from lib.serve.app import create_app
    from lib.serve.scorer import Limits, RewardScorer, server_judge

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--judge", default=None)
    args = p.parse_args(argv)
    profile = load_profile(args.profile)
    judge = server_judge(profile, args.judge)
    scorer = RewardScorer(FaultInjector(judge), load_rubric(profile.rubric.path), profile.train.reward_weights,
                          {"profile": profile.name, "model": profile.judge.model, "backend": profile.judge.backend})
    try:
        scorer.warm_up()
        uvicorn.run(create_app(scorer, Limits(), TOKEN), host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        scorer.close()
        if hasattr(judge, "close"):
            judge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
