"""The CoOp dataset readers and ImageFolder: each reads a tiny fake tree in CoOp's exact layout.

One builder per dataset writes the tree (images, split or annotation files) under a data root and
returns what the reader must find: the class names in label order and the train/val/test sizes.
"""
import io
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

import llu.datasets  # noqa: F401  (conftest registers the readers)
from conftest import write_image_folder
from llu.engine import DATASET_REGISTRY, extend_cfg, get_cfg_default
from llu.utils import UserError


def _image_bytes(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE_BYTES = {".png": _image_bytes("PNG"), ".jpg": _image_bytes("JPEG"), ".jpeg": _image_bytes("JPEG")}


def write_images(folder, relpaths):
    """A tiny valid image at each ``folder/relpath`` (format by extension)."""
    for rel in relpaths:
        path = osp.join(folder, rel)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(IMAGE_BYTES[osp.splitext(rel)[1].lower()])


def write_text(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_split_zhou(path, classes):
    """CoOp's split JSON from [(class name, image paths)], label = position: 3 train, 1 val, the rest test."""
    split = {"train": [], "val": [], "test": []}
    for label, (classname, paths) in enumerate(classes):
        for key, part in (("train", paths[:3]), ("val", paths[3:4]), ("test", paths[4:])):
            split[key] += [[p, label, classname] for p in part]
    write_text(path, [json.dumps(split)])


def build_cfg(root, name, **options):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.merge_from_list([x for kv in options.items() for x in kv])
    return cfg


def build(root, name, **options):
    return DATASET_REGISTRY.get(name)(build_cfg(root, name, **options))


# ---------------------------------------------------------------------------------------------
# One builder per dataset: (root, rebuild) -> (class names in label order, (#train, #val, #test)).
# rebuild=True writes the dataset's own annotations instead of CoOp's split file.

def oxford_pets(root, rebuild):
    d = osp.join(root, "oxford_pets")
    files = {breed: [f"{breed}_{i}.jpg" for i in range(1, 6)] for breed in ("Abyssinian", "american_bulldog")}
    write_images(osp.join(d, "images"), [f for fs in files.values() for f in fs])
    if rebuild:  # "<image> <class id> <species> <breed id>"; 4 trainval and 1 test image per breed
        for name, part in (("trainval", slice(0, 4)), ("test", slice(4, 5))):
            write_text(osp.join(d, "annotations", f"{name}.txt"),
                       [f"{f[:-4]} {label + 1} 1 1" for label, fs in enumerate(files.values()) for f in fs[part]])
    else:
        write_split_zhou(osp.join(d, "split_zhou_OxfordPets.json"),
                         [(b.lower(), fs) for b, fs in files.items()])
    return ["abyssinian", "american_bulldog"], (6, 2, 2)


def caltech101(root, rebuild):
    d = osp.join(root, "caltech-101")
    folders = ["accordion", "airplanes", "Faces", "Faces_easy", "BACKGROUND_Google"]
    files = {c: [f"{c}/image_000{i}.jpg" for i in range(1, 6)] for c in folders}
    write_images(osp.join(d, "101_ObjectCategories"), [f for fs in files.values() for f in fs])
    if rebuild:  # sorted folders, background and Faces_easy dropped; 5 images -> 2/1/2
        return ["face", "accordion", "airplane"], (6, 3, 6)
    write_split_zhou(osp.join(d, "split_zhou_Caltech101.json"),
                     [("accordion", files["accordion"]), ("airplane", files["airplanes"]), ("face", files["Faces"])])
    return ["accordion", "airplane", "face"], (9, 3, 3)


def stanford_cars(root, rebuild):
    from scipy.io import savemat
    d = osp.join(root, "stanford_cars")
    names = ["AM General Hummer SUV 2000", "Tesla Model S Sedan 2012"]
    train = {c: [f"{c * 4 + i + 1:05d}.jpg" for i in range(4)] for c in range(2)}
    test = {c: [f"{c + 1:05d}.jpg"] for c in range(2)}
    write_images(osp.join(d, "cars_train"), [f for fs in train.values() for f in fs])
    write_images(osp.join(d, "cars_test"), [f for fs in test.values() for f in fs])
    if rebuild:
        def annotations(files):
            rows = [(f, c + 1) for c, fs in files.items() for f in fs]
            return {"annotations": np.array([rows], dtype=[("fname", object), ("class", object)])}
        os.makedirs(osp.join(d, "devkit"))
        savemat(osp.join(d, "devkit", "cars_meta.mat"), {"class_names": np.array([names], dtype=object)})
        savemat(osp.join(d, "devkit", "cars_train_annos.mat"), annotations(train))
        savemat(osp.join(d, "cars_test_annos_withlabels.mat"), annotations(test))
    else:
        write_split_zhou(osp.join(d, "split_zhou_StanfordCars.json"),
                         [(f"{n.split()[-1]} {' '.join(n.split()[:-1])}",
                           [f"cars_train/{f}" for f in train[c]] + [f"cars_test/{f}" for f in test[c]])
                          for c, n in enumerate(names)])
    return ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan"], (6, 2, 2)


def oxford_flowers(root, rebuild):
    from scipy.io import savemat
    d = osp.join(root, "oxford_flowers")
    ids = [2, 1] * 5  # image_00001.jpg is class 2, image_00002.jpg class 1, ...
    write_images(osp.join(d, "jpg"), [f"image_{i + 1:05d}.jpg" for i in range(len(ids))])
    names = ["pink primrose", "hard-leaved pocket orchid"]
    if rebuild:  # 5 images per class -> 2/1/2
        savemat(osp.join(d, "imagelabels.mat"), {"labels": np.array([ids], dtype=np.uint8)})
        write_text(osp.join(d, "cat_to_name.json"), [json.dumps({"1": names[0], "2": names[1]})])
        return names, (4, 2, 4)
    write_split_zhou(osp.join(d, "split_zhou_OxfordFlowers.json"),
                     [(n, [f"image_{i + 1:05d}.jpg" for i, c in enumerate(ids) if c == k + 1])
                      for k, n in enumerate(names)])
    return names, (6, 2, 2)


def _class_folders(root, dataset_dir, image_dir, split_file, folders, names, rebuild):
    """The common "<image_dir>/<class>/*.jpg + split_zhou" layout; 5 images per class."""
    d = osp.join(root, dataset_dir)
    files = {c: [f"{c}/{c}_{i}.jpg" for i in range(1, 6)] for c in folders}
    write_images(osp.join(d, image_dir), [f for fs in files.values() for f in fs])
    if rebuild:
        return (4, 2, 4)
    write_split_zhou(osp.join(d, split_file), list(zip(names, files.values())))
    return (6, 2, 2)


def food101(root, rebuild):
    names = ["apple_pie", "baby_back_ribs"]
    return names, _class_folders(root, "food-101", "images", "split_zhou_Food101.json", names, names, rebuild)


def dtd(root, rebuild):
    names = ["banded", "blotchy"]
    return names, _class_folders(root, "dtd", "images", "split_zhou_DescribableTextures.json", names, names, rebuild)


def eurosat(root, rebuild):
    # The split file here keeps the folder names: the reader must still give CoOp's new names.
    folders = ["AnnualCrop", "SeaLake"]
    sizes = _class_folders(root, "eurosat", "2750", "split_zhou_EuroSAT.json", folders, folders, rebuild)
    return ["Annual Crop Land", "Sea or Lake"], sizes


def sun397(root, rebuild):
    d = osp.join(root, "sun397")
    folders = ["a/abbey", "a/apartment_building/outdoor"]
    files = {c: [f"{c}/sun_{i}.jpg" for i in range(1, 6)] for c in folders}
    write_images(osp.join(d, "SUN397"), [f for fs in files.values() for f in fs])
    names = ["abbey", "outdoor apartment_building"]
    if rebuild:
        write_text(osp.join(d, "ClassName.txt"), [f"/{c}" for c in folders])
        write_text(osp.join(d, "Training_01.txt"), [f"/{f}" for fs in files.values() for f in fs[:4]])
        write_text(osp.join(d, "Testing_01.txt"), [f"/{fs[4]}" for fs in files.values()])
    else:
        write_split_zhou(osp.join(d, "split_zhou_SUN397.json"), list(zip(names, files.values())))
    return names, (6, 2, 2)


def ucf101(root, rebuild):
    d = osp.join(root, "ucf101")
    actions = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "BlowDryHair": "Blow_Dry_Hair"}
    videos = {a: [f"v_{a}_g0{i}_c01" for i in range(1, 6)] for a in actions}
    write_images(osp.join(d, "UCF-101-midframes"), [f"{actions[a]}/{v}.jpg" for a, vs in videos.items() for v in vs])
    if rebuild:
        lists = osp.join(d, "ucfTrainTestlist")
        write_text(osp.join(lists, "classInd.txt"), [f"{k + 1} {a}" for k, a in enumerate(actions)])
        write_text(osp.join(lists, "trainlist01.txt"),
                   [f"{a}/{v}.avi {k + 1}" for k, (a, vs) in enumerate(videos.items()) for v in vs[:4]])
        write_text(osp.join(lists, "testlist01.txt"), [f"{a}/{vs[4]}.avi" for a, vs in videos.items()])
    else:
        write_split_zhou(osp.join(d, "split_zhou_UCF101.json"),
                         [(actions[a], [f"{actions[a]}/{v}.jpg" for v in vs]) for a, vs in videos.items()])
    return list(actions.values()), (6, 2, 2)


def fgvc_aircraft(root, rebuild):
    d = osp.join(root, "fgvc_aircraft")
    variants = ["707-320", "A300B4", "Cessna 172"]  # variant names may contain spaces
    ids = {v: [f"{1000000 + 10 * k + i}" for i in range(4)] for k, v in enumerate(variants)}
    write_images(osp.join(d, "images"), [f"{i}.jpg" for vs in ids.values() for i in vs])
    write_text(osp.join(d, "variants.txt"), variants)
    for split, part in (("train", slice(0, 2)), ("val", slice(2, 3)), ("test", slice(3, 4))):
        lines = [f"{i} {v}" for v in reversed(variants) for i in ids[v][part]]
        write_text(osp.join(d, f"images_variant_{split}.txt"), lines)
    return variants, (6, 3, 3)


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark",
         "n01491361": "tiger shark"}


