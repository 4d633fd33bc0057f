"""Shipped compressors by name (issue 19 part 3, the mechanism): ``load_compressor``,
``--model`` and ``serve --model`` take ``embedded:<name>``; every file is checked against the
manifest's checksums first; missing, altered or unknown ones are clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import ctxcompress as cc
from ctxcompress import shipped
from ctxcompress.cli import app
from ctxcompress.errors import CorruptFileError, ModelLoadError
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, has_embedded_model, randomize_trainables, scored_result


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package data folder with one shipped (tiny) compressor, ``embedded:sac-test``."""
    root = tmp_path / "compressors"
    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=4)
    randomize_trainables(comp)
    comp.save_pretrained(root / "sac-test")
    (root / "sac-test" / "MODEL_CARD.md").write_text("# sac-test\n")
    shipped.write_manifest(root / "sac-test")
    monkeypatch.setattr(shipped, "root", lambda: root)
    return root, comp


def test_a_shipped_compressor_loads_by_name_after_its_checksums(package):
    root, comp = package
    assert shipped.available() == ["embedded:sac-test"]
    loaded = cc.load_compressor("embedded:sac-test", base_model=tiny_model())
    assert loaded.fingerprint == comp.fingerprint
    torch.testing.assert_close(loaded.compress(TEXT).keys, comp.compress(TEXT).keys)
    result = CliRunner().invoke(
        app, ["compress", "--model", "embedded:sac-test", "--text", TEXT, "-o", str(root / "c.ctx")]
    )
    assert result.exit_code == 0, result.output


def test_missing_altered_and_unknown_compressors_are_refused(package):
    root, _ = package
    with pytest.raises(ModelLoadError, match="no shipped compressor 'embedded:pic-99x'.*sac-test"):
        cc.load_compressor("embedded:pic-99x")
    card = root / "sac-test" / "MODEL_CARD.md"
    card.write_text("# edited\n")
    with pytest.raises(CorruptFileError, match="MODEL_CARD.md does not match its checksum"):
        cc.load_compressor("embedded:sac-test", base_model=tiny_model())
    card.unlink()
    with pytest.raises(CorruptFileError, match="missing MODEL_CARD.md: reinstall"):
        cc.load_compressor("embedded:sac-test", base_model=tiny_model())
    result = CliRunner().invoke(
        app, ["compress", "--model", "embedded:sac-test", "--text", "x", "-o", "y.ctx"]
    )
    assert result.exit_code != 0 and "reinstall ctxcompress" in result.output


@pytest.mark.parametrize(
    ("name", "method", "ratio", "title", "demo_data"),
    [
        ("sac-4x", "sac", 4, "SAC at 4x", "squad:test"),
        ("sac-16x", "sac", 16, "SAC at 16x", "hotpotqa:test"),
        ("pic-16x", "pic", 16, "PIC at 16x", "hotpotqa:test"),
    ],
)
def test_the_package_ships_each_headline_compressor_with_its_card_and_demo_items(
    name: str, method: str, ratio: int, title: str, demo_data: str
):
    """The real package data (issue 19): each headline compressor is listed, every file
    matches its manifest, and its card and demo items are there."""
    assert f"embedded:{name}" in shipped.available()
    folder = shipped.resolve(f"embedded:{name}")  # every checksum verified
    config = json.loads((folder / "ctxcompress.json").read_text())
    assert config["method"] == method and config["config"]["ratio"] == ratio
    card = (folder / "MODEL_CARD.md").read_text()
    assert card.startswith(f"# `embedded:{name}`: {title} on SmolLM2-135M-Instruct")
    assert "## Scores" in card and "## Limits" in card and "benchmarks/headline/run.py" in card
    assert f"- `{demo_data}` (" in card  # the standing names the test set it is measured on
    demo = json.loads((folder / "demo.json").read_text())
    assert demo["data"] == demo_data and demo["limit"] > 0
    assert {name, f"truncation@{ratio}x (zero-shot)", "full_context (zero-shot)"} <= set(
        demo["scores"]
    )
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 8 * 2**20  # bfloat16 learned tensors only: the repository stays small


