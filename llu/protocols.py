"""The paper's protocols as Python: each yields the ``llu train`` runs of a sweep, each with the run
it reads, in an order that also works one by one (an evaluation after the training run it reads).
``llu sweep NAME`` (``llu/sweep.py``) runs them, then prints the tables of the protocol's tree.

    base2new   Table 1: train on the base classes, evaluate that model on the new ones
    fewshot    Figure 2: base2new over 1, 2, 4, 8, 16 shots (the same tree)
    xd         Table 2: train on all classes of a source, evaluate on other datasets
    dg         Table 3: the same runs, evaluated on domain-shifted versions of the source
    ablation   Table 4: LLU's ablation configs beside zero-shot CLIP (the base-to-new tree)

One deterministic folder per run, as CoOp's scripts:
``OUTPUT/base2new/{train_base,test_new}/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>``,
``OUTPUT/transfer/<source>/train/shots_<K>/<trainer>/<cfg>/seed<S>`` and
``OUTPUT/transfer/<source>/test/<target>/shots_<K>/<trainer>/<cfg>/seed<S>``.

What the published runs set is read from the trainer classes, next to their code: ``learns``
(False: the "training" run is an evaluation, ``--eval-only``), ``published_epochs(dataset, shots)``
(CoOp's epochs by shots for the trainers that follow it; not for the built-in world's ``toy*``
configs, which set their own) and ``published_options(dataset, shots)`` (ProGrad's lambda).
Reading them imports the trainers (torch), never the network.
"""
import os.path as osp
from dataclasses import dataclass

from llu import configs
from llu.utils import UserError

TRAINERS = ("ZeroshotCLIP", "CoOp", "CoCoOp", "ProGrad", "CLIP_Adapter", "LLU")  # Table 1's, in its order
ZERO_SHOT = "ZeroshotCLIP"  # the "CLIP" column of Table 4


@dataclass(frozen=True)
class Run:
    """One ``llu train`` run: its arguments (``--output-dir`` first), its output folder, and the run
    of the same sweep whose model it evaluates (``--model-dir``), if any."""
    args: tuple
    output_dir: str
    reads: "Run" = None

    @property
    def finished(self):
        """Its results.json exists (a folder without one, e.g. of a crashed run, is run again)."""
        return osp.isfile(osp.join(self.output_dir, "results.json"))


def trainer_class(name):
    """The registered trainer class ``name`` (imports the project: torch)."""
    from llu import engine, train
    train.load_project()
    names = engine.TRAINER_REGISTRY.registered_names()
    if name not in names:
        raise UserError(f"unknown trainer {name!r} (TRAINERS); one of {', '.join(sorted(names))}")
    return engine.TRAINER_REGISTRY.get(name)


def published_options(trainer, dataset, cfg, shots):
    """The trailing options that make a training run the published one: the trainer's epochs by shots
    (none for the toy* configs, which set their own), then its other published settings."""
    cls = trainer_class(trainer)
    options = []
    epochs = getattr(cls, "published_epochs", None)
    if epochs is not None and not cfg.startswith("toy"):
        options += ["OPTIM.MAX_EPOCH", str(epochs(dataset, shots))]
    if hasattr(cls, "published_options"):
        options += list(cls.published_options(dataset, shots))
    return options