def imagenet(root, rebuild):
    d = osp.join(root, "imagenet")
    write_text(osp.join(d, "classnames.txt"), [f"{w} {n}" for w, n in WNIDS.items()])
    wnids = list(WNIDS)[:3]
    write_images(osp.join(d, "images", "train"), [f"{w}/{w}_{i}.JPEG" for w in wnids for i in range(3)])
    write_images(osp.join(d, "images", "val"), [f"{w}/ILSVRC2012_val_{w}_{i}.JPEG" for w in wnids for i in range(2)])
    return [WNIDS[w] for w in wnids], (9, 6, 6)


def imagenetv2(root, rebuild):
    # classnames.txt only in imagenet/ (the fall-back); one folder per line of it, named by label
    write_text(osp.join(root, "imagenet", "classnames.txt"), [f"{w} {n}" for w, n in WNIDS.items()])
    image_dir = osp.join(root, "imagenetv2", "imagenetv2-matched-frequency-format-val")
    write_images(image_dir, [f"{label}/{i}abc.jpeg" for label in range(len(WNIDS)) for i in range(2)])
    return list(WNIDS.values()), (8, 0, 8)


def imagenet_sketch(root, rebuild):
    d = osp.join(root, "imagenet-sketch")
    write_text(osp.join(d, "classnames.txt"), [f"{w} {n}" for w, n in WNIDS.items()])  # copied in, as CoOp says
    write_images(osp.join(d, "images"), [f"{w}/sketch_{i}.JPEG" for w in WNIDS for i in range(2)])
    return list(WNIDS.values()), (8, 0, 8)


