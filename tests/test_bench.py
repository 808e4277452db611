"""bench without a model or a server: token minimum, measurement bookkeeping, the JSON report's layout."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import cli as bench, common as bench_common
from lib.judge import JudgeEngine
from lib.profiles import JudgeConfig, load_profile
from lib.rubric import parse_rubric
from tests.test_judge import RUBRIC, FakeBackend


def test_common_prefix_len():
    assert bench.common_prefix_len([]) == 0
    assert bench.common_prefix_len([[1, 2, 3]]) == 3
    assert bench.common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 3
    assert bench.common_prefix_len([[9], [1]]) == 0


def test_min_prompt_tokens_counts_each_prefix_once():
    # text 1: prefix "head-" (5) shared by 3 questions with suffixes of 2, 3, 1 characters
    text1 = ["head-ab", "head-cde", "head-f"]
    assert bench.min_prompt_tokens(list, [text1]) == 5 + 2 + 3 + 1
    assert bench.min_prompt_tokens(list, [text1, text1]) == 11  # an identical text is judged once
    assert bench.min_prompt_tokens(list, [["head-ab", "head-ab"]]) == 7  # a repeated prompt too
    assert bench.min_prompt_tokens(list, [["solo"], []]) == 4
    assert bench.min_prompt_tokens(str.split, [["a b c", "a b d"]]) == 4  # any tokenizer: here words


@pytest.fixture
def work():
    rubric = parse_rubric(RUBRIC, source="test")
    return bench.Workload(
        rubric=rubric,
        measured={"answer": (["可乐", "雪碧"], ["甲文案", "乙文案很长"]), "think": (["可乐"], ["我想一想"])},
        warmup={"answer": (["茶"], ["热身"]), "think": (["茶"], ["热身想"])},
    )


def test_measure_with_a_fake_backend(work):
    backend = FakeBackend()
    rec = bench.measure(lambda: JudgeEngine(backend, JudgeConfig()), work)
    n_questions = 2 * 4 + 1 * 1
    assert rec["judgements"] == n_questions == rec["unique_prompts"]
    warm_prompts = [p for _, batch in backend.calls for p in batch if "热身" in p]
    assert len(warm_prompts) == 4 + 1  # the warm-up texts were judged, and are not counted
    sent = [p for _, batch in backend.calls for p in batch if "热身" not in p]
    assert rec["prompt_tokens"] == sum(len(backend.tokenizer.encode(p)) for p in sent)
    assert rec["computed_prompt_tokens"] == rec["prompt_tokens"]  # the fake computes everything
    assert 0 < rec["min_prompt_tokens"] < rec["prompt_tokens"]
    # the minimum: per text, the shared head once; here it ends where the questions start
    tok = backend.tokenizer
    expected = 0
    for section, (ents, texts) in work.measured.items():
        sec = work.rubric[section]
        for e, t in zip(ents, texts):
            prompts = [f"<u>{sec.render(e, t, it)}</u><m>" for it in sec.items]
            head = len(tok.encode(f"<u>{sec.prefix(e, t)}"))
            expected += head + sum(len(tok.encode(p)) - head for p in prompts) if len(prompts) > 1 else len(tok.encode(prompts[0]))
    assert rec["min_prompt_tokens"] == expected
    assert rec["judgements_per_s"] == pytest.approx(rec["judgements"] / rec["seconds"], rel=0.01)
    assert rec["cpu_seconds"] >= 0 and rec["cpu_seconds_per_judgement"] == pytest.approx(rec["cpu_seconds"] / n_questions)


def test_seed_mode_minimum_covers_only_asked_questions(work):
    backend = FakeBackend(answer=lambda p: "否" if "甲" in p else "是")  # text 甲 fails its first gate
    rec = bench.measure(lambda: JudgeEngine(backend, JudgeConfig(), mode="seed"), work)
    assert rec["judgements"] == 2 + 4 + 1  # 甲: two must-have only; 乙: all four; think: one
    assert rec["min_prompt_tokens"] < rec["prompt_tokens"]


def test_cpu_seconds_count_a_child_server():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('done', flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        assert 0.25 <= bench.process_cpu_seconds(child.pid) < 5
        own = sum(os.times()[:2])
        assert bench.process_cpu_seconds() >= own + 0.25  # this process and its living children
    finally:
        child.kill()
        child.wait()


def test_ratio():
    assert bench.cpu_ratio({"cpu_seconds_per_judgement": 0.1}, {"cpu_seconds_per_judgement": 0.4}) == pytest.approx(4.0)
    assert bench.cpu_ratio({"cpu_seconds_per_judgement": 0.1}, None) is None
    assert bench.ratio({"judgements_per_s": 12.0}, {"judgements_per_s": 4.0}) == 3.0
    assert bench.ratio({"judgements_per_s": 12.0}, None) is None
    assert bench.ratio(None, {"judgements_per_s": 4.0}) is None


def test_report_layout_and_no_overwrite(tmp_path, monkeypatch):
    rec = bench.mode_record(judgements=320, seconds=20.0, prompt_tokens=50_000, computed_prompt_tokens=16_000, min_tokens=12_000)
    slow = bench.mode_record(judgements=320, seconds=80.0, prompt_tokens=50_000, computed_prompt_tokens=50_000, min_tokens=12_000)
    rep = bench.report("gemma3-270m", 16, {"soft_vllm": rec, "seed_http": slow, "soft_transformers": None},
                       {"soft_transformers": "BenchError: boom"})
    for key in ("machine", "versions", "ratio_vs_seed", "ratio_vs_seed_cpu", "ratio_vs_transformers", "tokens_over_minimum",
                *bench.MODES):
        assert key in rep
    assert rep["tokens_over_minimum"] == pytest.approx(16_000 / 12_000) == rep["soft_vllm"]["tokens_over_minimum"]
    assert rep["ratio_vs_seed"] == pytest.approx(4.0) and rep["ratio_vs_transformers"] is None
    assert rep["machine"]["nproc"] >= 1 and rep["machine"]["cpu_model"]
    for k in ("judgements", "seconds", "judgements_per_s", "prompt_tokens", "computed_prompt_tokens", "min_prompt_tokens"):
        assert k in rep["soft_vllm"]
    assert rep["soft_vllm"]["judgements_per_s"] == 16.0 and rep["soft_vllm"]["prompt_tokens_per_s"] == 2500.0
    monkeypatch.setattr(bench_common, "BENCH_DIR", tmp_path)
    p1 = bench.write_json(rep, bench.default_json_path())
    p2 = bench.default_json_path()
    assert p1 != p2 and p1.parent == p2.parent == tmp_path  # the same second: a new name
    assert json.loads(p1.read_text())["ratio_vs_seed"] == pytest.approx(4.0)
    with pytest.raises(bench.BenchError, match="never overwrite"):
        bench.write_json(rep, p1)
    lines = bench.format_lines(rep)
    assert any("4.00x" in line for line in lines) and any("failed: BenchError: boom" in line for line in lines)


def test_bench_judge_runs_modes_in_order_and_reports_failures(tmp_path, monkeypatch, capsys):
    order = []
    cpu_judge = load_profile("cpu").judge

    def fake(name, jps):
        def run(cfg, work, *rest):
            order.append(name)
            # the cpu profile's judge settings, --model replacing only the model
            assert work.n_texts == 2 * 3 and cfg.model == "m"
            assert cfg.model_dump(exclude={"model"}) == cpu_judge.model_dump(exclude={"model"})
            return bench.mode_record(judgements=60, seconds=60 / jps, prompt_tokens=1000, computed_prompt_tokens=500, min_tokens=400)
        return run

    def broken(cfg, work, log_path):
        order.append("seed_http")
        raise bench.BenchError("vllm serve exited with code 1")

    monkeypatch.setattr(bench, "run_soft_vllm", fake("soft_vllm", 12.0))
    monkeypatch.setattr(bench, "run_seed_http", broken)
    monkeypatch.setattr(bench, "run_soft_transformers", fake("soft_transformers", 3.0))
    path = tmp_path / "r.json"
    assert bench.main(["judge", "--model", "m", "--texts", "3", "--json", str(path)]) == 0
    assert order == list(bench.MODES)
    rep = json.loads(path.read_text())
    assert rep["seed_http"] is None and "exited with code 1" in rep["errors"]["seed_http"]
    assert rep["ratio_vs_seed"] is None and rep["ratio_vs_transformers"] == pytest.approx(4.0)
    assert rep["tokens_over_minimum"] == pytest.approx(1.25) and rep["profile"] == "cpu" and rep["model"] == "m"
    out = capsys.readouterr().out
    assert "soft_vllm / soft_transformers: 4.00x" in out and "computed / minimum: 1.250" in out


def test_profile_picks_the_judge(tmp_path, monkeypatch):
    seen = {}

    def run(cfg, work, *rest):
        seen["cfg"] = cfg
        return bench.mode_record(judgements=10, seconds=1.0, prompt_tokens=100, computed_prompt_tokens=90, min_tokens=90)

    monkeypatch.setattr(bench, "run_soft_vllm", run)
    for profile in ("cpu", "gpu"):
        path = tmp_path / f"{profile}.json"
        args = ["judge", "--texts", "2", "--modes", "soft_vllm", "--json", str(path)]
        assert bench.main(args + (["--profile", profile] if profile != "cpu" else [])) == 0
        judge = load_profile(profile).judge
        assert seen["cfg"] == judge  # the default model is the profile's judge model
        rep = json.loads(path.read_text())
        assert rep["profile"] == profile and rep["model"] == judge.model and rep["judge"]["max_model_len"] == judge.max_model_len
        assert rep["tokens_over_minimum"] == pytest.approx(1.0)
    assert bench.main(["judge", "--profile", "nope", "--modes", "soft_vllm"]) == 2


def test_bad_arguments():
    assert bench.main(["judge", "--texts", "0", "--modes", "soft_vllm"]) == 2
    with pytest.raises(bench.BenchError, match="unknown mode"):
        bench.bench_judge("m", 3, None, ["fast"])


def test_wait_for_health_notices_a_dead_server():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(bench.BenchError, match="exited with code 3"):
        bench.wait_for_health(f"http://127.0.0.1:{bench.free_port()}/health", proc, timeout=5)


def test_serve_command():
    cmd = bench.serve_command("/models/x", 8123)
    assert cmd[cmd.index("--model") + 1] == "/models/x" and cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--max-model-len") + 1] == "1024" and "--enforce-eager" in cmd
    assert "--gpu-memory-utilization" not in cmd and "--block-size" not in cmd  # the server's own defaults
    gpu = load_profile("gpu").judge
    cmd = bench.serve_command("/models/x", 8123, gpu, cuda=True)
    assert cmd[cmd.index("--max-model-len") + 1] == str(gpu.max_model_len) and "--enforce-eager" not in cmd
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == str(gpu.gpu_memory_utilization)


# ------------------------------------------------------------------------------------------------ `step`

from bench import step as bench_step  # noqa: E402


def _rows(*steps):
    return [{"step": s, "step_seconds": t, "rollout_seconds": r, "judge_seconds": j, "gradient_seconds": t - r - j,
             "judge_requests": 100.0, "completions/mean_length": 110.0} for s, t, r, j in steps]


def test_step_aggregate_discards_the_warmup_step():
    rows = _rows((1, 90.0, 60.0, 10.0), (2, 40.0, 10.0, 6.0), (3, 50.0, 12.0, 8.0))
    a = bench_step.aggregate(rows)
    assert a["discarded_steps"] == [1] and a["measured_steps"] == [2, 3] and a["n_measured"] == 2
    assert a["step_seconds"] == pytest.approx(45.0)
    assert a["rollout_seconds"] == pytest.approx(11.0) and a["judge_seconds"] == pytest.approx(7.0)
    assert a["gradient_seconds"] == pytest.approx(27.0)
    assert a["warmup_step_seconds"] == pytest.approx(90.0)
    assert a["reward"] is None  # not logged: None, not 0
    # order and a repeated step (a resumed log) do not matter: the first row of a step counts
    assert bench_step.aggregate(list(reversed(rows)) + _rows((2, 999.0, 0.0, 0.0)))["step_seconds"] == pytest.approx(45.0)
    with pytest.raises(bench.BenchError, match="no step left"):
        bench_step.aggregate(rows[:1])
    assert bench_step.aggregate(rows, warmup=0)["n_measured"] == 3


def test_step_aggregate_skips_missing_parts():
    rows = [{"step": 1, "step_seconds": 5.0}, {"step": 2, "step_seconds": 4.0, "judge_seconds": float("nan")},
            {"step": 3, "step_seconds": 6.0, "judge_seconds": 2.0}]
    a = bench_step.aggregate(rows)
    assert a["step_seconds"] == pytest.approx(5.0) and a["judge_seconds"] == pytest.approx(2.0)
    assert a["rollout_seconds"] is None


def test_step_ratio_is_original_over_ours():
    ours = bench_step.aggregate(_rows((1, 100.0, 50.0, 10.0), (2, 40.0, 10.0, 6.0), (3, 40.0, 10.0, 6.0)))
    orig = bench_step.aggregate(_rows((1, 500.0, 300.0, 30.0), (2, 200.0, 150.0, 20.0), (3, 160.0, 110.0, 20.0)))
    r = bench_step.ratios(ours, orig)
    assert r["step_seconds"] == pytest.approx(180.0 / 40.0)
    assert r["rollout_seconds"] == pytest.approx(13.0) and r["judge_seconds"] == pytest.approx(20.0 / 6.0)
    assert r["gradient_seconds"] == pytest.approx(30.0 / 24.0)
    assert bench_step.ratios(None, orig)["step_seconds"] is None
    assert bench_step.ratios(ours, None)["step_seconds"] is None
    assert bench_step.ratios({"step_seconds": 0.0}, orig)["step_seconds"] is None


def test_step_report_layout_and_table(monkeypatch):
    ours = {"mean": bench_step.aggregate(_rows((1, 90.0, 60.0, 10.0), (2, 40.0, 10.0, 6.0)))}
    orig = {"mean": bench_step.aggregate(_rows((1, 300.0, 200.0, 30.0), (2, 160.0, 110.0, 20.0)))}
    rep = bench_step.report("cpu", 2, {"format": 1.0}, {"ours": ours, "original": orig}, {}, {"policy_model": "m"})
    assert rep["benchmark"] == "step" and rep["warmup_steps_discarded"] == 1 and "discarded" in rep["means_note"]
    assert rep["ratio"] == pytest.approx(4.0) and rep["goal"] == {"ratio_at_least": 3.0, "met": True}
    assert rep["machine"]["cpu_class"] in ("amx_bf16", "avx512_bf16", "avx512", "avx2", "other")
    json.dumps(rep)  # JSON-safe
    lines = bench_step.format_lines(rep)
    assert any(line.strip().startswith("original/ours") and "4.00x" in line for line in lines)
    failed = bench_step.report("cpu", 2, {}, {"ours": ours, "original": None}, {"original": "BenchError: boom"})
    assert failed["ratio"] is None and failed["goal"]["met"] is None
    assert any("failed: BenchError: boom" in line for line in bench_step.format_lines(failed))


def test_step_reward_weights_and_overrides():
    cpu = load_profile("cpu")
    w = bench_step.bench_reward_weights(cpu.train.reward_weights)
    assert w == {"format": 1.0, "answer": 0.1, "think": 0.1}  # think added: both setups judge think and answer
    assert bench_step.bench_reward_weights({"format": 1.0, "think": 0.5, "answer": 0.2}) == {"format": 1.0, "think": 0.5, "answer": 0.2}
    ours = load_profile("cpu", overrides=bench_step.setup_overrides("ours", 3, w))
    assert ours.train.rollout_engine == "vllm_lora" and ours.judge.backend == "vllm" and ours.judge.mode == "soft"
    assert ours.train.max_steps == 3 and ours.train.logging_steps == 1 and ours.train.reward_weights == w
    orig = load_profile("cpu", overrides=bench_step.setup_overrides("original", 3, w, judge_model="/m/q",
                                                                     base_url="http://127.0.0.1:9/v1"))
    assert orig.train.rollout_engine == "hf" and orig.judge.backend == "openai" and orig.judge.mode == "seed"
    assert orig.judge.base_url == "http://127.0.0.1:9/v1" and orig.judge.model == "/m/q"
    # the shape is the profile's in both
    for p in (ours, orig):
        assert (p.train.num_generations, p.train.max_completion_length, p.train.lora_rank) == (8, 128, 16)
        assert p.policy_model == cpu.policy_model
    with pytest.raises(bench.BenchError, match="unknown setup"):
        bench_step.setup_overrides("fast", 3, w)


def test_step_cli_parses_and_refuses_bad_arguments(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(bench_step, "bench_step", lambda *a, **k: seen.update(args=a, kwargs=k) or {})
    assert bench.main(["step", "--steps", "2", "--setups", "ours", "--json", str(tmp_path / "s.json")]) == 0
    assert seen["args"] == (2, tmp_path / "s.json", ["ours"], "cpu") and seen["kwargs"] == {"keep_runs": False}
    assert bench.main(["step"]) == 0 and seen["args"][0] == bench_step.DEFAULT_STEPS == 3
    assert seen["args"][2] == ["ours", "original"]
    monkeypatch.undo()
    assert bench.main(["step", "--steps", "1"]) == 2  # the warm-up step would leave nothing
    assert bench.main(["step", "--setups", "fast"]) == 2
    (tmp_path / "taken.json").write_text("{}")
    assert bench.main(["step", "--json", str(tmp_path / "taken.json")]) == 2  # never overwrites


def test_step_default_json_path(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_common, "BENCH_DIR", tmp_path)
    p = bench.default_json_path(stem="step")
    assert p.parent == tmp_path and p.name.startswith("step-") and p.suffix == ".json"
    p.write_text("{}")
    assert bench.default_json_path(stem="step") != p
    assert bench.default_json_path().name.startswith("judge-")


def test_step_child_command():
    cmd = bench_step.child_command("original", 3, "cpu", bench_step.Path("/w"), bench_step.Path("/w/r.json"))
    assert cmd[:3] == [sys.executable, "-m", "bench.step"]
    assert cmd[cmd.index("--child") + 1] == "original" and cmd[cmd.index("--steps") + 1] == "3"
