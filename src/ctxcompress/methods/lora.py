"""The LoRA adapters: injecting them, switching between encoder, decoder and the frozen base,
and the merged-weights inference option.

Encoder and decoder share one set of base weights: the encoder is the base LM with the
compressor's adapter (peft's ``default``) active, the decoder is the same LM with every
adapter switched off — or, with ``decoder_lora_rank > 0``, with only the second adapter
(``decoder``) active (issue 38, lever 3). The frozen base itself (every adapter off) is what
the attention sink's prefill and a full-context distillation teacher run (peft injects the
LoRA layers in place).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..errors import ModelLoadError
from .config import CompressorConfig

DEFAULT_TARGETS = CompressorConfig.lora_target_modules
ENCODER_ADAPTER = "default"
"""peft's name of the first adapter: the encoder's (saved in ``adapter/``)."""
DECODER_ADAPTER = "decoder"
"""The decoder adapter's name (saved in ``adapter/decoder/``)."""
FUSED_QKV = "qkv_proj"
"""Phi-3's fused query/key/value projection: the papers' q/v LoRA can only adapt it whole."""


def lora_targets(lm: nn.Module, config: CompressorConfig) -> list[str]:
    """The module names the adapter goes on: ``config.lora_target_modules``, except that the
    default (the papers' ``q_proj``/``v_proj``) becomes ``qkv_proj`` on models that fuse the
    three projections (Phi-3). Names that match no module are refused, listing those that do.
    """
    leaves = {name.rsplit(".", 1)[-1] for name, m in lm.named_modules() if isinstance(m, nn.Linear)}
    targets = list(config.lora_target_modules)
    if tuple(targets) == DEFAULT_TARGETS and not set(targets) & leaves and FUSED_QKV in leaves:
        targets = [FUSED_QKV]
    if not set(targets) & leaves:
        raise ModelLoadError(
            f"lora_target_modules {targets} match no linear layer of this "
            f"{getattr(getattr(lm, 'config', None), 'model_type', 'model')}; its linear "
            f"layers are {sorted(leaves)}: set lora_target_modules to some of them"
        )
    return targets


def inject_lora(lm: nn.Module, config: CompressorConfig) -> nn.Module:
    """``lm`` with the encoder adapter of ``config`` injected in place (peft), or ``lm`` itself
    when ``lora_rank`` is 0. Refuses a model that already carries another adapter."""
    if config.lora_rank <= 0:
        return lm
    if adapter_layers(lm):
        raise ModelLoadError(
            "This base model object already carries another compressor's LoRA adapter "
            "(adapters are injected in place, and the decoder must stay the frozen base). "
            "Give each compressor its own model: load it again with load_base_model(...)."
        )
    targets = lora_targets(lm, config)

    def lora(rank: int, alpha: int) -> LoraConfig:
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            bias="none",
        )

    # peft draws LoRA A from torch's global generator: seed it from the config (in a forked
    # RNG, leaving the caller's state alone) so that a rebuild is identical.
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        model = get_peft_model(lm, lora(config.lora_rank, config.lora_alpha))
        if config.decoder_lora_rank:
            rank = config.decoder_lora_rank
            alpha = config.decoder_lora_alpha or 2 * rank
            # LoRA B starts at zero: until trained, the decoder is exactly the frozen base.
            model.add_adapter(DECODER_ADAPTER, lora(rank, alpha))
            model.set_adapter(ENCODER_ADAPTER)  # the encoder's is active outside decoding
            # peft freezes an inactive adapter; both are trained (see only_adapter).
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.requires_grad_(True)
    return model


