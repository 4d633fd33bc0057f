#!/usr/bin/env bash
# int8 against float storage of compressed contexts on the embedded SmolLM2-135M (issue 20
# part 5): the same systems, the same items, once answering from the float context and once
# from the context as int8 storage returns it (`ctxcompress eval --quantize int8`), then the
# paired differences (`ctxcompress report --against`). Resumable: finished runs are kept.
#
#   benchmarks/quantized/run.sh [RESULTS_DIR]   (default benchmarks/quantized/results)
#
# Systems: SAC at 4x and ICAE at 4x as trained by the recipe benchmark (NQ-open, 150 steps;
# benchmarks/recipe/results/train/, not in git: rerun benchmarks/recipe/run.py first), and
# the zero-shot full context (the KV cache of the whole passage) on SQuAD and HotpotQA.
set -euo pipefail
OUT=${1:-benchmarks/quantized/results}
CC=${CC:-.venv/bin/ctxcompress}
TRAINED=benchmarks/recipe/results/train
mkdir -p "$OUT"

run() {  # run NAME ARGS...: one evaluation, skipped when its result exists
  local name=$1
  shift
  [ -f "$OUT/$name.json" ] && { echo "have $name"; return; }
  "$CC" eval "$@" --out "$OUT/$name.json"
}

for q in none int8; do
  flag=()
  [ $q = int8 ] && flag=(--quantize int8)
  run "squad-sac-$q" --data squad:test --limit 200 --model "$TRAINED/sac-all_shared/compressor" \
    --label "sac@4x ($q)" "${flag[@]}"
  run "squad-icae-$q" --data squad:test --limit 200 --model "$TRAINED/icae-all/compressor" \
    --label "icae@4x ($q)" "${flag[@]}"
  run "squad-full-$q" --data squad:test --limit 200 --base-model embedded --method full_context \
    --label "full_context ($q)" "${flag[@]}"
  run "hotpotqa-full-$q" --data hotpotqa:test --limit 40 --base-model embedded \
    --method full_context --label "full_context hotpotqa ($q)" "${flag[@]}"
done

for set in squad-sac squad-icae squad-full hotpotqa-full; do
  label=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['method'])" "$OUT/$set-none.json")
  "$CC" report "$OUT/$set-none.json" "$OUT/$set-int8.json" --against "$label" \
    --out "$OUT/$set.png" | tee "$OUT/$set.md"
done
