"""One API suite that every method passes, plus exact compressed lengths (METHODS.md §1-§4)."""

from __future__ import annotations

import pytest
import torch

import ctxcompress as cc
from ctxcompress.methods import TRAINABLE_METHODS
from ctxcompress.models import output_cache
from ctxcompress.positions import sac_compressed_length
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, randomize_trainables

ALL = list(cc.METHODS)
HARD = [m for m in ALL if m not in TRAINABLE_METHODS]


def build(method, base=None, **options):
    if method in TRAINABLE_METHODS:
        options.setdefault("lora_rank", 8)
        options.setdefault("lora_alpha", 16)
    comp = cc.build_compressor(method, base or tiny_model(), **options)
    randomize_trainables(comp)
    return comp


def tensors(ctx):
    return [t for t in (ctx.keys, ctx.values, ctx.embeds) if t is not None]


@pytest.mark.parametrize("method", ALL)
def test_compress_gives_the_documented_context(method):
    comp = build(method, ratio=4)
    ctx = comp.compress(TEXT * 8)
    assert isinstance(ctx, cc.CompressedContext) and ctx.method == method
    assert ctx.kind == comp.context_kind
    assert ctx.original_length == len(comp.context_ids(TEXT * 8))
    assert ctx.compressed_length == comp.compressed_length(ctx.original_length)
    assert ctx.positions is not None and len(ctx.positions) == ctx.compressed_length
    for t in tensors(ctx):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("method", ALL)
def test_batch_equals_single(method):
    comp = build(method, ratio=5)
    texts = [TEXT * 9, "Short.", TEXT * 3, TEXT * 20]
    for got, text in zip(comp.compress(texts), texts, strict=True):
        alone = comp.compress(text)
        assert got.compressed_length == alone.compressed_length
        for a, b in zip(tensors(got), tensors(alone), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ALL)
def test_many_questions_batched_equal_one_at_a_time(method):
    comp = build(method, ratio=4)
    ctx = comp.compress(TEXT * 6)
    qs = ["Who wrote the report?", "Where?", "In which year did the committee meet?"]
    batched = comp.generate(ctx, qs, max_new_tokens=6)
    assert batched == [comp.generate(ctx, q, max_new_tokens=6) for q in qs]
    contexts = comp.compress([TEXT, TEXT * 5, "Other text."])
    paired = comp.generate(contexts, qs, max_new_tokens=6)
    assert paired == [
        comp.generate(c, q, max_new_tokens=6) for c, q in zip(contexts, qs, strict=True)
    ]


@pytest.mark.parametrize("method", ALL)
def test_save_load_round_trip(method, tmp_path):
    comp = build(method, ratio=3)
    comp.save_pretrained(tmp_path / "comp")
    back = cc.load_compressor(tmp_path / "comp", base_model=tiny_model())
    assert type(back) is type(comp) and back.config == comp.config
    assert back.fingerprint == comp.fingerprint
    ours, theirs = comp.trainable_parameters(), back.trainable_parameters()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    ctx = comp.compress(TEXT * 4)
    again = back.compress(TEXT * 4)
    for a, b in zip(tensors(ctx), tensors(again), strict=True):
        assert torch.equal(a, b)
    loaded = back.load_context(ctx.save(tmp_path / "c.ctx"))
    assert back.generate(loaded, "Who?", max_new_tokens=5) == comp.generate(
        ctx, "Who?", max_new_tokens=5
    )


@pytest.mark.parametrize("method", ALL)
def test_bad_input_is_refused_clearly(method, tmp_path):
    comp = build(method, ratio=4)
    for bad, match in (("", "empty"), (7, "str"), ([], "non-empty")):
        with pytest.raises(cc.InvalidInputError, match=match):
            comp.compress(bad)
    with pytest.raises(cc.InvalidInputError, match="ratio"):
        cc.build_compressor(method, tiny_model(), ratio=0)
    ctx = comp.compress(TEXT)
    with pytest.raises(cc.InvalidInputError, match="max_new_tokens"):
        comp.generate(ctx, "Who?", max_new_tokens=0)
    with pytest.raises(cc.InvalidInputError, match="token id"):
        comp.compress_ids([[1, 2, 10**6]])
    path = ctx.save(tmp_path / "x.ctx")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(cc.CorruptFileError):
        comp.load_context(path)
    short = build(method, base=tiny_model(max_positions=64), ratio=4)
    with pytest.raises(cc.ContextTooLongError):
        short.compress(TEXT * 5)


