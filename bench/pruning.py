"""Pruning defaults against the old Hyperband-over-folds setting and no pruning, over seeds.

    nice python bench/pruning.py

For each sampler seed (``--seeds``, default 0 1 2 3) the same study (``DigitsMLP``, data tiled
``--repeat`` times, ``--folds`` folds × ``--epochs`` epochs, TPE with that seed, ``--trials``
trials, one warm runner on a journal storage, as ``bench/overhead.py`` runs it) is run three
ways, each in a fresh process:

  * ``Nop``: no pruning;
  * ``old``: ``pruner: {type: Hyperband, minResource: 1, reductionFactor: 3}`` with
    ``reportEvery: Fold`` (the old default cadence): the run of docs/benchmarks.md before;
  * ``new``: ``pruner: {type: Hyperband}`` and nothing else: the defaults of
    ``kubetune_study.pruning`` (``reportEvery: Auto``, resources from the schedule).

``--way NAME:JSON`` adds a way (a pruner, optionally with ``"reportEvery"``) to compare others.

Figures per way (mean over seeds, and each seed):
  * *epochs saved*: 1 − epochs trained ÷ (trials × folds × epochs), the epochs ``Nop`` trains;
  * *best*: the accuracy (mean over the folds) of the best complete trial, Optuna's
    ``best_value`` (a pruned trial's value is one intermediate value, not a trial's score);
    *same best* means within the seed-to-seed spread of ``Nop`` (the standard deviation of
    its best over the seeds), printed with it;
  * *HPO ÷ normal training*: by epochs, epochs trained ÷ (folds × epochs), the epochs of one
    training of a configuration over the same folds; by wall time, the runner process's wall
    time ÷ the wall time of a fresh process that loads the data and trains the best
    configuration ``Nop`` found (same seed) once over the same folds and epochs (both counted
    from outside, start-up and data loading included).

Epoch counts are exact for a seed; wall times are from a shared machine under ``nice``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after the standard library

from bench import overhead

WAYS: dict[str, dict[str, Any]] = {
    "Nop": {"type": "Nop"},
    "old": {"type": "Hyperband", "minResource": 1, "reductionFactor": 3, "reportEvery": "Fold"},
    "new": {"type": "Hyperband"},
}


def document(args: argparse.Namespace, seed: int, way: dict[str, Any]) -> dict[str, Any]:
    pruner = {k: v for k, v in way.items() if k != "reportEvery"}
    doc = overhead.study_document(
        name=overhead.STUDY_NAME,
        repeat=args.repeat,
        epochs=args.epochs,
        folds=args.folds,
        workers=0,
        trials=args.trials,
        pruner=pruner,
        sampler={"type": "TPE", "seed": seed},
    )
    if "reportEvery" in way:
        doc["spec"]["training"]["reportEvery"] = way["reportEvery"]
    return doc


def best_trial(workdir: Path, way: str) -> tuple[dict[str, Any], float]:
    """The parameters and value of the best complete trial of a way's study."""
    import optuna

    from kubetune_study.storage import open_storage

    folder = workdir / way.replace(" ", "-").replace("+", "")
    url = f"journal:{folder / 'study.journal'}"
    study = optuna.load_study(study_name=overhead.STUDY_NAME, storage=open_storage(url))
    return dict(study.best_trial.params), float(study.best_value)


def normal_training(doc: dict[str, Any], params: dict[str, Any], workdir: Path) -> float:
    """Wall seconds of a fresh process that trains ``params`` once over the study's folds."""
    study_path = overhead._study_file(workdir / "normal", doc)
    started = time.perf_counter()
    overhead._run(
        overhead._python("--child-trial", str(study_path), json.dumps(params), "0"),
        study_path.parent / "trial.log",
    )
    return time.perf_counter() - started


