"""``llu sweep NAME``: a protocol's runs (llu/protocols.py), ``--jobs`` at a time, then its tables.

    llu sweep base2new                                   # the built-in world: Table 1
    DATA=/data DATASETS="imagenet caltech101" CFG=vit_b16 llu sweep base2new
    llu sweep fewshot --shots 1 2 4 --dry-run            # print the runs, run nothing

- a run whose ``results.json`` exists is skipped, so a killed sweep resumes where it stopped;
- each worker process runs one run after another in it (``llu.train.main``), torch imported and the
  project loaded once, the backbone and the cached features reused;
- an evaluation waits for the training run it reads, and is not run if that run failed; every other
  run goes on. A worker that dies (killed, out of memory) fails only the run it held ("worker died
  (signal 9)"); the next runs get a fresh worker. Workers end with the sweep, also when it is killed
  (``kill -9``: on Linux the kernel sends them SIGTERM, and their runs save what they can);
- the console gets one line per finished run, with the time spent and an estimate of what is left
  (from the finished runs of the same kind: training or evaluation, trainer, dataset, shots), and,
  while runs are in flight, at most every 30 s a line on each (its epoch, read from its log), so a
  long run is never silence; each run's own output goes to its ``log.txt``; the end lists the failed
  runs with the last line of their logs, and the exit status is 1 if any failed.

``--launcher submitit`` (``LAUNCHER=submitit``) runs the same runs as jobs through submitit: on Slurm
when ``srun`` is there, else with submitit's local executor. One job runs one chain: a training run
and the evaluations that read it (a (dataset, trainer, seed) of base-to-new, a source and its targets
of the transfer sweeps), in one process. The output tree, skip rules and tables are those of a local
sweep. Slurm's settings come from the environment (``SLURM_SETTINGS``).

``python -m llu.sweep PLAN`` runs a plan file of your own, one ``llu train ...`` (or ``python -m llu
train ...``, ``python train.py ...``) command per line, the same way.
"""
import argparse
import contextlib
import ctypes
import datetime
import heapq
import inspect
import io
import multiprocessing
import multiprocessing.connection
import os
import os.path as osp
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from llu import protocols
from llu.protocols import Run
from llu.utils import Terminated, UserError, exit_on_user_error, raise_terminated, require, user_cache_dir


@dataclass
class Task:
    """A run of a sweep as the scheduler follows it."""
    index: int
    run: Run
    needs: int = None  # index of the run whose model it reads, if the sweep has it
    state: str = "pending"  # pending, running, done, skipped, failed, blocked
    message: str = ""
    started: float = 0.0
    seconds: float = 0.0

    @property
    def args(self):
        return list(self.run.args)

    @property
    def output_dir(self):
        return self.run.output_dir

    @property
    def finished(self):
        return self.run.finished


def schedule(runs):
    """The runs as tasks, each knowing the task it waits for; finished runs are skipped."""
    tasks, producers = [], {}
    for run in runs:
        if run.output_dir in producers:
            raise UserError(f"two runs write {run.output_dir}")
        task = Task(len(tasks), run)
        if run.reads is not None:
            task.needs = producers.get(run.reads.output_dir)
        if run.finished:
            task.state, task.message = "skipped", "results.json exists"
        producers[run.output_dir] = task.index
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------------------------
# Plan files (python -m llu.sweep PLAN)

