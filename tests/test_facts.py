"""Facts about datasets and trainers as class attributes read through the registries, registries and
config keys that do not depend on import order, the adapter's one validator, and optional
dependencies that name the extra to install."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import llu.datasets
import llu.trainers
from llu.datasets import ENSEMBLE_TEMPLATES, DatasetFacts, dataset_facts
from llu.utils import UserError, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CoOp's CUSTOM_TEMPLATES (trainers/zsclip.py upstream), the hand-made prompt of each dataset.
COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
# ProGrad's own table (trainers/prograd.py of its repository).
PROGRAD_UPSTREAM = {
    **COOP_TEMPLATES,
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "Food101": "a type of food, a photo of {}.",
}


def python(code, *flags):
    """Run ``code`` in a fresh interpreter (nothing imported yet) from the repository; its stdout."""
    result = subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Facts, read through the registries

def test_each_reader_states_coops_template():
    assert {name: dataset_facts(name).template for name in COOP_TEMPLATES} == COOP_TEMPLATES
    for name in ("Shapes", "Patterns", "ImageFolder", "Embeddings", "NotAReaderHere"):
        assert dataset_facts(name).template == "a photo of a {}."
    assert dataset_facts("NotAReaderHere") is DatasetFacts


def test_prograd_keeps_its_own_table_written_only_where_it_differs():
    from types import SimpleNamespace

    from llu.trainers.prograd import PROGRAD_TEMPLATES, ProGrad

    def template(dataset):
        return ProGrad.template(SimpleNamespace(cfg=SimpleNamespace(DATASET=SimpleNamespace(NAME=dataset))))

    assert {name: template(name) for name in PROGRAD_UPSTREAM} == PROGRAD_UPSTREAM
    assert all(PROGRAD_TEMPLATES[name] != COOP_TEMPLATES[name] for name in PROGRAD_TEMPLATES)


def test_imagenet_facts_ensembles_and_domain_shifts():
    imagenet_family = {"ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"}
    datasets = llu.datasets.load_all()
    assert {name for name, reader in datasets.items() if reader.imagenet_classes} == imagenet_family
    assert dataset_facts("ImageNet").ensemble_templates() == ENSEMBLE_TEMPLATES  # upstream: the seven alone
    assert dataset_facts("ImageNetV2").ensemble_templates() == ["a photo of a {}."] + ENSEMBLE_TEMPLATES
    shifted = {name: reader.shifted_from for name, reader in datasets.items() if reader.shifted_from}
    assert shifted == {**dict.fromkeys(imagenet_family - {"ImageNet"}, "ImageNet"),
                       "ShapesSketch": "Shapes", "ShapesNoisy": "Shapes"}


def test_table_names_and_orders_are_the_papers():
    datasets = llu.datasets.load_all()
    ordered = sorted((reader.table_order, reader.display_name or name) for name, reader in datasets.items()
                     if reader.table_order is not None)
    assert [label for _, label in ordered] == [
        "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft", "SUN397",
        "DTD", "EuroSAT", "UCF101", "ImageNetV2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R", "Shapes",
        "ShapesSketch", "ShapesNoisy", "Patterns"]
    trainers = llu.trainers.load_all()
    assert [cls.display_name or name for name, cls in sorted(trainers.items(), key=lambda t: t[1].table_order)] == [
        "CLIP", "CLIP (ensemble)", "CoOp", "CoCoOp", "ProGrad", "KgCoOp", "MaPLe", "PromptSRC", "CLIP-LoRA", "Linear probe",
        "WiSE-FT", "CLIP Adapter", "Tip-Adapter", "Tip-Adapter-F", "LLU", "LLU bank"]
    assert [name for name, cls in trainers.items() if not cls.learns] == ["ZeroshotCLIP", "ZeroshotCLIP2"]


# ---------------------------------------------------------------------------------------------
# Registries and config keys: plain imports, the same whatever was imported first

def _modules_marked(package, decorator):
    folder = os.path.join(REPO, "llu", package)
    return sorted(f"llu.{package}.{name[:-3]}" for name in os.listdir(folder)
                  if name.endswith(".py") and f"\n@{decorator}\n" in open(os.path.join(folder, name)).read())


DUMP_AFTER = """
    import sys
    from llu import engine
    engine.select_backend("builtin")
    {imports}
    print(engine.extend_cfg(engine.get_cfg_default()).dump())
    print("MODULES", " ".join(sorted(m for m in sys.modules if m.startswith("llu."))))
