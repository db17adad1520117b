"""Fuzzing every reader of a user's files (Hypothesis): random bytes, truncations of a valid file,
wrong types at every field, deep nesting, alias bombs and huge declared sizes. Each reader either
succeeds or raises ``UserError`` with a one-line message; never another exception, and within the
profile's deadline per example (an alias bomb had hung a run for minutes).

The readers are called directly (fast); ``tests/test_inputs.py`` runs each command line once.
The "ci" profile (fixed examples, derandomised) keeps the file well under a minute on one core;
``HYPOTHESIS_PROFILE=deep`` runs many more examples.
"""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from llu.utils import UserError

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=10000, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=500, deadline=10000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder for the examples' files; the libraries the readers import lazily are imported first, so
    that no example's time (the deadline) includes an import."""
    import safetensors.numpy  # noqa: F401

    from llu.backbones.openclip import config_keys
    config_keys()  # imports open_clip
    return tmp_path_factory.mktemp("fuzz")


def read_or_refuse(reader, *args):
    """``reader(*args)``, which may refuse with one line; any other exception fails the test."""
    try:
        return reader(*args)
    except UserError as e:
        assert "\n" not in str(e) and str(e), repr(str(e))
        return None


# ---------------------------------------------------------------------------------------------
# Generic malformations of a file's bytes

def mutations(valid):
    """Random bytes, truncations of ``valid``, and ``valid`` with a few bytes overwritten."""
    return st.one_of(
        st.binary(max_size=2000),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
            lambda edits: _overwrite(valid, edits)),
    )


def _overwrite(data, edits):
    data = bytearray(data)
    for position, value in edits:
        data[position] = value
    return bytes(data)


# Plain data of any shape: what a wrong type at a field may be.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=20)


def replace_somewhere(tree, draw):
    """``tree`` (nested dicts and lists) with one field, chosen by ``draw``, replaced by any value."""
    if isinstance(tree, dict) and tree and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(tree, key=str)))
        return {**tree, key: replace_somewhere(tree[key], draw)}
    if isinstance(tree, list) and tree and draw(st.booleans()):
        index = draw(st.integers(0, len(tree) - 1))
        return tree[:index] + [replace_somewhere(tree[index], draw)] + tree[index + 1:]
    return draw(values)


@st.composite
def one_field_replaced(draw, tree):
    return replace_somewhere(tree, draw)


def nested(depth, leaf="1", open_="[", close="]"):
    return open_ * depth + leaf + close * depth


# ---------------------------------------------------------------------------------------------
# Config files (YAML, _BASE_) and upstream keys

VALID_CONFIG = ("_BASE_: base.yaml\nDATALOADER:\n  TRAIN_X:\n    BATCH_SIZE: 32\nOPTIM:\n  NAME: sgd\n  LR: 0.002\n"
                "  MAX_EPOCH: 5\nTRAINER:\n  COOP:\n    N_CTX: 4\n    PREC: fp16\n    CTX_INIT: true\n"
                "LOSS:\n  LAMBDA: 1.0\n  T: 1.0\n").encode()


