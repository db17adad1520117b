"""Inputs a user hands the project: model folders, image files, class names, config, split and
embeddings files. Each is either read as what it is or refused with one line naming the file
(``tests/test_fuzz_inputs.py`` fuzzes the readers)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from llu.engine.data.images import MAX_PIXELS_VARIABLE, read_image
from llu.utils import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(text):
    """The single ``error:`` line of a command's output (and no traceback)."""
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def run_cli(code, stdin=""):
    """``code`` in a fresh Python through the project's one-line error handling: (exit status, stderr)."""
    program = f"from llu.utils import exit_on_user_error\n{code}"
    run = subprocess.run([sys.executable, "-c", program], cwd=REPO, input=stdin, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    return run.returncode, run.stderr + run.stdout


# ---------------------------------------------------------------------------------------------
# No code from a model folder runs

def test_a_model_folder_with_its_own_code_is_refused_before_transformers_reads_it(tmp_path):
    """transformers would ask on stdin whether to run the folder's code; answered "y", it ran it."""
    folder, marker = tmp_path / "model", tmp_path / "code-ran"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my-clip", "architectures": ["CLIPModel"],
        "auto_map": {"AutoConfig": "my_clip.MyClipConfig", "AutoModel": "my_clip.MyClipModel"}}))
    (folder / "my_clip.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                       "from transformers import PretrainedConfig\n"
                                       "class MyClipConfig(PretrainedConfig):\n    model_type = 'my-clip'\n")
    (folder / "model.safetensors").write_bytes(b"")
    code, output = run_cli(f"from llu.backbones import load_backbone\nexit_on_user_error(load_backbone, "
                           f"'hf:{folder}')", stdin="y\n" * 10)
    assert code == 2 and not marker.exists()
    assert f"{folder / 'config.json'}: key auto_map names code of the model's own" in one_error_line(output)


def test_every_transformers_load_passes_trust_remote_code_false(monkeypatch, tmp_path):
    import transformers

    from llu.backbones import huggingface
    calls = []

    def recording(name):
        def from_pretrained(folder, **kwargs):
            calls.append((name, kwargs.get("trust_remote_code", "missing")))
            raise OSError("stop here")
        return from_pretrained

    for name in ("AutoConfig", "CLIPModel", "AutoTokenizer", "AutoImageProcessor"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", recording(name))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot be read as a transformers config"):
        huggingface.HuggingFaceClip(str(tmp_path), "", None, "fp32")
    assert calls == [("AutoConfig", False)]
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda folder, **kwargs: calls.append(("AutoConfig", kwargs["trust_remote_code"])) or
                        transformers.CLIPConfig())
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", lambda folder, **kwargs: calls.append(
        ("CLIPModel", kwargs["trust_remote_code"])) or transformers.CLIPModel(transformers.CLIPConfig(
            text_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1),
            vision_config=dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                               image_size=8, patch_size=8), projection_dim=8)))
    with pytest.raises(UserError, match="cannot load the model, its tokenizer or its image processor"):
        huggingface.HuggingFaceClip(str(tmp_path), "", None, "fp32")
    assert calls[1:] == [("AutoConfig", False), ("CLIPModel", False), ("AutoTokenizer", False)]


@pytest.mark.parametrize("name, content, message", [
    ("config.json", "{not json", "not a readable JSON config file"),
    ("config.json", "[1, 2]", "expected a JSON object of config keys"),
    ("config.json", '{"architectures": "CLIPModel"}', "key architectures must be a list of class names"),
    ("preprocessor_config.json", '{"auto_map": {"AutoImageProcessor": "proc.MyProcessor"}}',
     "key auto_map names code of the model's own"),
    ("tokenizer_config.json", '{"auto_map": {"AutoTokenizer": ["tok.MyTokenizer", null]}}',
     "key auto_map names code of the model's own"),
])
def test_a_malformed_hugging_face_config_is_one_line_naming_it(tmp_path, name, content, message):
    from llu.backbones import load_backbone
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=f"{tmp_path / name}: {message}"):
        load_backbone(f"hf:{tmp_path}")