@dataclass
class Sweep:
    """Where a sweep's runs read and write: the dataset root, the output root, and extra ``KEY VALUE``
    options for every run (not part of the folder names: change ``output`` when they change what a
    run computes). Makes the runs of the protocols below."""
    data: str
    output: str
    opts: tuple = ()

    def _common(self, dataset, trainer, cfg, seed):
        # Config paths as in CoOp's scripts (results.json records them that way; llu train finds the
        # shipped files from any folder).
        dataset_config, trainer_config = f"configs/datasets/{dataset}.yaml", f"configs/trainers/{trainer}/{cfg}.yaml"
        configs.locate(dataset_config, "datasets"), configs.locate(trainer_config, "trainers")  # one line if missing
        return ["--root", self.data, "--seed", str(seed), "--trainer", trainer,
                "--dataset-config-file", dataset_config, "--config-file", trainer_config]

    def train(self, out, dataset, trainer, cfg, shots, seed, *extra):
        """Train (a trainer that learns nothing: evaluate) into ``out``, with the published settings."""
        eval_only = [] if trainer_class(trainer).learns else ["--eval-only"]
        args = ["--output-dir", out, *self._common(dataset, trainer, cfg, seed), *eval_only,
                "DATASET.NUM_SHOTS", str(shots), *extra, *published_options(trainer, dataset, cfg, shots), *self.opts]
        return Run(tuple(args), out)

    def evaluate(self, out, model, dataset, trainer, cfg, shots, seed, *extra):
        """Evaluate the model of run ``model`` into ``out`` (for zero-shot CLIP its folder holds no
        checkpoint; passing it records which run's data the evaluation belongs to)."""
        args = ["--output-dir", out, *self._common(dataset, trainer, cfg, seed), "--eval-only",
                "--model-dir", model.output_dir, "DATASET.NUM_SHOTS", str(shots), *extra, *self.opts]
        return Run(tuple(args), out, reads=model)

    def base2new_pair(self, dataset, trainer, cfg, shots, seed):
        """Train on the base classes, evaluate that model on the new classes."""
        tail = osp.join(dataset, f"shots_{shots}", trainer, cfg, f"seed{seed}")
        trained = self.train(osp.join(self.output, "base2new", "train_base", tail), dataset, trainer, cfg, shots,
                             seed, "DATASET.SUBSAMPLE_CLASSES", "base")
        yield trained
        if trainer_class(trainer).names_new_classes:  # otherwise Table 1 shows its base accuracy, new as a dash
            yield self.evaluate(osp.join(self.output, "base2new", "test_new", tail), trained, dataset, trainer, cfg,
                                shots, seed, "DATASET.SUBSAMPLE_CLASSES", "new")

    def transfer(self, source, targets, trainer, cfg, shots, seed):
        """Train on all classes of ``source``, then evaluate that model on each target."""
        tail = osp.join(f"shots_{shots}", trainer, cfg, f"seed{seed}")
        root = osp.join(self.output, "transfer", source)
        trained = self.train(osp.join(root, "train", tail), source, trainer, cfg, shots, seed,
                             "DATASET.SUBSAMPLE_CLASSES", "all")
        yield trained
        for target in targets:
            yield self.evaluate(osp.join(root, "test", target, tail), trained, target, trainer, cfg, shots, seed,
                                "DATASET.SUBSAMPLE_CLASSES", "all")


PROTOCOLS = {}  # name -> protocol function


def protocol(tree):
    """Register a protocol; ``tree`` is the folder under the output root whose tables it ends with."""
    def register(fn):
        fn.tree = tree
        PROTOCOLS[fn.__name__] = fn
        return fn
    return register


@protocol(tree="base2new")
def base2new(sweep, datasets=("shapes",), trainers=TRAINERS, cfg="toy", shots=(16,), seeds=(1, 2, 3)):
    """Table 1: train on the base classes, evaluate on the new ones (CoCoOp's protocol).

    For each dataset x shots x trainer x seed."""
    for dataset in datasets:
        for k in shots:
            for trainer in trainers:
                for seed in seeds:
                    yield from sweep.base2new_pair(dataset, trainer, cfg, k, seed)


@protocol(tree="base2new")
def fewshot(sweep, datasets=("shapes",), trainers=TRAINERS, cfg="toy", shots=(1, 2, 4, 8, 16), seeds=(1, 2, 3)):
    """Figure 2: base2new over 1, 2, 4, 8, 16 shots, in the same tree.

    Its 16-shot runs are base2new's (skipped when done)."""
    return base2new(sweep, datasets, trainers, cfg, shots, seeds)


@protocol(tree="transfer")
def xd(sweep, source="shapes", targets=("patterns",), trainers=TRAINERS, cfg="toy", shots=(16,), seeds=(1, 2, 3)):
    """Table 2: train on all classes of a source, evaluate on other datasets (cross-dataset)."""
    for k in shots:
        for trainer in trainers:
            for seed in seeds:
                yield from sweep.transfer(source, targets, trainer, cfg, k, seed)


@protocol(tree="transfer")
def dg(sweep, source="shapes", targets=("shapes_sketch", "shapes_noisy"), trainers=TRAINERS, cfg="toy", shots=(16,),
       seeds=(1, 2, 3)):
    """Table 3: xd's trained models evaluated on domain-shifted versions of the source."""
    return xd(sweep, source, targets, trainers, cfg, shots, seeds)


