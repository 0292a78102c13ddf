"""Per-trial overhead of kubetune's warm runner against what pod-per-trial systems pay.

    nice python bench/overhead.py --trials 30

One run trains the same trials (one fixed, seeded list of parameters; trial numbers, and so
the engine's seeds, identical) several ways, each from a fresh Python process timed from
outside, and prints Markdown tables:

Table 1 (no pruning; ``DigitsMLP``, data tiled ``--repeat`` times, one holdout fold):
  * ``warm``: kubetune's runner (``trial_runner.runner.run_runner``, what ``kubetune runner``
    and a runner pod run) against a journal storage holding the trials enqueued; data on the
    device, no DataLoader workers (the default for tensor data);
  * ``process-per-trial``: a fresh Python process per trial that imports torch, loads the
    data, builds the engine and trains that one trial, no storage (the minimum a pod-per-trial
    system such as Katib or Kubeflow Trainer pays, before any pod or image start);
  * ``warm + workers``: the runner again with ``dataLoaderWorkers: W`` (persistent workers,
    created once);
  * ``new DataLoader``: one process, one engine, ``Engine.reset_loaders()`` before every trial:
    a new DataLoader with W fresh worker processes per trial.

Table 2 (the runner, TPE with a fixed seed, 3 folds): Hyperband pruning over folds
(``reportEvery: Fold``) against no pruning with the same trial budget: epochs trained, best
value, wall time. ``bench/pruning.py`` measures the pruning defaults over several seeds.

Definitions. *Step time* is the time inside the engine's training step (forward, backward,
optimizer step over one effective batch), measured by wrapping
``trial_runner.step.train_step`` in the child processes; *eval time* is the engine's
validation time. Both are the work every way must do. A trial's *overhead* is its wall time
minus its step and eval time: process start, imports, data loading, DataLoader workers,
waiting for batches, model build, storage, sampling. A warm trial's wall time is the time
between its completion and the previous one's (the first: from its start) as recorded in the
storage, so it includes claiming and storage writes.
*Share* is total overhead (including one-off start-up) over total wall time.

The machine is shared and noisy: compare the ways within one run, read the ratios, and do
not treat any number as a timing assertion.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve()
sys.path.append(str(BENCH.parent.parent))  # after the standard library (operator/)

from kubetune_api.spec import dump_yaml  # noqa: E402
from tests.harness import studies  # noqa: E402

STUDY_NAME = "overhead"

# --------------------------------------------------------------------------- the study


def study_document(
    *,
    name: str,
    repeat: int,
    epochs: int,
    folds: int,
    workers: int,
    trials: int,
    pruner: dict[str, Any],
    sampler: dict[str, Any],
) -> dict[str, Any]:
    """The digits MLP on its data tiled ``repeat`` times, on a CPU, with no stages."""
    return studies.study_document(
        name,
        task={"entrypoint": studies.DIGITS, "config": {"repeat": repeat}},
        searchSpace=studies.mlp_search_space(batch_sizes=[32, 64, 128]),
        stages=None,
        budget={"maxTrials": trials},
        sampler=sampler,
        pruner=pruner,
        training={"epochs": epochs, "folds": folds, "dataLoaderWorkers": workers},
        resources={"accelerator": "CPU"},
    )


def fixed_params(doc: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` configurations drawn at random (seeded) from the study's search space."""
    import optuna

    from kubetune_api.spec import study_from_mapping
    from kubetune_study.search import suggest_all

    spec = study_from_mapping(doc).spec
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(count):
        trial = study.ask()
        out.append(suggest_all(trial, spec))
        study.tell(trial, 0.0)
    return out


# --------------------------------------------------------------------------- child processes


