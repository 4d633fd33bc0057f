"""Peer comparison: NVIDIA kvpress KV-cache eviction presses on ctxcompress's model and data.

Runs INSIDE ``.venv-kvpress`` (see ``setup_kvpress.sh``): kvpress pins its own transformers, so
this script does not import ctxcompress. It loads the SmolLM2-135M-Instruct safetensors folder
that ctxcompress converted, reads the NQ-open oracle test split from the shared data, and answers
each question with kvpress's ``kv-press-text-generation`` pipeline (chat template, greedy,
``--max-new-tokens`` 32) under each press at each ratio r.

**Ratio convention.** kvpress's ``compression_ratio`` is the *fraction of KV pairs removed*;
ctxcompress's ratio r is original / compressed length. Our r maps to
``compression_ratio = 1 - 1/r``: r=4 is 0.75, r=16 is 0.9375.

**Budget** (``--budget``): ``ratio`` (default) is kvpress's own convention: the press removes
``compression_ratio`` of the whole prefill, which is the chat template's opening turns (system
prompt, ``<|im_start|>user``) plus the context. ``matched`` sets the ratio per item so that the
KV entries kept equal ctxcompress's truncation budget at ratio r: the P chat-prefix tokens plus
``ceil(L/r)`` of the L context tokens (ctxcompress keeps its prompt prefix whole and compresses
only the context; kvpress may still choose to evict prefix tokens, only the count is matched).

Answers are cut at the first newline and stripped, as ``ctxcompress evaluate`` does
(``stop=("\\n",)``), and scored with SQuAD v1.1 EM and token F1 (max over the gold answers).
Latency is wall time per item, batch 1: ``prefill_s`` (tokenise, prefill, compress: until the
question's forward starts) plus greedy decoding, which stops at a token holding a newline
(``--stop newline``, default; the answers are the same as decoding on, see ``--stop``).

    .venv-kvpress/bin/python benchmarks/peers/kvpress_run.py --limit 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import re
import string
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from statistics import fmean, median
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "smollm2-135m-instruct"
DATA_FILE = "nq-open-oracle.jsonl.gz"


# ---------------------------------------------------------------------------------- metrics
# SQuAD v1.1 official normalisation and metrics, as src/ctxcompress/normalization.py and
# evaluation/metrics.py implement them. A copy on purpose: this script runs inside
# .venv-kvpress, where ctxcompress (and its transformers) is not installed. The scores that
# the benchmarks report are recomputed from the saved predictions with ctxcompress's own
# metrics (benchmarks/standard/run.py: kvpress_results); these are only the live log.

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """lower -> drop ASCII punctuation -> whole-word a/an/the to a space -> collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1_single(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: list[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)


def token_f1(prediction: str, golds: list[str]) -> float:
    return max(_f1_single(prediction, g) for g in golds)


# ------------------------------------------------------------------------------------- data


def model_dir() -> Path:
    cache = os.environ.get("CTXCOMPRESS_CACHE")
    root = Path(cache).expanduser() if cache else Path.home() / ".cache" / "ctxcompress"
    return root / "models" / MODEL_NAME


def data_file() -> Path:
    env = os.environ.get("CTXCOMPRESS_DATA")
    folder = Path(env).expanduser() if env else ROOT.parent / "shared" / "data"
    return folder / DATA_FILE


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value) if value.startswith("[") else [value]
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError(f"expected a non-empty list of strings, got {value!r}")
    return value


