"""Training: label masks, memorisation, exact resume, stage 2, multi-process equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import ctxcompress as cc
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.testing import tiny_model
from ctxcompress.training import (
    Trainer,
    autoencoding_example,
    continuation_example,
    parse_config,
    qa_example,
)
from tests.conftest import make_sac, randomize_trainables


def config(method, qa_file, out, **train):
    loop = {
        "steps": 8,
        "batch_size": 4,
        "micro_batch_size": 2,
        "lr": 1e-2,
        "warmup_steps": 2,
        "log_every": 1,
        "save_every": 4,
        **train,
    }
    return parse_config(
        {
            "method": method,
            "base_model": "tiny",
            "method_options": {"ratio": 2, "lora_rank": 8, "lora_alpha": 16},
            "data": [{"source": f"jsonl:{qa_file}"}],
            "train": loop,
            "output_dir": str(out),
        }
    )


def params(comp):
    return {n: p.detach().clone() for n, p in comp.trainable_parameters().items()}


# --------------------------------------------------------------------------- label masks


def test_qa_labels_cover_answer_and_eos_only():
    comp = make_sac(tiny_model(), ratio=2)
    tok = comp.tokenizer
    ex = qa_example(comp, "Paris is in France.", "Where is Paris?", "France")
    answer = tok("France", add_special_tokens=False).input_ids
    question = tok(
        "\n### Question:\nWhere is Paris?\n### Answer:\n", add_special_tokens=False
    ).input_ids
    assert list(ex.prompt_ids) == question
    assert list(ex.target_ids) == answer + [tok.eos_token_id]
    assert ex.labels() == [-100] * len(question) + answer + [tok.eos_token_id]
    row = ex.decoder_row()
    assert row[0] == "[LM]" and row[1:] == question + answer
    assert len(row) == len(ex.labels())
    assert list(ex.context_ids) == comp.context_ids("Paris is in France.")


def test_continuation_splits_in_half_and_filters_by_length():
    comp = make_sac(tiny_model(), ratio=2)
    tok = comp.tokenizer
    text = "one two three four five six seven eight nine ten"
    ids = tok(text, add_special_tokens=False).input_ids
    ex = continuation_example(comp, text, min_tokens=4, max_tokens=100)
    half = len(ids) // 2
    prefix = tok("### Context:\n", add_special_tokens=False).input_ids
    assert list(ex.context_ids) == [tok.bos_token_id, *prefix, *ids[:half]]
    assert ex.prompt_ids == () and ex.task == "lm"
    assert list(ex.target_ids) == ids[half:] + [tok.eos_token_id]
    assert ex.labels() == ids[half:] + [tok.eos_token_id]
    assert continuation_example(comp, text, min_tokens=len(ids) + 1) is None
    assert continuation_example(comp, text, min_tokens=1, max_tokens=len(ids) - 1) is None


def test_long_documents_become_windows_instead_of_being_dropped(tmp_path):
    from ctxcompress.training import build_examples

    comp = make_sac(tiny_model(), ratio=2)
    words = " ".join(f"w{i}" for i in range(400))
    ids = comp.tokenizer(words, add_special_tokens=False).input_ids
    doc = tmp_path / "doc.txt"
    doc.write_text(words)

    def build(windows, objective):
        cfg = parse_config(
            {
                "method": "sac",
                "base_model": "tiny",
                "data": [{"source": f"text:{doc}", "objective": objective}],
                "train": {
                    "continuation_min_tokens": 20,
                    "continuation_max_tokens": 100,
                    "document_windows": windows,
                },
                "output_dir": str(tmp_path / "run"),
            }
        )
        return build_examples(comp, cfg.data[0], cfg)

    with pytest.raises(cc.InvalidInputError, match="dropped by the length filters"):
        build(False, "continuation")  # one document of len(ids) > 100 tokens
    got = build(True, "continuation")
    windows = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    kept = [w for w in windows if len(w) >= 20]
    assert len(got.examples) == len(kept) and got.dropped == len(windows) - len(kept)
    head = len(comp.context_prefix_ids())
    for ex, w in zip(got.examples, kept, strict=True):
        assert list(ex.context_ids[head:]) == w[: len(w) // 2]
        assert list(ex.target_ids) == w[len(w) // 2 :] + [comp.tokenizer.eos_token_id]
    ae = build(True, "autoencoding")
    assert [list(e.target_ids[:-1]) for e in ae.examples] == windows
    assert all(
        e.task == "ae" and len(e.context_ids) == head + len(w)
        for e, w in zip(ae.examples, windows, strict=True)
    )


def test_autoencoding_reconstructs_the_context():
    comp = make_sac(tiny_model(), ratio=2, autoencoding=True)
    tok = comp.tokenizer
    ex = autoencoding_example(comp, "Reconstruct me.")
    assert ex.task == "ae" and ex.decoder_row()[0] == "[AE]"
    assert list(ex.target_ids) == tok("Reconstruct me.", add_special_tokens=False).input_ids + [
        tok.eos_token_id
    ]
    assert "ae_embedding" in comp.trainable_parameters()
    no_ae = make_sac(tiny_model(), ratio=2)
    with pytest.raises(cc.InvalidInputError, match="autoencoding"):
        no_ae.forward([ex.context_ids], [ex.prompt_ids], [ex.target_ids], [ex.task])


OPENER = {"sac": 1, "icae": 1, "full_context": 0, "prompt_tuned": 4}  # learned vectors


@pytest.mark.parametrize("method", list(OPENER))
def test_forward_loss_is_exactly_the_labelled_cross_entropy(method):
    """The loss only covers the labelled positions, with the documented alignment."""
    options = {
        "sac": {"lora_rank": 4},
        "icae": {"lora_rank": 4},
        "full_context": {},
        "prompt_tuned": {"prompt_vectors": 3, "context": "truncation"},
    }[method]
    comp = cc.build_compressor(method, tiny_model(), ratio=2, **options)
    randomize_trainables(comp)
    examples = [
        qa_example(comp, "Paris is in France.", "Where?", "France"),
        qa_example(comp, "A longer context about the report of 1987.", "When?", "1987"),
    ]
    loss_sum, count = comp(
        [e.context_ids for e in examples],
        [e.prompt_ids for e in examples],
        [e.target_ids for e in examples],
    )
    contexts = comp.encode_ids([e.context_ids for e in examples])
    inputs = [list(e.prompt_ids) + list(e.target_ids[:-1]) for e in examples]
    logits = comp.decoder_forward(contexts, inputs)
    opener = OPENER[method]
    expected, n = 0.0, 0
    for b, e in enumerate(examples):
        row_len = opener + len(inputs[b])
        row = logits[b, -row_len:]
        for j, label in enumerate([-100] * (len(e.prompt_ids) - 1 + opener) + list(e.target_ids)):
            if label != -100:
                expected += torch.nn.functional.cross_entropy(row[j], torch.tensor(label)).item()
                n += 1
    assert count == n == sum(len(e.target_ids) for e in examples)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_training_memorises_a_small_task(method, qa_file, tmp_path):
    cfg = config(method, qa_file, tmp_path / "run", steps=60, warmup_steps=0, save_every=1000)
    losses = []
    trainer = Trainer(
        cfg,
        base_model=tiny_model(initializer_range=0.2),
        on_step=lambda step, m: losses.append(m["loss"]),
    )
    trainer.run()
    assert losses[-1] < 0.4 * losses[0], (losses[0], losses[-1])
    # The result is a loadable compressor.
    comp = cc.load_compressor(
        tmp_path / "run" / "compressor", base_model=tiny_model(initializer_range=0.2)
    )
    assert comp.method == method
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 60 and {"loss", "lr", "tokens_per_s"} <= set(json.loads(lines[0]))


def test_resume_after_a_crash_equals_one_run(qa_file, tmp_path):
    one = Trainer(config("sac", qa_file, tmp_path / "one"))
    one.run()
    first = Trainer(config("sac", qa_file, tmp_path / "two"))
    first.run(until_step=4)  # "crash" after the step-4 checkpoint
    seconds_at_4 = (first.train_seconds, first.train_cpu_seconds)
    assert min(seconds_at_4) > 0
    del first
    ckpts = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert ckpts == ["step-000004"]
    second = Trainer(config("sac", qa_file, tmp_path / "two"))
    assert second.step == 4
    # The training clock resumes from the checkpoint: totals cover the whole run.
    assert (second.train_seconds, second.train_cpu_seconds) == seconds_at_4
    second.run()
    assert second.train_seconds > seconds_at_4[0]
    assert second.train_cpu_seconds > seconds_at_4[1]
    last = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 8 and last["train_seconds"] == second.train_seconds
    a, b = params(one.compressor), params(second.compressor)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert one.scheduler.get_last_lr() == second.scheduler.get_last_lr()
    # Old checkpoints are pruned, none is half-written.
    names = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000008"]


def test_learning_curve_callback_sees_every_nth_step_and_leaves_training_unchanged(
    qa_file, tmp_path
):
    """``run(eval_every=, on_eval=)``: called at the start, every N steps and at the last
    step (after a resume again at the resumed step); the weights are those of a plain run."""
    plain = Trainer(config("sac", qa_file, tmp_path / "plain"))
    plain.run()
    seen: list[tuple[int, bool]] = []

    def on_eval(trainer):
        seen.append((trainer.step, trainer.compressor.training))
        trainer.compressor.generate(
            trainer.compressor.compress("A box."), "Code?", max_new_tokens=2
        )

    first = Trainer(config("sac", qa_file, tmp_path / "curve", save_every=2))
    first.run(until_step=4, eval_every=3, on_eval=on_eval)
    assert [s for s, _ in seen] == [0, 3]
    second = Trainer(config("sac", qa_file, tmp_path / "curve", save_every=2))
    second.run(eval_every=3, on_eval=on_eval)
    assert [s for s, _ in seen] == [0, 3, 6, 8]  # 4 (the resume step) is not a multiple of 3
    a, b = params(plain.compressor), params(second.compressor)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    with pytest.raises(cc.InvalidInputError, match="eval_every"):
        second.run(eval_every=0, on_eval=on_eval)


def test_cli_train_writes_a_learning_curve_that_survives_a_resume(qa_file, tmp_path):
    from typer.testing import CliRunner

    from ctxcompress.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("sac", qa_file, tmp_path / "o").to_dict()))
    args = ["train", "-c", str(path), "--eval-data", f"jsonl:{qa_file}", "--eval-every", "4"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--until-step", "4"]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    points = [json.loads(line) for line in (tmp_path / "o" / "eval.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 4, 8]
    assert all(0 <= p["f1"] <= 1 and p["n"] == 4 for p in points)
    refused = runner.invoke(app, ["train", "-c", str(path), "--eval-every", "4"])
    assert refused.exit_code == 2 and "go together" in refused.output


def test_resume_refuses_a_changed_configuration(qa_file, tmp_path):
    Trainer(config("sac", qa_file, tmp_path / "r", steps=4)).run()
    # A longer run with other bookkeeping resumes the same run...
    longer = Trainer(config("sac", qa_file, tmp_path / "r", steps=6, save_every=2, log_every=3))
    assert longer.step == 4
    # ...but other data, optimiser or method settings would silently mix two runs.
    other_lr = config("sac", qa_file, tmp_path / "r", steps=6, lr=5e-3)
    with pytest.raises(
        cc.InvalidInputError, match=r"different configuration \(train.lr: 0.01 -> 0.005"
    ):
        Trainer(other_lr)
    # A loop option that did not exist when the run started ran at its default value.
    saved = tmp_path / "r" / "config.yaml"
    data = yaml.safe_load(saved.read_text())
    del data["train"]["document_windows"]
    saved.write_text(yaml.safe_dump(data))
    assert Trainer(config("sac", qa_file, tmp_path / "r", steps=6)).step == 4
    with pytest.raises(cc.InvalidInputError, match="document_windows: False -> True"):
        Trainer(config("sac", qa_file, tmp_path / "r", steps=6, document_windows=True))
    other_ratio = config("sac", qa_file, tmp_path / "r", steps=6)
    other_ratio.method_options["ratio"] = 4
    with pytest.raises(cc.InvalidInputError, match="method_options.ratio: 2 -> 4"):
        Trainer(other_ratio)


def test_accumulation_equals_one_big_micro_batch(qa_file, tmp_path):
    big = Trainer(config("sac", qa_file, tmp_path / "a", micro_batch_size=4, steps=3))
    big.run()
    small = Trainer(config("sac", qa_file, tmp_path / "b", micro_batch_size=1, steps=3))
    small.run()
    assert small.accumulation == 4
    a, b = params(big.compressor), params(small.compressor)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_stage_two_starts_from_stage_one(qa_file, tmp_path):
    Trainer(config("sac", qa_file, tmp_path / "s1", steps=4)).run()
    stage1 = cc.load_compressor(tmp_path / "s1" / "compressor")
    cfg = config("sac", qa_file, tmp_path / "s2", steps=1)
    cfg.init_from = str(tmp_path / "s1" / "compressor")
    stage2 = Trainer(cfg)
    start = params(stage2.compressor)
    for name, value in params(stage1).items():
        assert torch.equal(start[name], value), name
    wrong = config("icae", qa_file, tmp_path / "s3", steps=1)
    wrong.init_from = str(tmp_path / "s1" / "compressor")
    with pytest.raises(cc.InvalidInputError, match="'sac' compressor"):
        Trainer(wrong)


def test_existing_checkpoints_are_never_overwritten(qa_file, tmp_path):
    Trainer(config("sac", qa_file, tmp_path / "r", steps=4)).run()
    cfg = config("sac", qa_file, tmp_path / "r", steps=4)
    cfg.resume = "never"
    with pytest.raises(cc.InvalidInputError, match="already holds checkpoints"):
        Trainer(cfg)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"train": {"batch_size": 3}}, "multiple"),
        ({"data": [{"source": "x", "objective": "dance"}]}, "objective"),
        ({"train": {"lr_typo": 1}}, "unknown key"),
        ({"data": []}, "no data"),
    ],
)
def test_config_errors(qa_file, tmp_path, change, match):
    base = {
        "method": "sac",
        "base_model": "tiny",
        "data": [{"source": f"jsonl:{qa_file}"}],
        "train": {"micro_batch_size": 2},
        "output_dir": str(tmp_path / "x"),
    }
    base.update(change)
    with pytest.raises(cc.InvalidInputError, match=match):
        Trainer(parse_config(base))


def test_cli_overrides_and_yaml(qa_file, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config("sac", qa_file, tmp_path / "o").to_dict()))
    from ctxcompress.training import load_config

    cfg = load_config(path, ["train.lr=5e-5", "method_options.ratio=5", "train.steps=2"])
    assert cfg.train.lr == 5e-5 and cfg.method_options["ratio"] == 5 and cfg.train.steps == 2


# --------------------------------------------------------------------------- distributed


RECIPE = {
    "method_options": {"sink_tokens": 1, "embedding_init": "table"},
    "train": {"embedding_lr_scale": 10.0},
    "distill": {"weight": 1.0, "teacher": "full_context"},
}


def with_recipe(cfg):
    """``cfg`` with the small-budget levers on (sink, token-scale init and lr, distillation)."""
    data = cfg.to_dict()
    data["method_options"].update(RECIPE["method_options"])
    data["train"].update(RECIPE["train"])
    data["distill"] = RECIPE["distill"]
    return parse_config(data)


@pytest.mark.parametrize("recipe", [False, True], ids=["plain", "recipe"])
def test_two_processes_match_one_with_the_same_global_batch(qa_file, tmp_path, recipe):
    """Two CPU processes (gloo DDP) == one process with the same global batch, also with
    the attention sink, the embedding lr group and distillation on.

    Launched as `accelerate launch --multi_gpu --num_processes 2`: on a machine without GPUs
    the trainer asks accelerate for CPU mode, which forms a gloo group. (accelerate's own
    `--cpu --num_processes 2` goes through mpirun and, with no MPI hostfile, starts a single
    process: checked below through the recorded world size.)"""
    change = with_recipe if recipe else (lambda c: c)
    cfg = config("sac", qa_file, tmp_path / "ddp", steps=3, micro_batch_size=2, save_every=100)
    cfg = change(cfg)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no"]
    cmd = [*launch, "-m", "ctxcompress", "train", "--config", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(
        (tmp_path / "ddp" / "checkpoints" / "step-000003" / "trainer_state.json").read_text()
    )
    assert state["world_size"] == 2  # really two processes
    ddp = cc.load_compressor(tmp_path / "ddp" / "compressor")
    single = Trainer(
        change(
            config("sac", qa_file, tmp_path / "single", steps=3, micro_batch_size=4, save_every=100)
        )
    )
    single.run()
    a, b = params(single.compressor), params(ddp)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(
    not __import__("tests.conftest").conftest.has_embedded_model(),
    reason="embedded model not installed (make test installs it)",
)
def test_a_training_step_runs_on_the_embedded_model(tmp_path):
    """One real step of the small SmolLM2 setting (configs/smollm2/sac-nq-r4.yaml) on CPU;
    benchmarks/train_step.py measures its seconds per step for docs/benchmarks.md."""
    from pathlib import Path

    from ctxcompress.training import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        root / "configs" / "smollm2" / "sac-nq-r4.yaml",
        [
            f"output_dir={tmp_path}",
            "train.steps=1",
            "train.batch_size=2",
            "train.micro_batch_size=2",
            "train.save_every=10",
            "train.warmup_steps=0",  # HF warm-up gives lr 0 on the first step
        ],
    )
    trainer = Trainer(cfg)
    before = params(trainer.compressor)
    summary = trainer.run()
    assert summary["step"] == 1 and summary["loss"] > 0
    after = params(trainer.compressor)
    assert any(not torch.equal(before[n], after[n]) for n in before)
