"""The training loop, on `accelerate` (one CPU, or DDP / FSDP / DeepSpeed via
``accelerate launch``).

Per optimizer step the global batch (``train.batch_size`` examples) is drawn by the
deterministic :class:`MixtureSampler`; process r takes its share, split into micro-batches of
``train.micro_batch_size`` (the gradient-accumulation steps). The loss is the sum of token
cross-entropies divided by the number of target tokens in the *global* batch, so any split
over processes and accumulation steps gives the same gradient as one big batch.
AdamW (betas 0.9/0.95, weight decay 0.1), warm-up then constant (or cosine), gradient
clipping, checkpoints every ``save_every`` steps with exact resume.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from ..atomic import write_text_atomic
from ..errors import InvalidInputError
from ..methods import Compressor, build_compressor
from ..methods.lora import ENCODER_ADAPTER
from ..methods.persistence import CONFIG_FILE
from ..models import BaseModel, load_base_model
from . import checkpoint as ckpt
from .config import TrainConfig, changed_settings
from .distillation import CompressorTeacher, build_teacher_targets
from .examples import build_examples
from .objectives import TrainExample
from .precision import FrozenWeightsInLowPrecision, warn_if_bf16_is_emulated
from .sampler import MixtureSampler


class Trainer:
    """Trains one compressor as described by a :class:`TrainConfig`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        base_model: BaseModel | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        config.validate()
        self.config, self.loop, self.on_step = config, config.train, on_step
        self.output_dir = Path(config.output_dir)
        mixed_precision = self._mixed_precision()
        if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != (
            mixed_precision
        ):
            # accelerate keeps one precision per process and refuses a second Trainer with
            # another (benchmarks/train_step.py times both in one run): forget the old one,
            # keeping the process group (PartialState).
            AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            # Without a GPU, cpu=True lets several launched processes (torchrun, or
            # `accelerate launch --multi_gpu`) form a gloo process group.
            cpu=not torch.cuda.is_available(),
            mixed_precision=mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        acc = self.accelerator
        world = acc.num_processes
        per_step = self.loop.micro_batch_size * world
        if self.loop.batch_size % per_step:
            raise InvalidInputError(
                f"train.batch_size ({self.loop.batch_size}) must be a multiple of "
                f"micro_batch_size x processes ({self.loop.micro_batch_size} x {world})"
            )
        self.accumulation = self.loop.batch_size // per_step
        torch.manual_seed(self.loop.seed)
        random.seed(self.loop.seed)

        base = base_model or load_base_model(config.base_model, dtype=config.dtype)
        comp = build_compressor(config.method, base, **config.method_options)
        if self.loop.ratios and min(self.loop.ratios) != comp.config.ratio:
            raise InvalidInputError(
                f"train.ratios {self.loop.ratios}: the smallest must be the method's ratio "
                f"({comp.config.ratio}); set method_options.ratio: {min(self.loop.ratios)}"
            )
        if self.loop.ratio_ramp_steps:
            start = self.loop.ratio_ramp_start
            if start > comp.config.ratio or start < comp.lowest_training_ratio:
                raise InvalidInputError(
                    f"train.ratio_ramp_start={start}: {config.method} trains at ratios from "
                    f"{comp.lowest_training_ratio} to its ratio {comp.config.ratio}"
                    + (
                        " (its per-slot anchor embeddings exist only for its own ratio's "
                        "anchors: set method_options.anchor_embedding: shared, or none)"
                        if getattr(comp.config, "anchor_embedding", None) == "per_slot"
                        else " (it holds learned vectors per slot of its own ratio)"
                    )
                )
        if config.init_from:
            self._init_from(comp, Path(config.init_from))
        self.compressor = comp
        self.sources = [build_examples(comp, s, config) for s in config.data]
        self.sampler = MixtureSampler(
            [len(s.examples) for s in self.sources],
            [s.weight for s in self.sources],
            self.loop.seed,
        )
        distill = config.distill
        self.teacher = build_teacher_targets(distill, comp) if distill.enabled else None
        params = comp.trainable_parameters()
        if not params:
            raise InvalidInputError(f"{config.method} has nothing to train")
        optimizer = torch.optim.AdamW(
            self._param_groups(comp),
            lr=self.loop.lr,
            betas=tuple(self.loop.betas),
            weight_decay=self.loop.weight_decay,
        )
        make = (
            get_cosine_schedule_with_warmup
            if self.loop.schedule == "cosine"
            else get_constant_schedule_with_warmup
        )
        extra = {"num_training_steps": self.loop.steps} if self.loop.schedule == "cosine" else {}
        self.scheduler = make(optimizer, num_warmup_steps=self.loop.warmup_steps, **extra)
        self.model, self.optimizer = acc.prepare(comp, optimizer)
        self.low_precision = self._low_precision_weights(comp)
        self.step = 0
        # Time spent in optimisation steps up to ``self.step``, kept in checkpoints so a
        # resumed run reports the total: wall seconds, and this process's CPU seconds
        # (all threads; unlike wall time it does not count while the job is paused).
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self._resume()

    # ------------------------------------------------------------------ setup helpers
    def _mixed_precision(self) -> str:
        wanted = self.loop.mixed_precision
        if wanted != "auto":
            return wanted
        has_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if has_bf16 else "no"

    def _low_precision_weights(self, comp: Compressor) -> FrozenWeightsInLowPrecision | None:
        """With bf16 steps: the frozen base weights' bfloat16 copies (``precision.py``)."""
        if self.accelerator.mixed_precision != "bf16":
            return None
        warn_if_bf16_is_emulated(self.accelerator.device)
        if not self.loop.bf16_frozen_weights:
            return None
        teacher = getattr(self.teacher, "teacher", None)  # a compressor teacher's own model
        modules = [comp] + ([teacher.teacher] if isinstance(teacher, CompressorTeacher) else [])
        swaps = FrozenWeightsInLowPrecision(modules, comp.trainable_parameters().values())
        self._log(
            f"bf16 steps: {swaps.weights} frozen weights held in bfloat16 during steps "
            f"(+{swaps.extra_bytes / 2**20:.0f} MiB)"
        )
        return swaps

    def _param_groups(self, comp: Compressor) -> list[dict[str, Any]]:
        """One group at ``lr``, or, with ``embedding_lr_scale != 1``, the LoRA weights at
        ``lr`` and the learned vectors at ``lr * embedding_lr_scale``."""
        params = comp.trainable_parameters()
        scale = self.loop.embedding_lr_scale
        if scale == 1.0:
            return [{"params": list(params.values())}]
        vectors = set(comp.learned_embeddings())
        groups = [
            {"params": [p for n, p in params.items() if n not in vectors], "lr": self.loop.lr},
            {"params": [p for n, p in params.items() if n in vectors], "lr": self.loop.lr * scale},
        ]
        return [g for g in groups if g["params"]]

    @staticmethod
    def _init_from(comp: Compressor, path: Path) -> None:
        """Stage 2: start from a stage-1 compressor folder or checkpoint (weights only)."""
        folder = path / "compressor" if (path / "compressor" / CONFIG_FILE).is_file() else path
        if not (folder / CONFIG_FILE).is_file():
            raise InvalidInputError(f"init_from={path}: not a compressor folder or checkpoint")
        header = json.loads((folder / CONFIG_FILE).read_text())
        if header["method"] != comp.method:
            raise InvalidInputError(
                f"init_from={path} holds a {header['method']!r} compressor, not {comp.method!r}"
            )
        if header["base_model"]["fingerprint"] != comp.base_fingerprint:
            raise InvalidInputError(f"init_from={path} was trained on another base model")
        adapters = None
        if comp.has_decoder_adapter and not header["config"].get("decoder_lora_rank"):
            adapters = [ENCODER_ADAPTER]  # a stage-1 without one: the decoder's starts at zero
        comp.load_weights(folder, adapters=adapters)

    def _resume(self) -> None:
        cfg = self.config
        found = ckpt.list_checkpoints(self.output_dir)
        if cfg.resume == "never":
            if found:
                raise InvalidInputError(
                    f"{self.output_dir} already holds checkpoints ({found[-1].name}); "
                    "resume from them (resume: auto) or choose another output_dir"
                )
            return
        path = Path(cfg.resume) if cfg.resume != "auto" else (found[-1] if found else None)
        if path is None:
            return
        self._check_same_run(path)
        state, optimizer_state = ckpt.load_state(path)
        self.compressor.load_weights(path / "compressor")
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        rank_rng = path / f"rng-rank{self.accelerator.process_index}.safetensors"
        if rank_rng.is_file():
            ckpt.restore_rng(load_file(str(rank_rng)))
        ckpt.restore_python_rng(state["python_rng"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.train_cpu_seconds = float(state.get("train_cpu_seconds", 0.0))
        self._log(f"resumed from {path} at step {self.step}")

    def _check_same_run(self, checkpoint: Path) -> None:
        """Refuse to resume a checkpoint written under a different configuration."""
        saved_file = self.output_dir / "config.yaml"
        if not saved_file.is_file():
            return
        changed = changed_settings(yaml.safe_load(saved_file.read_text()) or {}, self.config)
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed)
            raise InvalidInputError(
                f"cannot resume {checkpoint}: it was trained with a different configuration "
                f"({details}). Use another output_dir for the new settings, or resume: never "
                "after removing the old checkpoints"
            )

    def _log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(f"[ctxcompress train] {message}")

    # ------------------------------------------------------------------ the loop
    def _my_micro_batches(self, batch: list[tuple[int, int]]) -> list[list[TrainExample]]:
        acc, mb = self.accelerator, self.loop.micro_batch_size
        examples = [self.sources[s].examples[i] for s, i in batch]
        micro = []
        for a in range(self.accumulation):
            start = (a * acc.num_processes + acc.process_index) * mb
            micro.append(examples[start : start + mb])
        return micro

    def _global_tokens(self, micro: list[list[TrainExample]]) -> tuple[int, int]:
        mine = sum(len(e.target_ids) for mb in micro for e in mb)
        seen = sum(len(e.context_ids) + len(e.target_ids) for mb in micro for e in mb)
        counts = torch.tensor([mine, seen], device=self.accelerator.device)
        counts = self.accelerator.reduce(counts, reduction="sum")
        return int(counts[0]), int(counts[1])

    def train_step(self) -> dict[str, float]:
        """One optimizer step over one global batch; returns its metrics."""
        acc, model = self.accelerator, self.model
        micro = self._my_micro_batches(self.sampler.take(self.loop.batch_size))
        targets, tokens = self._global_tokens(micro)
        acc.unwrap_model(model).training_step = self.step
        model.train()
        ratios = self._ratios(len(micro))
        low_precision = self.low_precision.active() if self.low_precision else nullcontext()
        with low_precision:
            loss_total, terms = self._accumulate(micro, targets, ratios)
        # Every trained tensor, whatever peft's adapter switching left in requires_grad (the
        # decoder adapter's weights require gradients only while it is active).
        trained = list(acc.unwrap_model(model).trainable_parameters().values())
        grad_norm = acc.clip_grad_norm_(trained, self.loop.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss_global = acc.reduce(loss_total, reduction="sum") / targets
        ce, kl, hidden = (acc.reduce(terms, reduction="sum") / targets).tolist()
        extra = {}
        if self.teacher is not None:
            extra = {"ce": ce, "kl": kl}
            if self.config.distill.hidden_weight > 0:
                extra["hidden"] = hidden
        return {
            "step": self.step,
            "loss": float(loss_global),
            **extra,
            "lr": self.scheduler.get_last_lr()[0],
            # DeepSpeed clips inside its engine and reports no norm here.
            "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
            "target_tokens": targets,
            "tokens": tokens,
            **({"ratios": ratios} if ratios else {}),
        }

    def _accumulate(
        self, micro: list[list[TrainExample]], targets: int, ratios: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over this process's micro-batches (gradients accumulate);
        returns the loss sum and the (CE, KL, hidden) sums for the log."""
        acc, model = self.accelerator, self.model
        compressor = acc.unwrap_model(model)
        loss_total = torch.zeros((), device=acc.device)
        terms = torch.zeros(3, device=acc.device)
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            at_ratio = compressor.at_ratio(ratios[i], training=True) if ratios else nullcontext()
            with nullcontext() if sync else acc.no_sync(model), acc.autocast(), at_ratio:
                loss_sum, _ = model(
                    [e.context_ids for e in mb],
                    [e.prompt_ids for e in mb],
                    [e.target_ids for e in mb],
                    [e.task for e in mb],
                    **self._distill_arguments(mb),
                )
                # DDP averages gradients over processes: scale so the result is the
                # global-token mean.
                loss = loss_sum * acc.num_processes / targets
            acc.backward(loss)
            loss_total += loss_sum.detach()
            parts = compressor.last_loss_terms
            terms += torch.tensor([parts[k] for k in ("ce", "kl", "hidden")], device=acc.device)
        return loss_total, terms

    def _ratios(self, micro_batches: int) -> list[int]:
        """The ratio of each of this step's micro-batches: the ramp's while it lasts, else
        drawn from ``train.ratios`` (none without) by the seed, the step and the process, so
        a resumed run draws the same."""
        ramp = self.config.ramp_ratio(self.step, self.compressor.config.ratio)
        if ramp is not None:
            return [ramp] * micro_batches
        if not self.loop.ratios:
            return []
        seed = (self.loop.seed * 1_000_003 + self.step) * 4099 + self.accelerator.process_index
        rng = random.Random(seed)
        return [rng.choice(self.loop.ratios) for _ in range(micro_batches)]

    def _distill_arguments(self, examples: list[TrainExample]) -> dict[str, Any]:
        """The teacher's logits for the ``[LM]`` rows of a micro-batch (none without a
        teacher; autoencoding rows are not distilled)."""
        rows = [i for i, e in enumerate(examples) if e.task == "lm"]
        if self.teacher is None or not rows:
            return {}
        distill = self.config.distill
        logits, indices, states = self.teacher(
            [examples[i] for i in rows], with_states=distill.hidden_weight > 0
        )
        return {
            "teacher_logits": logits,
            "teacher_indices": indices,
            "teacher_rows": rows,
            "distill_weight": distill.weight,
            "temperature": distill.temperature,
            "teacher_states": states,
            "hidden_weight": distill.hidden_weight,
        }

    def run(
        self,
        until_step: int | None = None,
        *,
        eval_every: int | None = None,
        on_eval: Callable[[Trainer], None] | None = None,
    ) -> dict[str, Any]:
        """Train to ``train.steps`` (or stop early at ``until_step``); returns a summary.

        With ``on_eval`` and ``eval_every``, ``on_eval(trainer)`` runs on the main process
        (the others wait) at the step training starts or resumes from and after every step
        that is a multiple of ``eval_every`` or the last one — a learning curve without a
        loop of one's own. It sees ``trainer.step``, ``trainer.compressor`` and the training
        clock; after a resume it is called again for the step it resumed at, so it should
        skip points it has already recorded.
        """
        acc, loop = self.accelerator, self.loop
        end = min(loop.steps, until_step or loop.steps)
        if on_eval is not None and (not isinstance(eval_every, int) or eval_every < 1):
            raise InvalidInputError(
                f"eval_every must be an int >= 1 with on_eval, got {eval_every!r}"
            )

        def evaluate_here() -> None:
            if on_eval is None or not (self.step % eval_every == 0 or self.step == loop.steps):
                return
            if acc.is_main_process:
                on_eval(self)
            acc.wait_for_everyone()

        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                self.output_dir / "config.yaml", yaml.safe_dump(self.config.to_dict())
            )
            for s in self.sources:
                self._log(
                    f"{s.source.source} ({s.source.objective}): {len(s.examples)} "
                    f"examples, {s.dropped} dropped by length filters"
                )
        metrics_path = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:  # a killed run logged steps after its last checkpoint
            ckpt.trim_log(metrics_path, self.step)
        bar = tqdm(
            total=end,
            initial=self.step,
            desc=f"train {self.config.method}",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        started, tokens_seen = time.perf_counter(), 0
        last: dict[str, Any] = {}
        evaluate_here()
        while self.step < end:
            wall, cpu = time.perf_counter(), time.process_time()
            last = self.train_step()
            self.train_seconds += time.perf_counter() - wall
            self.train_cpu_seconds += time.process_time() - cpu
            tokens_seen += last["tokens"]
            elapsed = time.perf_counter() - started
            last["tokens_per_s"] = tokens_seen / max(elapsed, 1e-9)
            last["elapsed_s"] = elapsed
            last["train_seconds"] = self.train_seconds
            last["train_cpu_seconds"] = self.train_cpu_seconds
            bar.update(1)
            bar.set_postfix(
                loss=f"{last['loss']:.3f}",
                lr=f"{last['lr']:.2e}",
                tok_s=f"{last['tokens_per_s']:.0f}",
            )
            if acc.is_main_process and (self.step % loop.log_every == 0 or self.step == end):
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
            if self.on_step:
                self.on_step(self.step, last)
            if self.step % loop.save_every == 0 or self.step == loop.steps:
                self.save_checkpoint()
            evaluate_here()
        bar.close()
        if self.step < loop.steps and self.step % loop.save_every:
            self.save_checkpoint()  # stopped early on purpose: make it resumable
        if self.step >= loop.steps and acc.is_main_process:
            final = self.output_dir / "compressor"
            acc.unwrap_model(self.model).save_pretrained(final)
            self._log(f"done: {final}")
        acc.wait_for_everyone()
        return {"step": self.step, **last}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint atomically (temporary folder, then rename)."""
        acc = self.accelerator
        target = ckpt.checkpoint_dir(self.output_dir, self.step)
        tmp_root = self.output_dir / "checkpoints"
        tmp = tmp_root / f".tmp-step-{self.step:06d}"
        if acc.is_main_process:
            tmp_root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        save_file(ckpt.rng_tensors(), str(tmp / f"rng-rank{acc.process_index}.safetensors"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(tmp / "compressor")
            tensors, meta = ckpt.optimizer_to_files(self.optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state = {
                "step": self.step,
                "optimizer": meta,
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "python_rng": ckpt.python_rng_state(),
                "world_size": acc.num_processes,
                "train_seconds": self.train_seconds,
                "train_cpu_seconds": self.train_cpu_seconds,
            }
            ckpt.write_json(tmp / ckpt.STATE_FILE, state)  # written last: marks completeness
            ckpt.discard(target)  # the same step saved again (e.g. an early stop, resumed)
            os.replace(tmp, target)
            ckpt.prune(self.output_dir, self.loop.keep_checkpoints)
        acc.wait_for_everyone()
        return target


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Build a :class:`Trainer` and run it to the end."""
    return Trainer(config, **kwargs).run()


__all__ = ["Trainer", "train"]