def test_an_unknown_shipped_name_lists_what_is_shipped():
    """A name the package does not ship is refused with the list of what it does; a base
    model's ``embedded:`` name is not taken for a compressor."""
    with pytest.raises(ModelLoadError, match="no shipped compressor 'embedded:sac-99x'.*sac-4x"):
        cc.load_compressor("embedded:sac-99x")
    assert not shipped.is_shipped_name("embedded:smollm2-135m-instruct")  # a base model


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model not installed (make test)")
def test_the_shipped_sac_4x_compresses_to_a_quarter_and_answers_briefly():
    """Loaded by name on the embedded model: a quarter of the entries, bfloat16 on disk but
    float32 in use, and a short answer (the format it was trained to give; the frozen model
    answers in sentences). Whether the answer is right is the card's business, measured on
    100 items with intervals — this compressor often is not (it says "England" here)."""
    comp = cc.load_compressor("embedded:sac-4x")
    assert comp.method == "sac" and comp.ratio == 4
    assert all(p.dtype == torch.float32 for p in comp.trainable_parameters().values())
    context = (
        "The Normans were the people who in the 10th and 11th centuries gave their name to "
        "Normandy, a region in France. They were descended from Norse raiders and pirates "
        "from Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear "
        "fealty to King Charles III of West Francia."
    )
    ctx = comp.compress(context)
    assert ctx.compressed_length == comp.compressed_length(len(comp.context_ids(context)))
    assert ctx.compressed_length * 3 < ctx.original_length
    (answer,) = comp.generate(ctx, ["In what country is Normandy located?"], max_new_tokens=16)
    assert answer.strip() and "\n" not in answer.strip() and len(answer.split()) <= 6, answer


@pytest.mark.skipif(not has_embedded_model(), reason="embedded model not installed (make test)")
def test_the_shipped_pic_16x_compresses_to_a_sixteenth_in_soft_embeddings():
    """``embedded:pic-16x`` loaded by name: a sixteenth of the tokens as soft embeddings
    (PIC's representation), float32 in use, and an answer the model reads from them."""
    comp = cc.load_compressor("embedded:pic-16x")
    assert comp.method == "pic" and comp.ratio == 16
    assert all(p.dtype == torch.float32 for p in comp.trainable_parameters().values())
    context = " ".join(
        f"Paragraph {i}: the river Seine flows through Paris and reaches the sea at Le Havre."
        for i in range(12)
    )
    ctx = comp.compress(context)
    assert ctx.kind == "embeds"
    assert ctx.compressed_length == comp.compressed_length(len(comp.context_ids(context)))
    assert ctx.compressed_length * 12 < ctx.original_length
    (answer,) = comp.generate(ctx, ["Which river flows through Paris?"], max_new_tokens=8)
    assert answer.strip(), "an empty answer from the shipped PIC compressor"


