"""Every shipped YAML config parses, names a known method and valid options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctxcompress.methods import METHODS
from ctxcompress.training import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"
# configs/accelerate: launcher configs; configs/benchmarks: benchmark specs (tested in
# tests/test_benchmark_reports.py). Every other YAML file is a training config.
TRAIN_CONFIGS = sorted(
    p for p in ROOT.rglob("*.yaml") if p.parent.name not in ("accelerate", "benchmarks")
)


def test_there_are_configs_for_every_paper_setting():
    names = {p.relative_to(ROOT).as_posix() for p in TRAIN_CONFIGS}
    for folder in ("sac", "pic", "icae", "xc500", "epl"):
        for r in (5, 15, 51):
            for stage in (1, 2):
                assert f"{folder}/llama-3.2-1b-r{r}-stage{stage}.yaml" in names
    assert any(n.startswith("smollm2/") for n in names)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_parses_and_its_method_options_are_valid(path):
    cfg = load_config(path)
    cls = METHODS[cfg.method]
    cls.config_class.from_dict(cfg.method_options)  # raises on an unknown/invalid option
    assert cfg.train.batch_size % cfg.train.micro_batch_size == 0


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_yaml(path):
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
