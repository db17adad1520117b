"""Shared test fixtures: one thread, a tiny random CLIP file, and a small generated image folder."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

from llu import engine  # noqa: E402

engine.select_backend()  # $LLU_ENGINE, as train.py: the tests run on either backend (docs/dassl.md)
import llu.datasets  # noqa: E402
import llu.trainers  # noqa: E402

llu.datasets.register_all()
llu.trainers.register_all()

TINY_CLIP_DIMS = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
                      context_length=16, vocab_size=49408, transformer_width=64, transformer_heads=1,
                      transformer_layers=1)


def make_tiny_clip_state_dict(seed=0):
    import clip.model
    torch.manual_seed(seed)
    model = clip.model.CLIP(**TINY_CLIP_DIMS)
    return model.state_dict()


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """A random CLIP with OpenAI's architecture, saved as an OpenAI-format state dict."""
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(make_tiny_clip_state_dict(), path)
    return str(path)


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def write_image_folder(root, classes=COLOURS, per_class=6, size=40, seed=0):
    """``root/<class>/<i>.png``: noisy images of each class's colour; returns the class names."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i:03d}.png"))
    return list(classes)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "data" / "my_images"
    write_image_folder(str(root))
    return str(root)


@engine.DATASET_REGISTRY.register(force=True)
class TestColours(engine.DatasetBase):
    """``ROOT/colours/<class>/*.png`` (``colours_root``): 4 training images per class, then
    ``val_images`` val images (0: the val split is the test split), the rest test; base = blue, green.
    The trainers' tests build their runs on it (``DATASET.NAME TestColours``)."""
    val_images = 0
    __test__ = False  # a dataset, not a test class, where a test module imports it

    def __init__(self, cfg):
        folder = os.path.join(cfg.DATASET.ROOT, "colours")
        train_x, val, test = [], [], []
        for label, name in enumerate(sorted(os.listdir(folder))):
            items = [engine.Datum(impath=os.path.join(folder, name, f), label=label, classname=name)
                     for f in sorted(os.listdir(os.path.join(folder, name)))]
            train_x += items[:4]
            val += items[4:4 + self.val_images]
            test += items[4 + self.val_images:]
        subsample = cfg.DATASET.SUBSAMPLE_CLASSES
        if self.val_images:
            train_x, val, test = self.subsample_classes(train_x, val, test, subsample=subsample)
        else:
            train_x, test = self.subsample_classes(train_x, test, subsample=subsample)
            val = test
        super().__init__(train_x=train_x, val=val, test=test)


@engine.DATASET_REGISTRY.register(force=True)
class TestColoursWithVal(TestColours):
    """On ``colours_root_with_val``: 4 training, 2 val and 2 test images per class."""
    val_images = 2


@pytest.fixture(scope="session")
def colours_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_image_folder(str(root / "colours"), per_class=6, size=36)
    return str(root)


@pytest.fixture(scope="session")
def colours_root_with_val(tmp_path_factory):
    """As ``colours_root`` with 8 images per class: 4 training, 2 val (``val_images = 2``), 2 test."""
    root = tmp_path_factory.mktemp("data")
    write_image_folder(str(root / "colours"), per_class=8, size=36)
    return str(root)


def build_test_trainer(trainer, root, backbone, output_dir, *opts, dataset="TestColours", transforms=("normalize",),
                       config_file=None):
    """A trainer built through train.py's command-line path with the tests' quick settings (32-pixel
    inputs, fp32, training batches of 4, seed 1); ``opts`` are trailing config overrides.
    ``transforms=None`` and ``config_file=None`` leave those flags out."""
    from llu import train
    torch.manual_seed(0)
    args = train.build_parser().parse_args([
        "--root", root, "--trainer", trainer, "--backbone", backbone, "--output-dir", str(output_dir),
        *(["--config-file", config_file] if config_file else []),
        *(["--transforms", *transforms] if transforms else []), "--seed", "1",  # --transforms takes a list
        "DATASET.NAME", dataset, "INPUT.SIZE", "(32, 32)", "TRAINER.PREC", "fp32",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAIN.PRINT_FREQ", "100", *opts])
    return engine.build_trainer(train.setup_cfg(args))


@pytest.fixture
def run_train(image_folder, tiny_clip_file, tmp_path, monkeypatch, capsys):
    """train.py in this process on the 4-colour image folder (``image_folder``), quick settings:
    ``run_train(trainer, out, *opts, flags=(), config="vit_b16", backbone=tiny_clip_file)`` returns
    (exit status, stderr, stdout)."""
    from llu import train
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(repo)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))

    def _run(trainer, out, *opts, flags=(), config="vit_b16", backbone=None):
        args = ["--root", os.path.dirname(image_folder), "--trainer", trainer,
                "--dataset-config-file", "configs/datasets/imagefolder.yaml",
                "--config-file", f"configs/trainers/{trainer}/{config}.yaml", "--backbone", backbone or tiny_clip_file,
                "--output-dir", str(out), "--seed", "1", *flags, "DATASET.IMAGEFOLDER.DIR", os.path.basename(image_folder),
                "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "2", "FEATURES.AUG_VIEWS", "1",
                "DATALOADER.NUM_WORKERS", "0", "TRAINER.COOP.N_CTX", "4", *opts]
        capsys.readouterr()
        try:
            train.cli(args)
            code = 0
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return code, captured.err, captured.out

    return _run


def stop_after_epoch(monkeypatch, epoch):
    """Make a run stop (as Ctrl-C does) right after its ``epoch``-th epoch, to be resumed."""
    from llu.trainers import clip_common
    after_epoch = clip_common.ClipTrainer.after_epoch

    def stopping(self):
        after_epoch(self)
        if self.epoch + 1 == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(clip_common.ClipTrainer, "after_epoch", stopping)


@pytest.fixture(scope="session")
def shapes_world():
    """The built-in world's data root (pass it as DATASET.ROOT; the backbone is "toy", ToyCLIP's
    shipped weights). Each dataset is generated on first use and reused afterwards."""
    from llu.utils import user_cache_dir
    return os.environ.get("LLU_WORLD_ROOT") or user_cache_dir("world")