def test_the_demo_measures_each_shipped_compressor_against_its_card(package, tmp_path):
    """`make demo` with a shipped compressor: no training; the compressor, truncation to its
    ratio and the full context on the card's items, the card's scores beside (recorded with
    the same evaluation code, so they match), KV memory, and a worked example."""
    import io
    import json

    from rich.console import Console

    from ctxcompress import demo
    from ctxcompress.demo import pretrained

    root, _ = package
    items = tmp_path / "items.jsonl"
    rows = [{"context": TEXT, "question": f"What is item {i}?", "answers": ["x"]} for i in range(3)]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"data": f"jsonl:{items}", "limit": 3, "metric": "f1", "max_new_tokens": 4}
    base = tiny_model()
    (root / "sac-test" / pretrained.DEMO_FILE).write_text(json.dumps(spec))
    shipped.write_manifest(root / "sac-test")
    results, _ = pretrained.rows("embedded:sac-test", spec, base, {})
    assert [r.method for r in results] == [
        "sac-test",
        "truncation@4x (zero-shot)",
        "full_context (zero-shot)",
    ]
    card = {r.method: r.overall["f1"] for r in results}  # what shipping records
    card["full_context (zero-shot)"] += 0.5  # one stale number: flagged, not hidden
    (root / "sac-test" / pretrained.DEMO_FILE).write_text(json.dumps({**spec, "scores": card}))
    shipped.write_manifest(root / "sac-test")
    buffer = io.StringIO()
    summary = demo.main(base, console=Console(file=buffer, width=160))
    printed = buffer.getvalue()
    assert list(summary) == ["embedded:sac-test"]
    assert printed.count("(matches)") == 2 and printed.count("(differs)") == 1
    assert "a worked example" in printed and "What is item 0?" in printed  # the first item
    assert "the first of the held-out items" in printed  # the rule, said with it
    assert "KV KiB" in printed and "Loaded base model" in printed
    assert "Which to use at each budget" in printed and "at 4x " in printed
    assert "The demo took" in printed

    # A shipped reference (trained truncation at the same budget) named in demo.json runs
    # beside the compressor on the same items, not on its own.
    reference = cc.build_compressor(
        "prompt_tuned", tiny_model(), context="truncation", ratio=4, lora_rank=4
    )
    reference.save_pretrained(root / "truncation-test")
    (root / "truncation-test" / pretrained.DEMO_FILE).write_text(json.dumps(spec))
    shipped.write_manifest(root / "truncation-test")
    with_reference = {**spec, "references": ["embedded:truncation-test"], "scores": card}
    (root / "sac-test" / pretrained.DEMO_FILE).write_text(json.dumps(with_reference))
    shipped.write_manifest(root / "sac-test")
    # Needle items (demo.json "needles"): a second table, string match, the same systems.
    needles = tmp_path / "needles.jsonl"  # RULER-style items: references, string match
    needles.write_text("".join(json.dumps({**r, "references": ["x"]}) + "\n" for r in rows))
    with_needles = {**with_reference, "needles": {"data": f"jsonl:{needles}", "limit": 2}}
    (root / "sac-test" / pretrained.DEMO_FILE).write_text(json.dumps(with_needles))
    shipped.write_manifest(root / "sac-test")
    buffer = io.StringIO()
    page = tmp_path / "README.md"
    page.write_text("# Title\n\n<!-- begin demo -->\nold\n<!-- end demo -->\n\nkept text\n")
    summary = demo.main(base, console=Console(file=buffer, width=160), report=page)
    assert list(summary) == ["embedded:sac-test", f"embedded:sac-test jsonl:{needles}"]
    # --report: the verdicts (one per budget and item set) go into the page's demo section.
    written = page.read_text()
    assert written.startswith("# Title") and written.endswith("kept text\n")
    assert "old" not in written and "`ctxcompress demo --report README.md`" in written
    assert written.count("- at 4x ") == 2 and "[bold]" not in written
    assert "string_match" in buffer.getvalue()
    assert all("string_match" in o for o in summary[f"embedded:sac-test jsonl:{needles}"].values())
    assert list(summary[f"embedded:sac-test jsonl:{needles}"]) == list(summary["embedded:sac-test"])
    assert list(summary["embedded:sac-test"]) == [
        "sac-test",
        "truncation-test",
        "truncation@4x (zero-shot)",
        "full_context (zero-shot)",
    ]
    entry = pretrained.kv_bytes_per_entry(base)
    config = base.model.config
    assert entry == 2 * config.num_hidden_layers * config.num_key_value_heads * 4 * (
        config.hidden_size // config.num_attention_heads
    )


def test_the_verdict_names_the_best_compressed_row_against_the_runner_up_and_the_whole_text():
    """One verdict line per budget: the best row that compresses (never a whole-text row),
    the runner-up with a paired interval ("within noise" when it spans zero, and then "no
    clear winner"), and what it gives up against the best whole-text row."""
    from ctxcompress.demo.pretrained import reads_whole_text, verdict

    clear = [1.0] * 20
    half = [0.0, 1.0] * 10
    rows = [
        scored_result("sac-4x", clear, kept=25, original=100),
        scored_result("truncation-4x", half, kept=25, original=100),
        scored_result("full_context (zero-shot)", clear, kept=100, original=100),
    ]
    assert [reads_whole_text(r) for r in rows] == [False, False, True]
    line = verdict(4, rows, "f1")
    assert line.startswith("at 4x use [bold]sac-4x[/bold]: f1 100.0 vs truncation-4x 50.0 (+50.0")
    assert "the whole text (full_context (zero-shot)) 100.0: +0.0 [0.0, 0.0], within noise" in line
    assert line.endswith("20 items")
    tied = verdict(
        4,
        [
            scored_result("a", half, kept=25, original=100),
            scored_result("b", half[::-1], kept=25, original=100),
        ],
        "f1",
    )
    assert tied.startswith("at 4x no clear winner: a f1 50.0 vs b 50.0") and "within noise" in tied


def test_shipping_stores_the_learned_tensors_in_bfloat16_and_they_still_load(tmp_path):
    """benchmarks/headline/ship.py's storage step: every float tensor of the saved folder in
    bfloat16 (half the bytes), loadable as before, with outputs within bfloat16 rounding."""
    from benchmarks.headline import ship
    from safetensors.torch import load_file

    comp = cc.build_compressor("sac", cc.load_base_model("tiny"), ratio=4, lora_rank=4)
    randomize_trainables(comp)
    folder = comp.save_pretrained(tmp_path / "sac")
    before = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    ship.to_bfloat16(folder)
    after = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert after < 0.6 * before
    for path in folder.rglob("*.safetensors"):
        assert {t.dtype for t in load_file(str(path)).values()} == {torch.bfloat16}
    loaded = cc.load_compressor(folder, base_model=tiny_model())
    original, stored = comp.compress(TEXT), loaded.compress(TEXT)
    assert stored.keys.dtype == original.keys.dtype == torch.float32  # computed in float32
    torch.testing.assert_close(stored.keys, original.keys, rtol=0.05, atol=0.05)
    assert ship.trained_steps(tmp_path) == 0  # no metrics.jsonl: no steps


