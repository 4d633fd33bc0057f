"""Issue 38, lever 4: dense pretraining at length — a text stream cut into windows, the
continuation split, tail truncation, and the continuation NLL that makes the learning curve
dense. Invariants and refusals."""

from __future__ import annotations

import json

import pytest
import torch

import ctxcompress as cc
from ctxcompress.data import load_texts
from ctxcompress.errors import InvalidInputError
from ctxcompress.evaluation import continuation_nll, continuation_windows, paired_nll_difference
from ctxcompress.testing import tiny_model
from ctxcompress.training import Trainer, build_examples, continuation_example, parse_config
from ctxcompress.training.config import DataSource
from ctxcompress.training.objectives import STREAM_SEPARATOR, text_stream_windows
from tests.conftest import make_sac

DOCS = [f"Paragraph {i}: " + " ".join(f"w{i}x{j}" for j in range(3 + 5 * i)) for i in range(8)]


def stream_ids(comp, docs):
    tok = comp.tokenizer
    sep = tok(STREAM_SEPARATOR, add_special_tokens=False).input_ids
    ids: list[int] = []
    for i, doc in enumerate(docs):
        ids += (sep if i else []) + tok(doc, add_special_tokens=False).input_ids
    return ids


@pytest.mark.parametrize("size", [2, 7, 40])
def test_stream_windows_read_every_token_once_in_order(size):
    comp = make_sac(tiny_model(), ratio=2)
    ids = stream_ids(comp, DOCS)
    windows = list(text_stream_windows(comp, DOCS, size))
    assert all(len(w) == size for w in windows)
    assert len(windows) == len(ids) // size  # the short last piece is left out
    assert [t for w in windows for t in w] == ids[: len(windows) * size]


def test_stream_windows_need_two_tokens():
    comp = make_sac(tiny_model(), ratio=2)
    with pytest.raises(InvalidInputError, match="at least 2 tokens"):
        list(text_stream_windows(comp, DOCS, 1))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.75, 0.99])
@pytest.mark.parametrize("length", [2, 3, 17, 64])
def test_the_continuation_split_keeps_both_parts(fraction, length):
    comp = make_sac(tiny_model(), ratio=2)
    ids = list(range(10, 10 + length))
    ex = continuation_example(comp, ids, min_tokens=2, max_tokens=100, context_fraction=fraction)
    head = len(comp.context_prefix_ids())
    context, target = list(ex.context_ids[head:]), list(ex.target_ids)
    assert target[-1] == comp.tokenizer.eos_token_id
    assert context + target[:-1] == ids and context and target[:-1]
    assert len(context) == min(max(1, int(length * fraction)), length - 1)
    no_eos = continuation_example(
        comp, ids, min_tokens=2, max_tokens=100, context_fraction=fraction, eos=False
    )
    assert list(no_eos.target_ids) == target[:-1] and no_eos.context_ids == ex.context_ids


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5])
def test_a_continuation_split_outside_the_window_is_refused(fraction):
    comp = make_sac(tiny_model(), ratio=2)
    with pytest.raises(InvalidInputError, match="context_fraction"):
        continuation_example(comp, list(range(10, 30)), min_tokens=2, context_fraction=fraction)


def stream_config(tmp_path, objective="continuation", **train):
    folder = tmp_path / "texts"
    folder.mkdir(exist_ok=True)
    for i, doc in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(doc)
    loop = {
        "steps": 4,
        "batch_size": 2,
        "micro_batch_size": 2,
        "lr": 1e-2,
        "warmup_steps": 1,
        "log_every": 1,
        "save_every": 2,
        "continuation_min_tokens": 8,
        "continuation_max_tokens": 24,
        "text_stream": True,
        "continuation_context_fraction": 0.75,
        **train,
    }
    return parse_config(
        {
            "method": "sac",
            "base_model": "tiny",
            "method_options": {"ratio": 2, "lora_rank": 4, "lora_alpha": 8},
            "data": [{"source": f"text:{folder}", "objective": objective}],
            "train": loop,
            "output_dir": str(tmp_path / "run"),
        }
    )


def test_a_text_stream_feeds_full_windows_without_eos(tmp_path):
    """Short paragraphs that the length filter would drop one by one become full windows of
    the joined stream; a continuation target has no EOS (the cut is not the text's end)."""
    comp = make_sac(tiny_model(), ratio=2)
    cfg = stream_config(tmp_path)
    # The documents in the loader's seeded order (the stream's order).
    docs = [d.text for d in load_texts(cfg.data[0].source, seed=cfg.train.seed)]
    got = build_examples(comp, cfg.data[0], cfg)
    windows = list(text_stream_windows(comp, docs, 24))
    assert len(got.examples) == len(windows) and got.dropped == 0
    head = len(comp.context_prefix_ids())
    for ex, window in zip(got.examples, windows, strict=True):
        assert len(ex.context_ids) - head == 18  # 0.75 of 24
        assert list(ex.context_ids[head:]) + list(ex.target_ids) == window
    ae = build_examples(comp, stream_config(tmp_path, "autoencoding").data[0], cfg)
    assert [list(e.target_ids[:-1]) for e in ae.examples] == windows  # AE keeps its EOS
    # One document at a time, the long paragraphs are dropped (> 24 tokens).
    without = stream_config(tmp_path, text_stream=False)
    assert build_examples(comp, without.data[0], without).dropped > 0