class EncoderAdapterMixin:
    """Encoder/decoder switching of a :class:`~ctxcompress.methods.base.Compressor` (its
    ``lm``, ``model`` — the peft wrapper or ``lm`` — and ``trainable_parameters``)."""

    lm: nn.Module
    model: nn.Module
    training: bool
    _merge_encoder: bool = False
    _merged_cache: tuple[tuple[int, ...], list[nn.Parameter]] | None = None

    @property
    def has_decoder_adapter(self) -> bool:
        """Whether the decoder reads with an adapter of its own (``decoder_lora_rank > 0``)."""
        return isinstance(self.model, PeftModel) and DECODER_ADAPTER in self.model.peft_config

    @contextlib.contextmanager
    def decoder_mode(self) -> Iterator[None]:
        """Run the decoder: the same base weights with the decoder adapter on, or, without
        one, every adapter switched off (the frozen decoder of the papers)."""
        if not self.has_decoder_adapter:
            with adapters_disabled(self.lm):
                yield
            return
        with only_adapter(self.lm, DECODER_ADAPTER):
            yield

    @contextlib.contextmanager
    def frozen_mode(self) -> Iterator[None]:
        """Run the frozen base model, every adapter off (the attention sink's own KV, the
        full-context distillation teacher)."""
        with adapters_disabled(self.lm):
            yield

    @contextlib.contextmanager
    def encoder_mode(self) -> Iterator[None]:
        """Run the encoder: this compressor's adapter on (a compressor without an adapter of
        its own runs the frozen base, even if the model object carries another's adapter)."""
        if not isinstance(self.model, PeftModel):
            with adapters_disabled(self.lm):
                yield
        elif self._merge_encoder and not torch.is_grad_enabled() and not self.training:
            with self._merged_weights_in_place():
                yield
        else:
            yield

    def merge_encoder(self, enabled: bool = True, *, keep_copies: bool = False) -> None:
        """Inference option: run the encoder with the LoRA update folded into copies of the
        adapted weights (``W + s·BA``) instead of LoRA's extra low-rank matmuls per layer.

        Faster encoding for one extra copy of every adapted weight matrix in memory (SmolLM2-135M
        with q/v adapters: 13.3 M values, 53 MB in float32). Used only under ``no_grad`` /
        ``inference_mode`` in eval mode; training always runs the LoRA path. The copies are
        rebuilt when a trainable tensor changes. Same result up to rounding in the model dtype.
        Disabling frees the copies unless ``keep_copies`` (a benchmark switching back and
        forth measures the merged encoder, not the copying).
        """
        self._merge_encoder = bool(enabled)
        if not enabled and not keep_copies:
            self._merged_cache = None

    @property
    def merged_encoder_bytes(self) -> int:
        """Memory the merged-LoRA encoder's weight copies take (0 without an adapter)."""
        if not isinstance(self.model, PeftModel):
            return 0
        weights = [layer.get_base_layer().weight for layer in adapter_layers(self.lm)]
        return sum(w.numel() * w.element_size() for w in weights)

    def _merged_weights(self, layers: list[BaseTunerLayer]) -> list[nn.Parameter]:
        versions = tuple(p._version for p, _ in lora_flags(layers))  # the LoRA weights
        if self._merged_cache is None or self._merged_cache[0] != versions:
            merged = []
            with torch.no_grad():
                for layer in layers:
                    weight = layer.get_base_layer().weight
                    delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
                    merged.append(nn.Parameter((weight + delta).to(weight.dtype), False))
            self._merged_cache = (versions, merged)
        return self._merged_cache[1]

    @contextlib.contextmanager
    def _merged_weights_in_place(self) -> Iterator[None]:
        """Swap the merged copies in for the adapted base weights (adapters off); restore."""
        layers = adapter_layers(self.lm)
        merged = self._merged_weights(layers)
        originals = [layer.get_base_layer().weight for layer in layers]
        with adapters_disabled(self.lm):
            try:
                for layer, weight in zip(layers, merged, strict=True):
                    layer.get_base_layer()._parameters["weight"] = weight
                yield
            finally:
                for layer, weight in zip(layers, originals, strict=True):
                    layer.get_base_layer()._parameters["weight"] = weight


@contextlib.contextmanager
def only_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Make ``name`` the one active adapter of every (peft) layer of ``model``; restore each
    layer's active adapters, on/off state and weights' ``requires_grad`` on exit
    (:func:`lora_flags`)."""
    layers = adapter_layers(model)
    previous = [(list(layer.active_adapters), layer.disable_adapters) for layer in layers]
    flags = lora_flags(layers)
    for layer in layers:
        layer.enable_adapters(True)
        layer.set_adapter(name)
    for param, flag in flags:  # the active adapter's weights require gradients while active
        param.requires_grad_(flag or param.requires_grad)
    try:
        yield
    finally:
        for layer, (active, was_disabled) in zip(layers, previous, strict=True):
            layer.set_adapter(active)
            layer.enable_adapters(not was_disabled)
        for param, flag in flags:
            param.requires_grad_(flag)


_ADAPTER_LAYERS: weakref.WeakKeyDictionary[nn.Module, list[BaseTunerLayer]] = (
    weakref.WeakKeyDictionary()
)


def adapter_layers(model: nn.Module) -> list[BaseTunerLayer]:
    """The (peft) adapter layers of ``model``. Found once per model that has any: adapters
    are injected once, when a compressor is built (:func:`inject_lora`), and every switch
    below needs them — walking SmolLM2's ~600 modules each time cost ~10 ms a compression."""
    layers = _ADAPTER_LAYERS.get(model)
    if layers is None:
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        if layers:
            _ADAPTER_LAYERS[model] = layers
    return layers


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Switch off every (peft) adapter injected into ``model``; restore the state on exit."""
    layers = adapter_layers(model)
    previous = [layer.disable_adapters for layer in layers]
    flags = lora_flags(layers)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, was_disabled in zip(layers, previous, strict=True):
            layer.enable_adapters(not was_disabled)
        for param, flag in flags:  # peft's re-enabling froze every inactive adapter
            param.requires_grad_(flag)


def lora_flags(layers: list[BaseTunerLayer]) -> list[tuple[nn.Parameter, bool]]:
    """Every LoRA weight of ``layers`` with its ``requires_grad`` now. peft's switches set
    these flags (on for the active adapter, off for the others), and autograd drops the
    gradient of a leaf whose flag is off when backward runs — after the switch is undone —
    so the switches here put them back as they were: a decoder adapter trains too."""
    return [
        (p, p.requires_grad)
        for layer in layers
        for n, p in layer.named_parameters()
        if "lora_" in n
    ]
