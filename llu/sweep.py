"""Running a sweep's plan: many ``train.py`` runs, several per worker process, ``--jobs`` at a time.

The sweep scripts (``scripts/*.sh``) write their plan, one ``python train.py ...`` command per line,
in an order that also works line by line (each evaluation after the training run whose
``--model-dir`` it reads), and hand it to ``python -m llu.sweep PLAN``:

- a run whose ``results.json`` exists is skipped, so a killed sweep resumes where it stopped;
- each worker process imports torch and the project once and runs one run after another in it,
  reusing the loaded backbone and the cached features;
- an evaluation waits for the training run it reads, and is not run if that run failed; every
  other run goes on;
- the console gets one line per finished run, with the time spent and an estimate of what is left;
  each run's own output goes to its ``log.txt``; the end lists the failed runs with the last line
  of their logs, and the exit status is 1 if any failed.
"""
import argparse
import concurrent.futures
import contextlib
import datetime
import io
import multiprocessing
import os
import os.path as osp
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field

from llu.utils import Terminated, UserError, exit_on_user_error, raise_terminated


@dataclass
class Run:
    """One line of a plan: ``python train.py ARGS``."""
    index: int
    command: list
    output_dir: str
    model_dir: str = ""
    needs: int = None  # index of the run that writes ``model_dir``, if the plan has it
    state: str = "pending"  # pending, running, done, skipped, failed, blocked
    message: str = ""
    started: float = 0.0
    seconds: float = 0.0

    @property
    def train_args(self):
        return self.command[2:]

    @property
    def finished(self):
        return osp.isfile(osp.join(self.output_dir, "results.json"))