@pytest.mark.parametrize(
    ("loop", "match"),
    [
        ({"document_windows": True}, "use one"),
        ({"continuation_context_fraction": 1.0}, "continuation_context_fraction"),
        ({"continuation_context_fraction": 0}, "continuation_context_fraction"),
    ],
)
def test_a_stream_that_cannot_be_is_refused_before_any_step(tmp_path, loop, match):
    with pytest.raises(InvalidInputError, match=match):
        Trainer(stream_config(tmp_path, **loop))


def test_dense_pretraining_distils_every_continuation_token(tmp_path):
    """The stream's continuation examples with KL to the frozen full-context model: the KL
    term is there at every step, and the run resumes exactly like any other."""
    cfg = stream_config(tmp_path)
    cfg.distill.weight = 1.0
    trainer = Trainer(cfg)
    trainer.run()
    assert trainer.step == 4
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = [r for r in map(json.loads, lines) if "kl" in r]
    assert len(logged) == 4 and all(r["kl"] > 0 for r in logged)


# --------------------------------------------------------------------------- the dense score


def test_the_full_contexts_continuation_nll_is_the_plain_models_loss():
    """The full context's KV then the continuation is the plain model reading the whole
    window: its score is the language model's own mean NLL of the tokens after the first."""
    comp = cc.build_compressor("full_context", tiny_model())
    windows = continuation_windows(comp, DOCS, size=20, limit=3, context_fraction=0.5)
    score = continuation_nll(comp, windows, batch_size=2)
    for value, w in zip(score.window_nll, windows, strict=True):
        ids = torch.tensor([list(w.context_ids) + list(w.target_ids)])
        with torch.no_grad():
            logits = comp.lm(input_ids=ids).logits[0].float()
        start = len(w.context_ids)  # the logits at the first target token predict the second
        expected = torch.nn.functional.cross_entropy(
            logits[start : ids.shape[1] - 1], ids[0, start + 1 :]
        )
        assert value == pytest.approx(float(expected), rel=1e-4)
    assert score.mean == pytest.approx(sum(score.window_nll) / 3)
    assert paired_nll_difference(score, score).mean == 0


def test_every_system_scores_the_same_windows_in_eval_mode():
    """A learned compressor is scored in eval mode, without gradients, and handed back in
    the mode it was in; truncations at the same budget score the same tokens."""
    sac = make_sac(tiny_model(), ratio=2)
    windows = continuation_windows(sac, DOCS, size=24, limit=4, context_fraction=0.75)
    sac.train()
    first = continuation_nll(sac, windows, batch_size=3)
    assert sac.training and len(first.window_nll) == 4
    assert continuation_nll(sac, windows, batch_size=1).window_nll == pytest.approx(
        first.window_nll, rel=1e-4
    )
    head, tail = (
        continuation_nll(
            cc.build_compressor("truncation", tiny_model(), ratio=2, truncation=m), windows
        )
        for m in ("head", "tail")
    )
    assert len(head.window_nll) == len(tail.window_nll) == 4
    with pytest.raises(InvalidInputError, match="same windows"):
        paired_nll_difference(head, continuation_nll(sac, windows[:2]))


def test_windows_that_cannot_be_scored_are_refused():
    comp = cc.build_compressor("full_context", tiny_model())
    with pytest.raises(InvalidInputError, match="no window"):
        continuation_windows(comp, ["short"], size=200, limit=2)
    with pytest.raises(InvalidInputError, match="under 2 continuation tokens"):
        continuation_windows(comp, DOCS, size=4, limit=2, context_fraction=0.75)
    with pytest.raises(InvalidInputError, match="limit"):
        continuation_windows(comp, DOCS, size=20, limit=0)


def test_sources_can_be_mixed_in_proportion_to_their_size(tmp_path, qa_file):
    """``weight: examples`` weighs each source by its number of examples: a stream split over
    sources of very different sizes is read at one pace; anything else is refused."""
    cfg = stream_config(tmp_path)
    cfg.data = [
        DataSource(cfg.data[0].source, "continuation", weight="examples"),
        DataSource(f"jsonl:{qa_file}", "qa", weight="examples"),
    ]
    trainer = Trainer(cfg)
    assert [s.weight for s in trainer.sources] == [len(s.examples) for s in trainer.sources]
    assert trainer.sampler.weights == [s.weight for s in trainer.sources]
    for bad in ("many", True, 0, -1.0):
        cfg.data[1].weight = bad
        with pytest.raises(InvalidInputError, match="weight must be"):
            cfg.validate()
    # YAML 1.1 reads 5e-1 as a string: it is the number it spells.
    assert DataSource("x", weight="5e-1").weight == 0.5
