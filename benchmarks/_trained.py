"""The trained-systems benchmark driver: one YAML spec, every system trained with the same
recipe, budget and data order, learning curves, test evaluations, a report section.

Two benchmarks run on it: the fair comparison (``configs/benchmarks/fair.yaml``,
``benchmarks/fair/run.py``) and the headline compressors (``configs/benchmarks/headline.yaml``,
``benchmarks/headline/run.py``). A spec holds:

* ``loop``: the loop settings of every system and stage; ``steps``: ``stage1``, ``stage2``,
  ``curve_every`` (a setting may override them; the command line overrides both);
* ``stage1_texts``: the stage-1 texts (continuation for everyone, plus autoencoding for the
  systems with ``autoencoding: true``);
* ``settings``: per setting a ``ratio``, a stage-1 ``window``, the stage-2 QA data ``train``
  (a list of data sources with weights), a ``dev`` set (the learning curve) and ``tests`` (each
  ``{source, options, limit, seed}``, optionally ``folder`` — where its evaluations go under
  ``eval/``, default the test's name — and ``standard`` — the setting of
  ``benchmarks/standard/run.py`` with the same items, whose zero-shot and kvpress rows the
  report adds);
* ``systems``: ``{method, options, autoencoding, train, distill}`` (``distill``: the system of
  the same setting whose stage-2 compressor is the teacher), ``zero_shot`` rows, the
  ``run_order``, the ``difference_references`` and optional ``targets`` (``{setting, test,
  system, against, at_least}``: the system's score over the reference's on a test, paired;
  ``test: curve`` compares the two dev learning curves at every common step instead);
* optionally per setting ``system_overrides: {system: {field: value}}``: fields of a system
  that differ in this setting (e.g. ``distill: null`` to train without a teacher);
* optionally per system ``stage1_from: <system>``: start stage 2 from that system's stage-1
  compressor (trained once, shared) instead of a stage 1 of its own — screens of one
  method's options compare stage-2 recipes after the same stage 1 (a decoder adapter the
  stage-1 system lacks starts at zero);
* optionally per system ``stage1: {steps, texts, train, distill}``: a stage 1 of its own
  recipe (issue 38's dense pretraining: more steps, a text stream, loop options on top of the
  spec's, ``distill: full_context`` for KL to the frozen full-context model);
* optionally per setting ``continues: <setting>``: its systems start where that (earlier,
  shorter) setting's runs of them stopped — a finished stage 1, the latest stage-2 checkpoint
  within this setting's steps and the dev-curve points up to it are copied, when they were
  trained with the same configuration (what a resume may change aside): a headline-length
  run continues its screen instead of repeating it. The same recipe, seed and data order with
  a constant schedule make those steps exactly the long run's first ones (the trainer's
  resume is exact), so without the earlier files it trains them itself, to the same weights;
* optionally per setting ``dense_dev: {texts, limit, size, context_fraction, every}``: the
  dense learning curve of every stage 1 trained there — the continuation NLL
  (``ctxcompress.evaluation.continuation``) on the first ``limit`` held-out windows of ``size``
  tokens of the ``texts`` every ``every`` steps, beside the frozen model's full context and
  head / tail truncation at the setting's ratio on the same windows;
* optionally ``kept_teachers``: a folder (relative to the checkout that holds ``--out``)
  where every finished teacher's stage-2 compressor is copied in bfloat16, as
  ``<setting>/<system>/``, to be committed: checkpoints are not in git, a teacher takes hours
  to retrain, and its kept copy is what a fresh checkout distils from;
* optionally per setting ``savings: {systems, lengths}``: what the trained compressed contexts
  save against the full context (KV bytes, answer latency), measured with ``ctxcompress
  bench --compressor`` on each system's stage-2 compressor at those context lengths.

Everything is checkpointed under ``--out``; the same command resumes (finished stages, curve
points and evaluations are reused). Training time comes from the trainer's own clock (kept in
its checkpoints), so a run that was killed, resumed or paused reports the time its steps took.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ctxcompress as cc
from ctxcompress.data import load_qa, load_texts
from ctxcompress.evaluation import (
    ContinuationScore,
    EvalResult,
    continuation_nll,
    continuation_windows,
    difference_legend,
    difference_table,
    evaluate,
    markdown_table,
    markdown_tables,
    paired_nll_difference,
    replace_section,
)
from ctxcompress.evaluation.continuation import frozen_baseline_labels, frozen_baselines
from ctxcompress.evaluation.report import LABELS, depth_key, depth_table
from ctxcompress.evaluation.significance import paired_ratio
from ctxcompress.prompts import chat_prompt_options
from ctxcompress.training import Trainer, parse_config
from ctxcompress.training.checkpoint import STATE_FILE, list_checkpoints
from ctxcompress.training.config import changed_settings

from ._common import add_seconds, load_json, plot_curves, train_with_dev_curve, write_json
from ._common import command_line as _command_line

ROOT = Path(__file__).resolve().parents[1]
STANDARD_RESULTS = ROOT / "benchmarks" / "standard" / "results"
SAVINGS_REPEATS = 5
STAGE1_FIELDS = {"steps", "texts", "train", "distill"}
"""What a system's own ``stage1`` may set."""
DENSE_FIELDS = {"texts", "limit", "size", "every"}
"""What a setting's ``dense_dev`` must set (``context_fraction`` and ``seed`` are optional)."""
CURVE = "curve"
"""A target's ``test`` that compares the dev learning curves instead of a test set."""