def test_a_damaged_hugging_face_weights_file_is_one_line(tmp_path):
    from llu.backbones import load_backbone
    (tmp_path / "config.json").write_text('{"model_type": "clip", "architectures": ["CLIPModel"]}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(UserError, match=f"{tmp_path}: cannot load the model"):
        load_backbone(f"hf:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# Images decoded as what they are: references written here with NumPy alone

def saved(tmp_path, image, name, **kwargs):
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


def pixels(path):
    image = read_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def grey(levels):
    return np.repeat(np.asarray(levels, dtype=np.uint8)[..., None], 3, axis=-1)


def over_white(rgb, alpha):
    """Colour c with alpha a over white, rounded: (c a + 255 (255 - a)) / 255."""
    rgb, alpha = np.asarray(rgb, np.float64), np.asarray(alpha, np.float64)[..., None]
    return np.rint((rgb * alpha + 255.0 * (255.0 - alpha)) / 255.0).astype(np.uint8)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_a_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path, rng):
    values = rng.integers(0, 65536, (24, 20)).astype(np.uint16)
    values[0, :4] = [0, 257, 32896, 65535]
    path = saved(tmp_path, Image.fromarray(values), "deep.png")
    assert Image.open(path).mode == "I;16"
    assert np.array_equal(pixels(path), grey(np.floor(values / 257.0 + 0.5)))
    assert pixels(path)[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert (pixels(path) == 255).mean() < 0.01  # PIL's convert("RGB") made 99.6% of them 255


@pytest.mark.parametrize("byte_order", ["I;16B", "I;16L"])
def test_16_bit_greyscale_in_either_byte_order(tmp_path, rng, byte_order):
    values = rng.integers(0, 65536, (8, 8)).astype(">u2" if byte_order == "I;16B" else "<u2")
    image = Image.frombytes(byte_order, (8, 8), values.tobytes())
    from llu.engine.data.images import to_rgb
    assert np.array_equal(np.asarray(to_rgb(image)), grey(np.floor(values.astype(np.float64) / 257.0 + 0.5)))


def test_32_bit_integer_tiffs_are_scaled_from_their_declared_range(tmp_path, rng):
    values = rng.integers(-2 ** 31, 2 ** 31, (8, 8), dtype=np.int64).astype(np.int32)
    path = saved(tmp_path, Image.fromarray(values), "int.tif")
    assert Image.open(path).mode == "I"
    expected = np.floor((values.astype(np.float64) + 2.0 ** 31) * 255.0 / (2.0 ** 32 - 1) + 0.5)
    assert np.array_equal(pixels(path), grey(expected))


def test_an_integer_image_without_a_declared_range_is_read_as_16_bit(rng):
    from llu.engine.data.images import to_rgb
    values = rng.integers(0, 65536, (8, 8)).astype(np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    assert np.array_equal(np.asarray(to_rgb(image)), grey(np.floor(values * 255.0 / 65535.0 + 0.5)))


def test_float_tiffs_are_read_as_0_to_1(tmp_path, rng):
    values = rng.uniform(-0.2, 1.2, (8, 8)).astype(np.float32)
    values[0, :3] = [np.nan, 0.5, 1.0]
    path = saved(tmp_path, Image.fromarray(values), "float.tif")
    assert Image.open(path).mode == "F"
    clipped = np.minimum(np.maximum(np.where(np.isnan(values), 0.0, values.astype(np.float64)), 0.0), 1.0)
    assert np.array_equal(pixels(path), grey(np.floor(clipped * 255.0 + 0.5)))


def test_greyscale_with_alpha_is_composited_over_white(tmp_path, rng):
    level, alpha = (rng.integers(0, 256, (8, 8)).astype(np.uint8) for _ in range(2))
    alpha[0, :2] = [0, 255]
    path = saved(tmp_path, Image.fromarray(np.stack([level, alpha], -1), "LA"), "la.png")
    assert Image.open(path).mode == "LA"
    expected = over_white(np.repeat(level[..., None], 3, -1), alpha)
    assert np.array_equal(pixels(path), expected)
    assert pixels(path)[0, 0].tolist() == [255, 255, 255] and pixels(path)[0, 1, 0] == level[0, 1]


def test_rgba_is_composited_over_white(tmp_path, rng):
    rgba = rng.integers(0, 256, (8, 8, 4)).astype(np.uint8)
    path = saved(tmp_path, Image.fromarray(rgba, "RGBA"), "rgba.png")
    assert np.array_equal(pixels(path), over_white(rgba[..., :3], rgba[..., 3]))


def test_a_palette_image_with_a_transparent_entry_is_composited_over_white(tmp_path, rng):
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    index = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    index[0, 0] = 7
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    path = saved(tmp_path, image, "palette.png", transparency=7)
    assert Image.open(path).mode == "P"
    colours = palette[index]
    alpha = np.where(index == 7, 0, 255)
    assert np.array_equal(pixels(path), over_white(colours, alpha))
    assert pixels(path)[0, 0].tolist() == [255, 255, 255]


def test_an_opaque_palette_image_reads_its_palette(tmp_path, rng):
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    index = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    assert np.array_equal(pixels(saved(tmp_path, image, "palette.png")), palette[index])


def test_cmyk_is_converted_with_the_subtractive_formula(tmp_path, rng):
    cmyk = rng.integers(0, 256, (8, 8, 4)).astype(np.uint8)
    path = saved(tmp_path, Image.fromarray(cmyk, "CMYK"), "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    assert np.array_equal(pixels(path), np.rint((255.0 - c) * (255.0 - k) / 255.0).astype(np.uint8))


def test_greyscale_and_bilevel_images(tmp_path, rng):
    level = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    assert np.array_equal(pixels(saved(tmp_path, Image.fromarray(level, "L"), "grey.png")), grey(level))
    bits = rng.integers(0, 2, (8, 8)).astype(bool)
    path = saved(tmp_path, Image.fromarray(bits), "bits.png")
    assert Image.open(path).mode == "1"
    assert np.array_equal(pixels(path), grey(np.where(bits, 255, 0)))


def test_ordinary_8_bit_images_decode_to_the_same_bits_as_before(tmp_path):
    """The built-in world's PNGs (and JPEGs of them): exactly PIL's convert("RGB"), what was read before,
    so Table 1 does not change."""
    from llu.world.generate import dataset_settings, render_image
    settings = dataset_settings("Shapes")
    for label in (0, 17, 63):
        rendered = render_image(settings, label, 0)
        png = saved(tmp_path, Image.fromarray(rendered), f"{label}.png")
        jpeg = saved(tmp_path, Image.fromarray(rendered), f"{label}.jpg", quality=90)
        assert np.array_equal(pixels(png), rendered)
        for path in (png, jpeg):
            with Image.open(path) as image:
                assert np.array_equal(pixels(path), np.asarray(image.convert("RGB")))


def test_a_transform_given_a_pil_image_converts_it_the_same_way(tmp_path, rng):
    from llu.engine.data.transforms import _to_rgb
    values = rng.integers(0, 65536, (8, 8)).astype(np.uint16)
    path = saved(tmp_path, Image.fromarray(values), "deep.png")
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(_to_rgb(image)), pixels(path))


def png_declaring(width, height):
    """A PNG file whose header declares width x height 8-bit greyscale pixels, with one tiny IDAT."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_from_its_header_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(60000, 60000))
    monkeypatch.delenv(MAX_PIXELS_VARIABLE, raising=False)
    with pytest.raises(UserError, match=f"{path}: refused as a possible decompression bomb: its header declares "
                                        f"more than 89,478,485 pixels \\(set {MAX_PIXELS_VARIABLE}"):
        read_image(str(path))
    path.write_bytes(png_declaring(10000, 9000))  # between PIL's limit and twice it: PIL only warns
    with pytest.raises(UserError, match="refused as a possible decompression bomb"):
        read_image(str(path))


def test_the_image_size_limit_can_be_set(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("RGB", (40, 30)), "small.png")
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "1000")
    with pytest.raises(UserError, match="more than 1,000 pixels"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "1200")
    assert read_image(path).size == (40, 30)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "lots")
    with pytest.raises(UserError, match=f"{MAX_PIXELS_VARIABLE}=lots: expected a number of pixels"):
        read_image(path)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\x00" * 20, b"not an image"])
def test_a_damaged_image_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "damaged.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{path}: cannot be read as an image"):
        read_image(str(path))


def test_a_truncated_png_is_one_line_naming_it(tmp_path, rng):
    path = saved(tmp_path, Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)), "cut.png")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(UserError, match="cut.png: cannot be read as an image"):
        read_image(path)


# ---------------------------------------------------------------------------------------------
# Class names a prompt can tell apart: one check for image folders, split files and embeddings files

def imagefolder_cfg(root, folder="my_images", **options):
    from llu.engine import extend_cfg, get_cfg_default
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.IMAGEFOLDER.DIR = str(root), "ImageFolder", folder
    cfg.merge_from_list([x for kv in options.items() for x in kv])
    return cfg


@pytest.mark.parametrize("twin", ["red_circle", "RED CIRCLE", "Red  circle", "red_Circle"])
def test_class_folders_that_differ_only_in_case_or_underscores_are_refused(tmp_path, twin):
    from conftest import write_image_folder

    from llu.datasets.imagefolder import ImageFolder
    root = tmp_path / "data" / "my_images"
    write_image_folder(str(root), classes={"Red_Circle": (200, 0, 0), twin: (190, 0, 0)}, per_class=3)
    first, second = sorted(["Red_Circle", twin])
    with pytest.raises(UserError, match=f"class folders '{first}' and '{second}' both name the class "
                                        f"'{first.replace('_', ' ')}'"):
        ImageFolder(imagefolder_cfg(tmp_path / "data"))


def test_a_split_file_whose_class_names_differ_only_in_case_is_refused(tmp_path):
    from llu.datasets.splits import read_split
    entries = [["a.png", 0, "Red circle"], ["b.png", 1, "red_circle"]]
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    with pytest.raises(UserError, match=f"{path}: classes 'Red circle' and 'red_circle' both name the class"):
        read_split(str(path), str(tmp_path))


def test_an_embeddings_file_whose_class_names_differ_only_in_case_is_refused(tmp_path):
    from llu.datasets.embeddings import EmbeddingsFile
    path = tmp_path / "twins.npz"
    np.savez(path, image_features=np.eye(4, dtype=np.float32), labels=np.arange(4) % 2,
             classnames=np.array(["Sea lion", "sea_lion"]))
    with pytest.raises(UserError, match=f"{path}: classnames: classes 'Sea lion' and 'sea_lion' both name"):
        EmbeddingsFile(str(path))


def test_distinct_class_names_pass():
    from llu.datasets.splits import refuse_twin_classes
    refuse_twin_classes([(n, n) for n in ("red circle", "red circles", "redcircle", "red-circle")], "here")


# ---------------------------------------------------------------------------------------------
# Config files and upstream keys: one line naming the file, bounded before anything is expanded

ALIAS_BOMB = "UNKNOWN_SECTION:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("text, message", [
    (ALIAS_BOMB, "not valid YAML \\(holds more than 100,000 values with its aliases expanded \\(an alias bomb\\?\\) "
                 "at line 7"),
    ("A: &a [1, *a]\n", "not valid YAML \\(alias \\*a refers to a value that contains it at line 1, column 11"),
    ("A: " + "[" * 2000 + "]" * 2000 + "\n", "not valid YAML \\(nested more than 32 deep"),
    ("A: " + "{B: " * 40 + "1" + "}" * 40 + "\n", "not valid YAML \\(nested more than 32 deep"),
    ("_BASE_: [a.yaml, b.yaml]\n", "key _BASE_ must be the path of another config file \\(a string\\)"),
    ("_BASE_: {a: 1}\n", "key _BASE_ must be the path of another config file"),
    ("1: 2\n", "key 1: config keys must be names"),
    ("A: {B.C: 1}\n", "key A.'B.C': config keys must be names"),
    ("A: {[1]: 2}\n", "not valid YAML \\(while constructing a mapping; found unhashable key at line 1, column 5\\)"),
    ("A: !!python/object/apply:os.system [echo]\n", "not valid YAML \\(could not determine a constructor"),
    ("A: 2020-13-45\n", "not valid YAML \\(ValueError: month must be in 1..12\\)"),
    ("[1, 2]\n", "expected a mapping of config keys, got list"),
    ("A: [unclosed\n", "not valid YAML \\(while parsing a flow sequence; expected ',' or ']', but got"),
])
def test_a_malformed_config_file_is_one_line_naming_it(tmp_path, text, message):
    from llu import config_files
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{path}: {message}") as refused:
        config_files.chain(str(path))
    assert "\n" not in str(refused.value)


def test_a_config_file_that_is_not_text_is_one_line(tmp_path):
    from llu import config_files
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00A: 1")
    with pytest.raises(UserError, match=f"{path}: not valid YAML \\(not UTF-8 text"):
        config_files.read(str(path))


def test_aliases_that_expand_to_a_config_are_read(tmp_path):
    from llu import config_files
    path = tmp_path / "aliases.yaml"
    path.write_text("OPTIM: &optim {LR: 0.002, MAX_EPOCH: 5}\nOTHER: {OPTIM: *optim}\n")
    assert config_files.read(str(path))["OTHER"]["OPTIM"] == {"LR": 0.002, "MAX_EPOCH": 5}


def test_a_chain_of_bases_too_long_is_one_line(tmp_path):
    from llu import config_files
    for i in range(40):
        (tmp_path / f"{i}.yaml").write_text(f"_BASE_: {i + 1}.yaml\n")
    (tmp_path / "40.yaml").write_text("A: 1\n")
    with pytest.raises(UserError, match="more than 32 files deep in _BASE_ includes"):
        config_files.chain(str(tmp_path / "0.yaml"))


def test_the_config_command_refuses_an_alias_bomb_with_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    code, output = run_cli(f"import sys\nfrom llu import config_files\nsys.argv = ['x', {str(path)!r}]\n"
                           f"exit_on_user_error(config_files.main)")
    assert code == 2 and "an alias bomb?" in one_error_line(output)


@pytest.mark.parametrize("content, message", [
    ({"TRAINER": {"COOP": {"PREC": "fp16"}, "PREC": {"X": 1}}}, "key TRAINER.PREC is given both as a value and as "
                                                                "a section \\(holding TRAINER.PREC.X\\)"),
    ({"TRAINER": {"PREC": {"X": 1}, "COOP": {"PREC": "fp16"}}}, "key TRAINER.PREC is given both as a section and "
                                                                "as a value"),
])
def test_an_upstream_key_colliding_with_a_section_is_one_line_naming_the_file(content, message):
    from llu.upstream_keys import translate_mapping
    with pytest.raises(UserError, match=f"trainer.yaml: {message}"):
        translate_mapping(content, "trainer.yaml")


# ---------------------------------------------------------------------------------------------
# Split, embeddings and model config files: one line naming the file (and key)

@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "not a readable JSON file \\(UnicodeDecodeError"),
    (b"[" * 100000 + b"]" * 100000, "not a readable JSON file \\(RecursionError"),
    (b'{"train": [["a.png", ' + b"1" * 5000 + b', "a"]]}', "not a readable JSON file \\(ValueError"),
    (b'["train", "val", "test"]', "expected an object with train, val and test lists, got list"),
    (b'{"train": [["a.png", "\xc2\xb2", "a"]], "val": [], "test": []}', "entry 0 of 'train' .*the label must be an integer"),
])
def test_a_malformed_split_file_is_one_line_naming_it(tmp_path, content, message):
    from llu.datasets.splits import read_split
    path = tmp_path / "split.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{path}: {message}") as refused:
        read_split(str(path), str(tmp_path))
    assert "\n" not in str(refused.value)


def write_embeddings(path, **arrays):
    base = dict(image_features=np.eye(4, 8, dtype=np.float32), labels=np.arange(4) % 2,
                classnames=np.array(["a", "b"]))
    np.savez(path, **{**base, **arrays})
    return str(path)


@pytest.mark.parametrize("arrays, message", [
    ({"image_features": np.full((4, 8), 1e39)}, "key image_features holds values beyond float32's range"),
    ({"image_features": np.zeros((4, 8), np.float32)}, "key image_features row 0 cannot be normalised in float32"),
    ({"text_features": np.full((2, 8), -1e39)}, "key text_features holds values beyond float32's range"),
    ({"inverse_temperature": np.array(np.inf)}, "key inverse_temperature must be one positive number finite in "
                                                "float32"),
    ({"inverse_temperature": np.array(1e39)}, "key inverse_temperature must be one positive number finite in float32"),
    ({"image_features": np.zeros((0, 8), np.float32), "labels": np.zeros(0, int)},
     "image_features must be a finite float array"),
])
def test_embeddings_are_checked_in_the_dtype_they_are_used_in(tmp_path, arrays, message):
    from llu.datasets.embeddings import EmbeddingsFile
    path = write_embeddings(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=f"{path}: {message}"):
        EmbeddingsFile(path)


def test_an_npz_declaring_more_data_than_it_holds_is_refused_before_reading(tmp_path):
    import zipfile

    from llu.datasets.embeddings import EmbeddingsFile
    path = tmp_path / "huge.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((4, 8), np.float32))
    header["shape"] = (10 ** 11, 8)
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("image_features.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(np.zeros((4, 8), np.float32).tobytes())
    with pytest.raises(UserError, match=f"{path}: member image_features.npy declares \\(100000000000, 8\\) float32"):
        EmbeddingsFile(str(path))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04" + b"\x00" * 40, b"\x93NUMPY"])
def test_a_damaged_embeddings_file_is_one_line(tmp_path, content):
    from llu.datasets.embeddings import EmbeddingsFile
    for suffix in (".npz", ".safetensors"):
        path = tmp_path / f"damaged{suffix}"
        path.write_bytes(content)
        with pytest.raises(UserError, match=f"{path}: cannot be read as"):
            EmbeddingsFile(str(path))


TINY_OPENCLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}


@pytest.mark.parametrize("change, message", [
    (lambda c: c["vision_cfg"].update(layerz=1), "unknown key vision_cfg.layerz \\(open_clip's keys there: "),
    (lambda c: c.update(embed=32), "unknown key embed \\(open_clip's keys there: "),
    (lambda c: c.pop("text_cfg"), "key text_cfg is missing"),
    (lambda c: c.update(embed_dim="32"), "key embed_dim must be a positive integer"),
    (lambda c: c.update(vision_cfg=[1]), "key vision_cfg must be an object of settings"),
    (lambda c: c["vision_cfg"].update(layers="one"), "open_clip cannot build the model from its config \\(TypeError"),
])
def test_a_malformed_open_clip_model_config_is_one_line_naming_it(tmp_path, change, message):
    import copy

    from llu.backbones import load_backbone
    config = copy.deepcopy(TINY_OPENCLIP)
    change(config)
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(config))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match=f"{path}: {message}"):
        load_backbone(f"openclip:{path}", weights=str(tmp_path / "weights.bin"))


def test_an_open_clip_config_that_is_not_json_is_one_line(tmp_path):
    from llu.backbones import load_backbone
    path = tmp_path / "broken.json"
    path.write_text("{embed_dim: 32")
    with pytest.raises(UserError, match=f"{path}: not a readable JSON config file"):
        load_backbone(f"openclip:{path}", weights=str(path))