def test_shipping_from_either_benchmark_compares_with_its_setting_s_trained_references():
    """benchmarks/headline/ship.py --benchmark headline|levers: a card's trained references
    are its setting's ``trained_*`` systems (with the levers' decoder adapter where the
    setting has it), and a prompt-tuned reference is titled by the context it reads."""
    from benchmarks.headline import ship

    headline, levers = ship.BENCHMARKS["headline"], ship.BENCHMARKS["levers"]
    assert ship.card_references(headline, "sac_4x", "sac") == ["trained_truncation", "trained_full"]
    assert ship.card_references(levers, "long_4x", "sac_head_decoder") == [
        "trained_truncation_decoder",
        "trained_full_decoder",
    ]
    assert ship.card_references(levers, "long_4x", "trained_truncation_decoder") == [
        "trained_full_decoder"
    ]
    truncation = cc.build_compressor(
        "prompt_tuned", tiny_model(), context="truncation", ratio=4, lora_rank=4
    )
    assert ship.title(truncation) == "trained truncation"
    sac = cc.build_compressor("sac", tiny_model(), ratio=4, lora_rank=4)
    assert ship.title(sac) == "SAC"


def test_a_context_from_an_earlier_shipped_version_is_refused_naming_that_version(
    package, tmp_path
):
    """A shipped compressor replaced by a new version keeps its name; its history.json
    lists every version's fingerprint, so a context saved with version 1 is refused by
    version 2 saying which version made it — never answered with wrong KV."""
    from ctxcompress.errors import ContextMismatchError

    root, _ = package
    first = cc.load_compressor("embedded:sac-test")
    old_context = first.compress(TEXT)
    path = old_context.save(tmp_path / "old.ctx")
    newer = cc.build_compressor("sac", tiny_model(), ratio=4, lora_rank=4)
    randomize_trainables(newer, seed=2)  # other trained weights
    assert newer.fingerprint != first.fingerprint
    newer.save_pretrained(root / "sac-test")
    versions = [
        {"version": 1, "fingerprint": first.fingerprint, "changed": "first"},
        {"version": 2, "fingerprint": newer.fingerprint, "changed": "head anchors"},
    ]
    (root / "sac-test" / shipped.HISTORY).write_text(json.dumps({"versions": versions}))
    shipped.write_manifest(root / "sac-test")
    second = cc.load_compressor("embedded:sac-test")
    assert second.versions == {
        first.fingerprint: "embedded:sac-test version 1",
        newer.fingerprint: "embedded:sac-test version 2",
    }
    message = (
        r"made by embedded:sac-test version 1; the installed one is embedded:sac-test version 2"
    )
    with pytest.raises(ContextMismatchError, match=message):
        second.load_context(path)
    with pytest.raises(ContextMismatchError, match=message):
        second.generate(old_context, ["What is it?"], max_new_tokens=2)
    # A compressor outside the package has no versions: the plain message.
    with pytest.raises(ContextMismatchError, match="other trained weights"):
        newer.load_context(path)


def test_a_new_version_replaces_a_shipped_one_only_where_it_beats_it(tmp_path):
    """benchmarks/headline/ship.py: on the setting's first test the new weights minus the
    shipped version, paired interval above zero, or nothing is shipped (--force ships)."""
    import argparse

    from benchmarks.headline import ship

    parser = argparse.ArgumentParser()
    staging = tmp_path / ".sac-4x.staging"
    staging.mkdir()
    better = {
        "squad": [
            scored_result("new", [1.0] * 20),
            scored_result("sac-4x version 1", [0.0, 1.0] * 10),
        ]
    }
    ship.replaces(argparse.Namespace(name="sac-4x", force=False), better, parser, staging)
    assert staging.is_dir()
    same = {
        "squad": [
            scored_result("new", [0.0, 1.0] * 10),
            scored_result("sac-4x version 1", [1.0, 0.0] * 10),
        ]
    }
    ship.replaces(argparse.Namespace(name="sac-4x", force=True), same, parser, staging)
    with pytest.raises(SystemExit):
        ship.replaces(argparse.Namespace(name="sac-4x", force=False), same, parser, staging)
    assert not staging.exists()  # nothing half-shipped