def _instrument_engine() -> None:
    """Time the training steps of each trial; the total lands in the trial's telemetry."""
    from trial_runner import step as training_step
    from trial_runner.engine import Engine

    train_step = training_step.train_step
    run_trial = Engine.run_trial
    seconds = [0.0]

    def timed_step(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            train_step(*args, **kwargs)
        finally:
            seconds[0] += time.perf_counter() - started

    def timed_run_trial(self: Any, *args: Any, **kwargs: Any) -> Any:
        seconds[0] = 0.0
        result = run_trial(self, *args, **kwargs)
        result.telemetry["bench_step_seconds"] = round(seconds[0], 4)
        return result

    training_step.train_step = timed_step
    Engine.run_trial = timed_run_trial  # type: ignore[method-assign]


def child_warm(study_path: str, storage_url: str, name: str) -> None:
    """What a runner pod does (``kubetune runner``), with the step timer."""
    _instrument_engine()
    from kubetune_api.spec import load_study
    from trial_runner.runner import run_runner

    summary = run_runner(load_study(study_path), storage_url, name, install_signal_handlers=False)
    print(json.dumps({"trials_run": summary.trials_run, "stop": summary.stop_reason}))


def child_one_trial(study_path: str, params_json: str, number: int) -> None:
    """A fresh process for one trial: import torch, load data, build the engine, train."""
    _instrument_engine()
    from kubetune_api.spec import load_study
    from trial_runner.engine import Engine
    from trial_runner.process import configure_threads
    from trial_runner.task import load_task_class

    spec = load_study(study_path).spec
    configure_threads()
    task = load_task_class(spec.task.entrypoint)(spec.task.config)
    engine = Engine(task, spec, seed=spec.sampler.seed or 0)
    params = json.loads(params_json)
    # A pod-per-trial system does not estimate memory: train at the whole effective batch.
    result = engine.run_trial(
        params, trial_number=number, micro_batch=engine.effective_batch(params)
    )
    engine.close()
    print(json.dumps({"value": result.value, "telemetry": result.telemetry}))


def child_new_loader(study_path: str, params_path: str) -> None:
    """One process and engine; a new DataLoader with fresh workers before every trial."""
    _instrument_engine()
    from kubetune_api.spec import load_study
    from trial_runner.engine import Engine
    from trial_runner.process import configure_threads
    from trial_runner.task import load_task_class

    spec = load_study(study_path).spec
    configure_threads()
    task = load_task_class(spec.task.entrypoint)(spec.task.config)
    engine = Engine(task, spec, seed=spec.sampler.seed or 0)
    rows = []
    for number, params in enumerate(json.loads(Path(params_path).read_text())):
        started = time.perf_counter()
        engine.reset_loaders()
        result = engine.run_trial(params, trial_number=number)
        wall = time.perf_counter() - started
        rows.append({"wall": wall, "value": result.value, "telemetry": result.telemetry})
    engine.close()
    print(json.dumps(rows))


# --------------------------------------------------------------------------- the ways


def _python(*args: str) -> list[str]:
    return [sys.executable, str(BENCH), *args]


def _run(command: list[str], log: Path) -> str:
    """Run a child; its stderr goes to ``log`` (shown when it fails); returns its stdout."""
    with open(log, "a") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return done.stdout


def _last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


def _row(
    way: str, total: float, trials: list[dict[str, float]], values: list[float]
) -> dict[str, Any]:
    overheads = [t["wall"] - t["step"] - t["eval"] for t in trials]
    step = sum(t["step"] for t in trials)
    evaluation = sum(t["eval"] for t in trials)
    return {
        "way": way,
        "trials": len(trials),
        "total_wall": total,
        "step": step,
        "eval": evaluation,
        "trial_wall_mean": statistics.fmean(t["wall"] for t in trials),
        "overhead_mean": statistics.fmean(overheads),
        "overhead_p95": _p95(overheads),
        "overhead_total": total - step - evaluation,
        "share": (total - step - evaluation) / total,
        "best": max(values) if values else float("nan"),
        "values": values,
    }


def _study_file(folder: Path, doc: dict[str, Any]) -> Path:
    """``folder`` (made if missing) with the study written into it; returns the study file."""
    folder.mkdir(parents=True, exist_ok=True)
    study_path = folder / "study.yaml"
    study_path.write_text(dump_yaml(doc))
    return study_path


def _timing(wall: float, telemetry: dict[str, Any]) -> dict[str, float]:
    """One trial's wall time, and its step and eval time from its telemetry."""
    return {
        "wall": wall,
        "step": float(telemetry["bench_step_seconds"]),
        "eval": float(telemetry["eval_seconds"]),
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def run_warm(
    way: str, doc: dict[str, Any], params: list[dict[str, Any]] | None, workdir: Path
) -> dict[str, Any]:
    """The runner against a fresh journal storage; ``params`` are enqueued first if given."""
    import optuna

    from kubetune_api.contract import TELEMETRY_ATTR
    from kubetune_api.spec import study_from_mapping
    from kubetune_study.storage import ensure_study, open_storage

    study_path = _study_file(workdir / way.replace(" ", "-").replace("+", ""), doc)
    folder = study_path.parent
    url = f"journal:{folder / 'study.journal'}"
    spec = study_from_mapping(doc).spec
    study = ensure_study(open_storage(url, heartbeat=False), STUDY_NAME, spec)
    for p in params or []:
        study.enqueue_trial(p)
    started_at = datetime.now()
    started = time.perf_counter()
    _run(_python("--child-warm", str(study_path), url, STUDY_NAME), folder / "runner.log")
    total = time.perf_counter() - started
    finished = [
        t
        for t in optuna.load_study(study_name=STUDY_NAME, storage=open_storage(url)).get_trials()
        if t.state.is_finished()
    ]
    finished.sort(key=lambda t: t.datetime_complete or started_at)
    trials = []
    previous: datetime | None = None
    for t in finished:
        assert t.datetime_start is not None and t.datetime_complete is not None
        begin = previous or t.datetime_start
        attrs = t.user_attrs[TELEMETRY_ATTR]
        wall = (t.datetime_complete - begin).total_seconds()
        trials.append({**_timing(wall, attrs), "epochs": float(attrs["epochs_run"])})
        previous = t.datetime_complete
    values = [t.value for t in finished if t.value is not None]
    row = _row(way, total, trials, values)
    first_start = finished[0].datetime_start if finished else None
    row["startup"] = (first_start - started_at).total_seconds() if first_start else 0.0
    row["epochs"] = sum(t["epochs"] for t in trials)
    row["pruned"] = sum(1 for t in finished if t.state.name == "PRUNED")
    return row


def run_process_per_trial(
    doc: dict[str, Any], params: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    study_path = _study_file(workdir / "process-per-trial", doc)
    folder = study_path.parent
    trials, values = [], []
    started = time.perf_counter()
    for number, p in enumerate(params):
        trial_started = time.perf_counter()
        out = _run(
            _python("--child-trial", str(study_path), json.dumps(p), str(number)),
            folder / "trials.log",
        )
        wall = time.perf_counter() - trial_started
        result = _last_json(out)
        trials.append(_timing(wall, result["telemetry"]))
        values.append(float(result["value"]))
    return _row("process-per-trial", time.perf_counter() - started, trials, values)


def run_new_loader(
    doc: dict[str, Any], params: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    study_path = _study_file(workdir / "new-loader", doc)
    folder = study_path.parent
    params_path = folder / "params.json"
    params_path.write_text(json.dumps(params))
    started = time.perf_counter()
    out = _run(
        _python("--child-new-loader", str(study_path), str(params_path)), folder / "engine.log"
    )
    total = time.perf_counter() - started
    rows = _last_json(out)
    trials = [_timing(r["wall"], r["telemetry"]) for r in rows]
    return _row("new DataLoader", total, trials, [float(r["value"]) for r in rows])


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    import torch

    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{mem_kib / 2**20:.1f} GiB RAM; Python {platform.python_version()}, "
        f"torch {torch.__version__}; shared machine, run under nice"
    )


def overhead_table(rows: list[dict[str, Any]], warm: dict[str, Any]) -> str:
    lines = [
        "| way | trials | total wall s | step s | eval s | overhead/trial mean s | "
        "p95 s | overhead/trial ÷ trial wall | overhead share of total | "
        "overhead/trial vs warm |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        ratio = r["overhead_mean"] / warm["overhead_mean"] if warm["overhead_mean"] > 0 else 0
        lines.append(
            f"| {r['way']} | {r['trials']} | {r['total_wall']:.1f} | {r['step']:.1f} | "
            f"{r['eval']:.1f} | {r['overhead_mean']:.3f} | {r['overhead_p95']:.3f} | "
            f"{r['overhead_mean'] / r['trial_wall_mean']:.1%} | {r['share']:.1%} | "
            f"{ratio:.1f}× |"
        )
    return "\n".join(lines)


def pruning_table(off: dict[str, Any], on: dict[str, Any]) -> str:
    lines = [
        "| pruning | trials | pruned | epochs trained | best accuracy | total wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (("off (Nop)", off), ("Hyperband over folds", on)):
        lines.append(
            f"| {label} | {r['trials']} | {r['pruned']} | {r['epochs']:.0f} | "
            f"{r['best']:.4f} | {r['total_wall']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=8, help="tile the digits data")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (rows 3-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of every training process (KUBETUNE_CPU_THREADS); 1 avoids "
        "OpenMP threads spinning against each other on a small, shared machine",
    )
    parser.add_argument("--pruning-trials", type=int, default=30)
    parser.add_argument("--pruning-repeat", type=int, default=2)
    parser.add_argument("--pruning-epochs", type=int, default=4)
    parser.add_argument("--skip-pruning", action="store_true")
    parser.add_argument("--skip-workers", action="store_true", help="rows 1-2 only")
    parser.add_argument("--json", help="write all rows to this file")
    parser.add_argument("--workdir", help="keep studies and logs here (default: a temp dir)")
    parser.add_argument("--child-warm", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-trial", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-new-loader", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_warm:
        child_warm(*args.child_warm)
        return
    if args.child_trial:
        study, params, number = args.child_trial
        child_one_trial(study, params, int(number))
        return
    if args.child_new_loader:
        child_new_loader(*args.child_new_loader)
        return

    os.environ["KUBETUNE_CPU_THREADS"] = str(args.threads)  # inherited by every child
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kubetune-bench-"))
    common = dict(
        repeat=args.repeat,
        epochs=args.epochs,
        folds=1,
        trials=args.trials,
        pruner={"type": "Nop"},
        sampler={"type": "Random", "seed": args.seed},
    )
    plain = study_document(name=STUDY_NAME, workers=0, **common)
    loaders = study_document(name=STUDY_NAME, workers=args.workers, **common)
    params = fixed_params(plain, args.trials, args.seed)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    rows = []
    log(f"warm runner, {args.trials} trials (workdir {workdir})")
    warm = run_warm("warm", plain, params, workdir)
    rows.append(warm)
    log("process per trial")
    rows.append(run_process_per_trial(plain, params, workdir))
    if not args.skip_workers:
        log(f"warm runner with {args.workers} persistent DataLoader workers")
        rows.append(run_warm(f"warm + {args.workers} workers", loaders, params, workdir))
        log(f"new DataLoader with {args.workers} workers per trial")
        rows.append(run_new_loader(loaders, params, workdir))
    # Same trials, same seeds: the values must match the warm runner using the same data path
    # (the DataLoader path shuffles with another generator than the on-device path).
    pairs = [(rows[1], warm)] + ([(rows[3], rows[2])] if len(rows) == 4 else [])
    for r, reference in pairs:
        r["same_values_as"] = reference["way"]
        r["same_values"] = r["values"] == reference["values"]

    pruning: list[dict[str, Any]] = []
    if not args.skip_pruning:
        base = dict(
            repeat=args.pruning_repeat,
            epochs=args.pruning_epochs,
            folds=3,
            workers=0,
            trials=args.pruning_trials,
            sampler={"type": "TPE", "seed": args.seed},
        )
        log("pruning off")
        off = run_warm(
            "pruning off",
            study_document(name=STUDY_NAME, pruner={"type": "Nop"}, **base),
            None,
            workdir,
        )
        log("pruning on (Hyperband over folds)")
        hyperband = {"type": "Hyperband", "minResource": 1, "reductionFactor": 3}
        over_folds = study_document(name=STUDY_NAME, pruner=hyperband, **base)
        # Over folds, as this table always measured; bench/pruning.py measures the defaults.
        over_folds["spec"]["training"]["reportEvery"] = "Fold"
        on = run_warm("pruning on", over_folds, None, workdir)
        pruning = [off, on]

    print(f"Machine: {machine()}; intra-op threads per process: {args.threads}")
    print(f"Command: {' '.join(['python', 'bench/overhead.py', *sys.argv[1:]])}")
    print(
        f"\nTable 1: {args.trials} trials of DigitsMLP (data x{args.repeat}, {args.epochs} "
        f"epochs, holdout, Random sampler seed {args.seed}, no pruning), the same parameters "
        "and trial numbers every way. Warm start-up (process start to first trial): "
        f"{warm['startup']:.1f} s.\n"
    )
    print(overhead_table(rows, warm))
    for r in rows[1:]:
        print(
            f"- {r['way']}: overhead/trial {r['overhead_mean'] / warm['overhead_mean']:.1f}× "
            f"the warm runner's, total wall {r['total_wall'] / warm['total_wall']:.2f}×"
            + (
                f"; trial values identical to {r['same_values_as']}'s: {r['same_values']}"
                if "same_values" in r
                else ""
            )
        )
    if len(rows) == 4:
        print(
            f"- new DataLoader vs warm + workers: overhead/trial "
            f"{rows[3]['overhead_mean'] / rows[2]['overhead_mean']:.1f}×"
        )
    if pruning:
        print(
            f"\nTable 2: {args.pruning_trials} trials, TPE seed {args.seed}, 3 folds x "
            f"{args.pruning_epochs} epochs, data x{args.pruning_repeat}.\n"
        )
        print(pruning_table(*pruning))
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": rows, "pruning": pruning}, indent=2))


if __name__ == "__main__":
    main()