def load_spec(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    known = {*spec["systems"], *spec.get("zero_shot", [])}
    if unknown := [s for s in spec["run_order"] if s not in known]:
        raise ValueError(f"{path}: run_order names unknown systems {unknown}")
    for name, system in spec["systems"].items():
        source = system.get("stage1_from")
        if source is not None and (source not in spec["systems"] or source == name):
            raise ValueError(
                f"{path}: systems.{name}.stage1_from names {source!r}, not another system"
            )
        if source is not None and spec["systems"][source]["method"] != system["method"]:
            raise ValueError(f"{path}: systems.{name}.stage1_from={source!r} trains another method")
        own = system.get("stage1")
        if own is not None:
            if unknown := sorted(set(own) - STAGE1_FIELDS):
                raise ValueError(
                    f"{path}: systems.{name}.stage1 has unknown fields {unknown}; known: "
                    f"{sorted(STAGE1_FIELDS)}"
                )
            if source is not None:
                raise ValueError(
                    f"{path}: systems.{name} has both stage1_from and a stage1 of its own"
                )
    for name, setting in spec["settings"].items():
        earlier = setting.get("continues")
        if earlier is not None and (earlier not in spec["settings"] or earlier == name):
            raise ValueError(
                f"{path}: settings.{name}.continues names {earlier!r}, not another setting"
            )
        dense = setting.get("dense_dev")
        if dense is not None and (missing := sorted(DENSE_FIELDS - set(dense))):
            raise ValueError(f"{path}: settings.{name}.dense_dev lacks {missing}")
        overridden = setting.get("system_overrides", {})
        if unknown := [s for s in overridden if s not in spec["systems"]]:
            raise ValueError(
                f"{path}: settings.{name}.system_overrides names unknown systems {unknown}"
            )
    for i, target in enumerate(spec.get("targets", [])):
        setting = spec["settings"].get(target["setting"])
        if setting is None:
            raise ValueError(f"{path}: targets[{i}] names unknown setting {target['setting']!r}")
        if target["test"] != CURVE and target["test"] not in setting["tests"]:
            raise ValueError(
                f"{path}: targets[{i}] names unknown test {target['test']!r} (known: "
                f"{[*setting['tests'], CURVE]})"
            )
        references = {*known, "best_kvpress"}
        if unknown := [s for s in (target["system"], target["against"]) if s not in references]:
            raise ValueError(f"{path}: targets[{i}] names unknown systems {unknown}")
    return spec


@dataclass
class Benchmark:
    """One spec (see the module docstring) and what runs it."""

    name: str  # the report section (``<!-- begin NAME -->``) and plot prefix
    script: str  # the command that runs it, relative to the repository root
    spec: dict[str, Any]

    @classmethod
    def from_yaml(cls, name: str, script: str, path: Path) -> Benchmark:
        return cls(name, script, load_spec(path))

    # ------------------------------------------------------------------------- the spec
    @property
    def settings(self) -> dict[str, dict[str, Any]]:
        return self.spec["settings"]

    @property
    def systems(self) -> dict[str, dict[str, Any]]:
        return self.spec["systems"]

    @property
    def zero_shot_systems(self) -> tuple[str, ...]:
        return tuple(self.spec.get("zero_shot", []))

    @property
    def run_order(self) -> tuple[str, ...]:
        return tuple(self.spec["run_order"])

    @property
    def canonical(self) -> tuple[str, ...]:
        """Table order: the systems as defined, then the zero-shot rows."""
        return (*self.systems, *self.zero_shot_systems)

    def system_spec(self, system: str, setting: str) -> dict[str, Any]:
        """A system's fields in one setting: the spec's, with the setting's
        ``system_overrides`` for it on top."""
        overrides = self.settings[setting].get("system_overrides", {}).get(system, {})
        return {**self.systems[system], **overrides}

    def targets(self, setting: str, test: str) -> list[dict[str, Any]]:
        """The spec's targets on one test of a setting (``CURVE``: on its dev curves)."""
        return [
            t for t in self.spec.get("targets", []) if (t["setting"], t["test"]) == (setting, test)
        ]

    def own_systems(self, setting: str) -> tuple[str, ...]:
        """The systems a setting has: its ``systems`` list, default all of them."""
        return tuple(self.settings[setting].get("systems", self.canonical))

    def systems_of(self, setting: str, args) -> list[str]:
        """The selected systems this setting runs, in the selection's order."""
        own = self.own_systems(setting)
        return [s for s in args.systems if s in own]

    def steps(self, setting: str, args) -> dict[str, int]:
        """``stage1``, ``stage2``, ``curve_every``: the command line's, else the setting's,
        else the spec's."""
        flags = {"stage1": "stage1_steps", "stage2": "stage2_steps", "curve_every": "curve_every"}
        own = {**self.spec["steps"], **self.settings[setting].get("steps", {})}
        given = {key: getattr(args, flag, None) for key, flag in flags.items()}
        return {key: own[key] if given[key] is None else given[key] for key in flags}

    def stage1_steps(self, system: str, setting: str, args) -> int:
        """A system's stage-1 steps: the command line's, else its own ``stage1.steps``, else
        the setting's / spec's."""
        own = self.system_spec(system, setting).get("stage1", {}).get("steps")
        if getattr(args, "stage1_steps", None) is None and own is not None:
            return int(own)
        return self.steps(setting, args)["stage1"]

    def dev_examples(self, setting: str, args):
        dev = self.settings[setting]["dev"]
        limit = args.dev_limit if args.dev_limit is not None else dev.get("limit", 50)
        return load_qa(dev["source"], limit=limit, seed=dev.get("seed"), **dev.get("options", {}))

    def test_examples(self, setting: str, test: str, args):
        spec = self.settings[setting]["tests"][test]
        limit = args.eval_limit if args.eval_limit is not None else spec.get("limit", 100)
        return load_qa(
            spec["source"], limit=limit, seed=spec.get("seed"), **spec.get("options", {})
        )

    def eval_folder(self, setting: str, test: str, out: Path) -> Path:
        return out / "eval" / self.settings[setting]["tests"][test].get("folder", test)

    # ------------------------------------------------------------------------- configs
    def stage_config(self, system: str, setting: str, stage: int, args, out: Path) -> Any:
        """The training config of one stage of one system."""
        spec, info = self.settings[setting], self.system_spec(system, setting)
        steps = self.steps(setting, args)
        ae = bool(info.get("autoencoding"))
        options = {**info["options"], "ratio": spec["ratio"]}
        if ae:
            options["autoencoding"] = True
        own_stage1 = info.get("stage1", {})
        if stage == 1:
            texts = own_stage1.get("texts", self.spec["stage1_texts"])
            data = [{**t, "objective": "continuation"} for t in texts]
            if ae:
                data += [{**t, "objective": "autoencoding"} for t in texts]
        else:
            data = [{**d, "objective": "qa"} for d in spec["train"]]
        loop = {
            **self.spec["loop"],
            "steps": self.stage1_steps(system, setting, args) if stage == 1 else steps["stage2"],
            "save_every": steps["curve_every"],
            "continuation_max_tokens": spec["window"],
            **info.get("train", {}),
            **(own_stage1.get("train", {}) if stage == 1 else {}),
        }
        config = {
            "method": info["method"],
            "base_model": "embedded",
            "method_options": options,
            "data": data,
            "train": loop,
            "output_dir": str(out / "train" / system / f"stage{stage}"),
        }
        stage1 = info.get("stage1_from", system)
        if stage == 2 and self.stage1_steps(stage1, setting, args) > 0:
            config["init_from"] = str(out / "train" / stage1 / "stage1" / "compressor")
        if stage == 1 and own_stage1.get("distill"):
            teacher = own_stage1["distill"]
            config["distill"] = {"weight": 1.0, "temperature": 1.0, "teacher": teacher}
        if stage == 2 and info.get("distill"):
            teacher = self.teacher_folder(setting, info["distill"], out)
            config["distill"] = {"weight": 1.0, "temperature": 1.0, "teacher": str(teacher)}
        return parse_config(config)

    # ------------------------------------------------------------------------- teachers
    def teachers(self, setting: str) -> set[str]:
        """The systems of ``setting`` that another of its systems distils from."""
        own = [s for s in self.own_systems(setting) if s in self.systems]  # not zero-shot rows
        return {t for s in own if (t := self.system_spec(s, setting).get("distill"))}

    def kept_teacher(self, setting: str, teacher: str, out: Path) -> Path | None:
        """Where ``kept_teachers`` keeps ``teacher``'s bfloat16 copy (None without it)."""
        folder = self.spec.get("kept_teachers")
        return checkout_root(out) / folder / setting / teacher if folder else None

    def teacher_folder(self, setting: str, teacher: str, out: Path) -> Path:
        """The stage-2 compressor a distilled system learns from: the one trained under
        ``out``, else its kept copy, else the trained one's place (to be trained)."""
        trained = out / "train" / teacher / "stage2" / "compressor"
        kept = self.kept_teacher(setting, teacher, out)
        if not trained.is_dir() and kept is not None and (kept / "ctxcompress.json").is_file():
            return kept
        return trained

    def keep_teacher(self, setting: str, teacher: str, out: Path) -> None:
        """Copy a finished teacher's stage-2 compressor to its kept place in bfloat16, once
        (written beside it and renamed: never half a folder)."""
        dest = self.kept_teacher(setting, teacher, out)
        source = out / "train" / teacher / "stage2" / "compressor"
        if dest is None or dest.is_dir() or not source.is_dir():
            return
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        to_bfloat16(staging)
        staging.rename(dest)
        print(f"[{self.name}] kept {teacher} ({setting}) in {out_relative(dest)}: commit it")

    # ------------------------------------------------------------------------- one system
    def train_system(self, system: str, setting: str, args, out: Path, dev) -> cc.Compressor:
        """Stage 1, then stage 2 with a dev-F1 point every ``curve_every`` steps."""
        clock = {"train_seconds": 0.0, "train_cpu_seconds": 0.0}
        steps = self.steps(setting, args)
        # A system may start from another's stage 1 (``stage1_from``): the screens of one
        # method's options share one stage 1, trained once.
        stage1 = self.system_spec(system, setting).get("stage1_from", system)
        if self.stage1_steps(stage1, setting, args) > 0:
            config = self.stage_config(stage1, setting, 1, args, out)
            self.continue_earlier(stage1, setting, config, out)
            if not (Path(config.output_dir) / "compressor").is_dir():
                self.train_stage1(stage1, setting, config, out)
            clock = stage1_clock(config)
        config = self.stage_config(system, setting, 2, args, out)
        self.continue_earlier(system, setting, config, out)
        trainer = Trainer(config)
        every = steps["curve_every"]
        train_with_dev_curve(trainer, system, dev, out, every, clock=clock, tag=self.name)
        times = load_json(out / "train_seconds.json", {})
        times[system] = {
            "stage1": clock,
            "stage2": {
                "train_seconds": trainer.train_seconds,
                "train_cpu_seconds": trainer.train_cpu_seconds,
            },
        }
        write_json(out / "train_seconds.json", times)
        return trainer.compressor

    def continue_earlier(self, system: str, setting: str, config, out: Path) -> None:
        """With the setting's ``continues``: copy the earlier setting's run of this stage of
        ``system`` into this setting's place before it trains — a finished stage 1 whole, or
        stage 2's latest checkpoint within ``config``'s steps with its metrics log and dev-curve
        points. Nothing when this stage has started here, when the earlier run is missing, or
        when it was trained with another configuration (said; this run then trains itself).
        Written beside its place and renamed: never half a folder."""
        earlier = self.settings[setting].get("continues")
        mine = Path(config.output_dir)
        if earlier is None or mine.exists():
            return
        theirs = out.parent / earlier / mine.relative_to(out)
        saved = theirs / "config.yaml"
        if not saved.is_file():
            return
        # init_from names the earlier setting's stage 1, copied here the same way.
        changed = changed_settings(yaml.safe_load(saved.read_text()) or {}, config)
        if differs := [key for key, *_ in changed if key != "init_from"]:
            print(f"[{self.name}] {system}: not continuing {earlier}'s run ({differs} differ)")
            return
        staging = mine.with_name(mine.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        found = [c for c in list_checkpoints(theirs) if checkpoint_step(c) <= config.train.steps]
        if not found:
            return
        step = checkpoint_step(found[-1])
        if step == config.train.steps and (theirs / "compressor").is_dir():
            shutil.copytree(theirs, staging)  # a finished run of the same length
        else:
            shutil.copytree(found[-1], staging / "checkpoints" / found[-1].name)
            if (theirs / "metrics.jsonl").is_file():
                shutil.copy2(theirs / "metrics.jsonl", staging / "metrics.jsonl")
        (staging / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        staging.rename(mine)
        if "stage2" in mine.parts:  # the dev curve up to the copied step
            source = load_json(out.parent / earlier / "curves.json", {}).get(system, [])
            curves = load_json(out / "curves.json", {})
            if not curves.get(system):
                curves[system] = [p for p in source if p["step"] <= step]
                write_json(out / "curves.json", curves)
        print(f"[{self.name}] {system}: continues {earlier}'s run at step {step} ({mine.name})")

    # ------------------------------------------------------------------------- dense curve
    def dense_windows(self, comp: cc.Compressor, setting: str) -> list:
        """The setting's held-out continuation windows (``dense_dev``), in ``comp``'s ids."""
        dense = self.settings[setting]["dense_dev"]
        texts = [
            doc.text
            for t in dense["texts"]
            for doc in load_texts(t["source"], seed=dense.get("seed", 0), **t.get("options", {}))
        ]
        return continuation_windows(
            comp,
            texts,
            size=dense["size"],
            limit=dense["limit"],
            context_fraction=dense.get("context_fraction", 0.5),
        )

    def dense_baselines(self, setting: str, out: Path) -> dict[str, dict[str, Any]]:
        """The frozen model's continuation NLL on the dense windows: the full context and
        head / tail truncation at the setting's ratio (computed once, kept in
        ``dense_baselines.json``)."""
        path = out / "dense_baselines.json"
        done = load_json(path, {})
        ratio = self.settings[setting]["ratio"]
        if all(label in done for label in frozen_baseline_labels(ratio)):
            return done
        for label, comp in frozen_baselines(cc.load_base_model(), ratio).items():
            if label in done:
                continue
            score = continuation_nll(comp, self.dense_windows(comp, setting), label=label)
            done[label] = {"nll": score.mean, "window_nll": list(score.window_nll)}
            write_json(path, done)
        return done

    def train_stage1(self, system: str, setting: str, config, out: Path) -> None:
        """Stage 1; with the setting's ``dense_dev``, a continuation-NLL point every
        ``every`` steps (and at step 0) in ``dense_curves.json`` (resumable)."""
        dense = self.settings[setting].get("dense_dev")
        trainer = Trainer(config)
        if not dense:
            trainer.run()
            return
        self.dense_baselines(setting, out)
        windows = self.dense_windows(trainer.compressor, setting)
        path = out / "dense_curves.json"

        def record(trainer: Trainer) -> None:
            curves = load_json(path, {})
            points = curves.setdefault(system, [])
            if any(p["step"] == trainer.step for p in points):
                return  # recorded before a resume
            start = time.perf_counter()
            score = continuation_nll(trainer.compressor, windows, batch_size=16, label=system)
            points.append(
                {
                    "step": trainer.step,
                    "nll": score.mean,
                    "window_nll": list(score.window_nll),
                    "train_seconds": trainer.train_seconds,
                    "train_cpu_seconds": trainer.train_cpu_seconds,
                }
            )
            points.sort(key=lambda p: p["step"])
            write_json(path, curves)
            add_seconds(out / "wall_seconds.json", f"dense:{system}", time.perf_counter() - start)
            print(
                f"[{self.name}] {system} stage 1 step {trainer.step}: continuation NLL "
                f"{score.mean:.3f}",
                flush=True,
            )

        trainer.run(eval_every=dense["every"], on_eval=record)

    def dense_report(self, setting: str, out: Path, page: Path) -> list[str]:
        """The dense curves beside the frozen baselines, paired over the same windows."""
        dense = self.settings[setting].get("dense_dev")
        baselines = load_json(out / "dense_baselines.json", {})
        curves = load_json(out / "dense_curves.json", {})
        if not dense or not baselines:
            return []
        scores = {k: ContinuationScore(k, tuple(v["window_nll"])) for k, v in baselines.items()}
        ratio = self.settings[setting]["ratio"]
        head, full = scores[f"head_truncation@{ratio}x"], scores["full_context"]
        rows = [(label, "-", score) for label, score in scores.items()]
        for system, points in curves.items():
            rows += [
                (system, p["step"], ContinuationScore(system, tuple(p["window_nll"])))
                for p in points
            ]
        lines = [
            "| system | stage-1 step | continuation NLL (nats/token) [95% CI] | minus head "
            "truncation [paired 95% CI] | share of the head-to-full gap closed |",
            "|---|---|---|---|---|",
        ]
        gap = head.mean - full.mean
        for label, step, score in rows:
            ci = score.interval()
            diff = paired_nll_difference(score, head)
            closed = (head.mean - score.mean) / gap if gap else float("nan")
            lines.append(
                f"| {label} | {step} | {score.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] | "
                f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] | {100 * closed:.0f} % |"
            )
        sources = ", ".join(f"`{t['source']}`" for t in dense["texts"])
        parts = [
            f"Dense curve (lever 4): continuation NLL on the first {dense['limit']} held-out "
            f"windows of {dense['size']} tokens of {sources} (the first "
            f"{dense.get('context_fraction', 0.5):g} compressed, the rest scored after its "
            "first token; lower is better), every stage 1 trained here against the frozen "
            f"model reading the full window and its head or tail truncated to the {ratio}x "
            "budget (the same windows, paired).",
            "\n".join(lines),
        ]
        if curves:
            plot = page.parent / "results" / f"{self.name}_{setting}_dense.png"
            plot_dense_curves(curves, baselines, plot, f"setting {setting}: dense curve")
            parts.append(f"![dense curve, {setting}](results/{plot.name})")
        return parts

    def zero_shot(self, system: str, setting: str) -> cc.Compressor:
        base = cc.load_base_model()
        options = chat_prompt_options(base.tokenizer)
        if system == "zs_truncation":
            ratio = self.settings[setting]["ratio"]
            return cc.build_compressor("truncation", base, ratio=ratio, **options)
        return cc.build_compressor("full_context", base, **options)

    def label(self, system: str, setting: str) -> str:
        if system in self.systems or system == "zs_truncation":
            return f"{system}@{self.settings[setting]['ratio']}x"
        return system

    def run_setting(self, setting: str, args) -> None:
        out = args.out / setting
        out.mkdir(parents=True, exist_ok=True)
        tests = list(self.settings[setting]["tests"])
        dev = self.dev_examples(setting, args)
        examples = {t: self.test_examples(setting, t, args) for t in tests}
        stage2 = self.steps(setting, args)["stage2"]
        for system in self.systems_of(setting, args):
            paths = {t: self.eval_folder(setting, t, out) / f"{system}.json" for t in tests}
            if all(self.is_current(system, p, stage2) for p in paths.values()):
                continue
            if system in self.systems:
                teacher = self.system_spec(system, setting).get("distill")
                if teacher and not self.teacher_folder(setting, teacher, out).is_dir():
                    # Neither trained here nor kept: train it again (deterministic: the
                    # same weights; its curve and tests are reused).
                    self.train_system(teacher, setting, args, out, dev)
                    self.keep_teacher(setting, teacher, out)
                comp = self.train_system(system, setting, args, out, dev)
                if system in self.teachers(setting):
                    self.keep_teacher(setting, system, out)
            else:
                comp = self.zero_shot(system, setting)
            for test, path in paths.items():
                if self.is_current(system, path, stage2):
                    continue
                start = time.perf_counter()
                label = self.label(system, setting)
                result = evaluate(
                    comp, examples[test], max_new_tokens=32, batch_size=16, label=label
                )
                key = f"eval:{system}" if test == tests[0] else f"eval:{test}:{system}"
                add_seconds(out / "wall_seconds.json", key, time.perf_counter() - start)
                result.info.update(setting=setting, test=test)
                if system in self.systems:
                    result.info["stage2_steps"] = stage2
                result.save(path)
            del comp
            # Right after its evaluations: a system's weights may not outlive the machine.
            self.measure_savings(setting, [system], out)
        # Systems whose evaluations were already current (each is measured once).
        self.measure_savings(setting, self.systems_of(setting, args), out)
        curves = load_json(out / "curves.json", {})
        self.plot(curves, out / "curves.png", setting, args)

    def savings_command(self, setting: str, system: str, out: Path) -> str:
        lengths = ",".join(map(str, self.settings[setting]["savings"]["lengths"]))
        folder = out_relative(out / "train" / system / "stage2" / "compressor")
        return (
            f"ctxcompress bench --compressor {folder} --lengths {lengths} --repeats "
            f"{SAVINGS_REPEATS} --device cpu --out {out_relative(out)}/bench/{system}.json"
        )

    def measure_savings(self, setting: str, systems: list[str], out: Path) -> None:
        """``ctxcompress bench`` on each of ``systems`` that the setting's ``savings`` names
        and that has trained weights (once; the JSON is kept in git beside the evaluations)."""
        from ctxcompress.bench import BenchSettings, run_speed_benchmark

        spec = self.settings[setting].get("savings")
        if not spec:
            return
        for system in [s for s in spec["systems"] if s in systems]:
            path = out / "bench" / f"{system}.json"
            folder = out / "train" / system / "stage2" / "compressor"
            if path.is_file() or not folder.is_dir():
                continue
            settings = BenchSettings(
                compressor=str(folder),
                lengths=tuple(spec["lengths"]),
                repeats=SAVINGS_REPEATS,
                device="cpu",
            )
            result = run_speed_benchmark(settings)
            result["command"] = self.savings_command(setting, system, out)
            write_json(path, result)

    def savings_report(self, setting: str, out: Path) -> list[str]:
        spec = self.settings[setting].get("savings")
        found = {
            s: load_json(out / "bench" / f"{s}.json", None) for s in (spec or {}).get("systems", [])
        }
        found = {s: r for s, r in found.items() if r}
        if not found:
            return []
        lines = [
            "| system | L | C | KV KiB (compressed / full) | answer ms, 16 tokens (compressed "
            "/ full) | answer / full | first token ms (compressed / full) | compress / prefill |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for system, result in found.items():
            for r in result["rows"]:
                a, f = r["answer"], r["answer_full_context"]
                lines.append(
                    f"| {system} | {r['L']} | {r['C']} | {r['kv_bytes'] / 1024:.0f} / "
                    f"{r['kv_bytes_full'] / 1024:.0f} | {1000 * a['answer_s']:.0f} / "
                    f"{1000 * f['answer_s']:.0f} | {r['answer_vs_full_context']:.2f} | "
                    f"{1000 * a['ttft_s']:.0f} / {1000 * f['ttft_s']:.0f} | "
                    f"{r['compress_vs_prefill']:.2f} |"
                )
        machine = next(iter(found.values()))["machine"]
        commands = "; ".join(f"`{r['command']}`" for r in found.values())
        return [
            "What the compressed context saves against the full context of the same tokens "
            f"(medians of {SAVINGS_REPEATS} runs, {machine['threads']} CPU threads, float32; "
            "one run per system, so compare within a row): " + commands + ".",
            "\n".join(lines),
        ]

    def is_current(self, system: str, path: Path, stage2: int) -> bool:
        """An evaluation that need not run again: saved, and for a trained system after
        ``stage2`` QA steps (a run given more steps continues training and evaluates again;
        evaluations saved before the step count was recorded count as current)."""
        if not path.is_file():
            return False
        if system not in self.systems:
            return True
        info = json.loads(path.read_text()).get("info", {})
        return info.get("stage2_steps", stage2) == stage2

    # ------------------------------------------------------------------------- reports
    def finished(self, setting: str, test: str, args) -> tuple[list[str], list[EvalResult]]:
        """The names and results of the selected systems with a saved evaluation on ``test``,
        in the canonical order."""
        folder = self.eval_folder(setting, test, args.out / setting)
        selected = self.systems_of(setting, args)
        ordered = [s for s in self.canonical if s in selected]
        done = [s for s in ordered if (folder / f"{s}.json").is_file()]
        return done, [EvalResult.load(folder / f"{s}.json") for s in done]

    def curve_table(self, curves: dict[str, list[dict]]) -> str:
        """Dev F1 (%) by QA step, one row per system."""
        steps = sorted({p["step"] for points in curves.values() for p in points})
        lines = [
            "| system | " + " | ".join(f"step {s}" for s in steps) + " |",
            "|---|" + "---|" * len(steps),
        ]
        for system in [s for s in self.canonical if s in curves]:
            f1 = {p["step"]: f"{100 * p['f1']:.1f}" for p in curves[system]}
            lines.append(f"| {system} | " + " | ".join(f1.get(s, "") for s in steps) + " |")
        return "\n".join(lines)

    def time_table(self, times: dict[str, dict], walls: dict[str, float]) -> str:
        """Minutes per system: training CPU time per stage, training wall time, evaluation
        wall time (dev curve and tests; "-" where it was not recorded)."""
        lines = [
            "| system | stage 1 CPU min | stage 2 CPU min | training wall min "
            "| dev-curve evals wall min | test evals wall min |",
            "|---|---|---|---|---|---|",
        ]

        def minutes(seconds: float | None) -> str:
            return "-" if seconds is None else f"{seconds / 60:.1f}"

        for system in self.canonical:
            stages = times.get(system)
            evals = [
                v
                for k, v in walls.items()
                if k.startswith("eval:") and k.rsplit(":", 1)[-1] == system
            ]
            if not stages and not evals:
                continue
            cpu = [(stages or {}).get(k, {}).get("train_cpu_seconds") for k in ("stage1", "stage2")]
            wall = sum(v["train_seconds"] for v in stages.values()) if stages else None
            cells = [*map(minutes, cpu), minutes(wall)]
            cells += [minutes(walls.get(f"dev:{system}")), minutes(sum(evals) if evals else None)]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, curves: dict[str, list[dict]], path: Path, setting: str, args) -> None:
        if not curves:
            return
        dev = self.settings[setting]["dev"]
        limit = args.dev_limit if args.dev_limit is not None else dev.get("limit", 50)
        # CPU time of the training steps (all threads): unlike wall time, it does not count
        # while the job is paused, and it survives resumption (the trainer checkpoints it).
        plot_curves(
            curves,
            path,
            f"{dev['source']} (first {limit}), SmolLM2-135M, setting {setting}",
            "QA fine-tuning step (after stage 1)",
            "training compute, stage 1 + 2 (CPU minutes, all threads)",
        )

    def test_report(self, setting: str, test: str, args) -> list[str]:
        spec = self.settings[setting]["tests"][test]
        _, results = self.finished(setting, test, args)
        parts = (
            [f"#### `{setting}` on `{spec['source']}`"]
            if len(self.settings[setting]["tests"]) > 1
            else []
        )
        if not results:
            return [*parts, "Nothing evaluated yet."]
        training_free = standard_references(spec.get("standard"), results)
        results += training_free
        metric = "string_match" if all("string_match" in r.overall for r in results) else "f1"
        drawn = f", drawn with seed {spec['seed']}" if spec.get("seed") is not None else ""
        parts.append(
            f"`{spec['source']}`, first {results[0].overall['n']} items{drawn}; scores in %."
        )
        parts.append(markdown_table(results))
        by_label = {r.method: r for r in results}
        references = [
            by_label[label]
            for s in self.spec["difference_references"]
            if (label := self.label(s, setting)) in by_label
        ]
        if training_free:  # the best standard row on the same items is a reference too
            references.append(max(training_free, key=lambda r: r.overall[metric]))
        if references:
            parts.append(difference_legend(references, metric))
            parts.append(difference_table(results, references, metric))
        if rows := target_rows(self.targets(setting, test), by_label, self, setting, metric):
            parts.append(
                f"Targets ({LABELS.get(metric, metric)}, ratio of means with its "
                "paired 95% bootstrap interval):"
            )
            parts.append(rows)
        key = depth_key(results)
        if key and len({p.meta[key] for r in results for p in r.predictions}) > 1:
            parts.append(f"{LABELS.get(metric, metric)} (%) by `{key}` (n per bin):")
            parts.append(depth_table(results, key, metric))
        return parts

    def write_report(self, args, page: Path) -> None:
        """Write what has finished into ``page`` between the markers (trains nothing)."""
        parts = [
            f"Produced by `{self.command_line(args)}` (resumes where it stopped; `--report "
            f"{page}` rewrites this section from what has finished). Machine: "
            f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch "
            f"{torch.__version__}."
        ]
        for setting in args.settings:
            spec, out = self.settings[setting], args.out / setting
            steps = self.steps(setting, args)
            parts.append(f"### Setting `{setting}`: {spec['description']}")
            own = {
                system: self.stage1_steps(system, setting, args)
                for system in self.own_systems(setting)
                if system in self.systems and "stage1" in self.systems[system]
            }
            others = "".join(f", {system}: {n} (its own recipe)" for system, n in own.items())
            parts.append(
                f"Stage 1: {steps['stage1']} steps{others}; stage 2 (QA): {steps['stage2']} "
                "steps on "
                + ", ".join(f"`{d['source']}`" for d in spec["train"])
                + f"; dev curve on `{spec['dev']['source']}` every {steps['curve_every']} steps."
                + (
                    f" Each run continues `{spec['continues']}`'s run of the same system where "
                    "that one stopped (the same recipe, seed and data order: its steps and dev "
                    "points are this run's first ones)."
                    if spec.get("continues")
                    else ""
                )
            )
            for test in spec["tests"]:
                parts += self.test_report(setting, test, args)
            done = set()
            for test in spec["tests"]:
                done |= set(self.finished(setting, test, args)[0])
            if missing := [s for s in self.systems_of(setting, args) if s not in done]:
                parts.append(f"Not finished yet: {', '.join(missing)}.")
            parts += self.savings_report(setting, out)
            parts += self.dense_report(setting, out, page)
            curves = load_json(out / "curves.json", {})
            if curves:
                plot = page.parent / "results" / f"{self.name}_{setting}.png"
                plot.parent.mkdir(parents=True, exist_ok=True)
                self.plot(curves, plot, setting, args)
                parts.append(
                    f"Learning curves: dev F1 every {steps['curve_every']} QA steps, after "
                    "stage 1. Right: against the CPU time of the training steps (both "
                    "stages, all threads; about twice the wall time on 2 threads)."
                )
                parts.append(f"![learning curves, {setting}](results/{plot.name})")
                parts.append(self.curve_table(curves))
                if rows := curve_target_rows(self.targets(setting, CURVE), curves):
                    parts.append(
                        "Targets on the learning curve (dev F1 at every point both curves "
                        "have; point estimates on the dev items, no interval):"
                    )
                    parts.append(rows)
            times = load_json(out / "train_seconds.json", {})
            walls = load_json(out / "wall_seconds.json", {})
            if times or walls:
                parts.append("Time per system (this machine, all sessions together):")
                parts.append(self.time_table(times, walls))
                cpu = sum(v["train_cpu_seconds"] for t in times.values() for v in t.values())
                wall = sum(v["train_seconds"] for t in times.values() for v in t.values())
                wall += sum(walls.values())
                parts.append(
                    f"Total: {cpu / 3600:.1f} CPU hours of training; {wall / 3600:.1f} hours "
                    "of wall time for training and the recorded evaluations."
                )
            parts.append(f"Every prediction: `{out_relative(out)}/eval/`.")
        replace_section(page, self.name, "\n\n".join(parts))
        print(f"written {page}")

    # ------------------------------------------------------------------------- command
    def command_line(self, args, **overrides: Any) -> str:
        exclude = ["out", "report", "command"]
        exclude += [k for k, v in {**vars(args), **overrides}.items() if v is None]
        return _command_line(self.script, args, exclude, **overrides)

    def main(self, argv: list[str] | None = None, description: str = "") -> None:
        parser = argparse.ArgumentParser(description=description)
        default_out = ROOT / Path(self.script).parent / "results"
        parser.add_argument("--out", type=Path, default=default_out)
        parser.add_argument("--settings", default=",".join(self.settings))
        parser.add_argument(
            "--systems",
            default=",".join(self.run_order),
            help="comma-separated, trained in this order (the table keeps the canonical order)",
        )
        for flag in ("--stage1-steps", "--stage2-steps", "--curve-every"):
            parser.add_argument(flag, type=int, default=None, help="default: the spec's")
        parser.add_argument("--dev-limit", type=int, default=None, help="default: the spec's")
        parser.add_argument("--eval-limit", type=int, default=None, help="default: the spec's")
        parser.add_argument(
            "--report",
            type=Path,
            metavar="PAGE",
            help=f"train nothing: write what has finished into PAGE between its "
            f"<!-- begin {self.name} --> / <!-- end {self.name} --> markers",
        )
        args = parser.parse_args(argv)
        args.settings = [s for s in args.settings.split(",") if s]
        if unknown := [s for s in args.settings if s not in self.settings]:
            parser.error(f"unknown settings {unknown}; known: {list(self.settings)}")
        args.systems = list(dict.fromkeys(s for s in args.systems.split(",") if s))
        if unknown := [s for s in args.systems if s not in self.canonical]:
            parser.error(f"unknown systems {unknown}; known: {list(self.canonical)}")
        if args.report:
            self.write_report(args, args.report)
            return
        summary_path = args.out / "summary.json"
        summary = load_json(summary_path, {"settings": {}})
        summary["machine"] = {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        }
        for setting in args.settings:
            self.run_setting(setting, args)
            tables = {}
            for test in self.settings[setting]["tests"]:
                done, results = self.finished(setting, test, args)
                if results:
                    tables[test] = {
                        "command": self.command_line(args, settings=[setting], systems=done),
                        "table": markdown_tables(results),
                        "overall": {r.method: r.overall for r in results},
                    }
                    print(tables[test]["table"], flush=True)
            summary["settings"][setting] = {
                "tests": tables,
                "eval_wall_seconds": load_json(args.out / setting / "wall_seconds.json", {}),
                "train_seconds": load_json(args.out / setting / "train_seconds.json", {}),
            }
            write_json(summary_path, summary)


def checkout_root(path: Path) -> Path:
    """The root of the checkout holding ``path``: this one, or another worktree's when a run
    from a fixed-commit worktree writes into ``--out`` here (this one for a path in none)."""
    resolved = path.resolve()
    for root in (ROOT, *resolved.parents):
        if resolved.is_relative_to(root) and (root / "pyproject.toml").is_file():
            return root
    return ROOT


def out_relative(path: Path) -> Path:
    """``path`` relative to the root of the checkout holding it (for commands)."""
    root = checkout_root(path)
    resolved = path.resolve()
    return resolved.relative_to(root) if resolved.is_relative_to(root) else path


def to_bfloat16(folder: Path) -> None:
    """Rewrite every floating tensor of the folder's safetensors files in bfloat16."""
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()  # the weights' recorded identity stays with them
        tensors = load_file(str(path))
        save_file(
            {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
            str(path),
            metadata=metadata,
        )


def plot_dense_curves(
    curves: dict[str, list[dict]], baselines: dict[str, dict], path: Path, title: str
) -> None:
    """Continuation NLL against stage-1 steps, one line per system, the frozen baselines as
    horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for system, points in curves.items():
        ax.plot([p["step"] for p in points], [p["nll"] for p in points], marker="o", label=system)
    for i, (label, value) in enumerate(baselines.items()):
        ax.axhline(value["nll"], linestyle="--", color=f"C{len(curves) + i}", label=label)
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("continuation NLL (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def checkpoint_step(checkpoint: Path) -> int:
    """The step a trainer checkpoint was saved at."""
    return int(json.loads((checkpoint / STATE_FILE).read_text())["step"])


def stage1_clock(config) -> dict[str, float]:
    """Training seconds of a finished stage 1, from its last metrics line (resume-proof)."""
    lines = (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    return {k: float(last.get(k, 0.0)) for k in ("train_seconds", "train_cpu_seconds")}


def standard_references(setting: str | None, results: list[EvalResult]) -> list[EvalResult]:
    """The zero-shot and kvpress rows of ``benchmarks/standard/run.py``'s ``setting``, when it
    scored exactly the same items as ``results`` (else none: a paired table needs them)."""
    if not setting:
        return []
    from benchmarks.standard import run as standard

    args = argparse.Namespace(out=STANDARD_RESULTS)
    ids = {p.id for p in results[0].predictions}
    rows = [r for r in standard.finished(setting, args) if {p.id for p in r.predictions} == ids]
    for r in rows:
        r.method = f"{r.method} (zero-shot)" if not r.method.startswith("kvpress:") else r.method
    return rows


def curve_target_rows(targets: list[dict], curves: dict[str, list[dict]]) -> str:
    """One line per learning-curve target (``test: curve``): ``system`` scores at least
    ``at_least`` times ``against`` at every step both curves have; the steps where it does
    not are named. Targets whose systems have no common step yet are left out."""
    lines = ["| target | steps compared | steps below | verdict |", "|---|---|---|---|"]
    for t in targets:
        system = {p["step"]: p["f1"] for p in curves.get(t["system"], [])}
        reference = {p["step"]: p["f1"] for p in curves.get(t["against"], [])}
        steps = sorted(system.keys() & reference.keys())
        if not steps:
            continue
        below = [s for s in steps if system[s] < t["at_least"] * reference[s]]
        verdict = "met" if not below else "missed"
        lines.append(
            f"| {t['system']} >= {t['at_least']} x {t['against']} | "
            f"{', '.join(map(str, steps))} | {', '.join(map(str, below)) or '-'} | {verdict} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def target_rows(
    targets: list[dict],
    by_label: dict[str, EvalResult],
    bench: Benchmark,
    setting: str,
    metric: str,
) -> str:
    """One line per target: ``system / reference`` with its interval, met or missed."""
    lines = ["| target | ratio [95% CI] | needed | verdict |", "|---|---|---|---|"]
    for t in targets:
        system = by_label.get(bench.label(t["system"], setting))
        if t["against"] == "best_kvpress":
            presses = [r for name, r in by_label.items() if name.startswith("kvpress:")]
            reference = max(presses, key=lambda r: r.overall[metric], default=None)
        else:
            reference = by_label.get(bench.label(t["against"], setting))
            if reference is None and t["against"].startswith("zs_"):
                # A zero-shot row from the standard benchmark: "full_context (zero-shot)".
                reference = by_label.get(f"{t['against'].removeprefix('zs_')} (zero-shot)")
        if system is None or reference is None:
            continue
        ratio = paired_ratio(system, reference, metric)
        verdict = "met" if ratio.mean >= t["at_least"] else "missed"
        if verdict == "met" and ratio.low < t["at_least"]:
            verdict = "met (interval reaches below)"
        lines.append(
            f"| {system.method} / {reference.method} | {ratio.mean:.2f} "
            f"[{ratio.low:.2f}, {ratio.high:.2f}] | >= {t['at_least']} | {verdict} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""
