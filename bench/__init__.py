"""Benchmarks, soak tests and GPU checks: tooling that measures the library, run from a checkout (not installed).

- `python -m bench judge|step|serve|soak|precision` (`bench.cli`): judge throughput, seconds per GRPO step, the reward
  server under concurrent clients, its soak under load/fuzz/faults, bf16 vs float32 training log-probs.
- `python -m bench.judge_measure`: a judge model on the labelled calibration set.
- `python -m bench.memprobe`: where a judge process's memory goes, without HTTP.
- `python -m bench.gpu_check` (`scripts/gpu_check.sh`) and `python -m bench.gpu_tiny_check`: the first runs on a GPU.
"""
