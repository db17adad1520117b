"""Dassl's small helpers (seeding, checkpoints, meters, the log tee, accuracy, environment info).

The project's own utilities (atomic writes, JSON, folders, tensor files) are ``llu.utils``'s; the
Dassl names among them (``mkdir_if_missing``, ``listdir_nohidden``, ``read_json``, ``write_json``)
are re-exported here.
"""
import os.path as osp
import platform
import random

import numpy as np
import torch

from llu.utils import (UserError, atomic_path, listdir_nohidden, load_checkpoint_file, load_torch,  # noqa: F401
                       mkdir_if_missing, read_json, save_torch, setup_logger, write_json)


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def save_checkpoint(state, save_dir, model_name="", is_best=False):
    """Write ``state`` to ``save_dir/model_name`` atomically; without a name ``model.pth.tar-<epoch>``
    (Dassl's file naming: ``save_model`` passes "" or "model-best.pth.tar")."""
    mkdir_if_missing(save_dir)
    fpath = osp.join(save_dir, model_name or f"model.pth.tar-{state['epoch']}")
    save_torch(state, fpath)
    with atomic_path(osp.join(save_dir, "checkpoint")) as tmp:
        with open(tmp, "w") as f:
            f.write(osp.basename(fpath) + "\n")
    if is_best:
        save_torch(state, osp.join(save_dir, "model-best.pth.tar"))
    return fpath


def random_state():
    """The random streams a run draws from (torch, CUDA, NumPy, Python), as a checkpoint can hold them."""
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "python": random.getstate()}


def set_random_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_state_dict_strictly(module, state_dict, what):
    """``module.load_state_dict(state_dict)``, where other keys or other shapes are one UserError."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise UserError(f"the checkpoint does not fit {what} (missing: {', '.join(missing) or '-'}; unexpected: "
                        f"{', '.join(unexpected[:8]) or '-'}); was it saved by another trainer?")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        mismatch = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise UserError(f"the checkpoint's tensors have other shapes than {what}'s ({mismatch.rstrip('.')}); "
                        f"was it trained with another backbone or settings?") from None


def load_checkpoint(fpath):
    """A checkpoint of this project, or one Dassl wrote (its optimiser and scheduler objects read as data)."""
    return load_checkpoint_file(fpath)


def load_pretrained_weights(model, weight_path):
    state = load_torch(weight_path)
    state_dict = state.get("state_dict", state)
    model.load_state_dict(state_dict, strict=False)


def count_num_param(model):
    return sum(p.numel() for p in model.parameters())


class AverageMeter:
    def __init__(self):
        self.reset()

    def reset(self):
        self.val = self.sum = self.avg = 0.0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    def __init__(self, delimiter=" "):
        self.meters = {}
        self.delimiter = delimiter

    def update(self, input_dict):
        for k, v in (input_dict or {}).items():
            self.meters.setdefault(k, AverageMeter()).update(v)

    def __str__(self):
        return self.delimiter.join(f"{k} {m.val:.4f} ({m.avg:.4f})" for k, m in self.meters.items())


def compute_accuracy(output, target, topk=(1,)):
    maxk = max(topk)
    batch_size = target.size(0)
    if isinstance(output, (tuple, list)):
        output = output[0]
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    res = []
    for k in topk:
        res.append(correct[:k].reshape(-1).float().sum(0) * 100.0 / batch_size)
    return res


def collect_env_info():
    lines = [f"Python: {platform.python_version()}", f"PyTorch: {torch.__version__}",
             f"CUDA available: {torch.cuda.is_available()}", f"CPU threads: {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)