def _two_hundred_class_variant(root, dataset_dir, image_dir, classnames_dir):
    """ImageNet-A/R: a subset of ImageNet's classes (here 2 of 4), labelled in wnid order; a README beside them."""
    write_text(osp.join(root, classnames_dir, "classnames.txt"), [f"{w} {n}" for w, n in WNIDS.items()])
    folder = osp.join(root, dataset_dir, image_dir)
    kept = ["n01491361", "n01443537"]
    write_images(folder, [f"{w}/{i}.jpg" for w in kept for i in range(3)])
    write_text(osp.join(folder, "README.txt"), ["not a class"])
    return ["goldfish", "tiger shark"], (6, 0, 6)


def imagenet_a(root, rebuild):
    return _two_hundred_class_variant(root, "imagenet-adversarial", "imagenet-a", "imagenet-adversarial")


def imagenet_r(root, rebuild):
    return _two_hundred_class_variant(root, "imagenet-rendition", "imagenet-r", "imagenet")


def imagefolder(root, rebuild):
    colours = {"dark_red": (120, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 200)}
    write_image_folder(osp.join(root, "my_images"), classes=colours, per_class=6, size=8)
    return ["blue", "dark red", "green"], (9, 3, 6)  # 6 images -> 3/1/2


BUILDERS = {
    "ImageNet": imagenet, "Caltech101": caltech101, "OxfordPets": oxford_pets, "StanfordCars": stanford_cars,
    "OxfordFlowers": oxford_flowers, "Food101": food101, "FGVCAircraft": fgvc_aircraft, "SUN397": sun397,
    "DescribableTextures": dtd, "EuroSAT": eurosat, "UCF101": ucf101, "ImageNetV2": imagenetv2,
    "ImageNetSketch": imagenet_sketch, "ImageNetA": imagenet_a, "ImageNetR": imagenet_r, "ImageFolder": imagefolder,
}
REBUILDABLE = ["OxfordPets", "Caltech101", "StanfordCars", "OxfordFlowers", "Food101", "SUN397",
               "DescribableTextures", "EuroSAT", "UCF101"]