def load_nq_test(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` test items (0-based line index i % 10 == 0) of the NQ-open oracle
    file, laid out as ``ctxcompress.data.load_qa("nq-oracle:test")`` does: the gold passage
    (the ``isgold`` one, else ``ctxs[0]``) as ``"title\\ntext"``, both stripped."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for index, line in enumerate(f):
            if index % 10 != 0:
                continue
            if limit is not None and len(out) >= limit:
                break
            row = json.loads(line)
            ctxs = row["ctxs"]
            if isinstance(ctxs, str):
                ctxs = json.loads(ctxs)
            if isinstance(ctxs, dict):
                ctxs = [ctxs]
            gold = next((c for c in ctxs if c.get("isgold")), ctxs[0])
            body, title = gold["text"].strip(), (gold.get("title") or "").strip()
            out.append(
                {
                    "id": f"nq-{index:04d}",
                    "question": row["question"],
                    "answers": _str_list(row["answers"]),
                    "context": f"{title}\n{body}" if title else body,
                }
            )
    return out


def load_examples_file(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """Examples exported from ctxcompress (JSON lines with id, context, question, answers)."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["answers"] = _str_list(row["answers"])
                out.append({k: row[k] for k in ("id", "question", "answers", "context")})
    return out if limit is None else out[:limit]


# ------------------------------------------------------------------------------------ presses


WINDOW = 64  # kvpress's default observation window of SnapKV and PyramidKV


def press_factories() -> dict[str, Callable[[float, int], Any] | None]:
    """Press builders ``(compression_ratio, prefill_tokens) -> press`` that work on CPU with a
    Llama model and need nothing from a model hub.

    SnapKV and PyramidKV require a prefill longer than their window (64 tokens by default);
    for the few shorter prefills the window is cut to ``prefill_tokens - 1``.

    Left out: presses that download weights or statistics (QFilter, KVzap, RestoreKV,
    DuoAttention, FastKVzip, ExpectedAttentionStats), that need flash attention
    (PerLayerCompression) or eager attention (ObservedAttention), that compress key channels
    rather than tokens (ThinK), or that compress while decoding (Decoding*, CAM, DMS).
    """
    import kvpress as kp

    return {
        "none": None,
        "streaming_llm": lambda cr, n: kp.StreamingLLMPress(compression_ratio=cr),
        "snapkv": lambda cr, n: kp.SnapKVPress(
            compression_ratio=cr, window_size=min(WINDOW, n - 1)
        ),
        "expected_attention": lambda cr, n: kp.ExpectedAttentionPress(compression_ratio=cr),
        "knorm": lambda cr, n: kp.KnormPress(compression_ratio=cr),
        "tova": lambda cr, n: kp.TOVAPress(compression_ratio=cr),
        "keydiff": lambda cr, n: kp.KeyDiffPress(compression_ratio=cr),
        "pyramidkv": lambda cr, n: kp.PyramidKVPress(
            compression_ratio=cr, window_size=min(WINDOW, n - 1)
        ),
        "lagkv": lambda cr, n: kp.LagKVPress(compression_ratio=cr),
        "kvzip": lambda cr, n: kp.KVzipPress(compression_ratio=cr),
        "adakv_expected_attention": lambda cr, n: kp.AdaKVPress(
            kp.ExpectedAttentionPress(compression_ratio=cr)
        ),
        "random": lambda cr, n: kp.RandomPress(compression_ratio=cr, seed=0),
    }


DEFAULT_PRESSES = (
    "none",
    "streaming_llm",
    "snapkv",
    "expected_attention",
    "knorm",
    "tova",
    "keydiff",
    "pyramidkv",
    "kvzip",
    "adakv_expected_attention",
    "random",
)


# ------------------------------------------------------------------------------------- runner


@dataclass
class Prefill:
    """Seconds from the start of a pipeline call to the first forward of the full model (the
    question's): tokenisation, the prefill of the context and its compression (including any
    extra passes a press makes, e.g. KVzip's reconstruction)."""

    start: float = 0.0
    seconds: float | None = None

    def hook(self, model: Any) -> Any:
        def pre(*_: Any, **__: Any) -> None:
            if self.seconds is None:
                self.seconds = time.perf_counter() - self.start

        return model.register_forward_pre_hook(pre)


def kv_entries(model: Any, cache: Any) -> tuple[int, list[int]]:
    """KV entries (token x KV head, summed over layers) held after the call, and the cached
    tokens per layer. Head-wise presses (AdaKV) keep evicted entries in memory but mask them
    (``self_attn.masked_key_indices``); those are not counted as kept."""
    heads = model.config.num_key_value_heads
    lengths = [cache.get_seq_length(i) for i in range(len(cache))]
    total = 0
    for layer, n in zip(model.model.layers, lengths, strict=True):
        masked = getattr(layer.self_attn, "masked_key_indices", None)
        total += heads * n - (len(masked[0]) if masked is not None else 0)
    return total, lengths


def run_one(pipe: Any, model: Any, example: dict[str, Any], press: Any, args: Any) -> dict:
    from transformers import DynamicCache

    cache = DynamicCache()
    timer = Prefill()
    handle = timer.hook(model)
    for layer in model.model.layers:  # no stale head masks from the previous item
        layer.self_attn.masked_key_indices = None
    try:
        start = timer.start = time.perf_counter()
        out = pipe(
            example["context"] + "\n\n",  # the user turn is context + "\n\n" + question
            question=example["question"],
            press=press,
            max_new_tokens=args.max_new_tokens,
            cache=cache,
        )
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    raw = out["answer"]
    answer = raw.split("\n", 1)[0].strip()
    kept, lengths = kv_entries(model, cache)
    return {
        "answer": answer,
        "raw_answer": raw,
        "latency_s": seconds,
        "prefill_s": timer.seconds,
        "kv_entries_kept": kept,
        "kv_tokens_per_layer": sorted(set(lengths)),
    }


def prompt_lengths(pipe: Any, context: str) -> tuple[int, int]:
    """(P, P + L): chat-prefix tokens before the context, and the whole prefill's tokens, as
    the pipeline tokenises them."""
    ids = pipe.preprocess(
        context + "\n\n", questions=[""], answer_prefix="", max_context_length=10**10
    )["context_ids"]
    prefix = pipe.preprocess("", questions=[""], answer_prefix="", max_context_length=10**10)
    return prefix["context_ids"].shape[1], ids.shape[1]


def summarize(name: str, r: int, rows: list[dict], budget: str) -> dict[str, Any]:
    """Means over all rows for EM/F1 (a failed item scores 0), over the rows that ran for the
    timings and KV counts."""
    ok = [p for p in rows if "error" not in p]

    def mean(key: str) -> float | None:
        values = [p[key] for p in ok if p[key] is not None]
        return fmean(values) if values else None

    return {
        "press": name,
        "r": r,
        "compression_ratio": 0.0 if name == "none" else 1 - 1 / r,
        "budget": "full" if name == "none" else budget,
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "em": fmean(p["em"] for p in rows),
        "f1": fmean(p["f1"] for p in rows),
        "mean_latency_s": mean("latency_s"),
        "median_latency_s": median(p["latency_s"] for p in ok) if ok else None,
        "mean_prefill_s": mean("prefill_s"),
        "mean_prefill_tokens": fmean(p["prefill_tokens"] for p in rows),
        "mean_kv_entries_kept": mean("kv_entries_kept"),
        "mean_kv_entries_full": mean("kv_entries_full"),
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"# kvpress {meta['versions']['kvpress']} on {MODEL_NAME}, NQ-open oracle test "
        f"(first {meta['n_examples']})",
        "",
        "kvpress `compression_ratio` is the FRACTION REMOVED: ctxcompress ratio r = "
        "`1 - 1/r` (r=4 -> 0.75, r=16 -> 0.9375). "
        f"Budget: `{meta['budget']}` ({meta['budget_note']}).",
        "",
        "| press | r | compression_ratio | EM | F1 | mean latency s | mean prefill s "
        "| KV kept / full | n | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(DEFAULT_PRESSES)}
    summaries = sorted(result["summaries"], key=lambda s: (order.get(s["press"], 99), s["r"]))
    for s in summaries:
        r = "1 (full)" if s["press"] == "none" else str(s["r"])
        kept, full = s["mean_kv_entries_kept"], s["mean_kv_entries_full"]
        share = kept / full if kept is not None and full else None
        lines.append(
            f"| {s['press']} | {r} | {s['compression_ratio']:.4g} | {s['em']:.3f} "
            f"| {s['f1']:.3f} | {_num(s['mean_latency_s'], '.3f')} "
            f"| {_num(s['mean_prefill_s'], '.3f')} | {_num(share, '.3f')} | {s['n']} "
            f"| {s.get('errors', 0)} |"
        )
    machines: dict[str, list[str]] = {}
    for s in summaries:  # main() gives every summary its machine, back-filled on --resume
        machines.setdefault(s["machine"], []).append(f"{s['press']}@{s['r']}")
    lines += ["", f"Torch threads {meta['machine']['torch_threads']}. Command: `{meta['command']}`"]
    if len(machines) == 1:
        lines += ["", f"Machine: {next(iter(machines))}."]
    else:  # a run resumed in another session: its timings are not comparable across machines
        lines += ["", "Runs from more than one machine; compare latencies within one machine only:"]
        lines += ["", *(f"- {m}: {', '.join(keys)}" for m, keys in machines.items())]
    return "\n".join(lines) + "\n"


def load_partial(path: Path, examples: list[dict[str, Any]]) -> tuple[list[dict], float]:
    """The rows a killed run of one (press, r) finished (``<out>.<key>.partial.jsonl``, one
    line per item, in order) and the wall seconds they took; none if the file does not
    match the examples. A torn last line (killed mid-write) is dropped."""
    if not path.is_file():
        return [], 0.0
    rows, wall, good = [], 0.0, []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            break
        rows.append(item["row"])
        wall = item["wall_s"]
        good.append(line)
    if [r["id"] for r in rows] != [e["id"] for e in examples[: len(rows)]]:
        path.unlink()
        return [], 0.0
    path.write_text("".join(g + "\n" for g in good), encoding="utf-8")  # drop a torn line
    return rows, wall


def save(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="first N test items")
    parser.add_argument("--presses", default=",".join(DEFAULT_PRESSES))
    parser.add_argument("--ratios", default="4,16", help="ctxcompress ratios r")
    parser.add_argument("--budget", choices=("ratio", "matched"), default="ratio")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--stop",
        choices=("newline", "eos"),
        default="newline",
        help="stop decoding at a token holding a newline (same answers, as ctxcompress "
        "evaluate) or only at EOS / --max-new-tokens (kvpress's own behaviour)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 avoids thread thrashing on a busy 2-core machine)",
    )
    parser.add_argument("--model", type=Path, default=None, help="safetensors model folder")
    parser.add_argument("--data", type=Path, default=None, help="nq-open-oracle.jsonl.gz")
    parser.add_argument(
        "--examples",
        type=Path,
        default=None,
        help="JSON lines (id, context, question, answers) exported from ctxcompress, e.g. the "
        "5-passage contexts of benchmarks/quality r16; replaces --data",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "peers" / "results" / "kvpress.json"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep finished (press, r) runs found in --out"
    )
    args = parser.parse_args()

    mdir = args.model or model_dir()
    if not (mdir / "model.safetensors").is_file():
        sys.exit(
            f"{mdir}: no converted SmolLM2-135M-Instruct model. Create it in the main venv first:"
            ' `make demo`, or `.venv/bin/python -c "import ctxcompress; '
            'ctxcompress.load_base_model()"` (or pass --model FOLDER).'
        )
    factories = press_factories()
    names = [p for p in args.presses.split(",") if p]
    unknown = [p for p in names if p not in factories]
    if unknown:
        sys.exit(f"unknown press(es) {unknown}; known: {', '.join(factories)}")
    ratios = [int(r) for r in args.ratios.split(",") if r]
    if args.examples:
        examples, source = load_examples_file(args.examples, args.limit), str(args.examples)
    else:
        path = args.data or data_file()
        if not path.is_file():
            sys.exit(f"{path}: not found (set $CTXCOMPRESS_DATA or pass --data)")
        examples, source = load_nq_test(path, args.limit), f"{path} (nq-oracle:test)"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    model = AutoModelForCausalLM.from_pretrained(
        mdir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    heads, layers = model.config.num_key_value_heads, model.config.num_hidden_layers
    if args.stop == "newline":
        # The pipeline stops decoding at generation_config.eos_token_id. Answers are cut at
        # their first newline anyway, so stopping on every token whose text holds one gives
        # the same answers sooner, as ctxcompress evaluate's stop=("\n",) does.
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        newline = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
        model.generation_config.eos_token_id = eos + [i for i in newline if i not in eos]

    budget_note = (
        "compression_ratio = 1 - 1/r of the whole prefill (chat prefix + context)"
        if args.budget == "ratio"
        else "per item, KV kept = P chat-prefix tokens + ceil(L/r) context tokens, "
        "ctxcompress's truncation budget"
    )
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": str(mdir),
        "data": source,
        "n_examples": len(examples),
        "presses": names,
        "ratios": ratios,
        "budget": args.budget,
        "budget_note": budget_note,
        "compression_ratio_note": "kvpress compression_ratio is the fraction of KV pairs "
        "REMOVED; ctxcompress ratio r corresponds to compression_ratio = 1 - 1/r "
        "(r=4 -> 0.75, r=16 -> 0.9375)",
        "answer_postprocess": "cut at the first newline, stripped (as ctxcompress evaluate)",
        "metrics": "SQuAD v1.1 EM and token F1, max over gold answers",
        "max_new_tokens": args.max_new_tokens,
        "stop": args.stop,
        "versions": {k: version(k) for k in ("kvpress", "transformers", "torch", "accelerate")},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
    }
    same = ("model", "data", "n_examples", "budget", "max_new_tokens", "stop")
    signature = {k: meta[k] for k in same}
    result: dict[str, Any] = {"meta": meta, "summaries": [], "runs": {}}
    if args.resume and args.out.is_file():
        old = json.loads(args.out.read_text(encoding="utf-8"))
        if {k: old["meta"].get(k) for k in signature} == signature:
            result["runs"] = old.get("runs", {})
            result["summaries"] = old.get("summaries", [])
            for summary in result["summaries"]:  # files from before summaries named a machine
                summary.setdefault("machine", old["meta"]["machine"]["platform"])
            print(f"resuming: {len(result['runs'])} finished runs in {args.out}", flush=True)
        else:
            print(f"--resume: {args.out} is from another setting; starting afresh", flush=True)

    lengths = [prompt_lengths(pipe, e["context"]) for e in examples]
    with torch.inference_mode():
        run_one(pipe, model, examples[0], None, args)  # warm-up, untimed
        for name in names:
            for r in [1] if name == "none" else ratios:
                key = f"{name}@{r}"
                if key in result["runs"]:
                    continue
                partial = args.out.with_name(f"{args.out.name}.{key}.partial.jsonl")
                rows, earlier_s = load_partial(partial, examples) if args.resume else ([], 0.0)
                if rows:
                    print(f"{key}: resuming after {len(rows)} finished items", flush=True)
                start = time.perf_counter() - earlier_s
                for e, (p_len, total) in list(zip(examples, lengths, strict=True))[len(rows) :]:
                    press = None
                    if factories[name] is not None:
                        if args.budget == "ratio":
                            cr = 1 - 1 / r
                        else:
                            n_keep = p_len + math.ceil((total - p_len) / r)
                            cr = max(0.0, 1 - (n_keep + 0.5) / total)
                        press = factories[name](cr, total)
                    try:
                        row = run_one(pipe, model, e, press, args)
                    except Exception as err:  # one failing item must not end the run
                        print(f"{key} {e['id']}: {type(err).__name__}: {err}", flush=True)
                        row = {
                            "answer": "",
                            "raw_answer": "",
                            "error": f"{type(err).__name__}: {err}",
                            "latency_s": None,
                            "prefill_s": None,
                            "kv_entries_kept": None,
                            "kv_tokens_per_layer": [],
                        }
                    row.update(
                        press=repr(press) if press is not None else None,
                        id=e["id"],
                        question=e["question"],
                        golds=e["answers"],
                        em=exact_match(row["answer"], e["answers"]),
                        f1=token_f1(row["answer"], e["answers"]),
                        prefix_tokens=p_len,
                        prefill_tokens=total,
                        kv_entries_full=heads * layers * total,
                    )
                    rows.append(row)
                    with partial.open("a", encoding="utf-8") as f:  # per item: a kill loses one
                        f.write(json.dumps({"row": row, "wall_s": time.perf_counter() - start}))
                        f.write("\n")
                summary = summarize(name, r, rows, args.budget)
                summary["wall_s"] = time.perf_counter() - start
                summary["machine"] = meta["machine"]["platform"]
                result["runs"][key] = rows
                result["summaries"] = [
                    s for s in result["summaries"] if f"{s['press']}@{s['r']}" != key
                ] + [summary]
                save(result, args.out)
                partial.unlink(missing_ok=True)
                print(
                    f"{key:28s} EM {summary['em']:.3f}  F1 {summary['f1']:.3f}  "
                    f"latency {_num(summary['mean_latency_s'], '.3f')}s  "
                    f"KV kept {_num(summary['mean_kv_entries_kept'], '.0f')}/"
                    f"{_num(summary['mean_kv_entries_full'], '.0f')}  "
                    f"errors {summary['errors']}  ({summary['wall_s']:.0f}s)",
                    flush=True,
                )
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