def _option(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else ""


def parse_plan(lines):
    """Runs from plan lines (blank lines and ``#`` comments are ignored; a leading ``+ `` as printed
    by ``DRY_RUN=1`` is allowed)."""
    runs = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line.startswith("+ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        command = shlex.split(line)
        if len(command) < 2 or osp.basename(command[1]) != "train.py":
            raise UserError(f"plan line {number}: expected 'python train.py ...', got {line[:80]!r}")
        output_dir = _option(command, "--output-dir")
        if not output_dir:
            raise UserError(f"plan line {number}: the run has no --output-dir")
        runs.append(Run(len(runs), command, osp.abspath(output_dir), osp.abspath(_option(command, "--model-dir"))
                        if _option(command, "--model-dir") else ""))
    producers = {}
    for run in runs:
        if run.output_dir in producers:
            raise UserError(f"plan: two runs write {run.output_dir}")
        producers[run.output_dir] = run.index
        run.needs = producers.get(run.model_dir) if run.model_dir else None
    return runs


def read_plan(path):
    try:
        with open(path) as f:
            return parse_plan(f.readlines())
    except OSError as e:
        raise UserError(f"{path}: cannot read the plan ({e.strerror})") from None


# ---------------------------------------------------------------------------------------------
# In a worker process

_train = None


def _start_worker(repo):
    """Import the project once per worker (train.py registers the datasets and trainers)."""
    global _train
    signal.signal(signal.SIGTERM, raise_terminated)  # a run then saves its last epoch to resume from
    sys.path.insert(0, repo)
    import train
    _train = train


def execute(train_args):
    """Run one ``train.py`` in this process, its output to its log only; returns (ok, message), the
    message being the last line printed when the run fails before its log exists."""
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        try:
            _train.main(_train.build_parser().parse_args(train_args))
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


# ---------------------------------------------------------------------------------------------
# The coordinator

def last_log_line(output_dir):
    """The last non-empty line of the newest log in ``output_dir``, or ""."""
    if not osp.isdir(output_dir):
        return ""
    logs = sorted((f for f in os.listdir(output_dir) if f.startswith("log.txt")),
                  key=lambda f: osp.getmtime(osp.join(output_dir, f)))
    if not logs:
        return ""
    with open(osp.join(output_dir, logs[-1]), errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ""


def duration(seconds):
    return str(datetime.timedelta(seconds=round(seconds)))


@dataclass
class Progress:
    """Prints ``[k/N] state run`` lines with elapsed time and an estimate of the rest."""
    total: int
    stream: object = sys.stdout
    start: float = field(default_factory=time.time)
    count: int = 0

    def report(self, run, relative_to):
        self.count += 1
        elapsed = time.time() - self.start
        left = ""
        if run.state == "done" and self.count < self.total:
            left = f", about {duration(elapsed / self.count * (self.total - self.count))} left"
        took = f" in {run.seconds:.1f} s" if run.state in ("done", "failed") else ""
        name = osp.relpath(run.output_dir, relative_to)
        print(f"[{self.count}/{self.total}] {run.state:<7} {name}{took} (elapsed {duration(elapsed)}{left})",
              file=self.stream, flush=True)
        if run.state in ("failed", "blocked"):
            print(f"    {run.message}", file=self.stream, flush=True)


def worker_context():
    """fork where the platform has it (Linux): this process has not imported torch, and a worker's
    DataLoader processes then fork too; under spawn each of them would import torch again (seconds
    each, for DATALOADER.NUM_WORKERS of them per loader)."""
    fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin"
    return multiprocessing.get_context("fork" if fork else "spawn")


class LocalWorkers:
    """``jobs`` worker processes on this machine, each running one run after another."""

    def __init__(self, jobs, repo):
        self.jobs, self.repo = jobs, repo
        self.pool = None

    def __enter__(self):
        self._open()
        return self

    def _open(self):
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.jobs, mp_context=worker_context(), initializer=_start_worker, initargs=(self.repo,))

    def submit(self, run):
        try:
            return self.pool.submit(execute, run.train_args)
        except concurrent.futures.process.BrokenProcessPool:  # a worker died (killed, out of memory)
            self._open()
            return self.pool.submit(execute, run.train_args)

    def __exit__(self, *exc):
        if exc[0] is not None and issubclass(exc[0], (KeyboardInterrupt, Terminated)):
            # Stop the queue; pass a SIGTERM on to the workers, whose runs then save what they can.
            self.pool.shutdown(wait=False, cancel_futures=True)
            for process in list(getattr(self.pool, "_processes", {}).values()):
                if exc[0] is Terminated and process.is_alive():
                    process.terminate()
                process.join(timeout=60)
            return False
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
        return False


def run_plan(runs, jobs=1, workers=None, stream=sys.stdout, relative_to=None):
    """Run the plan's runs ``jobs`` at a time; returns the runs (with their states)."""
    relative_to = relative_to or common_folder(runs)
    for run in runs:
        if run.finished:
            run.state, run.message = "skipped", "results.json exists"
    todo = [r for r in runs if r.state == "pending"]
    progress = Progress(len(todo), stream)
    print(f"Sweep in {relative_to}: {len(todo)} run(s) to do, {len(runs) - len(todo)} already done; "
          f"{jobs} worker(s)", file=stream, flush=True)
    if not todo:
        return runs
    repo = osp.dirname(osp.abspath(todo[0].command[1]))
    with workers or LocalWorkers(jobs, repo) as pool:
        running = {}
        while todo or running:
            for run in list(todo):
                if len(running) >= jobs:
                    break
                producer = runs[run.needs] if run.needs is not None else None
                if producer is not None and producer.state in ("failed", "blocked"):
                    todo.remove(run)
                    run.state = "blocked"
                    run.message = f"not run: the run it reads failed ({osp.relpath(producer.output_dir, relative_to)})"
                    progress.report(run, relative_to)
                    continue
                if producer is not None and producer.state not in ("done", "skipped"):
                    continue  # in plan order, but after the run it reads
                todo.remove(run)
                run.state, run.started = "running", time.time()
                running[pool.submit(run)] = run
            if not running:
                continue
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                run.seconds = time.time() - run.started
                try:
                    ok, message = future.result()
                except Exception as e:  # the worker process died
                    ok, message = False, f"the worker running it died ({type(e).__name__}: {e})"
                if ok and not run.finished:
                    ok, message = False, "finished without writing results.json"
                run.state = "done" if ok else "failed"
                run.message = "" if ok else (last_log_line(run.output_dir) or message)
                progress.report(run, relative_to)
    return runs


def common_folder(runs):
    """The folder holding every run's output (run names are printed relative to it)."""
    return osp.commonpath([r.output_dir for r in runs]) if runs else os.getcwd()


def summary(runs, stream=sys.stdout, relative_to=None):
    """Print which runs failed; returns the exit status (1 if any failed or was blocked)."""
    relative_to = relative_to or common_folder(runs)
    bad = [r for r in runs if r.state in ("failed", "blocked")]
    done = sum(r.state == "done" for r in runs)
    print(f"Sweep finished: {done} run(s) done, {sum(r.state == 'skipped' for r in runs)} skipped, "
          f"{len(bad)} failed or not run", file=stream)
    for run in bad:
        print(f"  {run.state}: {osp.relpath(run.output_dir, relative_to)}: {run.message}", file=stream)
    return 1 if bad else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llu.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("plan", help="file of 'python train.py ...' lines ('-': standard input)")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS") or 1),
                        help="worker processes running at once (default: $JOBS or 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs (JOBS) must be at least 1, got {args.jobs}")
    runs = parse_plan(sys.stdin.readlines()) if args.plan == "-" else read_plan(args.plan)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return summary(run_plan(runs, jobs=args.jobs))
    except (KeyboardInterrupt, Terminated) as e:
        left = sum(r.state not in ("done", "skipped", "failed", "blocked") for r in runs)
        raise type(e)(f"{left} run(s) not finished; finished runs keep their results, and the same command "
                      f"continues the sweep") from None


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
