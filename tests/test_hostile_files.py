"""Hostile files (issue 21): mutated, truncated and forged ``.ctx`` files, compressor folders
and training configs give a ctxcompress error with a message — never another exception,
never a huge allocation from a size a header claims (property-based, hypothesis)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import ctxcompress as cc
from ctxcompress.training import load_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_v1"
CTX = (FIXTURES / "sac.ctx").read_bytes()
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def load_or_library_error(load, *args, **kwargs):
    """``load(...)``, or None if it raised a ctxcompress error with a message."""
    try:
        return load(*args, **kwargs)
    except cc.CtxCompressError as exc:
        assert str(exc).strip()
        return None


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, len(CTX) - 1), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, len(CTX) - 1), st.integers(1, 255)),
    st.tuples(st.just("header_len"), st.integers(0, 2**63 - 1), st.just(0)),
)


def mutate(data: bytes, kind: str, at: int, value: int) -> bytes:
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        if not data:
            return data
        at %= len(data)
        return data[:at] + bytes([data[at] ^ value]) + data[at + 1 :]
    return struct.pack("<Q", at) + data[8:]  # the safetensors header length, forged


@FUZZ
@given(changes=st.lists(mutations, min_size=1, max_size=3))
def test_a_mutated_ctx_file_loads_or_fails_with_a_ctxcompress_error(tmp_path_factory, changes):
    data = CTX
    for change in changes:
        data = mutate(data, *change)
    path = tmp_path_factory.mktemp("ctx") / "mutated.ctx"
    path.write_bytes(data)
    ctx = load_or_library_error(cc.CompressedContext.load, path)
    if ctx is not None:  # what loads is a consistent context
        assert ctx.compressed_length >= 0 and ctx.original_length >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
HEADER_KEYS = [
    "format_version",
    "kind",
    "method",
    "base_model",
    "compressor",
    "original_length",
    "compressed_length",
    "meta",
]


@FUZZ
@given(
    header=st.dictionaries(st.sampled_from(HEADER_KEYS), json_values, max_size=8),
    shape=st.lists(st.integers(0, 3), min_size=0, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.uint8]),
    names=st.sets(st.sampled_from(["keys", "values", "embeds", "positions", "other"])),
)
def test_a_forged_ctx_header_or_tensor_fails_with_a_ctxcompress_error(
    tmp_path_factory, header, shape, dtype, names
):
    """Well-formed safetensors with any header and any tensors (shapes, dtypes, names)."""
    base = json.loads(json.dumps(cc.CompressedContext.load(FIXTURES / "sac.ctx").header()))
    base.update(header)
    tensors = {n: torch.zeros(shape, dtype=dtype) for n in names}
    path = tmp_path_factory.mktemp("ctx") / "forged.ctx"
    save_file(tensors, str(path), metadata={"ctxcompress": json.dumps(base)})
    load_or_library_error(cc.CompressedContext.load, path)


@FUZZ
@given(
    target=st.sampled_from(
        [
            "ctxcompress.json",
            "embeddings.safetensors",
            "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json",
        ]
    ),
    change=mutations,
)
def test_a_mutated_compressor_folder_loads_or_fails_with_a_ctxcompress_error(
    tmp_path_factory, target, change
):
    folder = tmp_path_factory.mktemp("comp") / "sac"
    shutil.copytree(FIXTURES / "sac", folder)
    data = (folder / target).read_bytes()
    kind, at, value = change
    if kind == "truncate":
        at %= max(len(data), 1)
    (folder / target).write_bytes(mutate(data, kind, at, value))
    load_or_library_error(cc.load_compressor, folder)


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "method",
                "base_model",
                "method_options",
                "data",
                "train",
                "output_dir",
                "distill",
                "init_from",
                "resume",
                "extra",
            ]
        ),
        json_values,
        max_size=6,
    )
)
def test_any_training_config_data_fails_with_a_ctxcompress_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    load_or_library_error(load_config, path, [])


@pytest.mark.parametrize(
    "text", ["{", "- a\n- b", "method: [", "\t\tmethod: sac", "!!python/object:os.system x", ""]
)
def test_malformed_yaml_fails_with_a_ctxcompress_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(cc.CtxCompressError):
        load_config(path, [])


@pytest.mark.parametrize("claimed", [2**40, 2**63 - 1])
def test_a_header_claiming_a_huge_size_is_refused_without_allocating_it(tmp_path, claimed):
    """The 8-byte safetensors header length, and a tensor whose claimed shape and offsets
    run far past the end of a small file: refused as corrupt, before any large read."""
    path = tmp_path / "huge-header.ctx"
    path.write_bytes(struct.pack("<Q", claimed) + CTX[8:])
    with pytest.raises(cc.CorruptFileError):
        cc.CompressedContext.load(path)
    header = {
        "keys": {"dtype": "F32", "shape": [2**20, 2**20, 1, 1], "data_offsets": [0, 2**42]},
        "__metadata__": {"ctxcompress": "{}"},
    }
    blob = json.dumps(header).encode()
    path = tmp_path / "huge-tensor.ctx"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)
    with pytest.raises(cc.CorruptFileError):
        cc.CompressedContext.load(path)
