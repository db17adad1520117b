"""A checkpoint that upstream CoOp / CoCoOp wrote through Dassl loads (``--eval-only --model-dir``,
``llu.load``) without unpickling code: its optimiser and scheduler objects are read as inert data."""
import os
import shutil
import sys
import types
from collections import OrderedDict

import pytest
import torch

import llu
from llu.utils import ForeignObject, UserError, load_checkpoint_file, load_torch

from test_predict import evaluate, toy_run_folder


class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
    """A stand-in for Dassl's warm-up scheduler (dassl/optim/lr_scheduler.py), with its attributes:
    a constant learning rate for ``warmup_epoch`` epochs, then its ``successor``."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


@pytest.fixture
def dassl_module(monkeypatch):
    """``dassl.optim.lr_scheduler`` holding the stand-in, as pickle finds classes by module path."""
    for name in ("dassl", "dassl.optim", "dassl.optim.lr_scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(sys.modules["dassl.optim.lr_scheduler"], "ConstantWarmupScheduler", ConstantWarmupScheduler,
                        raising=False)
    monkeypatch.setattr(ConstantWarmupScheduler, "__module__", "dassl.optim.lr_scheduler")


def write_dassl_checkpoint(folder, state_dict, epoch, scheduler_state=None):
    """What Dassl's ``TrainerBase.save_model`` + ``save_checkpoint`` write for the model
    ``prompt_learner``: ``{state_dict, epoch, optimizer, scheduler, val_result}`` by torch.save into
    ``model.pth.tar-<epoch>``, and the file's name into ``checkpoint``."""
    params = [torch.nn.Parameter(state_dict["ctx"].clone())]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()  # a momentum buffer in its state, as after training
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epoch)
    scheduler = ConstantWarmupScheduler(optimizer, successor, warmup_epoch=1, cons_lr=1e-5)
    for _ in range(epoch):
        optimizer.step()
        scheduler.step()
    state = {"state_dict": state_dict, "epoch": epoch, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler_state is None else scheduler_state, "val_result": None}
    os.makedirs(os.path.join(folder, "prompt_learner"), exist_ok=True)
    torch.save(state, os.path.join(folder, "prompt_learner", f"model.pth.tar-{epoch}"))
    with open(os.path.join(folder, "prompt_learner", "checkpoint"), "w") as f:
        f.write(f"model.pth.tar-{epoch}\n")
    return os.path.join(folder, "prompt_learner", f"model.pth.tar-{epoch}")


def upstream_state_dict(run):
    """The run's prompt learner as upstream's state_dict: its context plus the training classes'
    token_prefix / token_suffix buffers (upstream keeps them; here they are rebuilt per class set)."""
    learned = load_torch(os.path.join(run, "prompt_learner", "model.pth.tar-2"))["state_dict"]
    model = llu.load(run)
    learner = model.trainer.prompt_learner
    return OrderedDict([*learned.items(), ("token_prefix", learner.token_prefix.clone()),
                        ("token_suffix", learner.token_suffix.clone())])


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory, shapes_world):
    return toy_run_folder(tmp_path_factory, shapes_world, "CoOp")


def test_dassls_checkpoint_is_refused_by_weights_only_alone(coop_run, tmp_path, dassl_module):
    path = write_dassl_checkpoint(tmp_path / "dassl", upstream_state_dict(coop_run), 2)
    with pytest.raises(UserError, match="Unsupported global"):
        load_torch(path)  # what every checkpoint read was before
    checkpoint = load_checkpoint_file(path)
    successor = checkpoint["scheduler"]["successor"]
    assert isinstance(successor, ForeignObject) and successor.origin == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert isinstance(successor.state["optimizer"], ForeignObject)  # the SGD it held, as data
    assert torch.equal(checkpoint["state_dict"]["ctx"], upstream_state_dict(coop_run)["ctx"])


@pytest.mark.parametrize("subsample", ["base", "new"])
def test_a_dassl_checkpoint_evaluates_as_the_same_weights_saved_here(coop_run, shapes_world, tmp_path, dassl_module,
                                                                      subsample):
    dassl_dir = tmp_path / "dassl"
    write_dassl_checkpoint(dassl_dir, upstream_state_dict(coop_run), 2)
    ours = evaluate(shapes_world, coop_run, tmp_path / "ours", "CoOp", subsample)
    theirs = evaluate(shapes_world, dassl_dir, tmp_path / "theirs", "CoOp", subsample)
    assert theirs["accuracy"] == ours["accuracy"]
    # llu.load reads a Dassl output folder's config from its log.txt (no config.yaml there)
    shutil.copy(coop_run / "log.txt", dassl_dir / "log.txt")
    from test_predict import split_of
    paths, _, classnames = split_of(shapes_world, subsample)
    assert torch.equal(llu.load(dassl_dir).logits(paths[:20], classnames),
                       llu.load(coop_run).logits(paths[:20], classnames))


def test_a_pickled_dassl_scheduler_object_is_read_as_data(tmp_path, dassl_module):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    scheduler = ConstantWarmupScheduler(optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5), 1, 1e-5)
    torch.save({"state_dict": {"ctx": torch.ones(2)}, "scheduler": scheduler}, tmp_path / "c.pth")
    read = load_checkpoint_file(str(tmp_path / "c.pth"))
    assert read["scheduler"].origin == "dassl.optim.lr_scheduler.ConstantWarmupScheduler"
    assert not isinstance(read["scheduler"], ConstantWarmupScheduler)


class _Payload:
    """Runs a command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PayloadByName:
    """Calls an admitted scheduler name with arguments (a stand-in must run nothing either)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (torch.optim.lr_scheduler.CosineAnnealingLR, (str(self.marker),))


@pytest.mark.parametrize("payload", [_Payload, _PayloadByName])
def test_a_malicious_pickle_in_the_scheduler_runs_nothing(coop_run, shapes_world, tmp_path, dassl_module, payload,
                                                          capsys):
    marker = tmp_path / "marker"
    dassl_dir = tmp_path / "dassl"
    write_dassl_checkpoint(dassl_dir, upstream_state_dict(coop_run), 2, scheduler_state={"successor": payload(marker)})
    capsys.readouterr()
    if payload is _Payload:
        with pytest.raises(SystemExit) as exit_info:
            evaluate(shapes_world, dassl_dir, tmp_path / "out", "CoOp", "base")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [line for line in err.splitlines() if line.startswith("error: ")][-1:]
        assert "posix.system" in err and "not read" in err
    else:
        checkpoint = load_checkpoint_file(os.path.join(dassl_dir, "prompt_learner", "model.pth.tar-2"))
        assert isinstance(checkpoint["scheduler"]["successor"], ForeignObject)
    assert not marker.exists()
