"""The GPU path (issue 22): every method on a CUDA device gives what it gives on the CPU.

Marked ``cuda`` and skipped without a CUDA device, so ``make test`` stays green on CPU-only
machines; ``benchmarks/gpu/run.sh`` runs them on a GPU machine. ``CTXCOMPRESS_TEST_DEVICE=cpu``
runs the same code with the CPU standing in for the device (a dry run of this file: it
proves the tests themselves work, not the GPU).

Tolerances, stated once: float32 on the device matches the CPU to 1e-4 (contexts, logits)
and gives the same greedy answers; bfloat16 rounds every weight and activation to 8 bits of
mantissa, so its contexts match the CPU's float32 ones to 6e-2 (absolute and relative) and
its first-answer-token logits have a cosine similarity of at least 0.99 with the CPU's.
"""

from __future__ import annotations

import os

import pytest
import torch

import ctxcompress as cc
from ctxcompress import generation
from ctxcompress.testing import tiny_model
from ctxcompress.training import Trainer, parse_config
from tests.conftest import TEXT, TINY_METHOD_OPTIONS, randomize_trainables

DEVICE = os.environ.get("CTXCOMPRESS_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        ON_CUDA and not torch.cuda.is_available(),
        reason="needs a CUDA device (CTXCOMPRESS_TEST_DEVICE=cpu runs a CPU dry run)",
    ),
]

QUESTIONS = ["Who wrote the report?", "Where did they meet?", "When?"]
TEXTS = [TEXT * 3, "A short one about Paris."]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 6e-2}
DTYPES = [torch.float32, torch.bfloat16]


def on_cpu_and_device(method, tmp_path, dtype=torch.float32, attn="sdpa"):
    """The same trained compressor twice: on the CPU in float32, and loaded on DEVICE."""
    comp = cc.build_compressor(
        method,
        tiny_model("llama", attn_implementation=attn),
        ratio=4,
        **TINY_METHOD_OPTIONS[method],
    )
    randomize_trainables(comp)
    comp.save_pretrained(tmp_path / method)
    device = cc.load_compressor(
        tmp_path / method,
        base_model=tiny_model("llama", attn_implementation=attn),
        device=DEVICE,
        dtype=dtype,
    )
    return comp, device


def assert_contexts_close(ctx, reference, tolerance):
    for name in ("keys", "values", "embeds"):
        got, want = getattr(ctx, name), getattr(reference, name)
        assert (got is None) == (want is None), name
        if got is not None:
            assert got.device.type == torch.device(DEVICE).type, f"{name} left the device"
            torch.testing.assert_close(
                got.to("cpu", torch.float32), want, atol=tolerance, rtol=tolerance
            )
    assert ctx.compressed_length == reference.compressed_length


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", list(TINY_METHOD_OPTIONS))
def test_every_method_compresses_and_answers_on_the_device_as_on_the_cpu(method, dtype, tmp_path):
    cpu, dev = on_cpu_and_device(method, tmp_path, dtype)
    assert dev.device.type == torch.device(DEVICE).type and dev.dtype == dtype
    for ctx, reference in zip(dev.compress(TEXTS), cpu.compress(TEXTS), strict=True):
        assert_contexts_close(ctx, reference, TOLERANCE[dtype])
    ctx, reference = dev.compress(TEXTS[0]), cpu.compress(TEXTS[0])
    q_ids = cpu.question_ids(QUESTIONS[0])
    logits = dev.decoder_forward([ctx], [q_ids])[0, -1].float().cpu()
    want = cpu.decoder_forward([reference], [q_ids])[0, -1]
    if dtype == torch.float32:
        torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
        assert dev.generate(ctx, QUESTIONS, max_new_tokens=6) == cpu.generate(
            reference, QUESTIONS, max_new_tokens=6
        )
    else:
        assert torch.cosine_similarity(logits, want, dim=0) >= 0.99
        assert len(dev.generate(ctx, QUESTIONS, max_new_tokens=6)) == len(QUESTIONS)


@pytest.mark.parametrize("method", ["sac", "pic", "icae"])
def test_custom_masks_read_the_same_by_sdpa_and_eager_on_the_device(method, tmp_path):
    """Padded batches under SAC's bidirectional chunk mask and the memory methods' masks:
    the device's SDPA kernels read them exactly as eager attention (and as the CPU) does."""
    _, sdpa = on_cpu_and_device(method, tmp_path / "s", attn="sdpa")
    cpu_eager, eager = on_cpu_and_device(method, tmp_path / "e", attn="eager")
    contexts = sdpa.compress(TEXTS), eager.compress(TEXTS), cpu_eager.compress(TEXTS)
    for a, b, c in zip(*contexts, strict=True):
        assert_contexts_close(a, c, 1e-4)
        assert_contexts_close(b, c, 1e-4)