def alias_bomb(fanout, depth, under="UNKNOWN"):
    lines = [f"{under}:", f"  l0: &l0 [{', '.join(['x'] * fanout)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, depth)]
    return ("\n".join(lines) + "\n").encode()


config_files_bytes = st.one_of(
    mutations(VALID_CONFIG),
    one_field_replaced(yaml.safe_load(VALID_CONFIG)).map(lambda tree: yaml.safe_dump(tree).encode()),
    st.builds(alias_bomb, st.integers(2, 12), st.integers(1, 14), st.sampled_from(["UNKNOWN", "OPTIM", "_BASE_"])),
    st.integers(1, 3000).map(lambda depth: f"A: {nested(depth)}\n".encode()),
    st.integers(1, 3000).map(lambda depth: f"A: {nested(depth, '1', '{B: ', '}')}\n".encode()),
    st.integers(1, 200).map(lambda depth: "".join(f"{'  ' * i}K{i}:\n" for i in range(depth)).encode() + b"x"),
)


@given(content=config_files_bytes)
def test_config_files_are_read_or_refused_with_one_line(folder, content):
    from llu import config_files, upstream_keys
    (folder / "base.yaml").write_text("INPUT:\n  SIZE: [224, 224]\n")
    path = folder / "config.yaml"
    path.write_bytes(content)
    chain = read_or_refuse(config_files.chain, str(path))
    for source, mapping in chain or []:
        read_or_refuse(upstream_keys.translate_mapping, mapping, source)


@given(opts=st.lists(st.text(max_size=30), max_size=10))
def test_upstream_command_line_options_translate_or_refuse(opts):
    from llu import upstream_keys
    read_or_refuse(upstream_keys.translate_opts, opts + ["TRAINER.COOP.CTX_INIT", "True"])


# ---------------------------------------------------------------------------------------------
# Split files (CoOp's split_zhou JSON)

VALID_SPLIT = {"train": [["a/0.png", 0, "a"], ["b/0.png", 1, "b"]], "val": [["a/1.png", 0, "a"]],
               "test": [["b/1.png", "1", "b"]]}

split_bytes = st.one_of(
    mutations(json.dumps(VALID_SPLIT).encode()),
    one_field_replaced(VALID_SPLIT).map(lambda tree: json.dumps(tree).encode()),
    st.integers(1, 200000).map(lambda depth: nested(depth).encode()),
    st.integers(1, 20000).map(lambda digits: f'{{"train": [["a.png", {"9" * digits}, "a"]]}}'.encode()),
)


@given(content=split_bytes)
def test_split_files_are_read_or_refused_with_one_line(folder, content):
    from llu.datasets.splits import read_split
    path = folder / "split.json"
    path.write_bytes(content)
    read_or_refuse(read_split, str(path), str(folder))


# ---------------------------------------------------------------------------------------------
# Embeddings files (.npz, .safetensors)

def npz_bytes(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


VALID_EMBEDDINGS = dict(image_features=np.eye(6, 8, dtype=np.float32), labels=np.arange(6) % 3,
                        classnames=np.array(["a", "b", "c"]), split=np.array([0, 0, 0, 1, 2, 2]),
                        text_features=np.eye(3, 8, dtype=np.float32), inverse_temperature=np.array(100.0))

arrays = st.one_of(
    st.builds(np.array, scalars.filter(lambda v: v is not None)),
    st.builds(lambda shape, dtype, fill: np.full(shape, fill, dtype=dtype),
              st.lists(st.integers(0, 5), max_size=3).map(tuple),
              st.sampled_from(["float16", "float32", "float64", "int8", "int64", "uint64", "bool", "U3", "S2"]),
              st.sampled_from([0, 1, 3, -1, 1e39, float("nan"), float("inf")])),
)


@st.composite
def wrong_field(draw):
    """The valid embeddings with one array missing or replaced by one of another dtype or shape."""
    arrays_now = dict(VALID_EMBEDDINGS)
    key = draw(st.sampled_from(sorted(arrays_now)))
    if draw(st.booleans()):
        del arrays_now[key]
    else:
        try:
            arrays_now[key] = draw(arrays)
        except (ValueError, OverflowError):  # a fill the dtype cannot hold: leave the field as it was
            pass
    return npz_bytes(arrays_now)


def huge_declared_npz(shape):
    """An .npz whose image_features header declares ``shape`` but holds 4 floats."""
    import zipfile
    buffer = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = shape
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open("image_features.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(np.zeros(4, np.float32).tobytes())
        with archive.open("labels.npy", "w") as f:
            np.lib.format.write_array(f, np.arange(2))
    return buffer.getvalue()


def safetensors_bytes(header_json, payload=b""):
    header = header_json.encode()
    return struct.pack("<Q", len(header)) + header + payload


@given(data=st.data())
def test_npz_embeddings_are_read_or_refused_with_one_line(folder, data):
    from llu.datasets.embeddings import EmbeddingsFile
    content = data.draw(st.one_of(
        mutations(npz_bytes(VALID_EMBEDDINGS)),
        wrong_field(),
        st.builds(huge_declared_npz, st.tuples(st.integers(0, 2 ** 40), st.integers(0, 2 ** 20))),
    ))
    path = folder / "embeddings.npz"
    path.write_bytes(content)
    read_or_refuse(EmbeddingsFile, str(path))


def valid_safetensors():
    from safetensors.numpy import save
    return save({k: np.ascontiguousarray(v) for k, v in VALID_EMBEDDINGS.items() if k != "classnames"},
                metadata={"classnames": json.dumps(["a", "b", "c"])})


@given(data=st.data())
def test_safetensors_embeddings_are_read_or_refused_with_one_line(folder, data):
    from llu.datasets.embeddings import EmbeddingsFile
    content = data.draw(st.one_of(
        mutations(valid_safetensors()),
        st.builds(lambda n, dtype: safetensors_bytes(json.dumps(
            {"image_features": {"dtype": dtype, "shape": [n, 8], "data_offsets": [0, n * 32]},
             "__metadata__": {"classnames": "[" * 5000}})), st.integers(0, 2 ** 50),
            st.sampled_from(["F32", "F64", "BF16", "I64", "BOOL", "U8", "XX"])),
        st.integers(0, 2 ** 64 - 1).map(lambda size: struct.pack("<Q", size) + b"{}"),
    ))
    path = folder / "embeddings.safetensors"
    path.write_bytes(content)
    read_or_refuse(EmbeddingsFile, str(path))


# ---------------------------------------------------------------------------------------------
# Images

def image_bytes(fmt, mode="RGB"):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width, height, depth=8, colour=0):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 256)) + chunk(b"IEND", b""))