def _option(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else ""


def train_arguments(command):
    """The ``llu train`` arguments of a plan line, or None if it runs something else."""
    if len(command) >= 2 and osp.basename(command[0]) == "llu" and command[1] == "train":
        return command[2:]
    if command[1:4] == ["-m", "llu", "train"]:
        return command[4:]
    if len(command) >= 2 and osp.basename(command[1]) == "train.py":
        return command[2:]
    return None


def parse_plan(lines):
    """Runs from plan lines (blank lines and ``#`` comments are ignored; a leading ``+ `` as printed
    by ``--dry-run`` is allowed). A run reads the run of the plan that writes its ``--model-dir``."""
    runs, producers = [], {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("+ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        args = train_arguments(shlex.split(line))
        if args is None:
            raise UserError(f"plan line {number}: expected 'llu train ...', got {line[:80]!r}")
        output_dir = _option(args, "--output-dir")
        if not output_dir:
            raise UserError(f"plan line {number}: the run has no --output-dir")
        output_dir = osp.abspath(output_dir)
        if output_dir in producers:
            raise UserError(f"plan: two runs write {output_dir}")
        model_dir = _option(args, "--model-dir")
        run = Run(tuple(args), output_dir, producers.get(osp.abspath(model_dir)) if model_dir else None)
        producers[output_dir] = run
        runs.append(run)
    return runs


def read_plan(path):
    try:
        with open(path) as f:
            return parse_plan(f.readlines())
    except OSError as e:
        raise UserError(f"{path}: cannot read the plan ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------
# In a worker process

def execute(args):
    """Run ``llu train ARGS`` in this process, its output to its log only; returns (ok, message), the
    message being the last line printed when the run fails before its log exists."""
    from llu import train
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        try:
            train.main(train.build_parser("llu train").parse_args(list(args)))
            return True, ""
        except UserError as e:
            return False, f"error: {e}"
        except SystemExit as e:  # argparse's errors
            lines = console.getvalue().strip().splitlines()
            return False, lines[-1] if lines else f"exited with status {e.code}"
        except Exception as e:  # the traceback is in the run's log.txt
            return False, f"{type(e).__name__}: {e}"
        except KeyboardInterrupt:
            return False, "interrupted"
        except Terminated as e:
            return False, f"terminated; {e}" if str(e) else "terminated"


def run_chain(chain):
    """A submitit job: the runs of one chain in this process, in order. ``chain`` holds (``llu train``
    arguments, the position in the chain of the run it reads or None); returns [(ok, message)], a
    run whose producer failed not run."""
    signal.signal(signal.SIGTERM, raise_terminated)  # a run then saves its last epoch to resume from
    outcomes = []
    for args, producer in chain:
        if producer is not None and not outcomes[producer][0]:
            outcomes.append((False, "not run: the run it reads failed"))
        else:
            outcomes.append(execute(args))
    return outcomes


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_coordinator(coordinator):
    """Make this worker end when the coordinator (pid ``coordinator``) dies, even by ``kill -9``: on
    Linux the kernel sends SIGTERM (prctl PR_SET_PDEATHSIG), elsewhere a thread watching the parent
    does; SIGTERM makes the run in progress save what it can. False if the coordinator is gone already."""
    asked = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            asked = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        except (OSError, AttributeError):
            asked = False
    if not asked:
        def watch():
            while os.getppid() == coordinator:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=watch, name="llu-sweep-watchdog", daemon=True).start()
    return os.getppid() == coordinator  # it may have died before the request


_coordinator_ends = []  # the coordinator's ends of the workers' pipes (a forked worker closes its copies)


def worker_loop(conn, coordinator):
    """A worker process: runs the ``llu train`` arguments it receives one after another and sends back
    (ok, message) for each, until it receives None or the coordinator is gone."""
    for end in _coordinator_ends:  # else a pipe would not close when the coordinator dies
        end.close()
    signal.signal(signal.SIGTERM, raise_terminated)  # a run then saves its last epoch to resume from
    try:
        if not exit_with_coordinator(coordinator):
            return
        while True:
            args = conn.recv()
            if args is None:
                return
            conn.send(execute(args))
    except (EOFError, OSError, KeyboardInterrupt, Terminated):  # the coordinator is gone, or stops the sweep
        return


# ---------------------------------------------------------------------------------------------
# The coordinator

def newest_log(output_dir):
    """The path of the newest log in ``output_dir`` (log.txt, or a rerun's log.txt-<time>), or None."""
    if not osp.isdir(output_dir):
        return None
    logs = [osp.join(output_dir, f) for f in os.listdir(output_dir) if f.startswith("log.txt")]
    return max(logs, key=osp.getmtime, default=None)


def last_log_line(output_dir):
    """The last non-empty line of the newest log in ``output_dir``, or ""."""
    log = newest_log(output_dir)
    if log is None:
        return ""
    with open(log, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


# The trainers' progress lines in log.txt (Dassl's): "epoch [3/10] batch [5/8] ..." during an epoch,
# "epoch [3/10] loss ..." at its end.
EPOCH_LINE = re.compile(r"epoch \[(\d+)/(\d+)\](?:\s+batch \[(\d+)/(\d+)\])?")
LOG_TAIL_BYTES = 1 << 16


def epoch_progress(output_dir, since=0.0):
    """(epoch, epochs, fraction of the epochs done) from the last progress line of the run's log, or
    None before it has one (setting up, or a run that trains nothing). A log older than ``since`` (the
    run's start) is a previous attempt's and says nothing."""
    log = newest_log(output_dir)
    if log is None or osp.getmtime(log) < since:
        return None
    with open(log, "rb") as f:
        f.seek(max(0, osp.getsize(log) - LOG_TAIL_BYTES))
        tail = f.read().decode("utf-8", errors="replace")
    matches = list(EPOCH_LINE.finditer(tail))
    if not matches:
        return None
    epoch, epochs, batch, batches = matches[-1].groups()
    epoch, epochs = int(epoch), max(int(epochs), 1)
    done = epoch - 1 + int(batch) / max(int(batches), 1) if batch else epoch
    return epoch, epochs, min(done / epochs, 1.0)


def duration(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


HEARTBEAT_SECONDS = 30.0  # at most this long without a line while runs are in flight
BAR_WIDTH = 24
LIVE_REFRESH_SECONDS = 2.0  # in a terminal: the status block under the finished runs is redrawn this often


def run_kind(args):
    """What a run's time is estimated from, the most general first: evaluation or training, trainer,
    dataset, shots. Runs that agree in a longer prefix of it take more alike times."""
    dataset = osp.splitext(osp.basename(_option(args, "--dataset-config-file")))[0]
    return ("evaluate" if "--eval-only" in args else "train", _option(args, "--trainer"), dataset,
            _option(args, "DATASET.NUM_SHOTS"))


def expected_seconds(kind, finished):
    """The mean time of the ``finished`` runs ((kind, seconds) pairs) that share the longest prefix of
    ``kind`` with it (the same trainer on the same data, else the same trainer, ...); None if none."""
    for length in range(len(kind), -1, -1):
        alike = [seconds for other, seconds in finished if tuple(other[:length]) == tuple(kind[:length])]
        if alike:
            return sum(alike) / len(alike)
    return None


def time_left(finished, running, pending, workers):
    """Seconds until every run not finished is, or None while there is nothing to go by.

    ``finished``: (kind, seconds) of the runs done; ``running``: (kind, seconds so far, fraction of its
    epochs done or None) of the runs in flight; ``pending``: the kinds of the runs to start, in order.
    A run is expected to take what finished runs of its kind took (``expected_seconds``); before any
    has finished, what the runs in flight take at their pace so far. A run in flight has the part of
    that its epochs have not done left; the pending runs go, in order, to the first of the ``workers``
    to be free."""
    taken = finished or [(kind, seconds / fraction) for kind, seconds, fraction in running if fraction]
    if not taken:
        return None
    free_at = []
    for kind, seconds, fraction in running:
        expected = expected_seconds(kind, taken)
        free_at.append(expected * (1.0 - fraction) if fraction is not None else max(expected - seconds, 0.0))
    free_at += [0.0] * max(workers - len(free_at), 0)
    heapq.heapify(free_at)
    for kind in pending:
        heapq.heappush(free_at, heapq.heappop(free_at) + expected_seconds(kind, taken))
    return max(free_at, default=0.0)


@dataclass
class Progress:
    """Prints a ``[k/N] state run`` line as each run ends, with the time elapsed and an estimate of the
    rest (``time_left``); while runs are in flight and nothing else was printed for ``heartbeat``
    seconds, one line on them and one per run (its epoch), so that a sweep is never long silent. In a
    terminal (``live``) that block is a status block under the finished runs' lines, with a bar of the
    runs done, redrawn in place every ``LIVE_REFRESH_SECONDS``."""
    tasks: list  # the runs to do (Task), their states kept by the scheduler
    stream: object = None  # default: sys.stdout
    workers: int = 1
    heartbeat: float = HEARTBEAT_SECONDS
    start: float = field(default_factory=time.time)
    count: int = 0
    last_line: float = None  # when a line was last printed
    live: bool = None  # default: whether the stream is a terminal
    drawn: int = 0  # lines of the live status block on screen

    def __post_init__(self):
        stream = self.stream or sys.stdout
        if self.live is None:
            self.live = getattr(stream, "isatty", lambda: False)() and os.environ.get("TERM") != "dumb"
        if self.live:
            self.heartbeat = min(self.heartbeat, LIVE_REFRESH_SECONDS)

    @property
    def total(self):
        return len(self.tasks)

    def say(self, text):
        self.erase()
        print(text, file=self.stream or sys.stdout, flush=True)
        self.last_line = time.time()

    def erase(self):
        """Take the live status block off the screen (the cursor goes up a line and clears it, per line)."""
        if self.drawn:
            (self.stream or sys.stdout).write("\x1b[1A\x1b[2K" * self.drawn)
            self.drawn = 0

    def time_left(self, in_flight, now):
        finished = [(run_kind(t.args), t.seconds) for t in self.tasks if t.state == "done"]
        flying = {t.index for t in in_flight}
        epochs = {t.index: epoch_progress(t.output_dir, t.started) for t in in_flight}
        running = [(run_kind(t.args), now - t.started, epochs[t.index][2] if epochs[t.index] else None)
                   for t in in_flight]
        pending = [run_kind(t.args) for t in self.tasks if t.state in ("pending", "running") and t.index not in flying]
        return time_left(finished, running, pending, self.workers)

    def times(self, in_flight, now):
        """"elapsed 0:01:10, about 0:03:00 left"."""
        left = self.time_left(in_flight, now) if self.count < self.total else None
        return f"elapsed {duration(now - self.start)}{f', about {duration(left)} left' if left is not None else ''}"

    def report(self, task, relative_to, in_flight=()):
        """A line on ``task``, which has ended (done, failed) or will not run (blocked)."""
        self.count += 1
        took = f" in {task.seconds:.1f} s" if task.state in ("done", "failed") else ""
        name = osp.relpath(task.output_dir, relative_to)
        self.say(f"[{self.count}/{self.total}] {task.state:<7} {name}{took} ({self.times(in_flight, time.time())})")
        if task.state in ("failed", "blocked"):
            self.say(f"    {task.message}")

    def until_heartbeat(self):
        """Seconds until a heartbeat is due."""
        return max(0.0, (self.last_line or self.start) + self.heartbeat - time.time())

    def beat(self, in_flight, relative_to):
        """The heartbeat, if one is due: the runs in flight, with their epochs and times so far."""
        now = time.time()
        if not in_flight or now < (self.last_line or self.start) + self.heartbeat:
            return
        bar = ""
        if self.live:
            done = round(BAR_WIDTH * self.count / max(self.total, 1))
            bar = f"{'#' * done}{'.' * (BAR_WIDTH - done)} "
        lines = [f"[{self.count}/{self.total}] {bar}{len(in_flight)} running ({self.times(in_flight, now)})"]
        for task in sorted(in_flight, key=lambda t: t.index):
            epoch = epoch_progress(task.output_dir, task.started)
            at = f"epoch {epoch[0]}/{epoch[1]}, " if epoch else ""
            lines.append(f"    {osp.relpath(task.output_dir, relative_to)}: {at}running {duration(now - task.started)}")
        self.say("\n".join(lines))
        if self.live:
            self.drawn = len(lines)  # the next line or block replaces it


def worker_context():
    """fork where the platform has it (Linux): the workers start with the project loaded, and their
    DataLoader processes then fork too; under spawn each of them would import torch again (seconds
    each, for DATALOADER.NUM_WORKERS of them per loader)."""
    fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    return multiprocessing.get_context("fork" if fork else "spawn")


def death_message(exitcode):
    if exitcode is not None and exitcode < 0:
        return f"worker died (signal {-exitcode})"
    return f"worker died (exit status {exitcode})"


class Worker:
    """One worker process, the pipe to it, and the task it holds (None: idle)."""

    def __init__(self, context):
        self.conn, child = context.Pipe()
        _coordinator_ends.append(self.conn)
        self.process = context.Process(target=worker_loop, args=(child, os.getpid()), name="llu-sweep-worker",
                                       daemon=True)
        self.process.start()
        child.close()
        self.task = None

    def close(self):
        if self.conn in _coordinator_ends:
            _coordinator_ends.remove(self.conn)
        self.conn.close()


class LocalWorkers:
    """Up to ``jobs`` worker processes on this machine, each running one run after another. Each is
    its own process with its own pipe, so a worker that dies fails the run it held and nothing else."""

    def __init__(self, jobs):
        self.jobs, self.context, self.workers = jobs, worker_context(), []

    def __enter__(self):
        return self

    def submit(self, task):
        """Hand ``task`` to an idle worker (a new one if none is idle)."""
        for worker in [w for w in self.workers if w.task is None] + [None]:
            if worker is None:
                assert len(self.workers) < self.jobs, "more runs submitted than workers"
                worker = Worker(self.context)
                self.workers.append(worker)
            try:
                worker.conn.send(task.args)
            except OSError:  # it died while idle
                self._discard(worker)
                continue
            worker.task = task
            return

    def _discard(self, worker):
        worker.process.join(timeout=10)
        worker.close()
        self.workers.remove(worker)

    def wait(self, timeout=None):
        """Wait for runs to end, at most ``timeout`` seconds (None: until one does); returns [(task, ok,
        message, worker died)] of those that did."""
        busy = [w for w in self.workers if w.task is not None]
        ready = set(multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                                    timeout))
        ended = []
        for worker in busy:
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            task, worker.task = worker.task, None
            try:
                if not worker.conn.poll():
                    raise EOFError
                ok, message = worker.conn.recv()
                ended.append((task, ok, message, False))
            except (EOFError, OSError):  # it died holding this run (killed, out of memory)
                worker.process.join(timeout=10)
                ended.append((task, False, death_message(worker.process.exitcode), True))
                self._discard(worker)
        return ended

    def __exit__(self, kind, value, traceback):
        for worker in self.workers:
            if worker.task is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)  # done: the worker ends
            elif kind is not KeyboardInterrupt:  # (Ctrl-C reached the workers too)
                worker.process.terminate()  # SIGTERM: the run saves what it can
            worker.close()  # a worker that finishes its run then finds the pipe closed, and ends
        for worker in self.workers:
            worker.process.join(timeout=60)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.workers = []
        return False


def run_plan(runs, jobs=1, workers=None, stream=None, relative_to=None, heartbeat=HEARTBEAT_SECONDS):
    """Run the runs ``jobs`` at a time (each after the run it reads); returns their tasks (with their
    states). While runs are in flight, a line on them at least every ``heartbeat`` seconds."""
    tasks, stream = schedule(runs), stream or sys.stdout
    relative_to = relative_to or common_folder(tasks)
    todo = [t for t in tasks if t.state == "pending"]
    progress = Progress(list(todo), stream, jobs, heartbeat)
    print(f"Sweep in {relative_to}: {len(todo)} run(s) to do, {len(tasks) - len(todo)} already done; "
          f"{jobs} worker(s)", file=stream, flush=True)
    if not todo:
        return tasks
    with workers or LocalWorkers(jobs) as pool:
        running = 0
        while todo or running:
            for task in list(todo):
                if running >= jobs:
                    break
                producer = tasks[task.needs] if task.needs is not None else None
                if producer is not None and producer.state in ("failed", "blocked"):
                    todo.remove(task)
                    task.state = "blocked"
                    task.message = f"not run: the run it reads failed ({osp.relpath(producer.output_dir, relative_to)})"
                    progress.report(task, relative_to, running_tasks(tasks))
                    continue
                if producer is not None and producer.state not in ("done", "skipped"):
                    continue  # in plan order, but after the run it reads
                todo.remove(task)
                task.state, task.started = "running", time.time()
                pool.submit(task)
                running += 1
            if not running:
                continue
            for task, ok, message, died in pool.wait(progress.until_heartbeat()):
                running -= 1
                finish_run(task, ok, message, died)
                progress.report(task, relative_to, running_tasks(tasks))
            progress.beat(running_tasks(tasks), relative_to)
    return tasks


def running_tasks(tasks):
    return [t for t in tasks if t.state == "running"]


# ---------------------------------------------------------------------------------------------
# The submitit launcher (Slurm, or submitit's local executor)

# Slurm's settings for LAUNCHER=submitit: environment variable -> (submitit parameter, type, default).
SLURM_SETTINGS = {
    "LLU_SLURM_PARTITION": ("slurm_partition", str, None),  # the partition (queue); None: the cluster's default
    "LLU_SLURM_ACCOUNT": ("slurm_account", str, None),  # the account charged
    "LLU_SLURM_GPUS": ("gpus_per_node", int, 1),  # GPUs per job (one chain of runs uses one)
    "LLU_SLURM_CPUS": ("cpus_per_task", int, 8),  # CPU cores per job (data loading)
    "LLU_SLURM_MEM_GB": ("mem_gb", float, 32.0),  # memory per job
    "LLU_SLURM_TIME_MIN": ("timeout_min", int, 720),  # time limit per job, minutes (also the local executor's)
}
SLURM_EXTRA = "LLU_SLURM_EXTRA"  # more sbatch settings, "key=value,key=value" (e.g. "constraint=a100,qos=high")


def on_slurm():
    return shutil.which("srun") is not None


def slurm_parameters(environ=os.environ):
    """submitit parameters from the LLU_SLURM_* settings (a bad value is one line naming it)."""
    parameters = {}
    for variable, (name, kind, default) in SLURM_SETTINGS.items():
        text = environ.get(variable, "")
        try:
            value = kind(text) if text else default
        except ValueError:
            raise UserError(f"{variable} must be a {kind.__name__}, got {text!r}") from None
        if value is not None:
            parameters[name] = value
    for item in filter(None, (part.strip() for part in environ.get(SLURM_EXTRA, "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{SLURM_EXTRA} must be 'key=value,key=value', got {item!r}")
        parameters[f"slurm_{key.strip()}"] = value.strip()
    return parameters


def chains(tasks):
    """The pending tasks grouped into chains: a task whose producer is not pending starts a chain, and
    every task that reads a pending task joins its producer's chain (in plan order)."""
    chain_of, grouped = {}, []
    for task in tasks:
        if task.state != "pending":
            continue
        producer = tasks[task.needs] if task.needs is not None else None
        if producer is not None and producer.index in chain_of:
            chain_of[task.index] = chain_of[producer.index]
            grouped[chain_of[task.index]].append(task)
        else:
            chain_of[task.index] = len(grouped)
            grouped.append([task])
    return grouped


def chain_heads(chains_in_flight):
    """The run each chain in flight is at: its first without results.json (a job runs its chain in order)."""
    heads = (next((t for t in chain if not t.finished), None) for chain in chains_in_flight)
    return [head for head in heads if head is not None]


def chain_arguments(chain):
    position = {task.index: i for i, task in enumerate(chain)}
    return [(task.args, position.get(task.needs)) for task in chain]


def failure_line(job):
    """The last line of what a failed submitit job reported."""
    try:
        error = job.exception()
    except Exception as e:  # the job's state could not be read
        error = e
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return f"the job failed ({lines[-1] if lines else type(error).__name__})"


def make_executor(folder):
    """submitit's executor: Slurm when it is there (with SLURM_SETTINGS), else the local executor."""
    submitit = require("submitit", "slurm", "LAUNCHER=submitit")
    slurm = on_slurm()
    executor = submitit.AutoExecutor(folder=folder, cluster=None if slurm else "local")
    parameters = slurm_parameters()
    if not slurm:  # the local executor takes the time limit only
        parameters = {"timeout_min": parameters["timeout_min"]}
    executor.update_parameters(name="llu-sweep", **parameters)
    return executor, slurm


def run_plan_submitit(runs, jobs=0, folder=None, stream=None, relative_to=None, executor=None):
    """Run the pending runs as submitit jobs, one per chain, at most ``jobs`` at a time (0: all at
    once). Returns their tasks (with their states), as ``run_plan``."""
    tasks, stream = schedule(runs), stream or sys.stdout
    relative_to = relative_to or common_folder(tasks)
    todo = chains(tasks)
    count = sum(len(chain) for chain in todo)
    folder = folder or osp.join(relative_to, ".submitit")
    if executor is None and todo:
        executor, slurm = make_executor(folder)
    else:
        slurm = False
    progress = Progress([task for chain in todo for task in chain], stream, jobs or len(todo))
    print(f"Sweep in {relative_to}: {count} run(s) to do in {len(todo)} job(s) ({'Slurm' if slurm else 'local'} "
          f"submitit, logs in {folder}), {len(tasks) - count} already done; "
          f"{jobs or 'all'} job(s) at a time", file=stream, flush=True)
    if not todo:
        return tasks
    in_flight = {}
    try:
        while todo or in_flight:
            while todo and (not jobs or len(in_flight) < jobs):
                chain = todo.pop(0)
                for task in chain:
                    task.state, task.started = "running", time.time()
                in_flight[executor.submit(run_chain, chain_arguments(chain))] = chain
            done = [job for job in in_flight if job.done()]
            if not done:
                progress.beat(chain_heads(in_flight.values()), relative_to)
                time.sleep(15.0 if slurm else 0.2)
                continue
            for job in done:
                chain = in_flight.pop(job)
                try:
                    outcomes = job.result()
                except Exception:  # the job died (killed, out of time or memory): its runs failed
                    outcomes = [(False, failure_line(job))] * len(chain)
                for task, (ok, message) in zip(chain, outcomes):
                    finish_run(task, ok, message)
                    progress.report(task, relative_to, chain_heads(in_flight.values()))
    finally:
        for job in in_flight:  # interrupted: a rerun of the same command continues the sweep
            job.cancel(check=False)
    return tasks


def finish_run(task, ok, message, worker_died=False):
    """Record how a run ended: done only if it says so and wrote its results.json. A failed run's
    message is the last line of its log, unless its worker died (then the log stops mid-run)."""
    task.seconds = time.time() - task.started
    if ok and not task.finished:
        ok, message = False, "finished without writing results.json"
    if not ok and message.startswith("not run:"):
        task.state, task.message = "blocked", message
        return
    task.state = "done" if ok else "failed"
    task.message = "" if ok else message if worker_died else (last_log_line(task.output_dir) or message)


def common_folder(tasks):
    """The folder holding every run's output (run names are printed relative to it)."""
    return osp.commonpath([t.output_dir for t in tasks]) if tasks else os.getcwd()


def summary(tasks, stream=None, relative_to=None):
    """Print which runs failed; returns the exit status (1 if any failed or was blocked)."""
    stream = stream or sys.stdout
    relative_to = relative_to or common_folder(tasks)
    bad = [t for t in tasks if t.state in ("failed", "blocked")]
    done = sum(t.state == "done" for t in tasks)
    print(f"Sweep finished: {done} run(s) done, {sum(t.state == 'skipped' for t in tasks)} skipped, "
          f"{len(bad)} failed or not run", file=stream)
    for task in bad:
        print(f"  {task.state}: {osp.relpath(task.output_dir, relative_to)}: {task.message}", file=stream)
    return 1 if bad else 0


def execute_plan(runs, launcher="local", jobs=None, submitit_folder=None):
    """Run the runs with the launcher, print the summary; returns the exit status."""
    if jobs is not None and jobs < (0 if launcher == "submitit" else 1):
        raise UserError(f"--jobs (JOBS) must be at least {0 if launcher == 'submitit' else 1}, got {jobs}")
    try:
        if launcher == "submitit":
            if jobs is None:
                jobs = 0 if on_slurm() else (os.cpu_count() or 1)
            tasks = run_plan_submitit(runs, jobs=jobs, folder=submitit_folder or None)
        else:
            tasks = run_plan(runs, jobs=jobs or 1)
        return summary(tasks)
    except (KeyboardInterrupt, Terminated) as e:
        left = sum(not run.finished for run in runs)
        raise type(e)(f"{left} run(s) not finished; finished runs keep their results, and the same command "
                      f"continues the sweep") from None


# ---------------------------------------------------------------------------------------------
# llu sweep NAME

def print_tables(tree):
    """Print the tables of ``tree`` (``llu report``); returns the report's exit status."""
    from llu.report import main
    try:
        return main([tree], prog="llu report") or 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


def report_line(tree, environ=os.environ):
    """``print_tables`` as a command line (what --dry-run prints last)."""
    return shlex.join([python_name(environ), "-m", "llu", "report", tree])


def python_name(environ=os.environ):
    """The Python the printed commands name: $PYTHON (as the scripts run it), else python."""
    python = environ.get("PYTHON") or "python"
    return osp.abspath(python) if "/" in python else python


def command_line(args, environ=os.environ):
    """A runnable command line: ``python -m llu train ...`` (``llu train ...`` where it is installed)."""
    return shlex.join([python_name(environ), "-m", "llu", "train", *args])


def words(text):
    return text.split()


def whole_numbers(name):
    def read(text):
        try:
            return [int(word) for word in text.split()]
        except ValueError:
            raise UserError(f"{name} must be whole numbers, got {text!r}") from None
    return read


# Settings of the protocols: flag -> (environment variable, how its text is read). A setting given
# neither way is the protocol's default (llu/protocols.py).
PROTOCOL_SETTINGS = {
    "datasets": ("DATASETS", words),
    "trainers": ("TRAINERS", words),
    "cfg": ("CFG", str),
    "cfgs": ("CFGS", words),
    "seeds": ("SEEDS", whole_numbers("SEEDS")),
    "shots": ("SHOTS", whole_numbers("SHOTS")),
    "source": ("SOURCE", str),
    "targets": ("TARGETS", words),
}


def build_parser(prog=None):
    names = "\n".join(f"  {name:<10} {fn.__doc__.splitlines()[0]}" for name, fn in protocols.PROTOCOLS.items())
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a protocol's runs (llu/protocols.py), --jobs at a time, then print its tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"protocols:\n{names}\n\nEach setting is also read from the environment variable in capitals "
               f"(DATASETS=\"imagenet caltech101\", DRY_RUN=1, ...), as scripts/*.sh pass them; a flag wins.")
    parser.add_argument("protocol", choices=list(protocols.PROTOCOLS), help="which sweep")
    parser.add_argument("--data", help="folder holding the datasets (default: the built-in world's, "
                                       "$LLU_CACHE/world or ~/.cache/llu/world)")
    parser.add_argument("--output", help="results tree root (default: output)")
    parser.add_argument("--datasets", nargs="+", help="datasets (config names; default shapes)")
    parser.add_argument("--trainers", nargs="+", help=f"trainers (default {' '.join(protocols.TRAINERS)})")
    parser.add_argument("--cfg", help="trainer config name (default toy)")
    parser.add_argument("--cfgs", nargs="+", help="ablation: LLU configs (default CFG and CFG_<ablation>)")
    parser.add_argument("--seeds", nargs="+", help="seeds (default 1 2 3)")
    parser.add_argument("--shots", nargs="+", help="shots per class (default 16; fewshot 1 2 4 8 16)")
    parser.add_argument("--source", help="xd, dg: the dataset trained on (default shapes)")
    parser.add_argument("--targets", nargs="+", help="xd, dg: the datasets evaluated (default patterns; "
                                                     "dg shapes_sketch shapes_noisy)")
    parser.add_argument("--jobs", type=int, help="local: worker processes (default 1); submitit: jobs at once "
                                                 "(default all on Slurm, one per core on the local executor)")
    parser.add_argument("--launcher", choices=("local", "submitit"), help="local workers (default), or submitit "
                                                                          "jobs (Slurm, else its local executor)")
    parser.add_argument("--submitit-folder", help="submitit's job files and logs (default OUTPUT/<tree>/.submitit)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs as runnable command lines, in an "
                                                               "order that works line by line; run nothing")
    parser.add_argument("--opts", nargs="+", metavar="KEY VALUE",
                        help="options for every run, e.g. --opts FEATURES.CACHE_DIR /scratch (default $OPTS); "
                             "not part of the folder names")
    return parser


def setting(args, name, environ):
    """A setting from its flag, else its environment variable, else None."""
    variable, read = PROTOCOL_SETTINGS[name]
    given = getattr(args, name)
    if given is not None:
        return read(" ".join(given) if isinstance(given, list) else given)
    text = environ.get(variable, "")
    return read(text) if text.strip() else None


def plan_runs(args, environ=os.environ):
    """The protocol's runs and its results tree, from the flags and the environment."""
    fn = protocols.PROTOCOLS[args.protocol]
    accepted = inspect.signature(fn).parameters
    kwargs = {}
    for name, (variable, _) in PROTOCOL_SETTINGS.items():
        value = setting(args, name, environ)
        if value is None:
            continue
        if name not in accepted:
            if getattr(args, name) is not None:
                raise UserError(f"--{name} does not apply to {args.protocol}")
            continue  # an environment variable of another protocol
        kwargs[name] = value
    data = args.data or environ.get("DATA") or user_cache_dir("world")
    output = args.output or environ.get("OUTPUT") or "output"
    opts = " ".join(args.opts).split() if args.opts else environ.get("OPTS", "").split()
    where = protocols.Sweep(osp.abspath(data), osp.abspath(output), tuple(opts))
    return list(fn(where, **kwargs)), osp.join(where.output, fn.tree)


def sweep(argv=None, prog=None, environ=os.environ):
    """Plan the protocol's runs; print them (dry run), or run them and print the tables; returns the
    exit status."""
    args = build_parser(prog).parse_args(argv)
    runs, tree = plan_runs(args, environ)
    dry_run = args.dry_run or environ.get("DRY_RUN") == "1"
    for run in runs:
        if run.finished:
            print(f"skip {run.output_dir} (results.json exists)", flush=True)
        elif dry_run:
            print(f"+ {command_line(run.args, environ)}")
    if dry_run:
        print(f"+ {report_line(tree, environ)}")
        return 0
    jobs = args.jobs
    if jobs is None and environ.get("JOBS", "").strip():
        jobs = whole_numbers("JOBS")(environ["JOBS"])
        if len(jobs) != 1:
            raise UserError(f"JOBS must be a whole number, got {environ['JOBS']!r}")
        jobs = jobs[0]
    launcher = args.launcher or environ.get("LAUNCHER") or "local"
    if launcher not in ("local", "submitit"):
        raise UserError(f"LAUNCHER must be local or submitit, got {launcher!r}")
    share_log_group(args.protocol, tree, environ)
    status = execute_plan(runs, launcher, jobs, args.submitit_folder or environ.get("SUBMITIT_FOLDER"))
    sys.stdout.flush()
    if status == 0 or has_results(tree):  # the tables of what finished
        tables_status = print_tables(tree)
        status = status or tables_status
    return status


def share_log_group(group, folder, environ=os.environ):
    """Make the sweep's runs one group in the trackers of LOG.BACKENDS (llu/engine/metrics.py): W&B's
    group and MLflow's experiment ``group``, their local files in ``folder``. The workers and submitit's
    jobs inherit the environment; what the user set already wins."""
    environ.setdefault("LLU_LOG_GROUP", group)
    environ.setdefault("LLU_LOG_DIR", osp.abspath(folder))


def has_results(tree):
    return any("results.json" in files for _, _, files in os.walk(tree))


def cli(argv=None, prog="llu sweep"):
    """``llu sweep NAME``: user errors are one line (exit status 2)."""
    signal.signal(signal.SIGTERM, raise_terminated)
    return exit_on_user_error(sweep, argv, prog)


def main(argv=None):
    """``python -m llu.sweep PLAN``: a plan file of ``llu train`` lines, run as ``llu sweep`` runs its own."""
    parser = argparse.ArgumentParser(prog="python -m llu.sweep", description="Run a plan of llu train runs.")
    parser.add_argument("plan", help="file of 'llu train ...' lines ('-': standard input)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local: worker processes at once (default: $JOBS or 1); submitit: jobs at once "
                             "(default: $JOBS, else all on Slurm and one per core on the local executor)")
    parser.add_argument("--launcher", choices=("local", "submitit"), default=os.environ.get("LAUNCHER") or "local",
                        help="local worker processes, or submitit jobs (Slurm, else its local executor); "
                             "default: $LAUNCHER or local")
    parser.add_argument("--submitit-folder", default=os.environ.get("SUBMITIT_FOLDER") or "",
                        help="where submitit keeps its job files and logs (default: OUTPUT/.submitit)")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else (int(os.environ["JOBS"]) if os.environ.get("JOBS") else None)
    runs = parse_plan(sys.stdin.readlines()) if args.plan == "-" else read_plan(args.plan)
    if runs:
        share_log_group("plan" if args.plan == "-" else osp.splitext(osp.basename(args.plan))[0],
                        osp.commonpath([run.output_dir for run in runs]))
    signal.signal(signal.SIGTERM, raise_terminated)
    return execute_plan(runs, args.launcher, jobs, args.submitit_folder)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