def test_shared_prefix_decoding_on_the_device_equals_one_by_one(tmp_path, monkeypatch):
    cpu, dev = on_cpu_and_device("sac", tmp_path)
    used = []
    real = generation.shared_prefix_attention
    monkeypatch.setattr(
        generation, "shared_prefix_attention", lambda *a, **k: used.append(1) or real(*a, **k)
    )
    ctx = dev.compress(TEXTS[0])
    batched = dev.generate(ctx, QUESTIONS, max_new_tokens=6)
    assert used, "the batched questions did not go through shared-prefix attention"
    assert batched == [dev.generate(ctx, q, max_new_tokens=6) for q in QUESTIONS]
    assert batched == cpu.generate(cpu.compress(TEXTS[0]), QUESTIONS, max_new_tokens=6)


def test_contexts_move_between_devices_through_files(tmp_path):
    """Compress on the device, answer on the CPU from the saved file, and back."""
    cpu, dev = on_cpu_and_device("sac", tmp_path)
    assert dev.fingerprint == cpu.fingerprint  # float32: the same trained tensors
    dev.compress(TEXTS[0]).save(tmp_path / "from_device.ctx")
    cpu.compress(TEXTS[0]).save(tmp_path / "from_cpu.ctx")
    from_device = cc.CompressedContext.load(tmp_path / "from_device.ctx")
    from_cpu = cc.CompressedContext.load(tmp_path / "from_cpu.ctx", device=DEVICE)
    assert from_cpu.keys.device.type == torch.device(DEVICE).type
    expected = cpu.generate(cpu.compress(TEXTS[0]), QUESTIONS, max_new_tokens=6)
    assert cpu.generate(from_device, QUESTIONS, max_new_tokens=6) == expected
    assert dev.generate(from_cpu, QUESTIONS, max_new_tokens=6) == expected


def test_training_steps_under_accelerate_with_bf16_autocast(qa_file, tmp_path):
    """Accelerate places the compressor on the device; bf16 autocast (on CUDA) trains the
    float32 master weights: the loss is finite and falls on a memorisable task, only trainable
    tensors move, and the saved result loads on the CPU with the same fingerprint."""
    cfg = parse_config(
        {
            "method": "sac",
            "base_model": "tiny",
            "method_options": {"ratio": 2, "lora_rank": 8, "lora_alpha": 16},
            "data": [{"source": f"jsonl:{qa_file}"}],
            "train": {
                "steps": 8,
                "batch_size": 4,
                "micro_batch_size": 2,
                "lr": 1e-2,
                "warmup_steps": 0,
                "log_every": 1,
                "save_every": 100,
                "mixed_precision": "bf16" if ON_CUDA else "no",
            },
            "output_dir": str(tmp_path / "run"),
        }
    )
    losses: list[float] = []
    trainer = Trainer(
        cfg,
        base_model=tiny_model(initializer_range=0.2),
        on_step=lambda step, m: losses.append(m["loss"]),
    )
    comp = trainer.compressor
    frozen = {n: p.detach().clone() for n, p in comp.lm.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in comp.trainable_parameters().items()}
    trainer.run()
    assert comp.device.type == torch.device(DEVICE).type
    after = comp.trainable_parameters()
    assert all(p.dtype == torch.float32 for p in after.values())  # fp32 master weights
    # Every trainable tensor moved but the last layer's query adapter, which a KV context
    # never reads (see test_architectures).
    unread = f"layers.{comp.lm.config.num_hidden_layers - 1}.self_attn.q_proj."
    still = [n for n, p in after.items() if torch.equal(before[n], p.detach())]
    assert all(unread in n for n in still), still
    now = dict(comp.lm.named_parameters())
    assert all(torch.equal(frozen[n], now[n].detach()) for n in frozen)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    loaded = cc.load_compressor(
        tmp_path / "run" / "compressor", base_model=tiny_model(initializer_range=0.2)
    )
    assert loaded.device.type == "cpu" and loaded.fingerprint == comp.fingerprint


def test_building_blocks_on_the_device(tmp_path):
    """Composition (keys re-rotated on the device), growing a context, int8 storage and a
    token budget: the same results on the device as on the CPU."""
    cpu, dev = on_cpu_and_device("sac", tmp_path)
    a_cpu, b_cpu = cpu.compress(TEXTS)
    a_dev, b_dev = dev.compress(TEXTS)
    assert_contexts_close(dev.compose([a_dev, b_dev]), cpu.compose([a_cpu, b_cpu]), 1e-4)
    grown_dev = dev.extend(dev.compress(TEXTS[0], keep_tail=True), " More about Paris.")
    grown_cpu = cpu.extend(cpu.compress(TEXTS[0], keep_tail=True), " More about Paris.")
    assert_contexts_close(grown_dev, grown_cpu, 1e-4)
    a_dev.save(tmp_path / "q.ctx", quantize="int8")
    back = dev.load_context(tmp_path / "q.ctx")
    assert_contexts_close(back, a_cpu.as_stored("int8"), 1e-4)
    budget_dev, budget_cpu = dev.compress(TEXTS[0], budget=4), cpu.compress(TEXTS[0], budget=4)
    assert_contexts_close(budget_dev, budget_cpu, 1e-4)