image_files = st.one_of(
    mutations(image_bytes("PNG")),
    mutations(image_bytes("JPEG")),
    mutations(image_bytes("TIFF", "CMYK")),
    mutations(image_bytes("GIF", "P")),
    st.builds(png_declaring, st.integers(0, 2 ** 31 - 1), st.integers(0, 2 ** 31 - 1),
              st.sampled_from([1, 8, 16]), st.sampled_from([0, 2, 4, 6])),
)


@given(content=image_files)
def test_images_are_read_or_refused_with_one_line(folder, content):
    from llu.engine.data.images import read_image
    path = folder / "image.png"
    path.write_bytes(content)
    image = read_or_refuse(read_image, str(path))
    assert image is None or image.mode == "RGB"


# ---------------------------------------------------------------------------------------------
# Model configs: Hugging Face folders (before transformers runs) and open_clip model configs

HF_CONFIG = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 32,
             "text_config": {"hidden_size": 64}, "vision_config": {"image_size": 32}}
OPENCLIP_CONFIG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                   "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}


@given(data=st.data())
def test_hugging_face_config_files_are_checked_or_refused_with_one_line(folder, data):
    from llu.backbones.huggingface import refuse_remote_code
    content = data.draw(st.one_of(mutations(json.dumps(HF_CONFIG).encode()),
                                  one_field_replaced(HF_CONFIG).map(lambda tree: json.dumps(tree).encode()),
                                  st.integers(1, 100000).map(lambda depth: nested(depth).encode())))
    hf = folder / "hf"
    hf.mkdir(exist_ok=True)
    name = data.draw(st.sampled_from(["config.json", "preprocessor_config.json", "tokenizer_config.json"]))
    for other in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
        (hf / other).unlink(missing_ok=True)
    (hf / name).write_bytes(content)
    read_or_refuse(refuse_remote_code, str(hf))


@given(data=st.data())
def test_open_clip_model_configs_are_checked_or_refused_with_one_line(folder, data):
    from llu.backbones.openclip import check_model_config
    content = data.draw(st.one_of(mutations(json.dumps(OPENCLIP_CONFIG).encode()),
                                  one_field_replaced(OPENCLIP_CONFIG).map(lambda tree: json.dumps(tree).encode())))
    path = folder / "model.json"
    path.write_bytes(content)
    read_or_refuse(check_model_config, str(path))


# ---------------------------------------------------------------------------------------------
# results.json, as the report reads it

VALID_RESULTS = {
    "schema_version": 2, "ablation": "", "dataset": "Shapes", "trainer": "LLU", "backbone": "toy", "seed": 1,
    "shots": 16, "subsample_classes": "base", "eval_split": "test", "accuracy": 50.0, "error": 50.0,
    "macro_f1": 50.0, "num_classes": 2, "per_class_accuracy": {"circle": 50.0, "square": 50.0},
    "config_files": {"dataset": "configs/datasets/shapes.yaml", "trainer": "configs/trainers/LLU/toy.yaml"},
    "elapsed_seconds": 1.0, "train_dataset": "Shapes", "train_subsample_classes": "base", "model_dir": "",
    "llu_regularizer": 1e-4, "provenance": {"gpu": None, "threads": 1}}

results_bytes = st.one_of(
    mutations(json.dumps(VALID_RESULTS).encode()),
    one_field_replaced(VALID_RESULTS).map(lambda tree: json.dumps(tree).encode()),
    st.integers(1, 200000).map(lambda depth: nested(depth).encode()),
)


@given(content=results_bytes)
def test_results_files_are_read_or_refused_with_one_line(folder, content):
    from llu.results import RunResults
    path = folder / "results.json"
    path.write_bytes(content)
    read_or_refuse(RunResults.from_json, str(path))


def test_the_valid_results_example_reads(folder):
    from llu.results import RunResults
    path = folder / "results.json"
    path.write_text(json.dumps(VALID_RESULTS))
    assert RunResults.from_json(str(path)).accuracy == 50.0
