"""Why SAC at 4x learns so slowly on SQuAD: short runs from scratch that separate the levers.

Every row trains 150 QA steps from scratch (no stage 1) with the headline's ``sac_4x`` QA
data and loop (``configs/benchmarks/headline.yaml``: SQuAD train + NQ-open oracle train,
batch 4, lr 2e-4, constant schedule) and the headline recipe (LoRA rank 32 on q/v, sink 5,
table init, one shared anchor embedding; learned vectors at 10x lr in every row), and scores
dev F1 on the first 50 ``squad:dev`` items:

* ``sac_r1``: SAC keeping *every* token (ratio 1): what a bidirectional LoRA encoder and the
  frozen decoder learn when nothing is dropped;
* ``sac_r4``: SAC at 4x, as the headline trains it;
* ``sac_r4_causal``: the same with a causal encoder (the paper's ablation);
* ``sac_r4_no_anchor``: the same without the anchor embedding;
* ``sac_r4_causal_plain``: causal encoder *and* no anchor embedding: at step 0 its KV is the
  frozen model's own, every fourth entry (plus the sink) — mechanically trained truncation's
  start but sparse, so it says whether sparsity alone stalls the learning;
* ``sac_r4_from_r1``: SAC at 4x for 150 steps starting from ``sac_r1``'s weights (a warm
  start: 300 steps in all);
* ``sac_r4_all_linear``: SAC at 4x with LoRA on every projection (attention and MLP), not
  only q/v: more capacity to pack content into the anchors;
* ``sac_r4_lr1e-3``: SAC at 4x with a 5x higher learning rate (1e-3);
* ``sac_r4_kl_frozen``: SAC at 4x distilled from the frozen model reading the whole context
  (the KL on the answer tokens, weight 1);
* ``sac_r4_hidden``: the same plus hidden-state distillation (weight 1): the decoder's states
  at every layer of every question and answer token, against the frozen model's on the whole
  context — a dense signal of what the anchors must let the decoder read;
* ``sac_r4_kl_full`` / ``sac_r4_hidden_full``: the same two, distilled from the
  ``trained_full`` row instead (a teacher that answers in the trained, brief format — the
  frozen model answers in sentences, so its KL pulls away from the EOS after a short
  answer), the hidden term at weight 10 (at weight 1 it sat at ~0.3 against a CE of ~3.3
  per target token);
* ``sac_r4_ae``: SAC at 4x with an autoencoding third of the batches: reconstruct an NQ
  oracle passage (the QA contexts' own kind of text) from its anchors — the direct signal
  for the dropped tokens (the paper's ablation says autoencoding hurts at 1B and 20k steps);
* ``trained_full``: the whole context, LoRA-encoded, 150 steps (the upper reference, and the
  teacher of the two rows above);
* ``trained_truncation``: the head of the context at the same budget, LoRA-encoded (the
  reference the targets divide by).

    python benchmarks/headline/learnability.py               # resumes: finished rows are kept
    python benchmarks/headline/learnability.py --report docs/results.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the benchmarks package
from benchmarks._common import load_json, write_json  # noqa: E402
from benchmarks.headline.run import BENCHMARK  # noqa: E402

from ctxcompress.data import load_qa  # noqa: E402
from ctxcompress.evaluation import evaluate, replace_section  # noqa: E402
from ctxcompress.training import Trainer, parse_config  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTING = "sac_4x"
RECIPE = BENCHMARK.system_spec("sac", SETTING)["options"]
TRUNCATION = BENCHMARK.system_spec("trained_truncation", SETTING)["options"]
FULL = BENCHMARK.system_spec("trained_full", SETTING)["options"]
LOOP = {  # the headline's loop; every row trains its learned vectors at SAC's 10x lr
    **BENCHMARK.spec["loop"],
    **BENCHMARK.system_spec("sac", SETTING).get("train", {}),
    "log_every": 25,
    "save_every": 50,
}
ROWS: dict[str, dict] = {
    "sac_r1": {"method": "sac", "options": {**RECIPE, "ratio": 1}},
    "sac_r4": {"method": "sac", "options": {**RECIPE, "ratio": 4}},
    "sac_r4_causal": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4, "encoder_attention": "causal"},
    },
    "sac_r4_no_anchor": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4, "anchor_embedding": "none"},
    },
    "sac_r4_causal_plain": {
        "method": "sac",
        "options": {
            **RECIPE,
            "ratio": 4,
            "encoder_attention": "causal",
            "anchor_embedding": "none",
        },
    },
    "sac_r4_from_r1": {"method": "sac", "options": {**RECIPE, "ratio": 4}, "init_from": "sac_r1"},
    "sac_r4_all_linear": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4, "lora_target_modules": ALL_LINEAR},
    },
    "sac_r4_lr1e-3": {"method": "sac", "options": {**RECIPE, "ratio": 4}, "train": {"lr": 1e-3}},
    "sac_r4_kl_frozen": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4},
        "distill": {"weight": 1.0, "teacher": "full_context"},
    },
    "sac_r4_hidden": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4},
        "distill": {"weight": 1.0, "hidden_weight": 1.0, "teacher": "full_context"},
    },
    "sac_r4_kl_full": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4},
        "distill": {"weight": 1.0, "teacher": "trained_full"},
    },
    "sac_r4_hidden_full": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4},
        "distill": {"weight": 1.0, "hidden_weight": 10.0, "teacher": "trained_full"},
    },
    "sac_r4_ae": {
        "method": "sac",
        "options": {**RECIPE, "ratio": 4, "autoencoding": True},
        "extra_data": [
            {
                "source": "nq-oracle:train",
                "objective": "autoencoding",
                "options": {"context": "long_answer"},
            }
        ],
    },
    "trained_full": {"method": "prompt_tuned", "options": {**FULL, "ratio": 4}},
    "trained_truncation": {"method": "prompt_tuned", "options": {**TRUNCATION, "ratio": 4}},
}
DESCRIPTIONS = {
    "sac_r1": "SAC, every token kept (ratio 1)",
    "sac_r4": "SAC at 4x (the headline's settings)",
    "sac_r4_causal": "SAC at 4x, causal encoder",
    "sac_r4_no_anchor": "SAC at 4x, no anchor embedding",
    "sac_r4_causal_plain": "SAC at 4x, causal encoder, no anchor embedding",
    "sac_r4_from_r1": "SAC at 4x, started from `sac_r1` (150 + 150 steps)",
    "sac_r4_all_linear": "SAC at 4x, LoRA on every projection (not only q/v)",
    "sac_r4_lr1e-3": "SAC at 4x, lr 1e-3 (5x)",
    "sac_r4_kl_frozen": "SAC at 4x, KL distillation from the frozen model on the whole context",
    "sac_r4_hidden": "SAC at 4x, KL + hidden-state distillation (every layer, question and answer)",
    "sac_r4_kl_full": "SAC at 4x, KL distillation from `trained_full`",
    "sac_r4_hidden_full": "SAC at 4x, KL + hidden-state distillation (weight 10) from "
    "`trained_full`",
    "sac_r4_ae": "SAC at 4x, a third of the batches autoencoding NQ passages",
    "trained_full": "trained full context (the whole context, LoRA-encoded)",
    "trained_truncation": "trained truncation at 4x (head of the context, LoRA-encoded)",
}


def requires(name: str) -> list[str]:
    """The rows whose weights this row starts from or distils from."""
    row = ROWS[name]
    needs = [row.get("init_from"), row.get("distill", {}).get("teacher")]
    return [n for n in needs if n in ROWS]


def row_config(name: str, steps: int, out: Path):
    row = ROWS[name]
    warm_start = {}
    if "init_from" in row:
        warm_start["init_from"] = str(out / "train" / row["init_from"] / "compressor")
    distill = dict(row.get("distill", {}))
    if distill.get("teacher") in ROWS:  # another row's compressor
        distill["teacher"] = str(out / "train" / distill["teacher"] / "compressor")
    return parse_config(
        {
            **warm_start,
            "method": row["method"],
            "base_model": "embedded",
            "method_options": row["options"],
            "data": [{**d, "objective": "qa"} for d in BENCHMARK.settings[SETTING]["train"]]
            + row.get("extra_data", []),
            "train": {**LOOP, "steps": steps, **row.get("train", {})},
            "output_dir": str(out / "train" / name),
            **({"distill": distill} if distill else {}),
        }
    )


def report(results: dict, page: Path, steps: int, dev_limit: int) -> None:
    lines = [
        f"Produced by `python benchmarks/headline/learnability.py --steps {steps} "
        f"--dev-limit {dev_limit}` (each row {steps} QA steps on the `sac_4x` data, from "
        "scratch unless it says otherwise, batch 4; dev F1 on the first "
        f"{dev_limit} `squad:dev` items; "
        "`--report` rewrites this table).",
        "",
        "| row | what it trains | dev F1 | dev EM | CPU min |",
        "|---|---|---|---|---|",
    ]
    for name in ROWS:
        if name in results:
            r = results[name]
            lines.append(
                f"| `{name}` | {DESCRIPTIONS[name]} | {100 * r['f1']:.1f} | {100 * r['em']:.1f} "
                f"| {r['train_cpu_seconds'] / 60:.1f} |"
            )
    replace_section(page, "learnability", "\n".join(lines))
    print(f"written {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dev-limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/headline/results/learn")
    parser.add_argument("--report", type=Path, metavar="PAGE")
    args = parser.parse_args()
    path = args.out / "results.json"
    results = load_json(path, {})
    if args.report:
        report(results, args.report, args.steps, args.dev_limit)
        return
    dev = load_qa("squad:dev", limit=args.dev_limit, seed=0)
    for name in [r for r in args.rows.split(",") if r]:
        if name not in ROWS:
            parser.error(f"unknown row {name!r}; known: {list(ROWS)}")
        if name in results:
            continue
        if missing := [n for n in requires(name) if n not in results]:
            parser.error(f"row {name!r} needs {missing}: run those rows first")
        trainer = Trainer(row_config(name, args.steps, args.out))
        trainer.run()
        result = evaluate(trainer.compressor, dev, max_new_tokens=32, batch_size=16, label=name)
        results[name] = {
            "f1": result.overall["f1"],
            "em": result.overall["em"],
            "n": result.overall["n"],
            "steps": args.steps,
            "train_cpu_seconds": trainer.train_cpu_seconds,
        }
        result.save(args.out / "eval" / f"{name}.json")
        write_json(path, results)
        print(name, results[name], flush=True)


if __name__ == "__main__":
    main()
