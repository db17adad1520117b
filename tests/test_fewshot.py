"""Few-shot sampling (Dassl's algorithm, cached as JSON) and CoOp's base/new class split, through a reader."""
import json
import os
import os.path as osp
import random

import pytest

import llu.datasets  # noqa: F401  (conftest registers the readers)
import llu.datasets.splits
from conftest import write_image_folder
from llu.engine import DATASET_REGISTRY, DatasetBase, extend_cfg, get_cfg_default, set_random_seed

COLOURS = {f"colour_{k}": (50 * k, 255 - 50 * k, 120) for k in range(5)}  # an odd number of classes


def build(root, **options):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "ImageFolder"
    cfg.merge_from_list([x for kv in options.items() for x in kv])
    return DATASET_REGISTRY.get("ImageFolder")(cfg)


def shuffled_image_folder(root, per_class=30):
    """An ImageFolder with a split file whose items come in shuffled order, so labels first appear
    out of order (label 0 is not first): 50% train, 20% val, 30% test per class."""
    folder = osp.join(root, "my_images")
    write_image_folder(folder, classes=COLOURS, per_class=per_class, size=4)
    split = {"train": [], "val": [], "test": []}
    n_train, n_val = per_class // 2, per_class // 5
    for label, name in enumerate(COLOURS):
        paths = [f"{name}/{i:03d}.png" for i in range(per_class)]
        split["train"] += [[p, label, name] for p in paths[:n_train]]
        split["val"] += [[p, label, name] for p in paths[n_train:n_train + n_val]]
        split["test"] += [[p, label, name] for p in paths[n_train + n_val:]]
    rng = random.Random(123)
    for items in split.values():
        rng.shuffle(items)
    last = next(i for i, item in enumerate(split["train"]) if item[1] == len(COLOURS) - 1)
    split["train"].insert(0, split["train"].pop(last))  # the highest label appears first
    with open(osp.join(folder, "split.json"), "w") as f:
        json.dump(split, f)
    return {"DATASET.IMAGEFOLDER.SPLIT_FILE": "split.json"}


def dassl_fewshot(items, num_shots):
    """Reference: group by label in order of first appearance; K items per label by ``random.sample``."""
    groups = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    sampled = []
    for group in groups.values():
        sampled += random.sample(group, num_shots) if len(group) >= num_shots else group
    return sampled


def paths(items):
    return [(item.impath, item.label) for item in items]


@pytest.mark.parametrize("seed, num_shots", [(0, 1), (0, 8), (1, 2), (7, 16)])
def test_fewshot_sample_equals_dassl_reference(tmp_path, seed, num_shots):
    options = shuffled_image_folder(str(tmp_path))
    full = build(tmp_path, **options)
    random.seed(seed)
    expected_train = dassl_fewshot(full.train_x, num_shots)  # train first, then val from the same stream
    expected_val = dassl_fewshot(full.val, min(num_shots, 4))
    set_random_seed(seed)
    dataset = build(tmp_path, **options, SEED=seed, **{"DATASET.NUM_SHOTS": num_shots})
    assert paths(dataset.train_x) == paths(expected_train)
    assert paths(dataset.val) == paths(expected_val)
    assert paths(dataset.test) == paths(full.test)


def test_the_split_a_seed_draws_does_not_depend_on_what_the_process_drew_before(tmp_path):
    # A caller that never seeded the run (a test, a notebook) drew another "seed 1" split and cached
    # it where every later run of seed 1 read it.
    options = shuffled_image_folder(str(tmp_path))
    set_random_seed(1)
    expected = build(tmp_path, **options, SEED=1, **{"DATASET.NUM_SHOTS": 4})
    (tmp_path / "my_images" / "split_fewshot" / "shot_4-seed_1.json").unlink()
    random.seed(12345)
    random.random()
    drawn_later = build(tmp_path, **options, SEED=1, **{"DATASET.NUM_SHOTS": 4})
    assert paths(drawn_later.train_x) == paths(expected.train_x) and paths(drawn_later.val) == paths(expected.val)


