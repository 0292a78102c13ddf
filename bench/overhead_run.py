"""``kubetune run`` against a plain in-process Optuna loop on the same trials.

    nice python bench/overhead_run.py                 # 8 trials, journal and PostgreSQL
    nice python bench/overhead_run.py --trials 16 --repeats 3 --repeat 2 --epochs 3

The same fixed, seeded list of configurations (``bench.overhead.fixed_params``) is trained
two ways, each a fresh Python process timed from outside, from start to exit:

* ``plain loop``: what a new user writes: one script that imports torch and Optuna, loads the
  data, creates the study in the storage, enqueues the configurations and runs
  ``study.optimize`` with an objective that trains the task's model for the spec's epochs at
  the trial's batch size (AdamW, 80/20 holdout) and returns the holdout accuracy;
* ``kubetune run``: ``kubetune run study.yaml --trials N --workers 1`` with the configurations
  as the spec's ``warmStart.points`` (queued first, so the same trials run): the supervisor
  process, one runner process, the claim lock, progress reads, telemetry.

Both ways use the same storage kind (a fresh journal file, or a fresh database on a throwaway
PostgreSQL server, :mod:`tests.harness.postgres`). The ways alternate, ``--repeats`` times;
medians are compared. The ratio is the number to read; the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve()
REPO = BENCH.parent.parent
sys.path.append(str(REPO))  # after the standard library: the repository has an operator/

from bench.overhead import fixed_params, study_document  # noqa: E402


def plain_loop(study_path: str, params_path: str, url: str) -> None:
    """The plain script (run in a child process)."""
    import optuna
    import torch

    from trial_runner.task import load_task_class

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    doc = yaml.safe_load(Path(study_path).read_text())
    spec = doc["spec"]
    task = load_task_class(spec["task"]["entrypoint"])(spec["task"].get("config", {}))
    data = task.load_data()
    inputs, targets = data.inputs, data.targets
    assert isinstance(inputs, torch.Tensor) and targets is not None
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(order))
    train, holdout = order[:cut], order[cut:]
    epochs = int(spec["training"]["epochs"])

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "hidden_size": trial.suggest_int("hidden_size", 32, 256, step=32),
            "dropout": trial.suggest_float("dropout", 0.0, 0.4),
        }
        torch.manual_seed(trial.number)
        model = task.build_model(params)
        optimizer = torch.optim.AdamW(model.parameters(), lr=params["learning_rate"])
        batch = int(params["batch_size"])
        for _ in range(epochs):
            model.train()
            shuffled = train[torch.randperm(len(train))]
            for start in range(0, len(shuffled), batch):
                rows = shuffled[start : start + batch]
                optimizer.zero_grad()
                loss = task.loss(model(inputs[rows]), targets[rows])
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            return task.score(model(inputs[holdout]), targets[holdout])["accuracy"]

    study = optuna.create_study(
        study_name="plain", storage=_optuna_storage(url), direction="maximize"
    )
    configurations = json.loads(Path(params_path).read_text())
    for params in configurations:
        study.enqueue_trial(params)
    study.optimize(objective, n_trials=len(configurations))


def _optuna_storage(url: str) -> Any:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:") :]))
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def _text(value: Any) -> Any:
    """A Float value as the spec takes it exactly (text); others as they are."""
    return repr(value) if isinstance(value, float) else value


def _timed(command: list[str], log: Path, cwd: Path) -> float:
    env = dict(os.environ)
    started = time.perf_counter()
    with open(log, "a") as out:
        done = subprocess.run(command, stdout=out, stderr=out, cwd=cwd, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{tail}")
    return wall


def _fresh_database(url: str, name: str) -> str:
    import sqlalchemy as sa

    engine = sa.create_engine(
        "postgresql+psycopg2://" + url.split("://", 1)[1], isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


def compare(kind: str, server: str | None, args: argparse.Namespace, workdir: Path) -> list[str]:
    doc = study_document(
        name="overhead-run",
        repeat=args.repeat,
        epochs=args.epochs,
        folds=1,
        workers=0,
        trials=args.trials,
        pruner={"type": "Nop"},
        sampler={"type": "TPE", "seed": 0},
    )
    params = fixed_params(doc, args.trials, seed=1)
    doc["spec"]["warmStart"] = {
        "points": [
            {"params": [{"name": k, "value": _text(v)} for k, v in p.items()]} for p in params
        ]
    }
    study_path = workdir / "study.yaml"
    # JSON (which is YAML) keeps the quoted decimals quoted, as the spec asks.
    study_path.write_text(json.dumps(doc, indent=2))
    params_path = workdir / "params.json"
    params_path.write_text(json.dumps(params))
    walls: dict[str, list[float]] = {"plain loop": [], "kubetune run": []}
    for round_ in range(args.repeats):
        for way in walls:
            tag = f"{kind}-{way.replace(' ', '-')}-{round_}"
            if server is None:
                url = f"journal:{workdir / tag}.journal"
            else:
                url = _fresh_database(server, tag.replace("-", "_"))
            if way == "plain loop":
                command = [sys.executable, str(BENCH), "--child-plain", str(study_path)]
                command += [str(params_path), url]
            else:
                command = [sys.executable, "-m", "trial_runner.cli", "run", str(study_path)]
                command += ["--storage", url, "--trials", str(args.trials), "--workers", "1"]
                command += ["--no-progress", "--log-dir", str(workdir / "logs")]
            walls[way].append(_timed(command, workdir / f"{tag}.log", workdir))
    plain = statistics.median(walls["plain loop"])
    run = statistics.median(walls["kubetune run"])
    return [
        f"| {kind} | {args.trials} | {plain:.1f} | {run:.1f} | {run / plain:.3f}× "
        f"| {(run - plain) / args.trials * 1000:.0f} |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="tile the data (longer epochs)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--storages", nargs="+", default=["journal", "postgresql"])
    parser.add_argument("--child-plain", nargs=3, metavar=("STUDY", "PARAMS", "URL"))
    args = parser.parse_args()
    if args.child_plain:
        plain_loop(*args.child_plain)
        return
    from kubetune_api.spec import MAX_WARM_START_POINTS

    if not 1 <= args.trials <= MAX_WARM_START_POINTS:
        # The configurations travel as spec.warmStart.points, which holds at most this many.
        parser.error(f"--trials: 1 to {MAX_WARM_START_POINTS} (spec.warmStart.points)")

    from bench.storage import machine
    from tests.harness.postgres import postgres_server

    print(f"# `kubetune run` against a plain Optuna loop ({machine()})\n")
    print(
        f"{args.trials} DigitsMLP trials (data tiled {args.repeat}×, {args.epochs} epochs), "
        f"each way {args.repeats}× alternating; wall = process start to exit, median\n"
    )
    print("| storage | trials | plain loop s | kubetune run s | ratio | extra ms per trial |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-run-") as tmp:
        workdir = Path(tmp)
        for kind in args.storages:
            if kind == "journal":
                lines = compare(kind, None, args, workdir)
            else:
                with postgres_server() as server:
                    lines = compare(kind, server, args, workdir)
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
