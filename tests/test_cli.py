"""The command line (``ctxcompress compress | generate | demo``) on tiny random models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import ctxcompress as cc
from ctxcompress import demo
from ctxcompress.cli import EXIT_USER_ERROR, app, build_fresh, unescape
from ctxcompress.testing import tiny_model

TEXT = (
    "The committee wrote the report in 1987 in Paris. Context compression turns a long "
    "document into a few keys and values that a frozen language model reads instead."
)

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def compress_json(tmp_path: Path, *extra: str, name: str = "doc.ctx") -> dict:
    out = tmp_path / name
    result = invoke("compress", "--base-model", "tiny", "--text", TEXT, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_user_error(result, *needles: str) -> str:
    """Exit code 2, a one-line red ``Error:`` message on stderr, no traceback."""
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- help / version


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert cc.__version__ in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["--version", "compress", "generate", "demo", "continuation"]),
        (["continuation"], ["--data", "--windows", "--window", "--context-fraction", "--model"]),
        (["compress"], ["--output", "--text", "--method", "--model", "--base-model", "--ratio"]),
        (
            ["generate"],
            [
                "--context",
                "--question",
                "--questions-file",
                "--model",
                "--base-model",
                "--max-new-tokens",
                "--stop",
                "--json",
            ],
        ),
        (["demo"], ["--help"]),
    ],
)
def test_help_explains_every_option(command, options):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.stdout
    if command:
        assert "tiny" in result.stdout or command == ["demo"]


# --------------------------------------------------------------------------- the happy path


def test_compress_then_generate_json(tmp_path):
    info = compress_json(tmp_path)
    ctx = cc.CompressedContext.load(info["output"])
    assert info["original_length"] == ctx.original_length > 20
    assert info["compressed_length"] == ctx.compressed_length
    assert info["ratio"] == pytest.approx(ctx.original_length / ctx.compressed_length, abs=1e-3)
    assert info["bytes"] == ctx.num_bytes and info["seconds"] >= 0
    assert info["fresh"] is True and ctx.meta["ratio"] == 4

    result = invoke(
        "generate",
        "--base-model",
        "tiny",
        "--context",
        info["output"],
        "-q",
        "Who wrote the report?",
        "-q",
        "Where?",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [a["question"] for a in out["answers"]] == ["Who wrote the report?", "Where?"]
    assert all(isinstance(a["answer"], str) for a in out["answers"])
    assert out["compressor"] == info["compressor"]
    assert out["compressed_length"] == info["compressed_length"]


def test_compress_table_output_and_file_input(tmp_path):
    src = tmp_path / "doc.txt"
    src.write_text(TEXT)
    out = tmp_path / "doc.ctx"
    result = invoke("compress", str(src), "--base-model", "tiny", "-r", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    for label in ("original length L", "compressed length C", "ratio", "bytes", "time"):
        assert label in result.stdout
    assert "untrained" in result.stderr
    assert cc.CompressedContext.load(out).meta["ratio"] == 2


def test_compress_from_stdin_and_questions_file(tmp_path):
    out = tmp_path / "stdin.ctx"
    result = invoke("compress", "-", "--base-model", "tiny", "-o", str(out), input=TEXT)
    assert result.exit_code == 0, result.output
    questions = tmp_path / "q.txt"
    questions.write_text("Who wrote the report?\n\nWhen?\nWhere?\n")
    result = invoke(
        "generate",
        "--base-model",
        "tiny",
        "-c",
        str(out),
        "--questions-file",
        str(questions),
        "--max-new-tokens",
        "3",
        "--stop",
        r"\n",
    )
    assert result.exit_code == 0, result.output
    for q in ("Who wrote the report?", "When?", "Where?"):
        assert q in result.stdout
    assert "3 answer(s)" in result.stdout


def test_stop_strings_understand_backslash_escapes():
    assert unescape(r"\n###") == "\n###"
    assert unescape(r"a\tb\\n") == "a\tb\\n"
    assert unescape("plain") == "plain"


def test_fresh_compressor_fingerprint_is_reproducible(tmp_path):
    """Rebuilding an untrained compressor reproduces it whatever the global RNG state.

    (peft draws LoRA init from torch's global generator; ``build_fresh`` seeds it from
    ``config.seed`` in a forked RNG, leaving the caller's RNG state untouched.)
    """
    fingerprints = set()
    for seed in (1, 2):
        base = tiny_model()
        torch.manual_seed(seed)
        before = torch.random.get_rng_state()
        fingerprints.add(build_fresh("sac", base, {"ratio": 4}).fingerprint)
        assert torch.equal(torch.random.get_rng_state(), before)
    assert len(fingerprints) == 1
    # ...so a context compressed by one CLI call is accepted by the next one.
    assert compress_json(tmp_path)["compressor"] in fingerprints


def test_saved_compressor_with_model_option(tmp_path):
    comp = build_fresh("sac", tiny_model(), {"ratio": 3})
    with torch.no_grad():
        comp.lm_embedding.add_(1.0)  # "trained": differs from a fresh build
    folder = comp.save_pretrained(tmp_path / "comp")
    out = tmp_path / "m.ctx"
    result = invoke("compress", "--model", str(folder), "--text", TEXT, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["fresh"] is False and info["compressor"] == comp.fingerprint
    result = invoke("generate", "--model", str(folder), "-c", str(out), "-q", "Who?", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["answers"]) == 1
    # A fresh compressor (other weights) refuses that context, with a hint.
    result = invoke("generate", "--base-model", "tiny", "-c", str(out), "-q", "Who?")
    assert_user_error(result, "compressor", "--base-model")
    # --ratio cannot override a saved compressor's ratio.
    result = invoke("compress", "--model", str(folder), "--text", TEXT, "-o", str(out), "-r", "5")
    assert_user_error(result, "--ratio 5", "ratio 3")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--text", "   "], ["empty"]),
        (["/definitely/not/here.txt"], ["does not exist"]),
        (["--text", TEXT, "--ratio", "0"], ["ratio must be >= 1"]),
        (["--text", TEXT, "--method", "nope"], ["unknown method", "sac"]),
        ([], ["--text"]),
    ],
    ids=["empty-text", "missing-file", "ratio-0", "unknown-method", "no-input"],
)
def test_compress_input_errors(tmp_path, args, needles):
    out = tmp_path / "x.ctx"
    result = invoke("compress", "--base-model", "tiny", "-o", str(out), *args)
    assert_user_error(result, *needles)
    assert not out.exists()


def test_corrupted_context_file(tmp_path):
    info = compress_json(tmp_path)
    bad = tmp_path / "bad.ctx"
    bad.write_bytes(Path(info["output"]).read_bytes()[:100])
    result = invoke("generate", "--base-model", "tiny", "-c", str(bad), "-q", "Who?")
    assert_user_error(result, "bad.ctx", "not a readable ctxcompress context")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["-c", "/nowhere/doc.ctx", "-q", "Who?"], ["does not exist"]),
        (["-c", "{ctx}"], ["no questions"]),
        (["-c", "{ctx}", "--questions-file", "/nowhere/q.txt"], ["does not exist"]),
        (["-c", "{ctx}", "-q", "Who?", "--max-new-tokens", "0"], ["max_new_tokens"]),
        (["-c", "{ctx}", "-q", "   "], ["question is empty"]),
        (["-c", "{ctx}", "-q", "Who?", "--base-model", "tiny-qwen2"], ["base model"]),
    ],
    ids=["missing-ctx", "no-question", "missing-qfile", "zero-tokens", "empty-q", "other-base"],
)
def test_generate_input_errors(tmp_path, args, needles):
    info = compress_json(tmp_path)
    args = [a.format(ctx=info["output"]) for a in args]
    if "--base-model" not in args:
        args += ["--base-model", "tiny"]
    assert_user_error(invoke("generate", *args), *needles)


def test_model_folder_that_is_not_a_compressor(tmp_path):
    out = str(tmp_path / "x.ctx")
    result = invoke("compress", "--model", str(tmp_path), "--text", TEXT, "-o", out)
    assert_user_error(result, "not a saved compressor")


# --------------------------------------------------------------------------- demo


def test_demo_trains_evaluates_and_writes_its_outputs(tmp_path):
    """The whole demo loop at smoke size on a tiny model (the real run: `make demo`)."""
    buffer = io.StringIO()
    settings = demo.DemoSettings.from_yaml(
        steps=2, batch_size=2, eval_limit=3, max_new_tokens=4, out_dir=tmp_path / "demo"
    )
    overall = demo.main(tiny_model(), settings, console=Console(file=buffer, width=140), train=True)
    printed = buffer.getvalue()
    assert [k.split(" ")[0] for k in overall] == [
        "sac@4x",
        "truncation@4x",
        "full_context",
        "no_context",
    ]
    for scores in overall.values():
        assert {"rouge1", "rouge2", "rougeL", "n"} <= set(scores) and scores["n"] == 3
    assert (
        overall["full_context (zero-shot)"]["compressed_length"]
        > overall["truncation@4x (zero-shot)"]["compressed_length"]
    )
    out = tmp_path / "demo"
    assert (out / "quality_vs_ratio.png").stat().st_size > 1000
    assert "ROUGE-L" in (out / "results.md").read_text()
    assert len(list((out / "eval").glob("*.json"))) == 4
    assert "What this measured" in printed and "sac@4x" in printed
    # A rerun reuses the finished training (resumes at its last step, trains nothing).
    again = demo.main(tiny_model(), settings, console=Console(file=io.StringIO()), train=True)
    assert again.keys() == overall.keys()


def test_demo_settings_come_from_the_packaged_yaml_and_refuse_typos(tmp_path):
    import yaml

    from ctxcompress.demo import training
    from ctxcompress.errors import InvalidInputError

    settings = demo.DemoSettings.from_yaml()
    assert settings.out_dir == Path("demo-output") and settings.steps > 0
    assert vars(settings) | {"out_dir": "demo-output"} == yaml.safe_load(
        training.SETTINGS_FILE.read_text()
    )
    bad = tmp_path / "demo.yaml"
    bad.write_text(training.SETTINGS_FILE.read_text() + "stepz: 3\n")
    with pytest.raises(InvalidInputError, match=r"unknown demo settings \['stepz'\]"):
        demo.DemoSettings.from_yaml(bad)
    bad.write_text("ratio: 4\n")
    with pytest.raises(InvalidInputError, match="are missing"):
        demo.DemoSettings.from_yaml(bad)


def test_method_aliases_work_in_the_cli_as_in_build_compressor(tmp_path):
    """Regression: the CLI had its own method lookup without the aliases, so
    `--method xc500` (the module's and configs/xc500/'s name) was refused."""
    out = tmp_path / "x.ctx"
    args = ["compress", "--base-model", "tiny", "--method", "xc500", "--text", TEXT, "-o", str(out)]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    assert cc.CompressedContext.load(out).method == "500x"
    assert_user_error(invoke(*args[:4], "nope", *args[5:]), "unknown method 'nope'")


def test_continuation_scores_a_compressor_beside_the_frozen_baselines(tmp_path):
    """``ctxcompress continuation``: the compressor's continuation NLL and the frozen model's
    full context / head / tail truncation on the same windows, each paired with the first
    row; the full context's row equals evaluation.continuation_nll on those windows."""
    from ctxcompress.evaluation import continuation_nll, continuation_windows
    from ctxcompress.testing import tiny_model

    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text(f"Note {i}: " + " ".join(f"v{i}z{j}" for j in range(40)))
    args = ["--data", f"text:{folder}", "--base-model", "tiny", "--method", "sac", "-r", "2"]
    result = invoke("continuation", *args, "--windows", "3", "--window", "32")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    labels = [row.split(" | ")[0].strip("| ") for row in rows]
    assert labels == ["sac@2x", "full_context", "head_truncation@2x", "tail_truncation@2x"]
    assert "+0.000 [+0.000, +0.000]" in rows[0]  # the first row against itself
    assert "[paired 95% CI]" in result.stdout  # printed as text, not read as rich markup
    assert "the texts hold only" not in result.stdout
    full = cc.build_compressor("full_context", tiny_model())
    texts = [d.text for d in cc.data.load_texts(f"text:{folder}")]
    windows = continuation_windows(full, texts, size=32, limit=3, context_fraction=0.75)
    assert f"{continuation_nll(full, windows).mean:.3f}" in rows[1]
    alone = invoke("continuation", *args, "--windows", "3", "--window", "32", "--no-baselines")
    assert alone.exit_code == 0 and "full_context" not in alone.stdout
    assert_user_error(invoke("continuation", *args, "--window", "4000"), "no window of 4000")
    few = invoke("continuation", *args, "--windows", "500", "--window", "32", "--no-baselines")
    assert few.exit_code == 0 and "the texts hold only" in few.stdout