@pytest.mark.parametrize("method", ALL)
def test_contexts_of_other_methods_are_refused(method):
    comp = build(method, ratio=4)
    other = "sac" if method != "sac" else "icae"
    foreign = build(other, ratio=4).compress(TEXT)
    with pytest.raises(cc.ContextMismatchError, match="method"):
        comp.generate(foreign, "Who?")


@pytest.mark.parametrize("method", [m for m in ALL if m not in ("full_context", "prompt_tuned")])
@pytest.mark.parametrize("r", [1, 2, 5, 15, 51])
@pytest.mark.parametrize("length", [1, 3, 40, 510, 511, 1100])
def test_compressed_lengths_are_exact(method, r, length):
    """Every method keeps exactly the SAC anchor count per chunk (one chunk size for all
    methods here, so the same budget): equal compression at equal ratio."""
    comp = build(method, ratio=r, chunk_size=510)
    ids = [(11 * i) % 300 + 3 for i in range(length)]
    (ctx,) = comp.compress_ids([ids])
    expected = 0 if method == "no_context" else sac_compressed_length(length, r, 510)
    assert ctx.compressed_length == expected
    if method != "truncation":  # compressed_length() assumes the prompt prefix (see below)
        assert comp.compressed_length(length) == expected


@pytest.mark.parametrize("r", [2, 4])
def test_truncation_keeps_the_prompt_prefix_and_budgets_the_document(r):
    comp = build("truncation", ratio=r)
    text = TEXT * 4
    ids = comp.context_ids(text)
    prefix = comp.context_prefix_ids()
    assert ids[: len(prefix)] == prefix and len(prefix) == 1 + len(
        comp.tokenizer("### Context:\n", add_special_tokens=False).input_ids
    )
    body = ids[len(prefix) :]
    budget = sac_compressed_length(len(body), r, comp.config.chunk_size)
    assert comp.keep(ids) == prefix + body[:budget]
    assert comp.compress(text).compressed_length == len(prefix) + budget


