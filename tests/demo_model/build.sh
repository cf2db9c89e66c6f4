#!/usr/bin/env bash
# Build the Tilewise demo model end to end:
#   make_dataset.py (template -> generated cases) -> train.py (nnU-Net plan + preprocess + train shared + 5 folds,
#   copy to resources/demo/) -> evaluate.py (Dice on the held-out cases through tilewise.engine.Predictor).
# Every step reuses what WORK already holds, so rerunning after an interruption continues where it stopped.
# Settings come from the environment (defaults = the shipped model):
#   PYTHON WORK SEED N_TRAIN N_TEST STEPS_SHARED STEPS_FOLD PRECISION THREADS OUT PRESET SKIP_EVAL
# THREADS=1: one torch thread. On the 2-core build machine that is 0.57 s/step whether or not something else runs;
# two threads are 0.37 s/step on an idle machine but 1.2 s/step as soon as another process takes a core.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python}"
WORK="${WORK:-${TMPDIR:-/tmp}/tilewise_demo_build}"
SEED="${SEED:-2024}"
N_TRAIN="${N_TRAIN:-30}"
N_TEST="${N_TEST:-4}"
STEPS_SHARED="${STEPS_SHARED:-4000}"
STEPS_FOLD="${STEPS_FOLD:-400}"
PRECISION="${PRECISION:-bf16}"
THREADS="${THREADS:-1}"
OUT="${OUT:-$REPO/resources/demo/model}"
PRESET="${PRESET:-balanced}"
export OMP_WAIT_POLICY=PASSIVE
cd "$REPO"

step() {  # step NAME CMD...: run and report its wall time
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name: $*"
  "$@"
  echo "=== $name took $((SECONDS - t0)) s"
}

step dataset "$PYTHON" "$HERE/make_dataset.py" --out "$WORK/raw" --train "$N_TRAIN" --test "$N_TEST" --seed "$SEED"
step train "$PYTHON" "$HERE/train.py" --raw "$WORK/raw" --work "$WORK" --out "$OUT" \
  --steps-shared "$STEPS_SHARED" --steps-fold "$STEPS_FOLD" --seed "$SEED" --precision "$PRECISION" --threads "$THREADS"
if [ "${SKIP_EVAL:-0}" != 1 ]; then
  step evaluate "$PYTHON" "$HERE/evaluate.py" --raw "$WORK/raw" --model "$OUT" --preset "$PRESET" \
    --json "$WORK/eval_$PRESET.json"
fi
echo "=== done in $SECONDS s"