SPLIT_FILES = {"OxfordPets": "oxford_pets/split_zhou_OxfordPets.json",
               "Caltech101": "caltech-101/split_zhou_Caltech101.json",
               "StanfordCars": "stanford_cars/split_zhou_StanfordCars.json",
               "OxfordFlowers": "oxford_flowers/split_zhou_OxfordFlowers.json",
               "Food101": "food-101/split_zhou_Food101.json", "SUN397": "sun397/split_zhou_SUN397.json",
               "DescribableTextures": "dtd/split_zhou_DescribableTextures.json",
               "EuroSAT": "eurosat/split_zhou_EuroSAT.json", "UCF101": "ucf101/split_zhou_UCF101.json"}
DATASET_DIRS = {"ImageNet": "imagenet", "FGVCAircraft": "fgvc_aircraft", "ImageNetV2": "imagenetv2",
                "ImageNetSketch": "imagenet-sketch", "ImageNetA": "imagenet-adversarial",
                "ImageNetR": "imagenet-rendition", "ImageFolder": "my_images",
                **{name: path.split("/")[0] for name, path in SPLIT_FILES.items()}}


def check_dataset(dataset, classnames, sizes):
    """Class names in label order, labels 0..n-1 matching the names, split sizes, images that exist."""
    assert dataset.classnames == classnames
    assert dataset.num_classes == len(classnames)
    val = dataset.val or []
    assert (len(dataset.train_x), len(val), len(dataset.test)) == sizes
    for items in (dataset.train_x, val, dataset.test):
        for item in items:
            assert item.classname == classnames[item.label]
            assert osp.isfile(item.impath), item.impath
    assert sorted({item.label for item in dataset.test}) == list(range(len(classnames)))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_reader_finds_classes_labels_and_splits_in_coop_layout(tmp_path, name):
    classnames, sizes = BUILDERS[name](str(tmp_path), rebuild=False)
    check_dataset(build(tmp_path, name), classnames, sizes)


