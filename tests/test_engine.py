"""The built-in engine: registry, config, schedules, evaluator lines, checkpoints (its own modules, so
these run on it whatever LLU_ENGINE chooses for the trainers)."""
import math

import pytest
import torch

from llu.engine.builtin import Datum, Registry, build_lr_scheduler, build_optimizer, get_cfg_default
from llu.utils import UserError
from llu.engine.data import DataManager, build_data_loader
from llu.engine.evaluation import Classification, macro_f1_score
from llu.engine.optim import learning_rate_at
from llu.utils import atomic_path, load_torch, read_json, save_torch, write_json


def test_registry_unknown_name_suggests_close_matches():
    registry = Registry("TRAINER")

    @registry.register()
    class ZeroshotCLIP:
        pass

    assert registry.get("ZeroshotCLIP") is ZeroshotCLIP
    with pytest.raises(UserError, match="did you mean ZeroshotCLIP"):
        registry.get("ZeroShotClip")


def test_registry_refuses_duplicate_names():
    registry = Registry("X")
    registry.register(type("A", (), {}))
    with pytest.raises(KeyError):
        registry.register(type("A", (), {}))


def _optim_cfg(**overrides):
    cfg = get_cfg_default().OPTIM
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def _lrs(optim_cfg, epochs):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], optim_cfg)
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_constant_warmup_then_cosine_matches_dassls_sequence():
    # Dassl: epoch 0 at WARMUP_CONS_LR; then cosine over MAX_EPOCH counted from 0 after warm-up.
    cfg = _optim_cfg(LR=0.002, MAX_EPOCH=10, WARMUP_EPOCH=1, WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)
    lrs = _lrs(cfg, 10)
    expected = [1e-5] + [0.002 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(9)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_linear_warmup_and_single_step():
    cfg = _optim_cfg(LR=0.1, MAX_EPOCH=6, WARMUP_EPOCH=2, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4,
                     LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5)
    assert _lrs(cfg, 6) == pytest.approx([1e-4, 0.05, 0.1, 0.1, 0.05, 0.05])


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="OPTIM.NAME"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], _optim_cfg(NAME="lion"))


def test_learning_rate_at_without_warmup_is_plain_cosine():
    cfg = _optim_cfg(LR=1.0, MAX_EPOCH=4, WARMUP_EPOCH=-1)
    assert learning_rate_at(cfg, 1.0, 2) == pytest.approx(0.5)


def test_evaluator_prints_dassls_lines(capsys):
    cfg = get_cfg_default()
    evaluator = Classification(cfg, lab2cname={0: "a", 1: "b"})
    evaluator.process(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), torch.tensor([0, 1, 1]))
    results = evaluator.evaluate()
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == ["=> result", "* total: 3", "* correct: 2", "* accuracy: 66.7%", "* error: 33.3%"]
    assert out[5].startswith("* macro_f1: ")
    assert results["accuracy"] == pytest.approx(200 / 3)
    assert evaluator.per_class_accuracy == {0: 100.0, 1: 50.0}


def test_macro_f1_is_scikit_learns_to_the_bit():
    np = pytest.importorskip("numpy")
    f1_score = pytest.importorskip("sklearn.metrics").f1_score
    rng = np.random.default_rng(0)
    for _ in range(500):
        classes, count = rng.integers(1, 40), rng.integers(1, 300)
        truth = rng.integers(0, classes, count)  # some classes absent; predictions of classes never true
        predicted = np.where(rng.random(count) < rng.random(), truth, rng.integers(0, classes + 3, count))
        expected = f1_score(truth.tolist(), predicted.tolist(), average="macro", labels=np.unique(truth))
        assert macro_f1_score(truth.tolist(), predicted.tolist()) == expected


def test_a_run_does_not_import_scikit_learn():
    import os
    import subprocess
    import sys
    code = ("import sys; from llu.train import load_project; load_project(); "
            "print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.split()[-1] == "False"


def test_small_fewshot_set_is_not_dropped():
    cfg = get_cfg_default()
    data = [Datum(impath=f"x{i}.png", label=i % 2) for i in range(5)]
    loader = build_data_loader(cfg, "RandomSampler", data, batch_size=32, is_train=True)
    assert len(loader) == 1
    loader = build_data_loader(cfg, "RandomSampler", data * 20, batch_size=32, is_train=True)
    assert len(loader) == 100 // 32  # full batches only once there is at least one


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "results.json"
    write_json({"accuracy": 1.0}, path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            open(tmp, "w").write('{"accur')
            raise RuntimeError("interrupted")
    assert read_json(path) == {"accuracy": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


class Payload:
    """An arbitrary Python object: weights_only loading must refuse to rebuild it."""


def test_torch_files_load_without_unpickling_objects(tmp_path):
    path = tmp_path / "state.pt"
    save_torch({"w": torch.ones(2)}, path)
    assert torch.equal(load_torch(path)["w"], torch.ones(2))

    torch.save({"obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt"):
        load_torch(tmp_path / "evil.pt")


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "split.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="split.json: not valid JSON"):
        read_json(bad)


def test_datamanager_missing_dataset_name_suggests(tmp_path):
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "OxfordPet"
    import llu.datasets  # noqa: F401  (registers the datasets)
    with pytest.raises(UserError, match="unknown dataset 'OxfordPet'"):
        DataManager(cfg)


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        write_json({}, tmp_path / "r.json")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "r.json").st_mode & 0o777) == 0o644
