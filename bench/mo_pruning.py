"""MO-ASHA against no pruning on a seeded two-objective study: epochs saved, and the hypervolume
of the Pareto front each one finds.

    nice python bench/mo_pruning.py             # 40 trials × 27 epochs, TPE and Random, seed 0
    nice python bench/mo_pruning.py --seeds 1 2 --min-resource 3 9

The study: the built-in digits task (:class:`trial_runner.tasks.digits.DigitsMLP`, CPU),
maximise ``accuracy`` and minimise ``parameters``, over learning rate, width, depth and dropout;
one fold, reports per epoch. Each arm runs the same trials in this process through kubetune's
own parts: the spec's sampler (built per trial, as a runner does) and pruner
(:func:`kubetune_study.search.build_pruner`), the engine, and
:class:`~kubetune_study.mo_pruning.IntermediateVectors` for the per-epoch vectors; only the
claim lock and the PostgreSQL storage are left out (an in-memory Optuna study).

* *epochs saved* = 1 - (epochs the pruned arm trained) / (epochs the unpruned arm trained);
* *hypervolume*: of the front of the complete trials, in (error = 1 - accuracy, parameters /
  the largest model of the space), both minimised, against the reference point (1, 1); the
  ratio is the pruned arm's over the unpruned arm's.

With ``Random`` both arms draw the same configurations (the seed is offset by the trial
number), so the ratio is what pruning lost; with ``TPE`` the sampler also sees the pruned
trials, as it would in a study. Read the ratios within one run; the machine is shared.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after the stdlib (operator/)

import optuna
import torch
from optuna.trial import TrialState

from kubetune_api.spec import StudySpec, study_from_mapping
from kubetune_study.mo_pruning import IntermediateVectors, MOASHAPruner
from kubetune_study.search import build_pruner, build_sampler, suggest_all
from trial_runner.engine import Engine
from trial_runner.tasks.digits import DigitsMLP

#: The space's widest, deepest model: 64 inputs, 3 layers of 128, 10 classes.
LARGEST = 64 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 10 + 10


def study_spec(sampler: str, seed: int, pruner: dict[str, Any], epochs: int) -> StudySpec:
    document: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "HPOStudy",
        "metadata": {"name": "mo-pruning"},
        "spec": {
            "objectives": [
                {"metric": "accuracy", "direction": "Maximize"},
                {"metric": "parameters", "direction": "Minimize"},
            ],
            "task": {"entrypoint": "trial_runner.tasks.digits:DigitsMLP"},
            "searchSpace": [
                {"name": "learning_rate", "type": "Float", "low": "1e-4", "high": "3e-1"},
                {"name": "hidden_size", "type": "Int", "low": 8, "high": 128, "step": 8},
                {"name": "n_layers", "type": "Int", "low": 1, "high": 3},
                {"name": "dropout", "type": "Float", "low": "0", "high": "0.5"},
            ],
            "budget": {"maxTrials": 1000},
            "sampler": {"type": sampler, "seed": seed},
            "pruner": pruner,
            "training": {"epochs": epochs, "folds": 1, "reportEvery": "Epoch"},
        },
    }
    document["spec"]["searchSpace"][0]["scale"] = "Log"
    return study_from_mapping(document).spec


@dataclass
class Arm:
    epochs: int
    pruned: int
    front: list[tuple[float, float]]
    seconds: float


def run_arm(spec: StudySpec, trials: int) -> Arm:
    """``trials`` trials of ``spec`` in an in-memory study, one after the other."""
    study = optuna.create_study(directions=["maximize", "minimize"], pruner=build_pruner(spec))
    engine = Engine(DigitsMLP({}), spec, torch.device("cpu"), seed=spec.sampler.seed or 0)
    epochs = pruned = 0
    started = time.perf_counter()
    for number in range(trials):
        study.sampler = build_sampler(spec.sampler, seed_offset=number)
        trial = study.ask()
        params = suggest_all(trial, spec)
        reporter = IntermediateVectors(trial, spec.all_objectives)
        result = engine.run_trial(params, trial_number=number, reporter=reporter)
        epochs += int(result.telemetry["epochs_run"])
        if result.pruned:
            pruned += 1
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, [result.metrics["accuracy"], result.metrics["parameters"]])
    front = [(t.values[0], t.values[1]) for t in study.best_trials]
    return Arm(epochs, pruned, front, time.perf_counter() - started)


def hypervolume(front: list[tuple[float, float]], worst_error: float = 1.0) -> float:
    """The area the front dominates in (error, parameters / LARGEST), below the reference
    point (``worst_error``, 1): a point less accurate than ``1 - worst_error`` adds nothing."""
    points = sorted((1.0 - accuracy, parameters / LARGEST) for accuracy, parameters in front)
    area, ceiling = 0.0, 1.0
    for error, size in points:  # by error, rising: each point adds the strip under the last
        if size < ceiling and error < worst_error:
            area += (worst_error - error) * (ceiling - size)
            ceiling = size
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--samplers", nargs="+", default=["TPE", "Random"])
    parser.add_argument(
        "--min-resource",
        type=int,
        nargs="+",
        default=[0],
        help="MOASHA's minResource, one arm each; 0: the spec's default (steps ÷ factor)",
    )
    parser.add_argument("--reduction-factor", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    print(f"{args.trials} trials × {args.epochs} epochs, digits, accuracy ↑ and parameters ↓")
    print("HV: reference (error 1, size 1); HV≥90%: reference (error 0.1, size 1)")
    print(
        f"{'sampler':7} {'seed':>4} {'minR/η':>6} {'epochs Nop':>10} {'MOASHA':>7} {'saved':>6} "
        f"{'pruned':>6} {'HV Nop':>7} {'MOASHA':>7} {'ratio':>6} {'HV≥90% Nop':>10} "
        f"{'MOASHA':>7} {'ratio':>6} {'front':>7} {'seconds':>9}"
    )
    fronts: list[str] = []
    for sampler in args.samplers:
        for seed in args.seeds:
            full = run_arm(study_spec(sampler, seed, {"type": "Nop"}, args.epochs), args.trials)
            fronts.append(describe(f"{sampler} seed {seed} Nop", full))
            for min_resource in args.min_resource:
                moasha: dict[str, Any] = {"type": "MOASHA"}
                moasha["reductionFactor"] = args.reduction_factor
                if min_resource:
                    moasha["minResource"] = min_resource
                spec = study_spec(sampler, seed, moasha, args.epochs)
                pruner = build_pruner(spec)
                assert isinstance(pruner, MOASHAPruner)
                cut = run_arm(spec, args.trials)
                hv = [hypervolume(full.front), hypervolume(cut.front)]
                tight = [hypervolume(full.front, 0.1), hypervolume(cut.front, 0.1)]
                rungs = f"{pruner.min_resource}/{args.reduction_factor}"
                print(
                    f"{sampler:7} {seed:>4} {rungs:>6} {full.epochs:>10} {cut.epochs:>7} "
                    f"{1 - cut.epochs / full.epochs:>6.1%} {cut.pruned:>6} {hv[0]:>7.4f} "
                    f"{hv[1]:>7.4f} {hv[1] / hv[0]:>6.3f} {tight[0]:>10.4f} {tight[1]:>7.4f} "
                    f"{tight[1] / tight[0]:>6.3f} {len(full.front):>3}/{len(cut.front):<3} "
                    f"{full.seconds:>4.0f}/{cut.seconds:<4.0f}",
                    flush=True,
                )
                fronts.append(describe(f"{sampler} seed {seed} MOASHA {rungs}", cut))
    print("fronts (accuracy/parameters):", *fronts, sep="\n")


def describe(name: str, arm: Arm) -> str:
    return f"  {name}: " + ", ".join(f"{a:.4f}/{p:.0f}" for a, p in sorted(arm.front))


if __name__ == "__main__":
    main()
