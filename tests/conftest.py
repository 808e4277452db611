"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from lib.judge import calibration as cal
from lib.rubric import load_rubric


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The one real smoke pipeline of the suite, run once: `lib.cli sweep lib/assets/sweeps/smoke_cases.yaml`
    (headless, papermill, real engines). Its first run (`t-first`) is the smoke profile as it is; the second takes
    stages 00-04 from it and runs its case studies only. Returns (exit code, outputs folder); tests that read it through
    lib.paths point paths there themselves."""
    from lib import paths
    from lib.cli import main
    from lib.pipeline import prepare_environment

    outputs = tmp_path_factory.mktemp("outputs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CREATIVE_GRPO_OUTPUTS", str(outputs))
    mp.setattr(paths, "RUNS_DIR", outputs / "runs")
    try:
        prepare_environment()
        code = main(["sweep", str(paths.SWEEPS_DIR / "smoke_cases.yaml"), "--sweep-id", "t"])
    finally:
        mp.undo()
    return code, outputs


SHARED_JUDGE = "smoke_judge_backend"
_started: dict = {}  # the shared judge engine while it is open


@pytest.fixture(scope="session")
def smoke_judge_backend():
    """The `smoke` profile's judge engine as `lib.judge.build_judge(profile.judge, seed=profile.seed)` starts it
    (Gemma 3 270M, vLLM in-process, float32, 是/否 restricted, no LoRA), started once for the tests that only need an
    engine with these settings. Wrap it in a `lib.judge.engine.JudgeEngine` of your own and do not close it: it is
    closed after the last test that uses it (pytest_runtest_teardown below), or at the end of the session. The tests
    that use it run one after the other (pytest_collection_modifyitems), so no other engine starts while it is open."""
    from lib.judge.backends import build_backend
    from lib.profiles import load_profile

    profile = load_profile("smoke")
    _started[SHARED_JUDGE] = backend = build_backend(profile.judge, seed=profile.seed)
    yield backend
    _started.pop(SHARED_JUDGE, None)
    backend.close()  # a no-op when it was closed after its last user


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test of the shared judge engine: close the engine when no later test uses it, so that its memory
    (the model and vLLM's KV cache, VLLM_CPU_KVCACHE_SPACE) is not held through the rest of the suite."""
    yield
    if SHARED_JUDGE not in _started or SHARED_JUDGE not in getattr(item, "fixturenames", ()):
        return
    items = item.session.items
    later = items[items.index(item) + 1:] if item in items else []
    if not any(SHARED_JUDGE in getattr(i, "fixturenames", ()) for i in later):
        _started.pop(SHARED_JUDGE).close()


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


@pytest.fixture(scope="module")
def calib(rubric):
    return cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))


def _shared_judge_users_together(items) -> None:
    """Move the tests of the shared judge engine to run one after the other, where the first of them runs: no other
    in-process vLLM engine may start and close while the shared one is open (closing an engine tears down vLLM's
    process-wide parallel state, and the open one then fails with `... group is not initialized`). The first user
    keeps its place, so vLLM is first imported (and its logger set up) where it was without the sharing."""
    users = [i for i in items if SHARED_JUDGE in getattr(i, "fixturenames", ())]
    if len(users) < 2:
        return
    moved = {id(i) for i in users}
    first = next(n for n, i in enumerate(items) if id(i) in moved)
    items[:] = items[:first] + users + [i for i in items[first:] if id(i) not in moved]


def pytest_collection_modifyitems(config, items):
    """The tests of the shared judge engine run together (_shared_judge_users_together). Tests marked `gpu` need a
    CUDA device: skipped without one (scripts/gpu_check.sh runs them on the GPU)."""
    _shared_judge_users_together(items)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
