"""Issue 41, part 2: compressor folders that parse but do not fit — a valid config of another
method or base model, an adapter of another rank or trained on another base model with the
same shapes, learned vectors of the wrong shape or dtype, a missing adapter, a model card
alone. Each gives a ctxcompress error naming the file and what is wrong; none loads and
answers with garbage. Built from tiny models; hypothesis transplants any file of one saved
compressor into another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import ctxcompress as cc
from ctxcompress.methods.persistence import IDENTITY_BASE, IDENTITY_METHOD
from ctxcompress.testing import tiny_model
from tests.conftest import randomize_trainables

ADAPTER = Path("adapter") / "adapter_model.safetensors"
ADAPTER_CONFIG = Path("adapter") / "adapter_config.json"
EMBEDDINGS = Path("embeddings.safetensors")
HEADER = Path("ctxcompress.json")


def saved(folder: Path, method: str = "sac", base=None, **options) -> Path:
    """A trained-looking (randomized) tiny compressor saved in ``folder``."""
    options = {"ratio": 4, "lora_rank": 4, "lora_alpha": 8, **options}
    comp = cc.build_compressor(method, base or tiny_model(), **options)
    randomize_trainables(comp)
    comp.save_pretrained(folder)
    return folder


def transplant(donor: Path, target: Path, relative: Path) -> None:
    (target / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(donor / relative, target / relative)


def refused(folder: Path, match: str, base=None):
    with pytest.raises(cc.CtxCompressError, match=match) as error:
        cc.load_compressor(folder, base_model=base or tiny_model())
    return str(error.value)


def test_every_saved_weights_file_records_its_method_and_base_model(tmp_path):
    from safetensors import safe_open

    folder = saved(tmp_path / "a")
    for path in (folder / EMBEDDINGS, folder / ADAPTER):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        assert meta[IDENTITY_METHOD] == "sac"
        assert meta[IDENTITY_BASE] == tiny_model().fingerprint
    # ... and a folder loads back as itself.
    loaded = cc.load_compressor(folder, base_model=tiny_model())
    assert loaded.fingerprint == json.loads((folder / HEADER).read_text())["fingerprint"]


def test_an_adapter_trained_on_another_base_model_with_the_same_shapes_is_refused(tmp_path):
    """The dangerous case: same architecture and shapes, other weights — it would load and
    answer with garbage. Refused by the base-model identity the adapter file records."""
    other_base = tiny_model(seed=1)
    assert other_base.fingerprint != tiny_model().fingerprint
    donor = saved(tmp_path / "donor", base=other_base)
    target = saved(tmp_path / "target")
    transplant(donor, target, ADAPTER)
    message = refused(target, "trained for base model")
    assert str(target / ADAPTER) in message and other_base.fingerprint in message
    transplant(donor, target, EMBEDDINGS)
    refused(target, "trained for base model")


def test_a_valid_config_of_another_method_is_refused_by_the_weights_it_meets(tmp_path):
    sac = saved(tmp_path / "sac")
    pic = saved(tmp_path / "pic", method="pic")
    transplant(pic, sac, HEADER)  # a PIC header over SAC's weights
    message = refused(sac, "trained for method 'sac'")
    assert str(sac / EMBEDDINGS) in message


def test_a_valid_config_of_another_base_model_is_refused(tmp_path):
    folder = saved(tmp_path / "a")
    header = json.loads((folder / HEADER).read_text())
    header["base_model"]["fingerprint"] = tiny_model(seed=1).fingerprint
    (folder / HEADER).write_text(json.dumps(header))
    refused(folder, "was trained on base model")
    # Loading it with the base model it names: the weights say they are not from it.
    message = refused(folder, "trained for base model", base=tiny_model(seed=1))
    assert str(folder / EMBEDDINGS) in message


def test_an_adapter_of_another_rank_is_refused_naming_rank(tmp_path):
    donor = saved(tmp_path / "r8", lora_rank=8, lora_alpha=16)
    target = saved(tmp_path / "r4")
    shutil.rmtree(target / "adapter")
    shutil.copytree(donor / "adapter", target / "adapter")
    message = refused(target, "describes another adapter")
    assert "r 8 (expected 4)" in message and str(target / ADAPTER_CONFIG) in message
    # The weights alone swapped (the config left as it was): refused as another
    # compressor's file; and a file without the identity stamp (saved by older versions)
    # is refused by its shapes, naming the file, not with torch's size-mismatch traceback.
    target = saved(tmp_path / "r4b")
    transplant(donor, target, ADAPTER)
    refused(target, "mixes files of two saved compressors")
    save_file(load_file(str(donor / ADAPTER)), str(target / ADAPTER))  # no metadata
    message = refused(target, "other shapes")
    assert str(target / ADAPTER) in message


def test_learned_vectors_of_the_wrong_shape_or_dtype_are_refused(tmp_path):
    folder = saved(tmp_path / "a")
    tensors = load_file(str(folder / EMBEDDINGS))
    meta = {IDENTITY_METHOD: "sac", IDENTITY_BASE: tiny_model().fingerprint}
    name = next(iter(tensors))
    wrong = {**tensors, name: torch.zeros(3, 5)}
    save_file(wrong, str(folder / EMBEDDINGS), metadata=meta)
    message = refused(folder, "has shape")
    assert name in message and str(folder / EMBEDDINGS) in message
    as_ints = {**tensors, name: tensors[name].to(torch.int32)}
    save_file(as_ints, str(folder / EMBEDDINGS), metadata=meta)
    refused(folder, "not a floating-point tensor")
    fewer = {k: v for k, v in tensors.items() if k != name}
    save_file(fewer, str(folder / EMBEDDINGS), metadata=meta)
    refused(folder, "belongs to a compressor with other options")


@pytest.mark.parametrize("missing", [ADAPTER, ADAPTER_CONFIG, EMBEDDINGS])
def test_a_missing_file_is_refused_by_name(tmp_path, missing):
    folder = saved(tmp_path / "a")
    (folder / missing).unlink()
    message = refused(folder, "is missing")
    assert str(folder / missing) in message


def test_a_model_card_alone_is_not_a_compressor(tmp_path):
    folder = saved(tmp_path / "a")
    card = tmp_path / "card"
    card.mkdir()
    shutil.copy(folder / "README.md", card / "README.md")
    refused(card, "not a saved compressor")


def test_the_decoder_adapter_is_checked_like_the_encoders(tmp_path):
    folder = saved(tmp_path / "a", decoder_lora_rank=4)
    decoder = folder / "adapter" / "decoder"
    assert (decoder / "adapter_model.safetensors").is_file()
    config = json.loads((decoder / "adapter_config.json").read_text())
    config["r"] = 2
    (decoder / "adapter_config.json").write_text(json.dumps(config))
    refused(folder, "r 2 .expected 4.")
    shutil.rmtree(decoder)
    refused(folder, "is missing")


DONORS = {
    "rank8": {"lora_rank": 8, "lora_alpha": 16},
    "ratio2": {"ratio": 2},
    "per_slot": {"anchor_embedding": "per_slot"},
    "shared": {"anchor_embedding": "shared"},
    "pic": {"method": "pic"},
    "other_base": {"base_seed": 1},
    "decoder": {"decoder_lora_rank": 4},
}
FILES = [HEADER, EMBEDDINGS, ADAPTER, ADAPTER_CONFIG]


@pytest.fixture(scope="module")
def donors(tmp_path_factory):
    root = tmp_path_factory.mktemp("donors")
    out = {}
    for name, options in DONORS.items():
        options = dict(options)
        method = options.pop("method", "sac")
        base = tiny_model(seed=options.pop("base_seed", 0))
        out[name] = saved(root / name, method=method, base=base, **options)
    out["target"] = saved(root / "target")
    return out


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    swaps=st.lists(
        st.tuples(st.sampled_from(sorted(DONORS)), st.sampled_from(FILES)),
        min_size=1,
        max_size=3,
    )
)
def test_any_transplanted_file_is_refused_or_changes_nothing(donors, tmp_path_factory, swaps):
    """Files of other (valid) compressors copied into a saved folder: loading either fails
    with a ctxcompress error, or gives exactly the target compressor back (the transplant
    was identical, e.g. a header whose options match) — never a compressor with the
    weights of another."""
    folder = tmp_path_factory.mktemp("swap") / "c"
    shutil.copytree(donors["target"], folder)
    for donor, relative in swaps:
        if (donors[donor] / relative).is_file():
            transplant(donors[donor], folder, relative)
    try:
        loaded = cc.load_compressor(folder, base_model=tiny_model())
    except cc.CtxCompressError as exc:
        assert str(exc).strip()
        return
    expected = cc.load_compressor(donors["target"], base_model=tiny_model())
    assert loaded.fingerprint == expected.fingerprint
