"""Small helpers with Dassl's names, plus atomic file writes and run provenance."""
import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import os.path as osp
import platform
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

from .errors import UserError


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def git_state():
    """(commit, has uncommitted changes) of the project's checkout, or (None, None) outside one."""
    try:
        commit = subprocess.run(["git", "-C", _REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", _REPO, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changes)


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_provenance(device):
    """What produced a result, for results.json: code, library versions, hardware and time."""
    commit, dirty = git_state()
    if device.type == "cuda":
        hardware = {"gpu": torch.cuda.get_device_name(device)}
    else:
        hardware = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": platform.machine()}
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "clip": package_version("clip-anytorch"), "numpy": np.__version__,
            **hardware, "torch_threads": torch.get_num_threads(),
            "utc_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def mkdir_if_missing(dirname):
    os.makedirs(dirname, exist_ok=True)


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    return sorted(items) if sort else items


def user_cache_dir(*parts):
    """Where the project caches things it may rebuild: $LLU_CACHE or ~/.cache/llu."""
    root = os.environ.get("LLU_CACHE") or osp.join(osp.expanduser("~"), ".cache", "llu")
    return osp.join(root, *parts)


def is_writable_dir(path):
    """True if files can be created in ``path`` (created if missing)."""
    try:
        mkdir_if_missing(path)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
        return True
    except OSError:
        return False


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers therefore never see a partial file: either the old one or the complete new one.
    """
    directory = osp.dirname(osp.abspath(path))
    mkdir_if_missing(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + osp.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_json(obj, path):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def save_torch(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path, map_location="cpu"):
    """Load a tensor file without unpickling arbitrary objects."""
    if not osp.isfile(path):
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise UserError(f"{path}: cannot be read as a tensor file ({type(e).__name__}: {e})") from None


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


def load_checkpoint(fpath):
    return load_torch(fpath)


def load_pretrained_weights(model, weight_path):
    state = load_torch(weight_path)
    state_dict = state.get("state_dict", state)
    model.load_state_dict(state_dict, strict=False)


def count_num_param(model):
    return sum(p.numel() for p in model.parameters())


class Tee:
    """Write to the terminal and to a log file at once (Dassl's ``log.txt``)."""

    def __init__(self, fpath, stream):
        self.stream = stream
        self.file = open(fpath, "a")

    def write(self, msg):
        self.stream.write(msg)
        self.file.write(msg)
        self.file.flush()

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return False


def setup_logger(output_dir):
    """Tee stdout and stderr into ``output_dir/log.txt`` (or the file itself if it ends in .txt/.log)."""
    if not output_dir:
        return
    if output_dir.endswith(".txt") or output_dir.endswith(".log"):
        fpath = output_dir
    else:
        fpath = osp.join(output_dir, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(osp.dirname(fpath) or ".")
    if not isinstance(sys.stdout, Tee):
        sys.stdout = Tee(fpath, sys.stdout)
        sys.stderr = Tee(fpath, sys.stderr)


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