def test_fewshot_split_cached_as_relative_json_and_reused(tmp_path, monkeypatch):
    options = shuffled_image_folder(str(tmp_path))
    set_random_seed(0)
    first = build(tmp_path, **options, SEED=0, **{"DATASET.NUM_SHOTS": 2})
    cache = tmp_path / "my_images" / "split_fewshot" / "shot_2-seed_0.json"
    data = json.loads(cache.read_text())
    entries = data["train"] + data["val"]
    assert len(entries) == len(first.train_x) + len(first.val)
    assert not any(osp.isabs(p) for p, _, _ in entries) and str(tmp_path) not in cache.read_text()

    def no_resampling(*args, **kwargs):
        raise AssertionError("resampled instead of reading the cached few-shot split")

    monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", no_resampling)
    set_random_seed(99)
    second = build(tmp_path, **options, SEED=0, **{"DATASET.NUM_SHOTS": 2})
    assert paths(second.train_x) == paths(first.train_x) and paths(second.val) == paths(first.val)


def test_read_only_dataset_folder_caches_in_user_cache(tmp_path, monkeypatch):
    """Both the generated split_imagefolder.json and the few-shot split go to $LLU_CACHE."""
    root = tmp_path / "data"
    folder = root / "my_images"
    write_image_folder(str(folder), classes=COLOURS, per_class=10, size=4)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    os.chmod(folder, 0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode: simulate a read-only folder
            real = llu.datasets.splits.is_writable_dir
            monkeypatch.setattr(llu.datasets.splits, "is_writable_dir",
                                lambda path: not str(path).startswith(str(folder)) and real(path))
        set_random_seed(1)
        first = build(root, SEED=1, **{"DATASET.NUM_SHOTS": 2})
        assert sorted(os.listdir(folder)) == sorted(COLOURS)  # nothing written beside the images
        cached = sorted(str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*.json"))
        assert [p.split("/")[0] for p in cached] == ["split_fewshot", "splits"]
        assert cached[0].endswith("/shot_2-seed_1.json") and cached[1].endswith("/split_imagefolder.json")
        assert all(p.split("/")[1].startswith("my_images-") for p in cached)
        monkeypatch.setattr(DatasetBase, "generate_fewshot_dataset", lambda *a, **k: pytest.fail("resampled"))
        second = build(root, SEED=1, **{"DATASET.NUM_SHOTS": 2})
        assert paths(second.train_x) == paths(first.train_x) and paths(second.test) == paths(first.test)
    finally:
        os.chmod(folder, 0o755)


def test_base_and_new_classes_split_sorted_labels_after_fewshot_sampling(tmp_path):
    options = shuffled_image_folder(str(tmp_path), per_class=10)
    few = {"SEED": 3, "DATASET.NUM_SHOTS": 2, **options}
    runs = {}
    for subsample in ("all", "base", "new"):
        set_random_seed(3)
        runs[subsample] = build(tmp_path, **few, **{"DATASET.SUBSAMPLE_CLASSES": subsample})
    assert os.listdir(tmp_path / "my_images" / "split_fewshot") == ["shot_2-seed_3.json"]  # one shared split
    every = runs["all"]
    names = list(COLOURS)
    assert runs["base"].classnames == names[:3] and runs["new"].classnames == names[3:]  # ceil(5/2) = 3 base
    for subsample, kept, offset in (("base", range(0, 3), 0), ("new", range(3, 5), 3)):
        dataset = runs[subsample]
        for mine, reference in ((dataset.train_x, every.train_x), (dataset.val, every.val),
                                (dataset.test, every.test)):
            assert [(x.impath, x.label + offset) for x in mine] == [(x.impath, x.label) for x in reference
                                                                     if x.label in kept]
        assert sorted({x.label for x in dataset.test}) == list(range(len(kept)))  # relabelled from 0


def test_more_shots_than_a_class_has_warns_and_keeps_all(tmp_path, capsys):
    folder = tmp_path / "my_images"
    write_image_folder(str(folder), classes={"plenty": (200, 0, 0)}, per_class=30, size=4)
    write_image_folder(str(folder), classes={"scarce": (0, 0, 200)}, per_class=6, size=4)
    full = build(tmp_path)
    set_random_seed(0)
    dataset = build(tmp_path, SEED=0, **{"DATASET.NUM_SHOTS": 8})
    out = capsys.readouterr().out
    assert "Warning: class 'scarce' has only 3 images, fewer than 8 shots" in out
    assert "'plenty' has only" not in out
    scarce = dataset.classnames.index("scarce")
    assert sorted(x.impath for x in dataset.train_x if x.label == scarce) == \
        sorted(x.impath for x in full.train_x if x.label == scarce)
    assert sum(x.label != scarce for x in dataset.train_x) == 8
