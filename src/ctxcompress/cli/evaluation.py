"""``ctxcompress demo``, ``eval``, ``report`` and ``bench``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInputError
from ..quantization import check_scheme
from ._common import (
    BaseModelOpt,
    DataOptionsOpt,
    DeviceOpt,
    DtypeOpt,
    EvalMethodOpt,
    MethodOptionsOpt,
    ModelOpt,
    RatioOpt,
    app,
    console,
    err_console,
    get_compressor,
    parse_options,
    resolve_method,
    user_errors,
)


@app.command()
@user_errors
def demo(
    train: Annotated[
        bool,
        typer.Option(
            "--train",
            help="Train a small SAC compressor on ACLSum first (minutes), instead of using "
            "the shipped pretrained compressors.",
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write the verdicts (which compressor to use at each budget) into this "
            "Markdown page, between <!-- begin demo --> / <!-- end demo --> (e.g. README.md).",
        ),
    ] = None,
) -> None:
    """Compress held-out documents with the shipped compressors and answer their questions.

    Prints each shipped compressor (embedded:<name>) beside the shipped references its card
    names, the frozen SmolLM2-135M reading the context truncated to the same KV budget and the
    full context: quality, KV memory, answer latency, the model card's score on the same
    items, a worked example chosen by a fixed rule, and one verdict per budget with paired
    intervals. With --train (or while no compressor is shipped) it trains a SAC compressor on
    ACLSum and measures it against the zero-shot baselines. The first run converts the
    embedded GGUF model to a cached safetensors folder (about half a minute).
    """
    from .. import demo as demo_module

    demo_module.main(train=train, report=report)


@app.command(name="eval")
@user_errors
def eval_command(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Dataset spec: nq-oracle:test, nq-oracle:dev, aclsum:validation, "
            "hub:mrqa:validation, jsonl:PATH, ... (see ctxcompress.data).",
        ),
    ],
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    method: EvalMethodOpt = "truncation",
    ratio: RatioOpt = None,
    options: MethodOptionsOpt = None,
    data_options: DataOptionsOpt = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    label: Annotated[
        str | None, typer.Option(help="Row name in tables and plots (default: method@ratio).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write every prediction (JSON) + a Markdown table."),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(help="'int8': answer from each context as int8 storage returns it."),
    ] = None,
    at_ratio: Annotated[
        int | None,
        typer.Option(
            "--at-ratio",
            min=1,
            help="Compress at this ratio instead of the compressor's own (at least its trained "
            "ratio), e.g. with a compressor trained with train.ratios.",
        ),
    ] = None,
    compose_passages: Annotated[
        bool,
        typer.Option(
            help="Compress each passage (blank-line separated) once and answer from their "
            "composition instead of compressing the joined context."
        ),
    ] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Evaluate a trained compressor or a hard baseline on a dataset split.

    QA data is scored with SQuAD/MRQA EM and token F1 (max over gold answers) and with the SAC
    paper's convention; summarisation data (aclsum) with ROUGE-1/2/L. Prints the table; `--out`
    keeps every prediction for inspection.
    """
    from ..data import load_qa, load_summarization
    from ..evaluation import evaluate, markdown_table

    check_scheme(quantize)
    loader_options = parse_options(data_options)
    is_summary = data.startswith("aclsum:")
    load = load_summarization if is_summary else load_qa
    examples = load(data, limit=limit, **loader_options)
    comp, _fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method,
        ratio=ratio,
        dtype=dtype,
        device=device,
        options=parse_options(options),
    )
    shown_ratio = at_ratio or comp.config.ratio
    default_label = f"{comp.method}@{shown_ratio}x" + (f"+{quantize}" if quantize else "")
    default_label += "+composed" if compose_passages else ""
    result = evaluate(
        comp,
        examples,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        label=label or default_label,
        quantize=quantize,
        compose_passages=compose_passages,
        ratio=at_ratio,
    )
    console.print(markdown_table([result]))
    if out is not None:
        console.print(f"predictions: {result.save(out)}  table: {Path(out).with_suffix('.md')}")


