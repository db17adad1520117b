"""Reading a results tree into records, and sorting the records into the tables' settings.

Every ``results.json`` under the folder is read with ``llu.results.RunResults`` (the same type the
trainer writes); a file that cannot be used is skipped with one line naming it. How records are
classified (``classify``):

- **base-to-new** (Table 1, Table 4, Figure 2): a record evaluated on the ``base`` classes of a
  dataset by a model trained on that dataset's ``base`` classes, paired with the record on the
  ``new`` classes of the same (dataset, trainer, config, backbone, shots, seed). The ``new`` half
  must come from a model trained on ``base`` (``train_subsample_classes``), or from zero-shot CLIP
  evaluated directly (no ``model_dir``). A method with base halves and no new half at all at a
  dataset and shots (a trainer whose model names no new classes by design: the linear probe,
  Tip-Adapter) is **base-only** there: Table 1 shows its base accuracy and a dash for New and H.
  Other unpaired halves (a new-class evaluation that failed or has not finished, say) are reported
  and left out.
- **transfer**: a record whose ``dataset`` differs from its ``train_dataset`` (a model trained on
  all classes of a source, evaluated on a target). It is **domain generalisation** (Table 3) when
  the target is a known domain-shifted variant of the source (``DOMAIN_VARIANTS``: ImageNetV2,
  -Sketch, -A, -R of ImageNet; ShapesSketch, ShapesNoisy of Shapes), and **cross-dataset**
  (Table 2) when the target is a dataset with classes of its own (``OTHER_CLASS_DATASETS``: CoOp's
  11, Shapes, Patterns). Any other target (an ImageFolder, say) is domain generalisation when its
  class names are a subset of the source's (the keys of ``per_class_accuracy`` in the source's own
  record), else cross-dataset. The "Source" column is the record of the same method trained and
  evaluated on all classes of the source.
- The **config** of a record is the stem of its trainer config file (``configs/trainers/LLU/
  toy_no_mask.yaml`` -> ``toy_no_mask``); its **ablation** is the record's ``ablation`` field
  (``TRAINER.LLU.ABLATION``; see ``tables.variant_base`` for Table 4).
"""
import fnmatch
import os
import os.path as osp
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace

from llu.results import NUMBER, ResultsError, RunResults, read_json_file

ZERO_SHOT_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")
# Targets that are the source's classes under a domain shift (Table 3); other targets are Table 2's.
DOMAIN_VARIANTS = {"ImageNet": {"ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"},
                   "Shapes": {"ShapesSketch", "ShapesNoisy"}}
