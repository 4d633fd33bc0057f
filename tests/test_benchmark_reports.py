"""The benchmark scripts' report step: it writes what has finished into its own marked
section of a docs page and leaves the rest of the page alone (no training here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import _common as common
from benchmarks.fair import run as fair
from benchmarks.headline import run as headline
from benchmarks.levers import run as levers
from benchmarks.peers import kvpress_run
from benchmarks.quality import run as quality
from benchmarks.recipe import run as recipe
from benchmarks.standard import run as standard

from ctxcompress.evaluation import EvalResult
from tests.conftest import scored_result

ROOT = Path(__file__).resolve().parents[1]


def fake_result(label: str, f1: float, positions=(0,)) -> EvalResult:
    metas = [{"gold_position": pos} for pos in positions]
    return scored_result(label, [f1] * len(positions), metas=metas)


def test_fair_report_writes_partial_results_into_its_section(tmp_path):
    out = tmp_path / "results" / "r4"
    fake_result("pt_full@4x", 0.25).save(out / "eval" / "pt_full.json")
    fake_result("sac@4x", 0.125).save(out / "eval" / "sac.json")
    curves = {
        "sac": [{"step": 0, "f1": 0.1, "em": 0.0, "train_seconds": 60, "train_cpu_seconds": 120}],
        "pt_full": [
            {"step": 0, "f1": 0.2, "em": 0.0, "train_seconds": 30, "train_cpu_seconds": 60},
            {"step": 50, "f1": 0.3, "em": 0.0, "train_seconds": 90, "train_cpu_seconds": 180},
        ],
    }
    (out / "curves.json").write_text(json.dumps(curves))
    clock = {"train_seconds": 60.0, "train_cpu_seconds": 120.0}
    times = {"sac": {"stage1": clock, "stage2": clock}}
    (out / "train_seconds.json").write_text(json.dumps(times))
    (out / "wall_seconds.json").write_text(json.dumps({"eval:sac": 30.0, "dev:sac": 6.0}))
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nour analysis\n\n<!-- begin fair -->\nstale text\n")
    page.write_text(page.read_text() + "<!-- end fair -->\n")

    args = [
        sys.executable,
        str(ROOT / "benchmarks" / "fair" / "run.py"),
        "--out",
        str(tmp_path / "results"),
        "--settings",
        "r4",
        "--report",
        str(page),
    ]
    subprocess.run(args, check=True, capture_output=True, cwd=tmp_path)
    text = page.read_text()
    assert text.startswith("# Results\n\nour analysis\n\n<!-- begin fair -->\n")
    assert "stale text" not in text and text.endswith("<!-- end fair -->\n")
    # The table keeps the canonical order (compressors first), whatever finished first.
    assert text.index("| sac@4x | 0.0 | 12.5 |") < text.index("| pt_full@4x | 0.0 | 25.0 |")
    assert "gold_position=0" not in text  # one position only: no breakdown
    # Paired differences from the finished reference (pt_full; trained_truncation not run).
    assert "| system | F1 [95% CI] | minus pt_full@4x |" in text
    assert "| sac@4x | 12.5 [12.5, 12.5] | **-12.5 [-12.5, -12.5]** |" in text
    missing = [s for s in fair.BENCHMARK.run_order if s not in ("sac", "pt_full")]
    assert f"Not finished yet: {', '.join(missing)}." in text  # in the order they would run
    assert (
        "| pt_full | 20.0 | 30.0 |" in fair.BENCHMARK.curve_table(curves)
        and "| sac | 10.0 |" in text
    )
    assert "| sac | 2.0 | 2.0 | 2.0 | 0.1 | 0.5 |" in text
    assert "Total: 0.1 CPU hours of training" in text
    assert (tmp_path / "results" / "fair_r4.png").is_file()  # beside the page, under results/

    bad = subprocess.run([*args[:5], "r99", *args[6:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown settings ['r99']" in bad.stderr


def test_quality_report_keeps_the_text_around_its_section(tmp_path):
    results = tmp_path / "results"
    fake_result("sac@4x", 0.5).save(results / "r4" / "eval" / "sac.json")
    fake_result("truncation@4x", 0.25).save(results / "r4" / "eval" / "truncation.json")
    fake_result("epl@16x", 0.25, positions=(0, 1)).save(results / "r16" / "eval" / "epl.json")
    (results / "r4" / "wall_seconds.json").write_text(json.dumps({"train:sac": 120.0}))
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("intro\n<!-- begin quality -->\n<!-- end quality -->\noutro\n")
    script = ROOT / "benchmarks" / "quality" / "report.py"
    command = [sys.executable, str(script), "--results", str(results), "--out", str(page)]
    subprocess.run(command, check=True, capture_output=True)
    text = page.read_text()
    assert text.startswith("intro\n<!-- begin quality -->\n### Setting `r4`")
    assert text.endswith("<!-- end quality -->\noutro\n")
    assert text.index("### Setting `r4`") < text.index("### Setting `r16`")  # r4 first
    assert "| sac@4x | 0.0 | 50.0 |" in text and "train:sac: 2.0 min" in text
    assert "| epl@16x | 25.0 (n=1) | 25.0 (n=1) |" in text  # F1 by gold position at r16
    assert "Not finished yet: pic, icae, 500x, epl, full_context" in text  # r4
    # Paired differences from zero-shot truncation where it finished (r4), not at r16.
    assert "| sac@4x | 50.0 [50.0, 50.0] | **+25.0 [25.0, 25.0]** |" in text
    assert text.count("minus truncation") == 1
    assert (page.parent / "results" / "quality_r4.png").is_file()


def test_quality_summary_lists_every_finished_method_of_a_setting(tmp_path):
    """A partial rerun (``--methods sac``) must not shrink the setting's summary to the methods
    it was given: the summary, table and command cover everything finished, in canonical
    order, and other settings' entries are kept."""
    out = tmp_path / "results"
    fake_result("epl@16x", 0.25).save(out / "r16" / "eval" / "epl.json")
    fake_result("sac@16x", 0.125).save(out / "r16" / "eval" / "sac.json")
    (out / "r16" / "wall_seconds.json").write_text(json.dumps({"eval:sac": 30.0}))
    earlier = {"settings": {"r4": {"command": "earlier r4 command"}}}
    (out / "summary.json").write_text(json.dumps(earlier))

    script = ROOT / "benchmarks" / "quality" / "run.py"
    args = ["--out", str(out), "--settings", "r16", "--methods", "epl,sac"]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["r4"] == {"command": "earlier r4 command"}
    r16 = summary["settings"]["r16"]
    assert list(r16["overall"]) == ["sac@16x", "epl@16x"]  # canonical order, not the given one
    assert "--settings r16 --methods sac,epl " in r16["command"]

    args[-1] = "sac"  # a later partial invocation
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    r16 = json.loads((out / "summary.json").read_text())["settings"]["r16"]
    assert list(r16["overall"]) == ["sac@16x", "epl@16x"]
    assert "--methods sac,epl " in r16["command"]
    table = (out / "r16" / "table.md").read_text()
    assert "| sac@16x |" in table and "| epl@16x |" in table
    bad = subprocess.run(
        [sys.executable, str(script), *args[:-1], "prompt_tuned"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown methods ['prompt_tuned']" in bad.stderr


def kvpress_summary(press: str, r: int, machine: str) -> dict:
    return {
        "press": press,
        "r": r,
        "compression_ratio": 0.0 if press == "none" else 1 - 1 / r,
        "n": 2,
        "errors": 0,
        "em": 0.0,
        "f1": 0.5,
        "mean_latency_s": 1.0,
        "mean_prefill_s": 0.25,
        "mean_kv_entries_kept": 10.0,
        "mean_kv_entries_full": 40.0,
        "machine": machine,
    }


def test_kvpress_table_orders_presses_and_says_which_machine_ran_what():
    """A run resumed in another session mixes machines: the table must say so (timings are
    only comparable within one machine) and list presses in their canonical order."""
    meta = {
        "versions": {"kvpress": "0.5.5"},
        "n_examples": 2,
        "budget": "ratio",
        "budget_note": "note",
        "machine": {"platform": "machine-B", "torch_threads": 1},
        "command": "python benchmarks/peers/kvpress_run.py --resume",
    }
    summaries = [
        kvpress_summary("kvzip", 4, "machine-B"),
        kvpress_summary("none", 1, "machine-A"),
        kvpress_summary("snapkv", 16, "machine-A"),
        kvpress_summary("snapkv", 4, "machine-B"),
    ]
    text = kvpress_run.markdown({"meta": meta, "summaries": summaries})
    rows = [line.split(" | ")[0:2] for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows == [["| none", "1 (full)"], ["| snapkv", "4"], ["| snapkv", "16"], ["| kvzip", "4"]]
    assert "compare latencies within one machine only" in text
    assert "- machine-A: none@1, snapkv@16" in text and "- machine-B: snapkv@4, kvzip@4" in text

    one = kvpress_run.markdown({"meta": meta, "summaries": summaries[:1]})
    assert "Machine: machine-B." in one and "more than one machine" not in one


def test_kvpress_runner_scores_answers_as_ctxcompress_does():
    """The kvpress runner reimplements SQuAD EM/F1 (its venv has no ctxcompress); it must
    agree with ours, or its rows are not comparable."""
    from ctxcompress.evaluation import metrics

    cases = [
        ("The Eiffel Tower", ["Eiffel Tower"]),
        ("in 1889, in Paris.", ["1889", "Paris, France"]),
        ("", ["x"]),
        ("a an the", ["the"]),
        ("Jean-Paul Sartre's book", ["Jean Paul Sartre"]),
    ]
    for prediction, golds in cases:
        assert kvpress_run.exact_match(prediction, golds) == metrics.exact_match(prediction, golds)
        assert kvpress_run.token_f1(prediction, golds) == metrics.token_f1(prediction, golds)


def test_recipe_rows_are_valid_configs_and_its_report_lists_what_finished(tmp_path):
    out = tmp_path / "results"
    teacher = out / "train" / recipe.TEACHER / "compressor"
    teacher.mkdir(parents=True)
    (teacher / "ctxcompress.json").write_text("{}")  # only its presence is checked here
    args = type("Args", (), {"steps": 150, "curve_every": 25})()
    for row in recipe.RUN_ORDER:  # every row is a valid training config, same loop
        cfg = recipe.row_config(row, args, out)
        assert cfg.train.steps == 150 and cfg.train.save_every == 25 and cfg.train.seed == 0
        assert cfg.data[0].source == "nq-oracle:train" and cfg.method_options["ratio"] == 4
    sac_all = recipe.row_config("sac/all", args, out)
    assert sac_all.method_options["sink_tokens"] == 5
    assert sac_all.method_options["embedding_init"] == "table"
    assert sac_all.train.embedding_lr_scale == 10.0
    assert sac_all.distill.teacher == str(teacher) and sac_all.distill.weight == 1.0
    today = recipe.row_config("sac/today", args, out)
    assert today.distill.weight == 0 and "sink_tokens" not in today.method_options
    assert recipe.row_config("sac/distill_frozen", args, out).distill.teacher == "full_context"

    fake_result("sac/today", 0.25).save(out / "eval" / "sac-today.json")
    fake_result("sac/all", 0.5).save(out / "eval" / "sac-all.json")
    curves = {
        "sac/today": [{"step": 0, "f1": 0.1, "em": 0.0, "train_seconds": 1, "train_cpu_seconds": 0}]
    }
    (out / "curves.json").write_text(json.dumps(curves))
    page = tmp_path / "training.md"
    page.write_text("# Training\n<!-- begin recipe -->\n<!-- end recipe -->\nafter\n")
    command = [sys.executable, str(ROOT / "benchmarks/recipe/run.py"), "--out", str(out)]
    subprocess.run([*command, "--report", str(page)], check=True, capture_output=True)
    text = page.read_text()
    assert text.startswith("# Training\n<!-- begin recipe -->\n") and text.endswith("after\n")
    assert "| system | F1 [95% CI] | minus sac/today |" in text
    assert "| sac/all | 50.0 [50.0, 50.0] | **+25.0 [25.0, 25.0]** |" in text
    assert "Not finished yet: trained_full, trained_truncation, pt_none, pic/today" in text
    assert "| sac/today | 10.0 |" in text and (tmp_path / "results" / "recipe.png").is_file()
    bad = subprocess.run([*command, "--rows", "sac/nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown rows ['sac/nope']" in bad.stderr


def test_fair_recipe_rows_use_the_levers_and_the_same_loop(tmp_path):
    teacher = tmp_path / "train" / "trained_full" / "stage2" / "compressor"
    teacher.mkdir(parents=True)
    (teacher / "ctxcompress.json").write_text("{}")
    args = type("Args", (), {"stage1_steps": 100, "stage2_steps": 200, "curve_every": 50})()
    old1, new1 = (
        fair.BENCHMARK.stage_config(s, "r4", 1, args, tmp_path) for s in ("pic", "pic_recipe")
    )
    old2, new2 = (
        fair.BENCHMARK.stage_config(s, "r4", 2, args, tmp_path) for s in ("pic", "pic_recipe")
    )
    assert {d.objective for d in old1.data} == {"continuation", "autoencoding"}
    assert {d.objective for d in new1.data} == {"continuation"}  # no autoencoding
    assert new2.method_options["sink_tokens"] == 5 and new2.train.embedding_lr_scale == 10.0
    assert new2.distill.teacher == str(teacher) and new1.distill.weight == 0
    assert old2.distill.weight == 0 and "sink_tokens" not in old2.method_options
    for a, b in ((old1, new1), (old2, new2)):  # same budget, batches and optimiser
        assert (a.train.steps, a.train.batch_size, a.train.lr, a.train.seed) == (
            b.train.steps,
            b.train.batch_size,
            b.train.lr,
            b.train.seed,
        )


def test_standard_report_scores_kvpress_rows_with_ours_by_depth(tmp_path, monkeypatch):
    """kvpress's predictions become result rows scored by our metrics (RULER's string match
    too) with each item's depth, beside ours, compared with truncation item by item; a
    system not run yet is listed as missing."""
    from ctxcompress.data.records import QAExample

    setting = "ruler_niah_2k_r16"
    examples = [
        QAExample(
            "ctx",
            "q",
            (num,),
            str(i),
            {"depth": depth, "references": [num], "match": "all", "tokens": 90},
        )
        for i, (num, depth) in enumerate((("1234567", 0.1), ("7654321", 0.9)))
    ]
    monkeypatch.setattr(standard, "examples_of", lambda name, limit: examples[:limit])
    out = tmp_path / "results" / setting
    for name, f1 in (("truncation@16x", 0.0), ("full_context", 1.0)):
        result = fake_result(name, f1, positions=(0, 1))
        for p, e in zip(result.predictions, examples, strict=True):
            p.meta = dict(e.meta)
            p.scores["string_match"] = f1
        result.overall["string_match"] = f1
        result.save(out / "eval" / f"{name}.json")
    rows = [
        {
            "id": e.id,
            "question": "q",
            "answer": answer,
            "golds": list(e.answers),
            "kv_entries_full": 1000,
            "prefill_tokens": 100,
            "kv_entries_kept": 70,
        }
        for e, answer in zip(examples, ("The number is 1234567.", "no idea"), strict=True)
    ]
    (out / "kvpress.json").write_text(json.dumps({"runs": {"kvzip@16": rows, "none@1": rows}}))
    [kvzip] = standard.kvpress_results(setting, examples, out)
    assert kvzip.method == "kvpress:kvzip@16x"
    assert [p.scores["string_match"] for p in kvzip.predictions] == [1.0, 0.0]
    assert [p.meta["depth"] for p in kvzip.predictions] == [0.1, 0.9]
    assert kvzip.overall["compressed_length"] == 7 and kvzip.overall["original_length"] == 100

    page = tmp_path / "results.md"
    page.write_text("# Results\n\nkept\n")
    args = type("Args", (), {})()
    args.out, args.settings, args.limit = tmp_path / "results", [setting], None
    args.systems = ["full_context", "truncation@16x", "kvpress:kvzip", "kvpress:snapkv"]
    args.batch_size, args.kvpress_threads = 8, 2
    standard.write_report(args, page)
    text = page.read_text()
    assert text.startswith("# Results\n\nkept\n")
    assert "| kvpress:kvzip@16x | 50.0 [0.0, 100.0] | +50.0 [0.0, 100.0] |" in text
    assert "| kvpress:kvzip@16x | 100.0 (n=1) | 0.0 (n=1) |" in text  # by depth bin
    assert "Not finished yet: kvpress:snapkv." in text


def test_dev_curves_of_the_benchmarks_resume_without_duplicate_points(qa_file, tmp_path):
    """benchmarks/_common.train_with_dev_curve runs on Trainer.run(eval_every=, on_eval=):
    one point per multiple of the interval, none evaluated twice across a resume."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ctxcompress.data import load_qa
    from ctxcompress.training import Trainer, parse_config

    cfg = {
        "method": "sac",
        "base_model": "tiny",
        "method_options": {"ratio": 2, "lora_rank": 4},
        "data": [{"source": f"jsonl:{qa_file}"}],
        "train": {"steps": 4, "batch_size": 2, "micro_batch_size": 2, "save_every": 2},
        "output_dir": str(tmp_path / "run"),
    }
    dev = load_qa(f"jsonl:{qa_file}", limit=2)
    first = Trainer(parse_config(cfg))
    first.run(until_step=2)  # as if killed after the step-2 checkpoint, before its dev point
    common.train_with_dev_curve(Trainer(parse_config(cfg)), "sac", dev, tmp_path, 2, tag="t")
    common.train_with_dev_curve(Trainer(parse_config(cfg)), "sac", dev, tmp_path, 2, tag="t")
    points = json.loads((tmp_path / "curves.json").read_text())["sac"]
    assert [p["step"] for p in points] == [2, 4]
    assert points[0]["train_seconds"] < points[1]["train_seconds"]


def test_benchmark_configs_build_a_valid_training_config_for_every_row(monkeypatch, tmp_path):
    """configs/benchmarks/{fair,recipe}.yaml are the one source of those benchmarks' systems:
    every system (every setting and stage) and every row parses into a TrainConfig, and the
    run orders name exactly the systems defined."""
    from types import SimpleNamespace

    import ctxcompress.training.config as training_config

    monkeypatch.setattr(training_config, "check_teacher_spec", lambda spec: None)  # untrained
    args = SimpleNamespace(stage1_steps=100, stage2_steps=200, curve_every=50)
    for setting in fair.BENCHMARK.settings:
        for system in fair.BENCHMARK.systems:
            for stage in (1, 2):
                cfg = fair.BENCHMARK.stage_config(system, setting, stage, args, tmp_path)
                assert cfg.method_options["ratio"] == fair.BENCHMARK.settings[setting]["ratio"]
                assert (cfg.distill.weight > 0) == (
                    stage == 2 and "distill" in fair.BENCHMARK.systems[system]
                )
    assert set(fair.BENCHMARK.run_order) == {
        *fair.BENCHMARK.systems,
        *fair.BENCHMARK.zero_shot_systems,
    }
    rows = {
        row: recipe.row_config(row, SimpleNamespace(steps=150, curve_every=25), tmp_path)
        for row in recipe.ROWS
    }
    assert set(recipe.RUN_ORDER) == set(rows) and len(rows) == 20
    assert rows["sac/all"].method_options["sink_tokens"] == recipe.SINK
    assert rows["sac/all"].train.embedding_lr_scale == 10.0
    assert rows["sac/today"].train.embedding_lr_scale == 1.0
    assert rows["sac/distill_frozen"].distill.teacher == "full_context"


def test_quality_and_standard_benchmark_configs_name_what_exists():
    """configs/benchmarks/{quality,standard}.yaml: every trained method has its SmolLM2 config
    (found through benchmarks/_common.smollm2_config) and every setting has a ratio and data."""
    from ctxcompress.training import load_config

    for method in quality.TRAINED:
        assert load_config(common.smollm2_config(method), []).method in (method, "500x")
    assert all({"ratio", "steps", "data_options"} <= set(s) for s in quality.SETTINGS.values())
    assert all({"ratio", "data", "limit"} <= set(s) for s in standard.SETTINGS.values())
    assert standard.OURS and standard.PRESSES


def test_kvpress_runner_resumes_a_press_after_its_last_finished_item(tmp_path):
    examples = [{"id": f"q{i}"} for i in range(4)]
    partial = tmp_path / "kvpress.json.kvzip@16.partial.jsonl"
    lines = [
        json.dumps({"row": {"id": f"q{i}", "f1": i}, "wall_s": 10.0 * (i + 1)}) for i in range(2)
    ]
    partial.write_text("\n".join(lines) + '\n{"row": {"id": "q2", "f1"')  # killed mid-write
    rows, wall = kvpress_run.load_partial(partial, examples)
    assert [r["id"] for r in rows] == ["q0", "q1"] and wall == 20.0
    assert partial.read_text().count("\n") == 2  # the torn line is gone before appending
    other = [{"id": "x"}] + examples
    assert kvpress_run.load_partial(partial, other) == ([], 0.0) and not partial.exists()
    assert kvpress_run.load_partial(tmp_path / "none", examples) == ([], 0.0)


def test_headline_spec_builds_every_system_of_every_setting(monkeypatch, tmp_path):
    """configs/benchmarks/headline.yaml: each setting's systems (only those) parse into
    training configs with its ratio, its stage-2 data and the recipe (sink, distillation
    from the same setting's trained_full); step counts: the setting's, the command line's."""
    from types import SimpleNamespace

    import ctxcompress.training.config as training_config

    monkeypatch.setattr(training_config, "check_teacher_spec", lambda spec: None)
    bench = headline.BENCHMARK
    args = SimpleNamespace(systems=list(bench.run_order), stage1_steps=None, stage2_steps=None)
    assert bench.systems_of("sac_4x", args) == ["trained_truncation", "trained_full", "sac"]
    assert bench.systems_of("multi_16x", args)[-2:] == ["pic", "icae"]
    assert bench.steps("sac_4x", args) == {"stage1": 100, "stage2": 1000, "curve_every": 250}
    assert bench.steps("multi_16x", args)["stage2"] == 400
    args.stage2_steps = 7
    assert bench.steps("multi_16x", args)["stage2"] == 7
    for setting, spec in bench.settings.items():
        for system in bench.systems_of(setting, args):
            one, two = (bench.stage_config(system, setting, k, args, tmp_path) for k in (1, 2))
            assert one.method_options["ratio"] == two.method_options["ratio"] == spec["ratio"]
            assert {d.objective for d in one.data} == {"continuation"}
            assert [d.source for d in two.data] == [d["source"] for d in spec["train"]]
            assert two.train.steps == 7 and two.init_from.endswith(f"{system}/stage1/compressor")
            distilled = bench.system_spec(system, setting).get("distill")
            if system in ("sac", "pic", "icae"):
                assert two.method_options["sink_tokens"] == 5
            if distilled:  # trained under --out, else its committed bfloat16 copy
                kept = ROOT / "benchmarks/headline/teachers" / setting / distilled
                trained = tmp_path / "train" / distilled / "stage2" / "compressor"
                expected = kept if (kept / "ctxcompress.json").is_file() else trained
                assert two.distill.teacher == str(expected)
            else:
                assert two.distill.weight == 0
        assert all("standard" in t for t in spec["tests"].values())
    # sac_4x overrides the recipe's teacher (its weights were lost); 16x keeps it.
    assert bench.system_spec("sac", "sac_4x")["distill"] is None
    assert bench.system_spec("sac", "multi_16x")["distill"] == "trained_full"


def test_levers_spec_builds_every_row_with_its_lever_after_one_shared_stage_1(tmp_path):
    """configs/benchmarks/levers.yaml (issue 38): every system parses into valid stage-1 and
    stage-2 configs at ratio 4 with bf16 steps; the SAC rows start from sac's stage 1 (one
    shared stage 1) and carry exactly their levers; truncation gets the decoder adapter too."""
    from types import SimpleNamespace

    bench = levers.BENCHMARK
    args = SimpleNamespace(systems=list(bench.run_order), stage1_steps=None, stage2_steps=None)
    assert bench.steps("screen_4x", args) == {"stage1": 100, "stage2": 400, "curve_every": 100}
    configs = {}
    for system in bench.systems_of("screen_4x", args):
        if system not in bench.systems:
            continue
        one, two = (bench.stage_config(system, "screen_4x", k, args, tmp_path) for k in (1, 2))
        assert {d.objective for d in one.data} == {"continuation"}
        assert two.method_options["ratio"] == 4 and two.train.mixed_precision == "bf16"
        first = bench.system_spec(system, "screen_4x").get("stage1_from", system)
        assert two.init_from == str(tmp_path / "train" / first / "stage1" / "compressor")
        configs[system] = two
    dense_rows = {"sac_dense", "sac_best_dense", "sac_head_dense"}
    assert {s for s, c in configs.items() if c.method == "sac" and "sac/stage1" in c.init_from} == {
        s for s in configs if s.startswith("sac") and s not in dense_rows
    }
    # Lever 4: sac_dense has a stage 1 of its own (a distilled text stream, more steps), and
    # sac_best_dense starts from it; every other stage 1 is the shared 100-step one.
    dense = bench.stage_config("sac_dense", "screen_4x", 1, args, tmp_path)
    plain = bench.stage_config("sac", "screen_4x", 1, args, tmp_path)
    assert (dense.train.steps, plain.train.steps) == (1000, 100)
    assert dense.train.text_stream and not dense.train.document_windows
    assert not plain.train.text_stream and plain.train.continuation_context_fraction == 0.5
    assert dense.train.continuation_max_tokens == 192
    assert dense.train.continuation_context_fraction == 0.75
    assert (dense.distill.weight, dense.distill.teacher) == (1.0, "full_context")
    assert plain.distill.weight == 0
    assert {d.weight for d in dense.data} == {"examples"}
    assert [d.source.split(":")[1] for d in dense.data] == ["train"] * 4  # never dev / test
    assert configs["sac_best_dense"].init_from.endswith("sac_dense/stage1/compressor")
    assert configs["sac_dense"].init_from.endswith("sac_dense/stage1/compressor")

    def levers_of(config):
        options, loop = config.method_options, config.train
        return {
            "selection": options.get("anchor_selection", "uniform"),
            "decoder": options.get("decoder_lora_rank", 0),
            "ramp": loop.ratio_ramp_steps,
        }

    assert levers_of(configs["sac"]) == {"selection": "uniform", "decoder": 0, "ramp": 0}
    assert levers_of(configs["sac_ramp"]) == {"selection": "uniform", "decoder": 0, "ramp": 100}
    assert levers_of(configs["sac_best"]) == {"selection": "surprisal", "decoder": 32, "ramp": 100}
    assert levers_of(configs["sac_importance_decoder"])["selection"] == "importance"
    assert levers_of(configs["sac_best_dense"]) == levers_of(configs["sac_best"])
    assert levers_of(configs["sac_head_decoder"]) == {"selection": "head", "decoder": 32, "ramp": 0}
    assert levers_of(configs["sac_head_dense"]) == levers_of(configs["sac_head_decoder"])
    assert configs["sac_head_dense"].init_from.endswith("sac_dense/stage1/compressor")
    assert levers_of(configs["sac_head_c128_decoder"]) == levers_of(configs["sac_head_decoder"])
    assert configs["sac_head_c128_decoder"].method_options["chunk_size"] == 128
    # A setting without a systems list has every system, the zero-shot rows too: they have
    # no spec of their own and no teacher (regression: a KeyError after the first row).
    assert "zs_full_context" in bench.own_systems("screen_4x")
    assert bench.teachers("screen_4x") == set()
    assert configs["trained_truncation_decoder"].method_options["decoder_lora_rank"] == 32
    # The headline budget: the best screen row and its references, 4,000 steps, continuing
    # the screen's runs (trained full context gets the same decoder adapter).
    assert bench.steps("long_4x", args)["stage2"] == 4000
    assert bench.settings["long_4x"]["continues"] == "screen_4x"
    long_full = bench.stage_config("trained_full_decoder", "long_4x", 2, args, tmp_path)
    assert long_full.method_options["context"] == "full"
    assert long_full.method_options["decoder_lora_rank"] == 32
    for system in ("sac_head_decoder", "trained_truncation_decoder"):
        long_run = bench.stage_config(system, "long_4x", 2, args, tmp_path)
        assert long_run.method_options == configs[system].method_options
        assert long_run.train.schedule == "constant"  # what makes the screen its first steps
    # PIC against ICAE at 16x: the headline's recipe with a decoder adapter, distilled from
    # the headline's committed 16x teacher; the 4x setting has neither.
    assert bench.systems_of("multi_16x", args) == ["pic_decoder", "icae_decoder"]
    assert "pic_decoder" not in bench.own_systems("screen_4x")
    assert bench.teachers("multi_16x") == {"trained_full"}
    kept = ROOT / "benchmarks/headline/teachers/multi_16x/trained_full"
    assert (kept / "ctxcompress.json").is_file()
    for system in ("pic_decoder", "icae_decoder"):
        two = bench.stage_config(system, "multi_16x", 2, args, tmp_path)
        assert two.method == system.split("_")[0] and two.method_options["ratio"] == 16
        assert two.method_options["decoder_lora_rank"] == 32 and two.train.mixed_precision == "bf16"
        assert two.distill.teacher == str(kept) and two.train.steps == 400


def test_a_dense_stage_1_curve_resumes_and_reports_against_the_frozen_baselines(
    monkeypatch, tmp_path
):
    """Lever 4's dense curve (settings.*.dense_dev): a continuation-NLL point at step 0 and
    every ``every`` steps of a stage 1, none twice across a resume; the frozen full context
    and head / tail truncation on the same windows, once; the report pairs every row with
    head truncation and says which share of the head-to-full gap it closes."""
    import copy

    from benchmarks._trained import Benchmark

    import ctxcompress as cc
    from ctxcompress.testing import tiny_model
    from ctxcompress.training import Trainer, parse_config

    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(f"Text {i}: " + " ".join(f"w{i}y{j}" for j in range(30)))
    spec = copy.deepcopy(levers.BENCHMARK.spec)
    spec["settings"]["screen_4x"] |= {
        "ratio": 2,
        "dense_dev": {
            "texts": [{"source": f"text:{folder}"}],
            "limit": 3,
            "size": 24,
            "context_fraction": 0.75,
            "every": 2,
        },
    }
    bench = Benchmark("levers", "benchmarks/levers/run.py", spec)
    monkeypatch.setattr(cc, "load_base_model", lambda *a, **k: tiny_model())
    out = tmp_path / "out"
    config = {
        "method": "sac",
        "base_model": "tiny",
        "method_options": {"ratio": 2, "lora_rank": 4},
        "data": [{"source": f"text:{folder}", "objective": "continuation"}],
        "train": {
            "steps": 4,
            "batch_size": 2,
            "micro_batch_size": 2,
            "save_every": 2,
            "lr": 1e-2,
            "continuation_max_tokens": 24,
            "continuation_min_tokens": 2,
            "text_stream": True,
        },
        "distill": {"weight": 1.0, "teacher": "full_context"},
        "output_dir": str(out / "train" / "sac_dense" / "stage1"),
    }
    Trainer(parse_config(config)).run(until_step=2)  # killed after a checkpoint, no point
    bench.train_stage1("sac_dense", "screen_4x", parse_config(config), out)
    bench.train_stage1("sac_dense", "screen_4x", parse_config(config), out)  # all done
    points = json.loads((out / "dense_curves.json").read_text())["sac_dense"]
    assert [p["step"] for p in points] == [2, 4]
    assert all(len(p["window_nll"]) == 3 for p in points)
    baselines = json.loads((out / "dense_baselines.json").read_text())
    assert list(baselines) == ["full_context", "head_truncation@2x", "tail_truncation@2x"]
    page = tmp_path / "docs" / "page.md"
    parts = bench.dense_report("screen_4x", out, page)
    table = parts[1].splitlines()
    assert len(table) == 2 + 3 + 2  # header, baselines, two curve points
    assert table[2].startswith("| full_context | - |") and table[2].endswith("| 100 % |")
    assert table[3].startswith("| head_truncation@2x | - |") and table[3].endswith("| 0 % |")
    assert "+0.000 [+0.000, +0.000]" in table[3]  # head truncation against itself
    assert (page.parent / "results" / "levers_screen_4x_dense.png").is_file()


def test_a_finished_teacher_is_kept_in_bfloat16_and_distilled_from_on_a_fresh_machine(
    tmp_path,
):
    import copy
    import shutil

    import torch
    from benchmarks._trained import Benchmark
    from safetensors.torch import load_file

    import ctxcompress as cc
    from ctxcompress.testing import tiny_model

    checkout = tmp_path / "checkout"  # what --out lives in: the kept copy goes there
    (checkout / "pyproject.toml").parent.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    out = checkout / "results" / "multi_16x"
    spec = copy.deepcopy(headline.BENCHMARK.spec)
    spec["kept_teachers"] = "kept"
    bench = Benchmark("headline", "benchmarks/headline/run.py", spec)
    assert bench.teachers("multi_16x") == {"trained_full"}
    assert bench.teachers("sac_4x") == set()  # sac_4x trains without a teacher
    trained = out / "train" / "trained_full" / "stage2" / "compressor"
    kept = checkout / "kept" / "multi_16x" / "trained_full"
    assert bench.teacher_folder("multi_16x", "trained_full", out) == trained  # to be trained
    teacher = cc.build_compressor("prompt_tuned", tiny_model(), context="full", lora_rank=4)
    teacher.save_pretrained(trained)
    bench.keep_teacher("multi_16x", "trained_full", out)
    assert (kept / "ctxcompress.json").is_file() and not kept.with_name(
        "trained_full.partial"
    ).exists()
    tensors = [t for f in kept.rglob("*.safetensors") for t in load_file(str(f)).values()]
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors if t.is_floating_point())
    assert bench.teacher_folder("multi_16x", "trained_full", out) == trained  # trained wins
    (kept / "marker").write_text("kept once")
    bench.keep_teacher("multi_16x", "trained_full", out)  # never rewritten
    assert (kept / "marker").is_file()
    shutil.rmtree(out / "train")  # a fresh machine: checkpoints gone, the commit remains
    assert bench.teacher_folder("multi_16x", "trained_full", out) == kept
    loaded = cc.load_compressor(kept)
    assert loaded.method == "prompt_tuned"


def test_benchmark_spec_refuses_overrides_of_unknown_systems(tmp_path):
    import pytest
    import yaml
    from benchmarks._trained import load_spec

    spec = yaml.safe_load((ROOT / "configs" / "benchmarks" / "headline.yaml").read_text())
    spec["settings"]["sac_4x"]["system_overrides"] = {"sca": {"distill": None}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(
        ValueError, match=r"sac_4x.system_overrides names unknown systems \['sca'\]"
    ):
        load_spec(path)


def test_a_long_setting_continues_its_screen_to_the_weights_of_one_long_run(
    monkeypatch, qa_file, tmp_path
):
    """settings.*.continues (issue 38's headline budget after the screen): a 4-step setting
    that continues a 2-step one copies its finished stage 1, its step-2 checkpoint and dev
    points, and ends with exactly the weights of a 4-step run trained from nothing; an
    earlier run of another configuration is not continued."""
    from types import SimpleNamespace

    import pytest
    import torch
    import yaml
    from benchmarks._trained import Benchmark, load_spec
    from safetensors.torch import load_file

    import ctxcompress as cc
    from ctxcompress.testing import tiny_model

    monkeypatch.setattr(cc, "load_base_model", lambda *a, **k: tiny_model())
    data = {"source": f"jsonl:{qa_file}"}
    short = {
        "ratio": 2,
        "window": 32,
        "train": [data],
        "dev": {**data, "limit": 2},
        "tests": {"qa": {**data, "limit": 2}},
    }
    spec = {
        "loop": {
            "batch_size": 2,
            "micro_batch_size": 2,
            "lr": 1e-2,
            "warmup_steps": 0,
            "schedule": "constant",
            "seed": 0,
            "log_every": 1,
            "keep_checkpoints": 2,
            "continuation_min_tokens": 2,
        },
        "steps": {"stage1": 2, "stage2": 2, "curve_every": 2},
        "stage1_texts": [{**data, "options": {"fields": {"text": "context"}}}],
        "settings": {
            "short": short,
            "long": {**short, "continues": "short", "steps": {"stage2": 4}},
            "fresh": {**short, "steps": {"stage2": 4}},
        },
        "systems": {"sac": {"method": "sac", "options": {"lora_rank": 4}}},
        "run_order": ["sac"],
    }
    bench = Benchmark("t", "run.py", spec)
    args = SimpleNamespace(stage1_steps=None, stage2_steps=None, curve_every=None, dev_limit=None)
    dev = bench.dev_examples("short", args)
    for setting in ("short", "long", "fresh"):
        bench.train_system("sac", setting, args, tmp_path / setting, dev)
    long_run = tmp_path / "long" / "train" / "sac"
    assert (long_run / "stage1" / "compressor").is_dir()
    assert not (long_run / "stage1" / "checkpoints" / "step-000004").exists()  # copied, not trained
    logged = [json.loads(line)["step"] for line in (long_run / "stage2" / "metrics.jsonl").open()]
    assert logged == [1, 2, 3, 4]  # steps 1-2 copied with the checkpoint, 3-4 trained here
    curves = {
        s: json.loads((tmp_path / s / "curves.json").read_text())["sac"] for s in spec["settings"]
    }
    assert [p["step"] for p in curves["long"]] == [0, 2, 4]
    assert curves["long"][:2] == curves["short"]
    weights = {
        s: load_file(
            str(tmp_path / s / "train/sac/stage2/compressor/adapter/adapter_model.safetensors")
        )
        for s in ("long", "fresh")
    }
    assert weights["long"].keys() == weights["fresh"].keys()
    for name, tensor in weights["long"].items():
        assert torch.equal(tensor, weights["fresh"][name]), name

    # An earlier run of another configuration (a higher lr) is not continued.
    spec["settings"]["other"] = {**short, "continues": "short", "steps": {"stage2": 4}}
    spec["systems"]["sac"]["train"] = {"lr": 2e-2}
    other = Benchmark("t", "run.py", spec)
    config = other.stage_config("sac", "other", 2, args, tmp_path / "other")
    other.continue_earlier("sac", "other", config, tmp_path / "other")
    assert not Path(config.output_dir).exists()

    spec["settings"]["long"]["continues"] = "screen"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"long.continues names 'screen', not another setting"):
        load_spec(path)


def test_benchmark_spec_refuses_targets_on_unknown_tests_or_systems(tmp_path):
    import pytest
    import yaml
    from benchmarks._trained import load_spec

    original = yaml.safe_load((ROOT / "configs" / "benchmarks" / "headline.yaml").read_text())
    for target, message in (
        ({"test": "squadd"}, r"targets\[0\] names unknown test 'squadd'"),
        ({"against": "pic"}, None),  # pic is a known system (not of sac_4x, but spec-wide)
        ({"against": "kvpress"}, r"targets\[0\] names unknown systems \['kvpress'\]"),
        ({"setting": "sac_8x"}, r"targets\[0\] names unknown setting 'sac_8x'"),
    ):
        spec = {**original, "targets": [{**original["targets"][0], **target}]}
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        if message is None:
            load_spec(path)
            continue
        with pytest.raises(ValueError, match=message):
            load_spec(path)


def test_curve_targets_compare_the_dev_curves_at_every_common_step():
    from benchmarks._trained import curve_target_rows

    def curve(*f1s):
        return [{"step": 100 * i, "f1": f1} for i, f1 in enumerate(f1s)]

    target = {"setting": "multi_16x", "test": "curve", "system": "pic", "against": "icae"}
    target["at_least"] = 1.0
    rows = curve_target_rows([target], {"pic": curve(0.1, 0.2, 0.3), "icae": curve(0.1, 0.3)})
    assert "| pic >= 1.0 x icae | 0, 100 | 100 | missed |" in rows  # step 200: no icae point
    rows = curve_target_rows([target], {"pic": curve(0.2, 0.3), "icae": curve(0.1, 0.3)})
    assert "| pic >= 1.0 x icae | 0, 100 | - | met |" in rows
    assert curve_target_rows([target], {"pic": curve(0.2)}) == ""  # nothing to compare yet


def test_headline_report_pairs_with_standard_rows_and_checks_targets(monkeypatch, tmp_path):
    from types import SimpleNamespace

    bench = headline.BENCHMARK
    out = tmp_path / "results"
    positions = (0, 1, 0, 1)
    for system, f1 in (("sac", 0.5), ("trained_truncation", 0.25), ("trained_full", 0.5)):
        result = fake_result(f"{system}@4x", f1, positions)
        result.info["stage2_steps"] = 2000
        result.save(out / "sac_4x" / "eval" / "squad" / f"{system}.json")
    standard_rows = [fake_result("full_context", 0.3, positions)]
    standard_rows.append(fake_result("kvpress:kvzip@4x", 0.2, positions))
    other_items = fake_result("no_context", 0.1, (0, 1, 0))  # other items: left out
    from benchmarks.standard import run as standard_run

    monkeypatch.setattr(
        standard_run, "finished", lambda setting, args: [*standard_rows, other_items]
    )
    page = tmp_path / "results.md"
    page.write_text("<!-- begin headline -->\n<!-- end headline -->\n")
    args = SimpleNamespace(
        out=out,
        settings=["sac_4x"],
        systems=list(bench.run_order),
        stage1_steps=None,
        stage2_steps=None,
        curve_every=None,
        dev_limit=None,
        eval_limit=None,
        report=page,
    )
    bench.write_report(args, page)
    text = page.read_text()
    assert "| full_context (zero-shot) | 0.0 | 30.0 |" in text
    assert "| kvpress:kvzip@4x | 0.0 | 20.0 |" in text and "no_context" not in text
    assert (  # the best training-free row on the same items is a reference too
        "| system | F1 [95% CI] | minus trained_truncation@4x | minus trained_full@4x "
        "| minus full_context (zero-shot) |" in text
    )
    assert "| sac@4x / trained_truncation@4x | 2.00 [2.00, 2.00] | >= 1.3 | met |" in text
    assert "| sac@4x / trained_full@4x | 1.00 [1.00, 1.00] | >= 0.8 | met |" in text
    assert "gold_position=1" in text  # two positions: the depth table
    assert "Not finished yet" not in text
    assert "What the compressed context saves" not in text  # nothing benched yet
    bench_row = {
        "L": 196,
        "C": 49,
        "kv_bytes": 49 * 1024,
        "kv_bytes_full": 196 * 1024,
        "answer": {"answer_s": 0.1, "ttft_s": 0.02},
        "answer_full_context": {"answer_s": 0.2, "ttft_s": 0.05},
        "answer_vs_full_context": 0.5,
        "compress_vs_prefill": 1.25,
    }
    import ctxcompress.bench

    measured = []

    def fake_bench(settings):
        measured.append(settings)
        return {"rows": [bench_row], "machine": {"threads": 2}}

    monkeypatch.setattr(ctxcompress.bench, "run_speed_benchmark", fake_bench)
    (out / "sac_4x" / "train" / "sac" / "stage2" / "compressor").mkdir(parents=True)
    systems = bench.systems_of("sac_4x", args)
    bench.measure_savings("sac_4x", systems, out / "sac_4x")  # trained_truncation: no folder
    bench.measure_savings("sac_4x", ["sac"], out / "sac_4x")  # once: the JSON is kept
    (settings,) = measured
    assert settings.compressor.endswith("sac_4x/train/sac/stage2/compressor")
    assert settings.lengths == (196,) and settings.device == "cpu"
    saved = json.loads((out / "sac_4x" / "bench" / "sac.json").read_text())
    command = bench.savings_command("sac_4x", "sac", out / "sac_4x")
    assert saved["command"] == command and "--lengths 196" in command
    assert not (out / "sac_4x" / "bench" / "trained_truncation.json").exists()
    bench.write_report(args, page)
    text = page.read_text()
    assert "| sac | 196 | 49 | 49 / 196 | 100 / 200 | 0.50 | 20 / 50 | 1.25 |" in text
    assert f"`{command}`" in text
    # A larger step budget makes the saved evaluations stale: they run again.
    path = out / "sac_4x" / "eval" / "squad" / "sac.json"
    assert bench.is_current("sac", path, 2000) and not bench.is_current("sac", path, 3000)


def test_learnability_rows_are_valid_configs_and_the_report_lists_finished_rows(
    monkeypatch, tmp_path
):
    """benchmarks/headline/learnability.py: every row parses into a training config on the
    sac_4x data (the warm-started row from its first row's folder, the distilled rows from
    their teacher row's); the report keeps the row order and lists only finished rows."""
    from benchmarks.headline import learnability

    import ctxcompress.training.config as training_config

    monkeypatch.setattr(training_config, "check_teacher_spec", lambda spec: None)
    for name in learnability.ROWS:
        config = learnability.row_config(name, 150, tmp_path)
        assert [d.source for d in config.data][:2] == ["squad:train", "nq-oracle:train"]
        assert config.train.steps == 150 and config.method_options["ratio"] in (1, 4)
    warm = learnability.row_config("sac_r4_from_r1", 150, tmp_path)
    assert warm.init_from == str(tmp_path / "train" / "sac_r1" / "compressor")
    assert learnability.row_config("sac_r4", 150, tmp_path).init_from is None
    distilled = learnability.row_config("sac_r4_hidden_full", 150, tmp_path).distill
    assert distilled.teacher == str(tmp_path / "train" / "trained_full" / "compressor")
    assert (distilled.weight, distilled.hidden_weight) == (1.0, 10.0)
    assert learnability.row_config("sac_r4_kl_frozen", 150, tmp_path).distill.teacher == (
        "full_context"
    )
    assert learnability.requires("sac_r4_kl_full") == ["trained_full"]
    assert learnability.requires("sac_r4_from_r1") == ["sac_r1"]
    assert learnability.requires("sac_r4") == []
    ae = learnability.row_config("sac_r4_ae", 150, tmp_path)
    assert [d.objective for d in ae.data] == ["qa", "qa", "autoencoding"]
    assert ae.method_options["autoencoding"] is True
    page = tmp_path / "results.md"
    page.write_text("<!-- begin learnability -->\n<!-- end learnability -->\n")
    results = {
        name: {"f1": f1, "em": 0.0, "n": 50, "steps": 150, "train_cpu_seconds": 600.0}
        for name, f1 in (("trained_truncation", 0.171), ("sac_r1", 0.273))
    }
    learnability.report(results, page, 150, 50)
    text = page.read_text()
    assert text.index("| `sac_r1` |") < text.index("| `trained_truncation` |")
    assert "| 27.3 | 0.0 | 10.0 |" in text and "sac_r4_causal" not in text


def test_a_target_against_a_zero_shot_row_finds_the_standard_row():
    """``against: zs_full_context`` is the standard benchmark's "full_context (zero-shot)" row
    on the same items (regression: the needle target was silently left out of the report)."""
    from benchmarks._trained import target_rows

    positions = (0, 1, 0, 1)
    by_label = {
        "sac@4x": fake_result("sac@4x", 0.25, positions),
        "full_context (zero-shot)": fake_result("full_context (zero-shot)", 0.5, positions),
    }
    target = {"setting": "sac_4x", "test": "squad", "system": "sac", "against": "zs_full_context"}
    rows = target_rows([{**target, "at_least": 0.8}], by_label, headline.BENCHMARK, "sac_4x", "f1")
    assert "| sac@4x / full_context (zero-shot) | 0.50 [0.50, 0.50] | >= 0.8 | missed |" in rows
