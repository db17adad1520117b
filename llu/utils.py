"""The project's own small utilities, shared by every part: user errors, atomic writes, JSON, cache
folders, file hashes, tensor files and the provenance of a run. Importing this module does not import
torch (``parse_results.py`` and the sweep runner use it without); the few functions that need torch
import it when called. Dassl's names live in ``llu.engine``.
"""
import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))  # the checkout (or site-packages when installed)


class UserError(Exception):
    """An error caused by the user's input (a path, a key, a value).

    Command-line entry points catch it once and print its message as one line, without a traceback.
    """


class WriteError(UserError, OSError):
    """A file could not be written (disk full, read-only folder): a user error, and an OSError so that
    code which can go on without the file (a cache) catches it as one."""


class Terminated(BaseException):
    """SIGTERM arrived (what a scheduler sends before it kills a job); raised like KeyboardInterrupt."""


def raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends, then act on them as they would have acted. For
    code that must not be interrupted halfway: Python raises KeyboardInterrupt between any two
    bytecodes, and inside a library's queue handoff to its writer thread (TensorBoard's) that leaves
    the thread failing. The handlers are swapped, not the signal mask: the kernel hands a process's
    signal to any thread that does not block it. Only the main thread can swap them; elsewhere the
    block just runs."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {signum: signal.signal(signum, lambda *received: held.append(received))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signum, frame = held[0]
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(signum)  # the default action


def exit_on_user_error(fn, *args, **kwargs):
    """Run a command-line entry point: a ``UserError`` becomes one ``error:`` line and exit code 2,
    Ctrl-C one line and 130, SIGTERM one line and 143 (the entry point says what was kept)."""
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted; {str(e) or 'no results written'}", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        print(f"terminated; {str(e) or 'no results written'}", file=sys.stderr)
        sys.exit(143)


# ---------------------------------------------------------------------------------------------
# Optional dependencies

DISTRIBUTION = "llu-clip"  # the name pip installs the project by


def install_command(extra):
    """How to install the optional dependencies of ``extra`` (pyproject.toml's optional-dependencies)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module, extra, needed_by):
    """Import and return ``module``, which the project's extra ``extra`` installs; if it is not
    installed, a one-line ``UserError``: "<needed_by> needs <module>: pip install 'llu-clip[<extra>]'".
    A module that is installed but fails to import raises as it is."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.partition(".")[0]
        if e.name not in (module, top):
            raise
        raise UserError(f"{needed_by} needs {top}, which is not installed: {install_command(extra)}") from None


