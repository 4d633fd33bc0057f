"""What the attention sink does for a frozen decoder: answer NLL when the frozen SmolLM2 reads
only SAC's anchor positions of its own KV, with and without the sink tokens.

No training: SAC with no adapter (``lora_rank=0``), no anchor embedding, a causal encoder and
a zero ``[LM]`` vector, so the compressed context is exactly the frozen model's own KV at the
kept positions (METHODS.md §4), at ratio 4. The NQ-open oracle dev items; mean NLL per target
token (the answer + EOS), teacher-forced.

    python benchmarks/recipe/sink_nll.py --limit 80
"""

from __future__ import annotations

import argparse

import torch

import ctxcompress as cc
from ctxcompress.data import load_qa
from ctxcompress.training import qa_example

ROWS = {
    "anchors only (sink_tokens=0)": 0,
    "+ BOS (sink_tokens=1)": 1,
    "+ BOS and '### Context:\\n' (sink_tokens=5)": 5,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--ratio", type=int, default=4)
    args = parser.parse_args()
    items = load_qa("nq-oracle:dev", limit=args.limit)
    base = cc.load_base_model()
    print(f"| kept entries (ratio {args.ratio}, {len(items)} dev items) | answer NLL / token |")
    print("|---|---|")
    for name, sink in ROWS.items():
        comp = cc.build_compressor(
            "sac",
            base,
            ratio=args.ratio,
            lora_rank=0,
            anchor_embedding="none",
            encoder_attention="causal",
            sink_tokens=sink,
        )
        with torch.no_grad():
            comp.lm_embedding.zero_()
            total, count = 0.0, 0
            for e in items:
                ex = qa_example(comp, e.context, e.question, e.answers[0])
                loss, n = comp([ex.context_ids], [ex.prompt_ids], [ex.target_ids])
                total, count = total + float(loss), count + n
        print(f"| {name} | {total / count:.2f} |", flush=True)


if __name__ == "__main__":
    main()