"""


def test_config_keys_and_registries_do_not_depend_on_what_was_imported_first():
    """Fresh interpreters that first import one trainer, or one reader, get the same config as this
    one (everything loaded), and every module that marks a class is loaded (plain imports in load_all)."""
    from llu.engine import extend_cfg, get_cfg_default
    everything = extend_cfg(get_cfg_default()).dump() + "\n"
    one_trainer, modules = python(DUMP_AFTER.format(imports="import llu.trainers.llu")).split("MODULES")
    one_reader, _ = python(DUMP_AFTER.format(imports="import llu.datasets.imagefolder")).split("MODULES")
    assert one_trainer == one_reader == everything
    assert "COOP:" in one_reader and "IMAGEFOLDER:" in one_trainer
    marked = _modules_marked("datasets", "dataset") + _modules_marked("trainers", "trainer")
    assert set(marked) <= set(modules.split()) and "llu.datasets.world" in marked


def test_two_declarations_of_one_key_are_refused(monkeypatch):
    from llu.engine import CN, extend_cfg, get_cfg_default
    from llu.engine.config import CONFIG_EXTENSIONS

    def redeclare(cfg):
        cfg.TRAINER.LLU = CN()
        cfg.TRAINER.LLU.BETA = 0.7

    monkeypatch.setitem(CONFIG_EXTENSIONS, "tests.redeclare", redeclare)
    with pytest.raises(AssertionError, match="TRAINER.LLU.* is declared by both"):
        extend_cfg(get_cfg_default())


def test_import_llu_sets_no_warning_filter_the_clustering_module_stands_alone_and_clip_imports_quietly():
    loaded = python("""
        import sys
        import warnings
        import torch  # which sets filters of its own
        before = list(warnings.filters)
        from llu import cluster_anchors, complete_linkage, LocalizedLinearAdapter
        assert warnings.filters == before, "import llu changed the warning filters"
        assert cluster_anchors.__module__ == complete_linkage.__module__ == "llu.trainers.clustering"
        print(" ".join(sorted(m for m in sys.modules if m.startswith("llu"))))
        from llu.utils import import_clip
        clip = import_clip()
        assert warnings.filters == before and clip.model.CLIP
    """, "-W", "error::UserWarning").split()  # a warning from clip's pkg_resources import is an error
    assert loaded == ["llu", "llu.catalog", "llu.trainers", "llu.trainers.clustering", "llu.trainers.llu_adapter"]


# ---------------------------------------------------------------------------------------------
# One validator for LLU's settings

INVALID = {"mask": "gauss", "reg_form": "l1", "init": "zeros", "adapt": "none", "beta": 1.5, "gamma": -1.0,
           "lam": -1.0, "exact_limit": -1}


def test_every_setting_is_checked_by_one_validator_for_the_config_and_the_adapter():
    from llu.engine import extend_cfg, get_cfg_default
    from llu.trainers.llu import check_llu_config
    from llu.trainers.llu_adapter import SETTINGS, LocalizedLinearAdapter

    assert set(INVALID) == set(SETTINGS)
    constructor = {"mask", "reg_form", "init", "adapt", "beta", "gamma"}
    features, labels = torch.eye(4)[:2], torch.tensor([0, 1])
    for argument, value in INVALID.items():
        key = SETTINGS[argument][0]
        cfg = extend_cfg(get_cfg_default())
        cfg.TRAINER.LLU[key] = value
        with pytest.raises(UserError, match=rf"^TRAINER\.LLU\.{key} must be .*, got"):
            check_llu_config(cfg.TRAINER.LLU)
        with pytest.raises(ValueError, match=rf"^{argument} must be .*, got"):
            if argument in constructor:
                LocalizedLinearAdapter(4, **{argument: value})
            elif argument == "lam":
                LocalizedLinearAdapter(4).fit(features, labels, features, epochs=1, lam=value)
            else:
                LocalizedLinearAdapter(4).set_anchors(features, features, exact_limit=value)
    check_llu_config(extend_cfg(get_cfg_default()).TRAINER.LLU)  # the defaults pass


# ---------------------------------------------------------------------------------------------
# Optional dependencies: a missing one is a line naming the extra

def test_require_names_the_extra_and_hides_no_other_import_error(tmp_path, monkeypatch):
    assert require("json", "any", "this") is sys.modules["json"]
    monkeypatch.setitem(sys.modules, "llu_absent_module", None)
    with pytest.raises(UserError, match=r"^the thing needs llu_absent_module, which is not installed: "
                                        r"pip install 'llu-clip\[extra\]'$"):
        require("llu_absent_module", "extra", "the thing")
    (tmp_path / "llu_broken_module.py").write_text("import llu_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="llu_absent_dependency"):
        require("llu_broken_module", "extra", "the thing")


@pytest.mark.parametrize("module, extra, use", [
    ("open_clip", "openclip", lambda: __import__("llu.backbones.openclip", fromlist=["x"])._open_clip()),
    ("transformers", "hf", lambda: __import__("llu.backbones.huggingface", fromlist=["x"])._transformers()),
    ("submitit", "slurm", lambda: __import__("llu.sweep", fromlist=["x"]).make_executor("unused")),
])
def test_each_optional_import_names_its_extra(module, extra, use, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(UserError, match=rf"needs {module}, which is not installed: pip install 'llu-clip\[{extra}\]'"):
        use()


def test_metrics_without_tensorboard_name_its_extra(tmp_path, monkeypatch, capsys):
    from llu.engine.metrics import RunMetrics
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    metrics = RunMetrics(str(tmp_path))
    assert metrics.writer() is None
    assert "pip install 'llu-clip[tensorboard]'" in capsys.readouterr().out