@pytest.mark.parametrize("name", ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"])
def test_imagenet_variants_are_test_only_and_ignore_num_shots(tmp_path, name):
    BUILDERS[name](str(tmp_path), rebuild=False)
    dataset = build(tmp_path, name, **{"DATASET.NUM_SHOTS": 1, "SEED": 1})
    assert dataset.train_x == dataset.test and dataset.val is None
    assert not any(p.name == "split_fewshot" for p in tmp_path.rglob("*"))


def test_imagenet_val_is_its_test_set(tmp_path):
    imagenet(str(tmp_path), rebuild=False)
    dataset = build(tmp_path, "ImageNet")
    assert dataset.val is dataset.test
    assert all("/images/val/" in item.impath for item in dataset.test)


@pytest.mark.parametrize("name", REBUILDABLE)
def test_missing_split_file_is_rebuilt_from_annotations_and_saved(tmp_path, name, capsys):
    classnames, sizes = BUILDERS[name](str(tmp_path), rebuild=True)
    first = build(tmp_path, name, SEED=3)
    check_dataset(first, classnames, sizes)
    split_path = tmp_path / SPLIT_FILES[name]
    assert "building a new split" in capsys.readouterr().out and split_path.is_file()
    assert str(tmp_path) not in split_path.read_text()  # paths relative to the image folder
    second = build(tmp_path, name, SEED=4)  # read back; the seed plays no part in the split
    assert "building a new split" not in capsys.readouterr().out
    for a, b in ((first.train_x, second.train_x), (first.val, second.val), (first.test, second.test)):
        assert [(x.impath, x.label, x.classname) for x in a] == [(x.impath, x.label, x.classname) for x in b]


def test_imagefolder_split_file_is_written_once_and_reused(image_folder):
    root = osp.dirname(image_folder)
    first = build(root, "ImageFolder")
    split_path = osp.join(image_folder, "split_imagefolder.json")
    assert osp.isfile(split_path)
    os.utime(split_path, (0, 0))
    second = build(root, "ImageFolder")
    assert os.stat(split_path).st_mtime == 0  # not rewritten
    assert [x.impath for x in first.test] == [x.impath for x in second.test]
    assert first.classnames == ["blue", "green", "red", "yellow"]  # sorted folder names


def test_imagefolder_reads_a_given_split_file(image_folder):
    write_split_zhou(osp.join(image_folder, "mine.json"),
                     [("crimson", [f"red/{i:03d}.png" for i in range(5)]),
                      ("lime", [f"green/{i:03d}.png" for i in range(6)])])
    dataset = build(osp.dirname(image_folder), "ImageFolder", **{"DATASET.IMAGEFOLDER.SPLIT_FILE": "mine.json"})
    check_dataset(dataset, ["crimson", "lime"], (6, 2, 3))
    assert not osp.exists(osp.join(image_folder, "split_imagefolder.json"))


# ---------------------------------------------------------------------------------------------
# Errors a user can act on: one line naming the path.

@pytest.mark.parametrize("name", list(BUILDERS))
def test_missing_data_folder_names_the_path(tmp_path, name):
    with pytest.raises(UserError) as error:
        build(tmp_path, name)
    message = str(error.value)
    assert osp.join(str(tmp_path), DATASET_DIRS[name]) in message and "\n" not in message


@pytest.mark.parametrize("name", ["OxfordPets", "StanfordCars", "OxfordFlowers", "SUN397", "UCF101"])
def test_missing_split_file_without_annotations_names_the_split_file(tmp_path, name):
    """(Caltech101, Food101, DTD and EuroSAT rebuild theirs from the class folders alone, as CoOp does.)"""
    BUILDERS[name](str(tmp_path), rebuild=False)
    os.remove(tmp_path / SPLIT_FILES[name])
    with pytest.raises(UserError, match="split file not found") as error:
        build(tmp_path, name)
    assert str(tmp_path / SPLIT_FILES[name]) in str(error.value)


@pytest.mark.parametrize("name, relative_path", [
    ("FGVCAircraft", "fgvc_aircraft/images_variant_test.txt"),
    ("FGVCAircraft", "fgvc_aircraft/variants.txt"),
    ("ImageNet", "imagenet/classnames.txt"),
    ("ImageNetSketch", "imagenet-sketch/classnames.txt"),
])
def test_missing_annotation_file_names_the_path(tmp_path, name, relative_path):
    BUILDERS[name](str(tmp_path), rebuild=False)
    os.remove(tmp_path / relative_path)
    with pytest.raises(UserError) as error:
        build(tmp_path, name)
    assert str(tmp_path / relative_path) in str(error.value)


def test_imagefolder_missing_split_file_names_the_path(image_folder):
    with pytest.raises(UserError) as error:
        build(osp.dirname(image_folder), "ImageFolder", **{"DATASET.IMAGEFOLDER.SPLIT_FILE": "absent.json"})
    assert osp.join(image_folder, "absent.json") in str(error.value)


def test_class_folder_unknown_to_classnames_txt_is_named(tmp_path):
    imagenet_a(str(tmp_path), rebuild=False)
    write_images(str(tmp_path / "imagenet-adversarial" / "imagenet-a"), ["n99999999/0.jpg"])
    with pytest.raises(UserError, match="n99999999"):
        build(tmp_path, "ImageNetA")