@pytest.mark.parametrize("length", [1, 37, 600])
def test_full_context_keeps_everything(length):
    comp = build("full_context", ratio=4)
    (ctx,) = comp.compress_ids([[3 + i % 300 for i in range(length)]])
    assert ctx.compressed_length == length


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_trainable_methods_expose_training_hooks(method):
    """Trainable parameters, contexts with gradients, and a differentiable decoder call."""
    comp = build(method, ratio=4)
    comp.train()
    contexts = comp.encode_ids([comp.context_ids(TEXT * 3), comp.context_ids("Short text.")])
    assert all(any(t.requires_grad for t in tensors(c)) for c in contexts)
    logits = comp.decoder_forward(contexts, [comp.question_ids("Who?"), [5, 6, 7]])
    logits[:, -2:].logsumexp(-1).sum().backward()
    trainable = comp.trainable_parameters()
    assert "lm_embedding" in trainable
    reached = [n for n, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert "lm_embedding" in reached
    assert any("lora_" in n for n in reached)
    assert any(n in ("anchor_embedding", "memory_embedding", "prompt_embedding") for n in reached)
    for name, p in comp.named_parameters():
        if name not in trainable:
            assert p.grad is None, name


@pytest.mark.parametrize("method", HARD)
def test_hard_baselines_have_nothing_to_train(method):
    comp = build(method, ratio=4)
    assert comp.trainable_parameters() == {}
    assert comp.lm_embedding is None


def test_full_context_reproduces_the_plain_model():
    base = tiny_model()
    comp = cc.build_compressor("full_context", base)
    ctx = comp.compress(TEXT * 3)
    question = "Who wrote the report?"
    ids = comp.context_ids(TEXT * 3) + comp.question_ids(question)
    out = base.model.generate(
        torch.tensor([ids]),
        max_new_tokens=10,
        do_sample=False,
        eos_token_id=comp._eos_ids(),
        pad_token_id=base.tokenizer.pad_token_id,
    )
    new = [t for t in out[0, len(ids) :].tolist() if t not in comp._eos_ids()]
    expected = base.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert comp.generate(ctx, question, max_new_tokens=10) == expected


@pytest.mark.parametrize("mode", ["head", "tail", "head_tail"])
@pytest.mark.parametrize("r", [2, 4, 15])
def test_truncation_keeps_exactly_the_budget(mode, r):
    comp = cc.build_compressor("truncation", tiny_model(), ratio=r, truncation=mode)
    ids = [3 + i % 300 for i in range(700)]
    budget = sac_compressed_length(700, r, comp.config.chunk_size)
    kept = comp.keep(ids)
    assert len(kept) == budget
    if mode == "head":
        assert kept == ids[:budget]
    elif mode == "tail":
        assert kept == ids[700 - budget :]
    else:
        head = (budget + 1) // 2
        assert kept == ids[:head] + ids[700 - (budget - head) :]
    (ctx,) = comp.compress_ids([ids])
    assert ctx.compressed_length == budget and ctx.original_length == 700
    # Its KV is the plain model's KV of exactly those tokens.
    with torch.no_grad():
        ref = output_cache(comp.lm(input_ids=torch.tensor([kept]), use_cache=True))
    torch.testing.assert_close(ctx.keys[0], ref.layers[0].keys[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", TRAINABLE_METHODS)
def test_merged_encoder_gives_the_lora_result(method):
    comp = build(method, ratio=4)
    texts = [TEXT * 9, TEXT * 2]
    question = "Who wrote the report?"
    weights = {n: p.clone() for n, p in comp.lm.named_parameters()}
    lora = comp.compress(texts)
    comp.merge_encoder(True)
    merged = comp.compress(texts)
    for a, b in zip(lora, merged, strict=True):
        for x, y in zip(tensors(a), tensors(b), strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # The decoder still reads the frozen base: every weight is back, unchanged.
    after = dict(comp.lm.named_parameters())
    assert set(after) == set(weights)
    for name, value in weights.items():
        assert torch.equal(after[name], value), name
    assert comp.generate(merged[0], question, max_new_tokens=5) == comp.generate(
        lora[0], question, max_new_tokens=5
    )
    # A training update invalidates the merged copies.
    with torch.no_grad():
        for p in comp.trainable_parameters().values():
            p.mul_(1.5)
    updated = comp.compress(texts[0])
    comp.merge_encoder(False, keep_copies=True)  # off, copies kept for a later switch back
    assert comp._merged_cache is not None
    comp.merge_encoder(False)
    assert comp._merged_cache is None  # off: the copies' memory is freed
    for x, y in zip(tensors(updated), tensors(comp.compress(texts[0])), strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    # Training (grad enabled) always runs the LoRA path, so gradients reach the adapters.
    comp.merge_encoder(True)
    comp.train()
    loss, _ = comp([comp.context_ids(TEXT)], [comp.question_ids(question)], [[5, 6]])
    loss.backward()
    grads = [p.grad for n, p in comp.trainable_parameters().items() if "lora_A" in n]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_length_batches_do_not_pad_a_short_remainder_to_a_full_chunk():
    from ctxcompress.methods.encoding import encode_in_length_batches

    seen = []

    def encode(batch):
        seen.append(sorted(batch))
        return [n * 10 for n in batch]

    lengths = [510, 2, 300, 290, 510, 280]
    out = encode_in_length_batches(lengths, 8, lambda n: n, encode)
    assert out == [n * 10 for n in lengths]  # results in the original order
    assert seen == [[510, 510], [280, 290, 300], [2]]  # 300 would be padded by 70 %
    # The batch-size cap still holds for equal lengths.
    seen.clear()
    encode_in_length_batches([7] * 5, 2, lambda n: n, encode)
    assert seen == [[7, 7], [7, 7], [7]]
    # So does the padded-token cap (MAX_BATCH_TOKENS): a row longer than it runs alone.
    seen.clear()
    encode_in_length_batches([400, 400, 400, 2000], 8, lambda n: n, encode, max_tokens=1024)
    assert seen == [[2000], [400, 400], [400]]
    seen.clear()
    encode_in_length_batches([400, 400, 400], 8, lambda n: n, encode, max_tokens=None)
    assert seen == [[400, 400, 400]]


@pytest.mark.parametrize("method", ["truncation", "prompt_tuned"])
@pytest.mark.parametrize("length", [3, 40, 600])
def test_truncation_with_the_prefix_in_its_budget_keeps_as_many_entries_as_sac(method, length):
    options = {"context": "truncation"} if method == "prompt_tuned" else {}
    comp = build(method, ratio=4, prefix_in_budget=True, **options)
    ids = comp.context_prefix_ids() + [(7 * i) % 300 + 3 for i in range(length)]
    (ctx,) = comp.compress_ids([ids])
    expected = max(len(comp.context_prefix_ids()), sac_compressed_length(len(ids), 4, 510))
    assert ctx.compressed_length == expected == comp.compressed_length(len(ids))
    assert comp.keep(ids) == ids[:expected]