@app.command()
@user_errors
def continuation(
    data: Annotated[
        str,
        typer.Option(
            "--data", help="Texts to read as one stream: squad:dev, hotpotqa:dev, text:PATH, ..."
        ),
    ],
    model: ModelOpt = None,
    base_model: BaseModelOpt = None,
    method: EvalMethodOpt = "truncation",
    ratio: RatioOpt = None,
    options: MethodOptionsOpt = None,
    data_options: DataOptionsOpt = None,
    windows: Annotated[int, typer.Option(min=1, help="Score the stream's first N windows.")] = 200,
    window: Annotated[int, typer.Option(min=4, help="Tokens per window.")] = 192,
    context_fraction: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="The compressed share of each window.")
    ] = 0.75,
    baselines: Annotated[
        bool,
        typer.Option(
            help="Also score the frozen base model on the same windows: the full context and "
            "head / tail truncation at the compressor's ratio, paired."
        ),
    ] = True,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Continuation NLL: how well a compressed context predicts the text that follows it.

    The texts are joined into one token stream and cut into windows; the first
    --context-fraction of each is compressed, and the score is the mean negative
    log-likelihood (nats per token, lower is better) of the rest after its first token — the
    dense signal of continuation pretraining (ctxcompress.evaluation.continuation). With
    --baselines the table pairs it with what the frozen model scores reading the whole window
    and its head or tail cut to the same budget.
    """
    from ..data import load_texts
    from ..evaluation import continuation_nll, continuation_windows, paired_nll_difference
    from ..evaluation.continuation import frozen_baselines
    from ..models import BaseModel

    texts = [d.text for d in load_texts(data, **parse_options(data_options))]
    comp, _fresh = get_compressor(
        model=model,
        base_model=base_model,
        method=method,
        ratio=ratio,
        dtype=dtype,
        device=device,
        options=parse_options(options),
    )
    ratio_used = comp.config.ratio

    def score(system, label):
        items = continuation_windows(
            system, texts, size=window, limit=windows, context_fraction=context_fraction
        )
        return continuation_nll(system, items, batch_size=batch_size, label=label)

    scores = [score(comp, f"{comp.method}@{ratio_used}x")]
    if baselines:
        # The same frozen model object: a hard baseline runs it with every adapter off.
        base = BaseModel(comp.lm, comp.tokenizer, comp.base_source)
        scores += [
            score(system, label) for label, system in frozen_baselines(base, ratio_used).items()
        ]
    found = len(scores[0].window_nll)
    fewer = f" (the texts hold only {found} of the {windows} asked for)" if found < windows else ""
    lines = [
        f"{found} windows of {window} tokens of {data}{fewer}, the first "
        f"{context_fraction:g} compressed; continuation NLL in nats per token (lower is better)",
        "",
        "| system | NLL [95% CI] | minus the first row [paired 95% CI] |",
        "|---|---|---|",
    ]
    for item in scores:
        ci, diff = item.interval(), paired_nll_difference(item, scores[0])
        lines.append(
            f"| {item.label} | {item.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] | "
            f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] |"
        )
    # Not rich markup: "[paired 95% CI]" would be read as a style tag.
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def report(
    results: Annotated[
        list[Path], typer.Argument(help="Evaluation JSON files (ctxcompress eval --out).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG plot to write.")] = Path(
        "quality_vs_ratio.png"
    ),
    metric: Annotated[
        str | None, typer.Option(help="f1, em, sac_f1, sac_em, rouge1, rouge2, rougeL.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Plot title.")] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            help="A system's label (its 'method' in the table; repeatable): also print every "
            "system's paired difference from it, with 95% bootstrap intervals over the items."
        ),
    ] = None,
    depth_bins: Annotated[
        int, typer.Option(min=1, help="Bins of [0, 1] for the quality-by-depth plot.")
    ] = 5,
) -> None:
    """Draw quality against compression ratio for several evaluation runs, and print the table.

    When every prediction records where its answer is (RULER ``depth``, SQuAD
    ``answer_depth`` or the ``gold_position`` of multi-passage contexts), also draw quality
    against that depth (``<out>_depth.png``)."""
    from ..evaluation import EvalResult, difference_table, markdown_table, plot_quality_vs_ratio
    from ..evaluation.report import depth_key, plot_quality_vs_depth

    loaded = [EvalResult.load(p) for p in results]
    if len({r.task for r in loaded}) > 1:
        raise InvalidInputError("mixing QA and summarisation results in one report")
    labels = {r.method: r for r in loaded}
    if unknown := [a for a in against or [] if a not in labels]:
        raise InvalidInputError(
            f"--against {unknown[0]!r} is none of the results' labels: {', '.join(labels)}"
        )
    # Markdown tables: one line per row, never wrapped at the terminal's width.
    console.print(markdown_table(loaded), soft_wrap=True)
    if against:
        default = "rougeL" if loaded[0].task == "summarization" else "f1"
        table = difference_table(loaded, [labels[a] for a in against], metric or default)
        console.print(table, soft_wrap=True)
    console.print(f"plot: {plot_quality_vs_ratio(loaded, out, metric=metric, title=title)}")
    if key := depth_key(loaded):
        depth_out = out.with_name(f"{out.stem}_depth{out.suffix}")
        plot_quality_vs_depth(
            loaded, depth_out, key=key, metric=metric, bins=depth_bins, title=title
        )
        console.print(f"plot by {key}: {depth_out}")


@app.command()
@user_errors
def bench(
    base_model: Annotated[
        str,
        typer.Option(
            "--base-model",
            help="'tiny', 'embedded' (SmolLM2-135M), a folder or id, or 'random:llama-3.2-1b' "
            "(random weights in a real model's shape: speed does not depend on the weights).",
        ),
    ] = "tiny",
    method: Annotated[
        str | None, typer.Option(help="Method to measure, untrained (default sac).")
    ] = None,
    compressor: Annotated[
        str | None,
        typer.Option(
            help="A trained compressor to measure instead: a save_pretrained folder or a "
            "shipped name (embedded:sac-4x); its own base model, method and ratio."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    ] = "auto",
    dtype: Annotated[
        str, typer.Option(help="'auto' (bfloat16 on CUDA, float32 on the CPU) or a dtype name.")
    ] = "auto",
    lengths: Annotated[str, typer.Option(help="Context lengths L, comma-separated.")] = (
        "512,2048,8192"
    ),
    ratios: Annotated[
        str | None, typer.Option(help="Compression ratios, comma-separated (default 4,16).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median).")] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=2)] = 16,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write JSON here (and a .md table beside).")
    ] = None,
) -> None:
    """Speed and memory: compression vs prefill, answer latency vs the physical limit (a plain
    prompt of the compressed length) and vs the full context, KV bytes, batched questions.

    Every ratio in the table is measured within this one run; see docs/benchmarks.md.
    """
    import json as json_lib

    from ..bench import BenchSettings, markdown_report, run_speed_benchmark

    if compressor is not None and (ratios, method, base_model) != (None, None, "tiny"):
        raise InvalidInputError(
            "--compressor measures a trained compressor with its own method and ratio on its "
            "own base model: drop --method, --ratios and --base-model (or drop --compressor "
            "to measure a freshly built method)."
        )
    settings = BenchSettings(
        base_model=base_model,
        method=resolve_method(method or "sac"),
        compressor=compressor,
        lengths=tuple(int(x) for x in lengths.split(",")),
        ratios=tuple(int(x) for x in (ratios or "4,16").split(",")),
        repeats=repeats,
        max_new_tokens=max_new_tokens,
        device=device,
        dtype=dtype,
    )
    result = run_speed_benchmark(settings, progress=lambda m: err_console.print(m))
    table = markdown_report(result)
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json_lib.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
        console.print(f"written: {out}")
