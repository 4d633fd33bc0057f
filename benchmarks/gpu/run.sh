#!/usr/bin/env bash
# The GPU check of issue 22 in one run (about 8 minutes on an H100/H200), from the repository
# root, on a machine whose python3 has PyTorch with CUDA and transformers (nothing is
# downloaded; missing pure-Python packages come as wheels in .whl/, see README.md here):
#
#   benchmarks/gpu/run.sh OUT_DIR            # on the GPU machine; fails at once without CUDA
#   benchmarks/gpu/run.sh OUT_DIR --dry-run  # here: the same steps on the CPU, tiny sizes
#
# Steps (each under its own time limit; a failing step does not stop the others, the exit
# status says whether all passed): the CUDA tests (tests/test_cuda.py), `ctxcompress bench` on
# a random-init Llama-3.2-1B-shaped model in bfloat16 at L = 8k and 32k, r = 4 and 16, SAC /
# PIC / plain-LoRA training steps at that shape, and summary.md with each target met or not.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu/run.sh OUT_DIR [--dry-run]}
MODE=${2:-gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ "$MODE" = "--dry-run" ]; then
  DEVICE=cpu DTYPE=float32 BASE=tiny LENGTHS=256,1024 REPEATS=1 TOKENS=200 STEPS=2
else
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" || {
    echo "benchmarks/gpu/run.sh: torch sees no CUDA device; run it on the GPU machine," \
      "or pass --dry-run to rehearse it on the CPU." >&2
    exit 3
  }
  DEVICE=cuda DTYPE=bfloat16 BASE=random:llama-3.2-1b LENGTHS=8192,32768 REPEATS=3 TOKENS=2000 STEPS=4
fi

FAILED=()
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - start))s"
  [ $rc -eq 0 ] || FAILED+=("$name")
}

{
  date -u
  "$PY" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, \
'accelerate', accelerate.__version__); print(torch.cuda.get_device_name() if \
torch.cuda.is_available() else 'no CUDA device')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step cuda_tests 150 env CTXCOMPRESS_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_cuda.py -m cuda
step bench 300 "$PY" -m ctxcompress bench --base-model "$BASE" --device "$DEVICE" \
  --dtype "$DTYPE" --lengths "$LENGTHS" --ratios 4,16 --repeats "$REPEATS" --out "$OUT/bench.json"
QA=$(mktemp -d)/qa.jsonl
"$PY" benchmarks/gpu/synthetic_qa.py --out "$QA" --records 32 --tokens "$TOKENS" --base-model "$BASE"
step train_step 180 "$PY" benchmarks/train_step.py --base-model "$BASE" --dtype "$DTYPE" \
  --methods sac,pic,plain_lora --steps "$STEPS" --out "$OUT/train_step.json" \
  --set "data=[{source: 'jsonl:$QA', objective: qa}]" --set method_options.ratio=16 \
  --set train.batch_size=4 --set train.micro_batch_size=4
if [ -f "$OUT/bench.json" ]; then
  "$PY" benchmarks/gpu/summarize.py "$OUT" || FAILED+=(summary)
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
echo "all steps passed; results in $OUT"
