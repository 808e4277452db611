#!/usr/bin/env bash
# The first thing to run on a GPU machine (after `make setup EXTRAS=gpu,dev` and `hf download` of the Qwen models):
# the gpu profile's judge, 3 GRPO steps, a 5-prompt evaluation and the tests marked `gpu`, in about 10 minutes.
# Each stage is its own process (an empty card each time); the first failure stops the script, naming the stage.
#
#   bash scripts/gpu_check.sh                  # or: make gpu-check
#   PROFILE=gpu STEPS=3 TEXTS=20 PROMPTS=5 RUN_ID=... PY=.venv/bin/python bash scripts/gpu_check.sh
#
# Stages (bench/gpu_check.py says what each prints): preflight, logprobs, judge, train, eval, gpu-tests, bench.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PY:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
PROFILE=${PROFILE:-gpu}
STEPS=${STEPS:-3}
TEXTS=${TEXTS:-20}
PROMPTS=${PROMPTS:-5}
RUN_ID=${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)-gpu-check}
export VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0}  # in-process engines, as Unsloth sets it
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

stage() {
  local name=$1 t0=$SECONDS
  shift
  echo "== gpu_check stage $name: $*"
  if ! "$@"; then
    echo "gpu_check FAILED at stage $name after $((SECONDS - t0)) s: $*" >&2
    exit 1
  fi
  echo "== gpu_check stage $name ok in $((SECONDS - t0)) s"
}

stage preflight "$PY" -m bench.gpu_check preflight --profile "$PROFILE"
stage logprobs "$PY" -m bench.gpu_check logprobs --profile "$PROFILE"  # Unsloth's rollout engine: processed_logprobs
stage judge "$PY" -m bench.gpu_check judge --profile "$PROFILE" --texts "$TEXTS"
stage train "$PY" -m bench.gpu_check train --profile "$PROFILE" --run-id "$RUN_ID" --steps "$STEPS"
stage eval "$PY" -m bench.gpu_check eval --run-id "$RUN_ID" --prompts "$PROMPTS"
stage gpu-tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
stage bench "$PY" -m bench.gpu_check bench --profile "$PROFILE"
echo "gpu_check: every stage passed in $SECONDS s; the run is outputs/runs/$RUN_ID"
