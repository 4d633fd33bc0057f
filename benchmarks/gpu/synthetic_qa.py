"""A QA file for timing training steps where no dataset is installed (the GPU machine):
``--records`` contexts of about ``--tokens`` tokens of filler sentences, each with one fact
("The code of box N is W.") at a random depth and the question about it.

Speed does not depend on what the text says, only on its length, so a synthetic file times a
training step as the real data would. Deterministic (``--seed``); the token count is that of
the tokenizer of ``--base-model`` (default: the local tiny tokenizer that ``random:*`` shapes
use).

    python benchmarks/gpu/synthetic_qa.py --out /tmp/qa.jsonl --records 64 --tokens 2000
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ctxcompress.models import load_tokenizer

FILLER = (
    "The committee met again in the spring to review the report on context compression.",
    "Anchors collect information from the whole chunk through bidirectional attention.",
    "A frozen language model reads a few keys and values instead of the full text.",
    "The survey covered twelve cities and more than four thousand households.",
    "Every answer was checked twice before the results were published in the journal.",
    "Long documents are split into chunks that are compressed independently.",
)
CODES = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor")


def build_records(records: int, tokens: int, base_model: str, seed: int) -> list[dict]:
    tokenizer, _ = load_tokenizer(base_model)
    per_sentence = sum(len(tokenizer(s).input_ids) for s in FILLER) / len(FILLER)
    sentences = max(1, round(tokens / per_sentence))
    rng = random.Random(seed)
    out = []
    for i in range(records):
        code = rng.choice(CODES)
        body = [rng.choice(FILLER) for _ in range(sentences)]
        body.insert(rng.randrange(len(body) + 1), f"The code of box {i} is {code}.")
        out.append(
            {
                "context": " ".join(body),
                "question": f"What is the code of box {i}?",
                "answers": [code],
                "id": f"synthetic:{i}",
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--base-model", default="random:llama-3.2-1b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = build_records(args.records, args.tokens, args.base_model, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} records to {args.out}")


if __name__ == "__main__":
    main()