# Datasets whose classes are their own: always Table 2's targets (even if their names overlap the source's).
OTHER_CLASS_DATASETS = {"ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                        "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101", "Shapes", "Patterns"}


@dataclass(frozen=True)
class Method:
    """What a table row stands for: a trainer with one config on one backbone.

    ``ablation`` is the config's ablation name ("" for the method itself), or None where the records
    were written before results.json had the field (schema_version 1)."""
    trainer: str
    cfg: str
    backbone: str
    ablation: str = None


@dataclass(frozen=True)
class Record:
    path: str
    method: Method
    dataset: str
    seed: int
    shots: int
    subsample: str
    accuracy: float
    train_dataset: str
    train_subsample: str
    train_shots: int
    model_dir: str
    classnames: tuple
    regularizer: float = None
    backbone_sha256: str = None  # the weights file's hash (results.json's provenance)
    device: str = None  # the GPU's name, or the CPU's kernels (provenance)
    torch: str = None  # the torch version that ran it, with its CUDA build (provenance)

    @property
    def run_key(self):
        """Two records with this key describe the same run."""
        return (self.method, self.dataset, self.seed, self.shots, self.subsample, self.train_dataset,
                self.train_subsample, self.train_shots)


def find_files(root, name):
    """Every file called ``name`` (a glob pattern) under ``root`` (hidden folders skipped), in sorted
    walk order."""
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        paths += [osp.join(directory, f) for f in sorted(fnmatch.filter(files, name))]
    return paths


def find_results(root):
    return find_files(root, "results.json")


def config_name(config_files):
    """The stem of the trainer config file: ``configs/trainers/LLU/toy.yaml`` -> ``toy``."""
    trainer_file = config_files.get("trainer") or ""
    return osp.splitext(osp.basename(trainer_file))[0]


def record_of(results, path):
    """The report's view of one checked ``RunResults``."""
    regularizer = results.extras.get("llu_regularizer")
    if regularizer is not None and (not isinstance(regularizer, NUMBER) or isinstance(regularizer, bool)):
        raise ResultsError(f"{path}: field 'llu_regularizer' has the wrong type ({type(regularizer).__name__}: "
                           f"{regularizer!r}); expected a number")
    provenance = results.provenance or {}
    capability = provenance.get("cpu_capability")
    return Record(
        path=path, method=Method(results.trainer, config_name(results.config_files), results.backbone,
                                 results.ablation),
        dataset=results.dataset, seed=results.seed, shots=results.shots, subsample=results.subsample_classes,
        accuracy=float(results.accuracy), train_dataset=results.train_dataset,
        train_subsample=results.train_subsample_classes,
        train_shots=int(results.train_shots) if results.train_shots is not None else results.shots,
        model_dir=results.model_dir, classnames=tuple(sorted(results.per_class_accuracy)), regularizer=regularizer,
        backbone_sha256=provenance.get("backbone_sha256"),
        device=provenance.get("gpu") or (f"CPU ({capability})" if capability else None),
        torch=provenance.get("torch"))


def load_record(path):
    """One checked ``Record`` from a results.json (``ResultsError`` when the file cannot be used)."""
    return record_of(RunResults.from_json(path), path)


def with_declared_ablations(records):
    """Give each record without an ``ablation`` field (written before schema_version 2) the ablation that
    another record of its config declares, so that old and new runs of one config form one method."""
    def config(method):
        return method.trainer, method.cfg, method.backbone

    declared = {}
    for r in records:
        if r.method.ablation is not None:
            declared.setdefault(config(r.method), r.method.ablation)
    return [replace(r, method=replace(r.method, ablation=declared[config(r.method)]))
            if r.method.ablation is None and config(r.method) in declared else r for r in records]


def load_records(root):
    """(every usable record under ``root``, one message per results.json skipped as unusable); two
    files describing the same run are an error."""
    records, skipped = [], []
    for path in find_results(root):
        try:
            records.append(load_record(path))
        except ResultsError as e:
            skipped.append(str(e))
    seen = {}
    records = with_declared_ablations(records)
    from .multidataset import multidataset_row  # its rows evaluate one trainer on one dataset several ways
    for record in records:
        key = (multidataset_row(record.path), record.run_key)
        if key in seen:
            raise ResultsError(f"{record.path} and {seen[key]} hold results of the same run; keep one")
        seen[key] = record.path
    return records, skipped


# ---------------------------------------------------------------------------------------------
# Classifying records

@dataclass
class Classified:
    base2new: list = field(default_factory=list)  # (base record, new record)
    base_only: list = field(default_factory=list)  # base records of a method with no new half (dataset, shots)
    cross_dataset: list = field(default_factory=list)  # transfer records
    domain_generalization: list = field(default_factory=list)
    sources: list = field(default_factory=list)  # trained and evaluated on all classes of one dataset
    notes: list = field(default_factory=list)

    @property
    def base2new_records(self):
        """Every record of the base-to-new tables."""
        return [r for pair in self.base2new for r in pair] + self.base_only


def is_base_half(r):
    return r.subsample == "base" and r.dataset == r.train_dataset and r.train_subsample == "base"


def is_new_half(r):
    zero_shot = r.method.trainer in ZERO_SHOT_TRAINERS and not r.model_dir  # evaluated directly, nothing loaded
    trained_on_base = r.train_subsample == "base" or zero_shot
    return r.subsample == "new" and r.dataset == r.train_dataset and trained_on_base


def is_source(r):
    return r.dataset == r.train_dataset and r.subsample == "all" and r.train_subsample == "all"


def is_transfer(r):
    return r.dataset != r.train_dataset


def pair_key(r):
    return (r.method, r.dataset, r.shots, r.seed)


def is_domain_shift(record, source_classnames):
    """Table 3 (the source's classes, shifted) rather than Table 2 (other classes)."""
    if record.dataset in DOMAIN_VARIANTS.get(record.train_dataset, ()):
        return True
    if record.dataset in OTHER_CLASS_DATASETS:
        return False
    return bool(record.classnames) and bool(source_classnames) and set(record.classnames) <= set(source_classnames)


def pair_base_to_new(records, out):
    halves = defaultdict(dict)
    for r in records:
        halves[pair_key(r)]["base" if is_base_half(r) else "new"] = r
    # (method, dataset, shots) with a new half for some seed; the others are base-only. Decided by the
    # records alone: where only some seeds lack theirs, a dash would hide a failed evaluation.
    with_new_halves = {key[:3] for key, pair in halves.items() if "new" in pair}
    for key, pair in sorted(halves.items(), key=lambda item: str(item[0])):
        if len(pair) == 2:
            out.base2new.append((pair["base"], pair["new"]))
        elif key[:3] not in with_new_halves:
            out.base_only.append(pair["base"])
        else:
            (half, r), = pair.items()
            out.notes.append(f"{r.path}: {half} half without its {'new' if half == 'base' else 'base'} half; left out")


def source_classnames_by_dataset(sources):
    names = {}
    for r in sources:
        if r.classnames:
            names.setdefault(r.dataset, set()).update(r.classnames)
    return names


def classify(records):
    """Sort records into the tables' settings (see the module docstring)."""
    out = Classified()
    halves = [r for r in records if is_base_half(r) or is_new_half(r)]
    pair_base_to_new(halves, out)
    out.sources = [r for r in records if is_source(r)]
    source_names = source_classnames_by_dataset(out.sources)
    for r in records:
        if is_transfer(r):
            target = out.domain_generalization if is_domain_shift(r, source_names.get(r.train_dataset)) \
                else out.cross_dataset
            target.append(r)
        elif not (is_source(r) or is_base_half(r) or is_new_half(r)):
            out.notes.append(f"{r.path}: evaluated on '{r.subsample}' classes of {r.dataset} by a model trained on "
                             f"'{r.train_subsample}' classes; fits no table")
    return out


# ---------------------------------------------------------------------------------------------
# Step-time benchmark (Figure 3)

def load_bench(path):
    """Check and return a ``bench/bench_step_time.py`` results file."""
    content = read_json_file(path)
    times = content.get("step_time_ms") if isinstance(content, dict) else None
    if not isinstance(times, dict) or not all(
            isinstance(per_batch, dict) and all(isinstance(v, NUMBER) for v in per_batch.values())
            for per_batch in times.values()):
        raise ResultsError(f"{path}: not a step-time results file (expected 'step_time_ms': "
                           f"{{trainer: {{batch size: milliseconds}}}})")
    content["path"] = path
    if isinstance(content.get("device"), str):  # files written before the benchmark said "1 thread"
        content["device"] = re.sub(r"\b1 threads\b", "1 thread", content["device"])
    return content


def find_bench_files(root, explicit):
    if explicit:
        return [explicit]
    return find_files(root, "step_time*.json")
