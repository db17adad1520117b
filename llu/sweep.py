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

``--launcher submitit`` (``LAUNCHER=submitit``) runs the same plan as jobs through submitit: on
Slurm when ``srun`` is there, else with submitit's local executor. One job runs one chain: a
training run and the evaluations that read it (a (dataset, trainer, seed) of base-to-new, a source
and its targets of the transfer sweeps), in one process. The output tree, skip rules and tables are
those of a local sweep. Slurm's settings come from the environment (``SLURM_SETTINGS``).
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
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

from llu.utils import Terminated, UserError, exit_on_user_error, raise_terminated, require


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
    from llu import train
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


def run_chain(repo, chain):
    """A submitit job: the runs of one chain in this process, in order. ``chain`` holds (``train.py``
    arguments, the position in the chain of the run it reads or None); returns [(ok, message)], a
    run whose producer failed not run."""
    _start_worker(repo)
    outcomes = []
    for train_args, producer in chain:
        if producer is not None and not outcomes[producer][0]:
            outcomes.append((False, "not run: the run it reads failed"))
        else:
            outcomes.append(execute(train_args))
    return outcomes


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
                try:
                    ok, message = future.result()
                except Exception as e:  # the worker process died
                    ok, message = False, f"the worker running it died ({type(e).__name__}: {e})"
                finish_run(run, ok, message)
                progress.report(run, relative_to)
    return runs


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


def chains(runs):
    """The pending runs grouped into chains: a run whose producer is not pending starts a chain, and
    every run that reads a pending run joins its producer's chain (in plan order)."""
    chain_of, grouped = {}, []
    for run in runs:
        if run.state != "pending":
            continue
        producer = runs[run.needs] if run.needs is not None else None
        if producer is not None and producer.index in chain_of:
            chain_of[run.index] = chain_of[producer.index]
            grouped[chain_of[run.index]].append(run)
        else:
            chain_of[run.index] = len(grouped)
            grouped.append([run])
    return grouped


def chain_arguments(chain):
    position = {run.index: i for i, run in enumerate(chain)}
    return [(run.train_args, position.get(run.needs)) for run in chain]


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


def run_plan_submitit(runs, jobs=0, folder=None, stream=sys.stdout, relative_to=None, executor=None):
    """Run the plan's pending runs as submitit jobs, one per chain, at most ``jobs`` at a time (0: all
    at once). Returns the runs (with their states), as ``run_plan``."""
    relative_to = relative_to or common_folder(runs)
    for run in runs:
        if run.finished:
            run.state, run.message = "skipped", "results.json exists"
    todo = chains(runs)
    count = sum(len(chain) for chain in todo)
    folder = folder or osp.join(relative_to, ".submitit")
    if executor is None and todo:
        executor, slurm = make_executor(folder)
    else:
        slurm = False
    progress = Progress(count, stream)
    print(f"Sweep in {relative_to}: {count} run(s) to do in {len(todo)} job(s) ({'Slurm' if slurm else 'local'} "
          f"submitit, logs in {folder}), {len(runs) - count} already done; "
          f"{jobs or 'all'} job(s) at a time", file=stream, flush=True)
    if not todo:
        return runs
    repo = osp.dirname(osp.abspath(todo[0][0].command[1]))
    in_flight = {}
    try:
        while todo or in_flight:
            while todo and (not jobs or len(in_flight) < jobs):
                chain = todo.pop(0)
                for run in chain:
                    run.state, run.started = "running", time.time()
                in_flight[executor.submit(run_chain, repo, chain_arguments(chain))] = chain
            done = [job for job in in_flight if job.done()]
            if not done:
                time.sleep(15.0 if slurm else 0.2)
                continue
            for job in done:
                chain = in_flight.pop(job)
                try:
                    outcomes = job.result()
                except Exception:  # the job died (killed, out of time or memory): its runs failed
                    outcomes = [(False, failure_line(job))] * len(chain)
                for run, (ok, message) in zip(chain, outcomes):
                    finish_run(run, ok, message)
                    progress.report(run, relative_to)
    finally:
        for job in in_flight:  # interrupted: a rerun of the same command continues the sweep
            job.cancel(check=False)
    return runs


def finish_run(run, ok, message):
    """Record how a run ended: done only if it says so and wrote its results.json."""
    run.seconds = time.time() - run.started
    if ok and not run.finished:
        ok, message = False, "finished without writing results.json"
    if not ok and message.startswith("not run:"):
        run.state, run.message = "blocked", message
        return
    run.state = "done" if ok else "failed"
    run.message = "" if ok else (last_log_line(run.output_dir) or message)


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
    if jobs is not None and jobs < (0 if args.launcher == "submitit" else 1):
        raise UserError(f"--jobs (JOBS) must be at least 1, got {jobs}")
    runs = parse_plan(sys.stdin.readlines()) if args.plan == "-" else read_plan(args.plan)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if args.launcher == "submitit":
            if jobs is None:
                jobs = 0 if on_slurm() else (os.cpu_count() or 1)
            return summary(run_plan_submitit(runs, jobs=jobs, folder=args.submitit_folder or None))
        return summary(run_plan(runs, jobs=jobs or 1))
    except (KeyboardInterrupt, Terminated) as e:
        left = sum(r.state not in ("done", "skipped", "failed", "blocked") for r in runs)
        raise type(e)(f"{left} run(s) not finished; finished runs keep their results, and the same command "
                      f"continues the sweep") from None


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