def import_clip():
    """clip-anytorch's ``clip`` (with ``clip.model``), without the warning its import raises: it runs
    ``from pkg_resources import packaging``, which setuptools 67-81 marks deprecated on import (and 82
    removed, hence setuptools<82 in the requirements). The filter holds for this import only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip
        import clip.model  # noqa: F401
    return clip


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
    A failure to write (a full disk, a read-only folder) is a ``WriteError`` naming the file.
    """
    directory = osp.dirname(osp.abspath(path))
    try:
        mkdir_if_missing(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + osp.basename(path) + ".", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise WriteError(f"{path}: cannot write it ({e.strerror or e})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"{path}: cannot write it ({e.strerror or e})") from None
    finally:
        if osp.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def write_text(text, path):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(obj, path):
    write_text(json.dumps(obj, indent=2), path)


def read_json(path):
    """A JSON file's content; every malformed file is one line naming it: not JSON, not UTF-8, nested too
    deeply for Python's parser, a number too long to convert, or a folder."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except (ValueError, RecursionError, OSError) as e:
        raise UserError(f"{path}: not a readable JSON file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None


def dotted_items(mapping, prefix=""):
    """(``A.B.C``, value) for every leaf of a nested mapping (a dict, or a yacs config, which is one)."""
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def dotted_get(mapping, dotted_key, default=None):
    """The value at ``A.B.C`` of a nested mapping, or ``default`` where there is none (or it is a section)."""
    node = mapping
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return default if isinstance(node, dict) else node


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def git_state():
    """(commit, has uncommitted changes) of the project's checkout, or (None, None) outside one."""
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changes)


def package_version(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# Logging a run (Dassl's log.txt)
#
# The console shows what a person reads (a few lines per run and per epoch, progress bars in a
# terminal); ``log.txt`` keeps everything, as Dassl's does: the arguments, the whole config, every
# PRINT_FREQ-th batch. ``print`` goes to both; ``log_only`` to the log alone.

class Tee:
    """Write to the console and to a log file at once (Dassl's ``log.txt``). If the log cannot be
    written (a full disk), the console says so once and keeps getting everything."""

    def __init__(self, fpath, stream):
        self.stream = stream  # the console
        self.path = fpath
        self.file = open(fpath, "a")

    def write(self, msg):
        self.stream.write(msg)
        self.write_log(msg)

    def write_log(self, msg):
        if self.file is not None:
            try:
                self.file.write(msg)
                self.file.flush()
            except OSError as e:
                self._lose_file(e)

    def _lose_file(self, error):
        self.file = None
        self.stream.write(f"\nNote: cannot write {self.path} any more ({error.strerror or error}); "
                          f"logging to the terminal only\n")

    def flush(self):
        self.stream.flush()
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as e:
                self._lose_file(e)

    def isatty(self):
        return False  # what is written here also goes to a file: no progress bars (see ``console``)

    def close(self):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None  # what is written later (a thread's last words) goes to the console only


def log_only(text):
    """Write ``text`` (one or more lines) to the run's log.txt only; with no log it is printed, so
    nothing is lost."""
    if isinstance(sys.stdout, Tee) and sys.stdout.file is not None:
        sys.stdout.write_log(text + "\n")
    else:
        print(text)


def console():
    """The console stream under the run's log (progress bars go there, never into log.txt)."""
    stream = sys.stderr
    while isinstance(stream, Tee):
        stream = stream.stream
    return stream


def progress(iterable, desc, report=True):
    """``iterable`` with a tqdm bar on the console when it is a terminal; afterwards (``report``) one
    line saying what was done and how long it took: in the log, and on a console without the bar."""
    from tqdm import tqdm
    stream = console()
    interactive = hasattr(stream, "isatty") and stream.isatty()
    start = time.time()
    yield from tqdm(iterable, desc=desc, file=stream, disable=not interactive, leave=False)
    if report:
        line = f"{desc}: done in {time.time() - start:.1f} s"
        log_only(line) if interactive else print(line)


def log_file_path(output_dir):
    """``output_dir/log.txt`` (or ``output_dir`` itself if it ends in .txt/.log); an existing log is
    kept and the new one gets a time suffix, as in Dassl."""
    if output_dir.endswith(".txt") or output_dir.endswith(".log"):
        fpath = output_dir
    else:
        fpath = osp.join(output_dir, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
    mkdir_if_missing(osp.dirname(fpath) or ".")
    return fpath


def setup_logger(output_dir):
    """Tee stdout and stderr into ``output_dir/log.txt`` for the rest of the process (Dassl's)."""
    if output_dir and not isinstance(sys.stdout, Tee):
        fpath = log_file_path(output_dir)
        sys.stdout = Tee(fpath, sys.stdout)
        sys.stderr = Tee(fpath, sys.stderr)


@contextmanager
def run_log(output_dir):
    """Tee stdout and stderr into ``output_dir/log.txt`` while the block runs, then restore them, so
    that one process can run several runs (the sweep's workers). If the block fails, the log ends
    with why (the error line, or the traceback), which the caller prints to the console itself."""
    saved = sys.stdout, sys.stderr
    fpath = log_file_path(output_dir)
    tees = Tee(fpath, saved[0]), Tee(fpath, saved[1])
    sys.stdout, sys.stderr = tees
    try:
        yield fpath
    except BaseException as e:
        with open(fpath, "a") as f:
            if isinstance(e, UserError):
                f.write(f"error: {e}\n")
            elif isinstance(e, KeyboardInterrupt):
                f.write("interrupted\n")
            elif not isinstance(e, SystemExit):
                f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        raise
    finally:
        sys.stdout, sys.stderr = saved
        for tee in tees:
            tee.close()



# Tensor files and provenance (torch is imported only when they are called)

def save_torch(obj, path):
    import torch
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError
            raise WriteError(f"{path}: cannot write it ({str(e).splitlines()[-1][:200]})") from None


def load_torch(path, map_location="cpu", mmap=False):
    """Load a tensor file without unpickling arbitrary objects (``mmap``: its tensors mapped from the file,
    read when used, for a caller that copies them)."""
    import torch
    if not osp.isfile(path):
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for damaged files
        raise UserError(f"{path}: cannot be read as a tensor file ({type(e).__name__}: {e})") from None


# A training checkpoint written by Dassl (upstream CoOp, CoCoOp) holds, beside its tensors, its optimiser's
# and scheduler's state; the scheduler's is a dict whose values include pickled objects (Dassl's warm-up
# keeps its successor, e.g. a CosineAnnealingLR, which holds the SGD optimiser). weights_only refuses
# them ("Unsupported global"). Admitting the real classes would run their __setstate__, and Dassl's own
# classes are not importable here; so each admitted name is mapped to an inert stand-in that only keeps
# what was pickled, through torch's own weights_only unpickler (every other global still refused).

class ForeignObject:
    """An object of a training checkpoint read as data: ``origin`` names its class, ``args`` and
    ``state`` hold what was pickled. It runs nothing and does nothing."""

    origin = ""

    def __init__(self, *args, **kwargs):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.origin} read as data>"


def _plain_dict(*args):
    """``collections.defaultdict(factory)`` as a plain dict: the factory is never called."""
    return {}


def _torch_state_class_names():
    """Full names of the optimiser and scheduler classes a training checkpoint may hold as objects."""
    import torch
    names = set()
    for module in (torch.optim, torch.optim.lr_scheduler):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, (torch.optim.Optimizer,
                                                              torch.optim.lr_scheduler.LRScheduler)):
                names.add(f"{value.__module__}.{value.__qualname__}")
    names |= {f"torch.optim.lr_scheduler.{name}" for name in ("_LRScheduler", "CosineAnnealingLR", "StepLR",
                                                               "MultiStepLR", "LambdaLR", "ReduceLROnPlateau")}
    return names


# Dassl's optimisers and schedulers (dassl/optim/), by name only: none of them is imported.
DASSL_STATE_CLASSES = ("dassl.optim.lr_scheduler._BaseWarmupScheduler",
                       "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
                       "dassl.optim.lr_scheduler.LinearWarmupScheduler",
                       "dassl.optim.radam.RAdam", "dassl.optim.radam.PlainRAdam", "dassl.optim.radam.AdamW")


@functools.lru_cache(maxsize=1)
def _inert_globals():
    stand_ins = [(type(name.rsplit(".", 1)[1], (ForeignObject,), {"origin": name}), name)
                 for name in sorted(_torch_state_class_names() | set(DASSL_STATE_CLASSES))]
    return stand_ins + [(_plain_dict, "collections.defaultdict"), (dict, "builtins.dict")]


def load_checkpoint_file(path, map_location="cpu"):
    """A training checkpoint: ``load_torch``, or, for one that holds optimiser or scheduler objects
    (Dassl's, upstream CoOp's), the same restricted read with those objects as inert ``ForeignObject``
    stand-ins. Anything else that is not plain data is refused with one line, unrun."""
    import pickle
    import re

    import torch
    try:
        return load_torch(path, map_location)
    except UserError as first:
        if "GLOBAL" not in str(first) and "Can only create new object" not in str(first):
            raise
        try:
            with torch.serialization.safe_globals(_inert_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, TypeError, AttributeError, EOFError) as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"{found.group(1)}, which is" if found else "an object that is"
            raise UserError(f"{path}: holds {what} not a tensor, an optimiser or a scheduler state; not read "
                            f"(nothing in it was run)") from None


def run_provenance(device):
    """What produced a result, for results.json: code, library versions, hardware and time."""
    import numpy as np
    import torch
    commit, dirty = git_state()
    if device.type == "cuda":
        hardware = {"gpu": torch.cuda.get_device_name(device)}
    else:
        hardware = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": platform.machine()}
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "clip": package_version("clip-anytorch"), "numpy": np.__version__,
            **hardware, "torch_threads": torch.get_num_threads(),
            "utc_time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


@contextmanager
def folder_lock(folder, what="run"):
    """Hold an exclusive lock on ``folder`` (its ``.lock`` file) while the block runs; a second
    holder is refused with one line. The lock ends with the process, however it ends."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    mkdir_if_missing(folder)
    path = osp.join(folder, ".lock")
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{folder}: in use by another {what} ({holder}); wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()