def run_seed(
    args: argparse.Namespace, seed: int, ways: dict[str, dict[str, Any]], log: Any
) -> dict[str, dict[str, Any]]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kubetune-pruning-")) / f"s{seed}"
    out = {}
    for name, way in ways.items():
        log(f"seed {seed}: {name} {json.dumps(way)}")
        row = overhead.run_warm(name, document(args, seed, way), None, workdir)
        row["best_params"], row["best"] = best_trial(workdir, name)
        out[name] = row
    first = "Nop" if "Nop" in out else next(iter(out))
    log(f"seed {seed}: normal training of {first}'s best configuration")
    normal = normal_training(document(args, seed, WAYS["Nop"]), out[first]["best_params"], workdir)
    for row in out.values():
        row["normal_wall"] = normal
    return out


def summary(
    args: argparse.Namespace, runs: dict[int, dict[str, dict[str, Any]]], ways: list[str]
) -> str:
    per_trial = args.folds * args.epochs
    everything = args.trials * per_trial
    nop_best = [runs[s]["Nop"]["best"] for s in runs] if "Nop" in ways else []
    spread = statistics.stdev(nop_best) if len(nop_best) > 1 else 0.0
    lines = [
        "| way | pruned | epochs trained | epochs saved | best accuracy | Δ best vs Nop | "
        "HPO ÷ normal (epochs) | HPO ÷ normal (wall) | wall s |",
        "|" + "---|" * 9,
    ]

    def each(values: list[Any], form: str) -> str:
        return " / ".join(form.format(v) for v in values)

    for way in ways:
        rows = [runs[s][way] for s in runs]
        epochs = [r["epochs"] for r in rows]
        saved = [1 - e / everything for e in epochs]
        best = [r["best"] for r in rows]
        delta = (
            f"{statistics.fmean(b - n for b, n in zip(best, nop_best, strict=True)):+.4f}"
            if nop_best
            else "–"
        )
        by_wall = [r["total_wall"] / r["normal_wall"] for r in rows]
        lines.append(
            f"| {way} | {each([r['pruned'] for r in rows], '{}')} | "
            f"{statistics.fmean(epochs):.0f} ({each(epochs, '{:.0f}')}) | "
            f"{statistics.fmean(saved):.0%} ({each(saved, '{:.0%}')}) | "
            f"{statistics.fmean(best):.4f} ({each(best, '{:.4f}')}) | {delta} | "
            f"{statistics.fmean(epochs) / per_trial:.1f}× | "
            f"{statistics.fmean(by_wall):.1f}× ({each(by_wall, '{:.1f}')}) | "
            f"{statistics.fmean(r['total_wall'] for r in rows):.1f} |"
        )
    lines.append(
        f"\nSeeds {', '.join(map(str, runs))} (per-seed figures in brackets, in that order). "
        f"Nop's best accuracy over the seeds: standard deviation {spread:.4f} (the noise a "
        "'same best value' is judged against)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="tile the digits data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--only", nargs="+", help="run only these ways")
    parser.add_argument("--way", action="append", default=[], help="NAME:JSON, another way")
    parser.add_argument("--json", help="write all rows to this file")
    parser.add_argument("--workdir", help="keep studies and logs here (default: a temp dir)")
    args = parser.parse_args()
    os.environ["KUBETUNE_CPU_THREADS"] = str(args.threads)  # inherited by every child
    ways = dict(WAYS)
    for extra in args.way:
        name, _, spec = extra.partition(":")
        ways[name] = json.loads(spec)
    if args.only:
        ways = {k: v for k, v in ways.items() if k in args.only}

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    runs = {seed: run_seed(args, seed, ways, log) for seed in args.seeds}
    print(f"Machine: {overhead.machine()}; intra-op threads per process: {args.threads}")
    print(f"Command: {' '.join(['python', 'bench/pruning.py', *sys.argv[1:]])}")
    print(
        f"\n{args.trials} trials of DigitsMLP (data x{args.repeat}), {args.folds} folds x "
        f"{args.epochs} epochs, TPE, one warm runner; normal training = one fresh process "
        f"training Nop's best configuration over the same {args.folds} folds x "
        f"{args.epochs} epochs ({args.folds * args.epochs} epochs).\n"
    )
    for name, way in ways.items():
        print(f"- {name}: {json.dumps(way)}")
    print()
    print(summary(args, runs, list(ways)))
    if args.json:
        Path(args.json).write_text(json.dumps({str(s): r for s, r in runs.items()}, indent=2))


if __name__ == "__main__":
    main()
