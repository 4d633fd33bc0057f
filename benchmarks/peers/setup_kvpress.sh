#!/usr/bin/env bash
# Create .venv-kvpress/ at the repo root with NVIDIA kvpress and the transformers it pins.
#
# kvpress 0.5.5 pins transformers>=4.56,<5.3, which differs from the main venv's, so it gets its
# own environment. torch==2.13.0 is installed FIRST: that exact CPU wheel is on local disk here,
# and a plain `torch` would pull a multi-GB CUDA build. Idempotent: a stamp file (which also
# records the resolved versions) makes a repeated run instant; delete the folder to rebuild.
#
#   bash benchmarks/peers/setup_kvpress.sh
#   .venv-kvpress/bin/python benchmarks/peers/kvpress_run.py --limit 100
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${KVPRESS_VENV:-$ROOT/.venv-kvpress}"
TORCH="${TORCH:-torch==2.13.0}"
KVPRESS="${KVPRESS:-kvpress==0.5.5}"
STAMP="$VENV/.stamp"
WANT="$TORCH $KVPRESS"

if [[ -f "$STAMP" && "$(head -n 1 "$STAMP")" == "$WANT" ]]; then
    echo "kvpress venv up to date: $VENV"
    tail -n +2 "$STAMP"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "$TORCH"
# Keep the torch above: kvpress accepts torch>=2.3.1,<3, so pip leaves it in place.
"${PIP[@]}" install "$KVPRESS"

# Smoke check: the package imports (it patches the attention functions on import) and the
# pipeline is registered.
"$VENV/bin/python" - <<'PY'
import kvpress  # noqa: F401
from transformers.pipelines import PIPELINE_REGISTRY

assert "kv-press-text-generation" in PIPELINE_REGISTRY.get_supported_tasks()
PY

{
    echo "$WANT"
    "$VENV/bin/python" - <<'PY'
from importlib.metadata import version

import sys
print("python", sys.version.split()[0])
for name in ("kvpress", "torch", "transformers", "accelerate", "peft", "datasets", "numpy"):
    print(name, version(name))
PY
} > "$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
echo "kvpress venv ready: $VENV"
tail -n +2 "$STAMP"
