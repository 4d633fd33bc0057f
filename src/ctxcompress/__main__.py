"""``python -m ctxcompress`` (also what ``accelerate launch -m ctxcompress train`` runs)."""

from .cli import app

app()