@protocol(tree="base2new")
def ablation(sweep, datasets=("shapes",), cfg="toy", cfgs=None, shots=(16,), seeds=(1, 2, 3)):
    """Table 4: base-to-new runs of LLU's ablation configs beside zero-shot CLIP.

    LLU runs with each config of ``cfgs`` (default ``cfg`` and ``cfg_<ablation>`` for LLU's
    ablations, in the paper's order); zero-shot CLIP with ``cfg``. The runs of ``cfg`` itself are
    base2new's."""
    if cfgs is None:
        cfgs = [cfg] + [f"{cfg}_{name}" for name in trainer_class("LLU").ablations]
    for dataset in datasets:
        for k in shots:
            for seed in seeds:
                yield from sweep.base2new_pair(dataset, ZERO_SHOT, cfg, k, seed)
                for llu_cfg in cfgs:
                    yield from sweep.base2new_pair(dataset, "LLU", llu_cfg, k, seed)


def dataset_name(config):
    """DATASET.NAME of a shipped dataset config (``shapes`` -> ``Shapes``)."""
    from llu import config_files
    return config_files.flatten(configs.locate(f"configs/datasets/{config}.yaml", "datasets"))["DATASET"]["NAME"]


@protocol(tree="multidataset")
def multidataset(sweep, datasets=("shapes", "patterns"), targets=("shapes_sketch", "shapes_noisy"), cfg="toy",
                 shots=(16,), seeds=(1, 2, 3)):
    """Many datasets, one model: LLU runs on two datasets composed (LLUBank) against the baselines.

    Rows: zero-shot CLIP; LLU on each dataset alone; LLU on their union; LLU and CoOp trained on the
    first, then continued on the second (MODEL.INIT_WEIGHTS: the first run); the bank of the two LLU
    runs, nearest and blend. Each evaluated on the base and new classes of both datasets and on all
    classes of ``targets``. Folders: ``OUTPUT/multidataset/train/shots_<K>/<row>/seed<S>`` and
    ``OUTPUT/multidataset/test/<dataset>_<classes>/shots_<K>/<row>/seed<S>``."""
    first, second = datasets
    sets = [(d, s) for d in datasets for s in ("base", "new")] + [(t, "all") for t in targets]
    root = osp.join(sweep.output, "multidataset")
    base = ("DATASET.SUBSAMPLE_CLASSES", "base")
    for k in shots:
        for seed in seeds:
            def trained(row, dataset, trainer, *extra, reads=None):
                run = sweep.train(osp.join(root, "train", f"shots_{k}", row, f"seed{seed}"), dataset, trainer, cfg, k,
                                  seed, *base, *extra)
                return Run(run.args, run.output_dir, reads)

            def evaluations(model, row, trainer, *extra):
                for dataset, classes in sets:
                    yield sweep.evaluate(osp.join(root, "test", f"{dataset}_{classes}", f"shots_{k}", row, f"seed{seed}"),
                                         model, dataset, trainer, cfg, k, seed, "DATASET.SUBSAMPLE_CLASSES", classes, *extra)

            for dataset, classes in sets:
                yield sweep.train(osp.join(root, "test", f"{dataset}_{classes}", f"shots_{k}", "zeroshot", f"seed{seed}"),
                                  dataset, ZERO_SHOT, cfg, k, seed, "DATASET.SUBSAMPLE_CLASSES", classes)
            alone = trained(f"llu_{first}", first, "LLU")
            # reads: the bank below needs both members, so the second waits for the first (one chain)
            other = trained(f"llu_{second}", second, "LLU", reads=alone)
            for run, row in ((alone, f"llu_{first}"), (other, f"llu_{second}")):
                yield run
                yield from evaluations(run, row, "LLU")
            members = "DATASET.UNION.MEMBERS", repr([dataset_name(first), dataset_name(second)])
            union = trained("llu_union", "union", "LLU", *members)
            yield union
            yield from evaluations(union, "llu_union", "LLU")
            row = f"llu_{first}_then_{second}"
            sequential = trained(row, second, "LLU", "MODEL.INIT_WEIGHTS", alone.output_dir, reads=alone)
            yield sequential
            yield from evaluations(sequential, row, "LLU")
            coop = trained(f"coop_{first}", first, "CoOp")
            yield coop
            yield from evaluations(coop, f"coop_{first}", "CoOp")
            row = f"coop_{first}_then_{second}"
            coop_sequential = trained(row, second, "CoOp", "MODEL.INIT_WEIGHTS", coop.output_dir, reads=coop)
            yield coop_sequential
            yield from evaluations(coop_sequential, row, "CoOp")
            for rule in ("nearest", "blend"):
                bank = trained(f"bank_{rule}", first, "LLUBank", "TRAINER.LLUBANK.MEMBERS",
                               repr([alone.output_dir, other.output_dir]), "TRAINER.LLUBANK.RULE", rule, reads=other)
                yield bank
                yield from evaluations(bank, f"bank_{rule}", "LLUBank", "TRAINER.LLUBANK.RULE", rule)
