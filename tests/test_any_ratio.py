"""One compressor for any ratio (issue 20 part 2): ``train.ratios`` trains each micro-batch at
a ratio drawn from a set; the draws are seeded (an exact resume repeats them) and reach the
compressor; evaluation can compress at any ratio the compressor serves."""

from __future__ import annotations

import json

import pytest
import torch

from ctxcompress.data.records import QAExample
from ctxcompress.errors import InvalidInputError
from ctxcompress.evaluation import evaluate
from ctxcompress.training import Trainer, parse_config
from tests.conftest import TEXT
from tests.test_training import params


def config(qa_file, out, ratios=(2, 4, 8), ratio=2, **loop):
    return parse_config(
        {
            "method": "sac",
            "base_model": "tiny",
            "method_options": {"ratio": ratio, "lora_rank": 4},
            "data": [{"source": f"jsonl:{qa_file}"}],
            "train": {
                "steps": 6,
                "batch_size": 4,
                "micro_batch_size": 2,
                "lr": 1e-2,
                "warmup_steps": 0,
                "log_every": 1,
                "save_every": 3,
                "ratios": list(ratios),
                **loop,
            },
            "output_dir": str(out),
        }
    )


def test_each_micro_batch_is_compressed_at_its_drawn_ratio(qa_file, tmp_path):
    trainer = Trainer(config(qa_file, tmp_path / "run"))
    comp = trainer.compressor
    seen: list[int] = []
    real = comp.encode_ids
    comp.encode_ids = lambda contexts, *a, **k: seen.append(comp.ratio) or real(contexts, *a, **k)
    trainer.run()
    logged = [json.loads(line)["ratios"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r for step in logged for r in step] == seen  # two micro-batches a step
    assert set(seen) <= {2, 4, 8} and len(set(seen)) > 1
    assert comp.ratio == comp.config.ratio == 2  # the override ends with each micro-batch


def test_a_resumed_run_draws_the_same_ratios_and_weights(qa_file, tmp_path):
    one = Trainer(config(qa_file, tmp_path / "one"))
    one.run()
    first = Trainer(config(qa_file, tmp_path / "two"))
    first.run(until_step=3)
    second = Trainer(config(qa_file, tmp_path / "two"))
    assert second.step == 3
    second.run()
    lines = {
        name: [json.loads(x)["ratios"] for x in (tmp_path / name / "metrics.jsonl").open()]
        for name in ("one", "two")
    }
    assert lines["one"] == lines["two"]
    a, b = params(one.compressor), params(second.compressor)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_the_ratio_set_must_start_at_the_methods_ratio(qa_file, tmp_path):
    with pytest.raises(InvalidInputError, match=r"method_options.ratio \(4\) must be the smallest"):
        config(qa_file, tmp_path / "a", ratios=(2, 8), ratio=4)
    for bad in ([], [0, 2], ["x"]):
        with pytest.raises(InvalidInputError, match="train.ratios must be a non-empty list"):
            config(qa_file, tmp_path / "b", ratios=bad)


def test_evaluation_at_another_ratio(tiny):
    import ctxcompress as cc

    comp = cc.build_compressor("sac", tiny, ratio=2, lora_rank=4)
    examples = [QAExample(TEXT * 3, "Who wrote the report?", ("the committee",), "a", {})]
    own = evaluate(comp, examples, max_new_tokens=3, progress=False)
    at_8 = evaluate(comp, examples, max_new_tokens=3, progress=False, ratio=8)
    assert at_8.info["ratio_in_effect"] == 8 and own.info["ratio_in_effect"] == 2
    assert at_8.predictions[0].compressed_length < own.predictions[0].compressed_length
    assert comp.ratio == 2
    with pytest.raises(InvalidInputError, match="ratios >= 2"):
        evaluate(comp, examples, progress=False, ratio=1)
