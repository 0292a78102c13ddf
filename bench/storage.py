"""Claim-and-finish latency of kubetune's runners on PostgreSQL as the study grows.

    nice python bench/storage.py                       # scaled to this machine (minutes)
    nice python bench/storage.py --runners 8 32 64 --sizes 1000 5000 20000   # full size

One run starts a throwaway PostgreSQL server (:mod:`tests.harness.postgres`, the test suite's
way), and for each study size fills a study with that many finished trials (bulk inserts into
Optuna's own tables, the rows a runner writes: parameters, value, stage, runner, telemetry),
then, for each sampler and each number of runners, starts that many runner processes at once.
Each runner makes ``--claims`` claims through kubetune's own claim path
(``trial_runner.runner._Runner.claim_and_run``: claim lock, stale-trial sweep, progress read,
sampler, ``study.optimize(n_trials=1)`` with its heartbeat, user attributes, one intermediate
value, telemetry, the final state). Only the training is replaced: it sleeps ``--trial-seconds``
(:class:`SleepEngine`).

*Claim-and-finish latency* is one claim's wall time minus that sleep: waiting for the claim
lock, everything under it, and finishing the trial. The runner's first claim fills caches (the
sampler's, the connection pool) and is reported apart, as *first claim*; the whole study is
read before it, outside the claim lock, as ``run_runner`` does.

The machine is shared and noisy (2 cores here, while 64 runners would each have their own CPU
in a cluster): compare rows of one run, read the ratios, and treat no number as an assertion.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve()
sys.path.append(str(BENCH.parent.parent))  # after the standard library (operator/)

from tests.harness import studies  # noqa: E402

STUDY_NAME = "storage"


def study_document(sampler: str) -> dict[str, Any]:
    """One-epoch digits trials on a CPU, no stages; the budget is set apart (:func:`set_budget`)."""
    return studies.study_document(
        STUDY_NAME,
        task={"entrypoint": studies.DIGITS},
        searchSpace=studies.mlp_search_space(),
        stages=None,
        budget={"maxTrials": 10},
        sampler={"type": sampler, "seed": 0},
        training={"epochs": 1},
        resources={"accelerator": "CPU"},
    )


class SleepEngine:
    """Stands in for :class:`trial_runner.engine.Engine`: "trains" by sleeping, reports one
    intermediate value (one epoch) and returns a random score with telemetry, so the runner's
    storage traffic is what a real trial's is."""

    device = "cpu"
    setup_seconds = 0.0

    def __init__(self, seconds: float, seed: int) -> None:
        self.seconds = seconds
        self.trials_run = 0
        self.random = random.Random(seed)
        self.entered = self.left = 0.0

    def run_trial(self, params: Any, *, trial_number: int, reporter: Any = None, **_: Any) -> Any:
        from trial_runner.engine import TrialResult

        self.entered = time.perf_counter()
        time.sleep(self.seconds)
        value = self.random.random()
        if reporter is not None:
            reporter.report(value, 0)
        self.trials_run += 1
        telemetry = {
            "wall_seconds": self.seconds,
            "step_seconds": self.seconds,
            "eval_seconds": 0.0,
            "overhead_seconds": 0.0,
            "epochs_run": 1,
            "epochs_budget": 1,
        }
        self.left = time.perf_counter()
        return TrialResult(value, {"accuracy": value}, False, "Completed", telemetry)


# --------------------------------------------------------------------------- filling a study


def fill_study(url: str, doc: dict[str, Any], size: int) -> None:
    """Create the study of ``doc`` and bulk-insert finished trials until it holds ``size``."""
    import optuna
    import sqlalchemy as sa
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    from kubetune_api.contract import STAGE_ATTR, TELEMETRY_ATTR, WORKER_ATTR
    from kubetune_api.spec import study_from_mapping
    from kubetune_study.search import suggest_all
    from kubetune_study.storage import ensure_study, open_storage

    spec = study_from_mapping(doc).spec
    study = ensure_study(open_storage(url, heartbeat=False), doc["metadata"]["name"], spec)
    have = len(study.get_trials(deepcopy=False))
    if have >= size:
        return
    # The distributions, as the runner's suggest calls record them.
    probe = optuna.create_study()
    frozen = probe.ask()
    suggest_all(frozen, spec)
    distributions = probe._storage.get_trial(frozen._trial_id).distributions
    rng = random.Random(size)
    engine = sa.create_engine("postgresql+psycopg2://" + url.split("://", 1)[1])
    start = datetime.now() - timedelta(days=1)
    with engine.begin() as conn:
        next_id = int(
            conn.execute(sa.text("SELECT coalesce(max(trial_id), 0) + 1 FROM trials")).scalar()
        )
        chunk = 2000
        for first in range(have, size, chunk):
            numbers = range(first, min(size, first + chunk))
            ids = [next_id + i for i in range(len(numbers))]
            next_id += len(numbers)
            conn.execute(
                sa.insert(models.TrialModel.__table__),
                [
                    {
                        "trial_id": i,
                        "number": n,
                        "study_id": study._study_id,
                        "state": "COMPLETE",
                        "datetime_start": start + timedelta(seconds=n),
                        "datetime_complete": start + timedelta(seconds=n + 1),
                    }
                    for i, n in zip(ids, numbers, strict=True)
                ],
            )
            conn.execute(
                sa.insert(models.TrialValueModel.__table__),
                [
                    {"trial_id": i, "objective": 0, "value": rng.random(), "value_type": "FINITE"}
                    for i in ids
                ],
            )
            conn.execute(
                sa.insert(models.TrialParamModel.__table__),
                [
                    {
                        "trial_id": i,
                        "param_name": name,
                        "param_value": dist.to_internal_repr(draw(dist, rng)),
                        "distribution_json": distribution_to_json(dist),
                    }
                    for i in ids
                    for name, dist in distributions.items()
                ],
            )
            telemetry = json.dumps({"wall_seconds": 1.0, "overhead_seconds": 0.01})
            conn.execute(
                sa.insert(models.TrialUserAttributeModel.__table__),
                [
                    {"trial_id": i, "key": key, "value_json": value}
                    for i in ids
                    for key, value in (
                        (STAGE_ATTR, "0"),
                        (WORKER_ATTR, json.dumps(f"filler:{i % 64}")),
                        (TELEMETRY_ATTR, telemetry),
                    )
                ],
            )
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                "(SELECT max(trial_id) FROM trials))"
            )
        )
    engine.dispose()


def draw(dist: Any, rng: random.Random) -> float:
    """A value of a float or int distribution (the study's parameters are those)."""
    if dist.step is None:
        return rng.uniform(dist.low, dist.high)
    return dist.low + dist.step * rng.randrange(int((dist.high - dist.low) // dist.step) + 1)


def set_budget(url: str, doc: dict[str, Any], max_trials: int) -> None:
    from kubetune_api.spec import study_from_mapping
    from kubetune_study.progress import BudgetState
    from kubetune_study.storage import ensure_study, open_storage, write_budget

    spec = study_from_mapping(doc).spec
    write_budget(
        ensure_study(open_storage(url, heartbeat=False), doc["metadata"]["name"], spec),
        BudgetState(max_trials=max_trials),
    )


# --------------------------------------------------------------------------- the runners


def runner_process(
    url: str, sampler: str, claims: int, seconds: float, slot: int, start: Any, out: Any
) -> None:
    import optuna

    from kubetune_api.spec import study_from_mapping
    from kubetune_study.storage import claim_lock, open_storage
    from trial_runner.runner import _Runner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = study_from_mapping(study_document(sampler)).spec
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(url, patience=60))
    engine = SleepEngine(seconds, seed=slot)
    profiles = Path(tempfile.gettempdir()) / "kubetune-bench-profiles"
    runner = _Runner(
        spec, study, engine, claim_lock(url, STUDY_NAME), threading.Event(), None, profiles
    )
    runner.read_study()  # what run_runner does before its first claim
    start.wait()
    rows = []
    for _ in range(claims):
        began = time.perf_counter()
        step = runner.claim_and_run()
        ended = time.perf_counter()
        if not step.ran:
            break
        rows.append(
            {
                "total": ended - began - (engine.left - engine.entered),
                "claim": engine.entered - began,
                "finish": ended - engine.left,
            }
        )
    out.put(rows)


def run_runners(
    url: str, sampler: str, runners: int, claims: int, seconds: float
) -> dict[str, Any]:
    results, wall = start_together(
        runner_process, [(url, sampler, claims, seconds, i) for i in range(runners)]
    )
    first = [r[0]["total"] for r in results if r]
    steady = [row for r in results for row in r[1:]]
    return {"first": first, "steady": steady, "wall": wall, "trials": sum(len(r) for r in results)}


def start_together(target: Any, arguments: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    """Fork one process per ``arguments``; each loads, then waits at a barrier so all start
    at once (``target(*args, start, out)``: ``start.wait()``, then ``out.put(result)``).
    Returns their results and the wall time from the start to the last result."""
    ctx = mp.get_context("fork")
    start = ctx.Barrier(len(arguments) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, out)) for args in arguments]
    for p in procs:
        p.start()
    start.wait()
    began = time.perf_counter()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - began
    for p in procs:
        p.join()
    return results, wall


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--samplers", nargs="+", default=["TPE", "Random"])
    parser.add_argument("--claims", type=int, default=3, help="claims per runner")
    parser.add_argument("--trial-seconds", type=float, default=1.0)
    parser.add_argument("--json", help="also write the raw rows here")
    args = parser.parse_args()

    from tests.harness.postgres import postgres_server

    print(f"# Claim-and-finish latency on PostgreSQL ({machine()})\n")
    print(
        f"{args.claims} claims per runner, trials sleep {args.trial_seconds:g}s; latency = a "
        "claim's wall time minus the sleep; p50/p95/p99 over every runner's claims but its "
        "first; *first* = the first claim's p50\n"
    )
    print(
        "| sampler | trials in study | runners | p50 ms | p95 ms | p99 ms | claim p50 ms "
        "| finish p50 ms | first ms | p95 / p95 at the smallest size |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    baseline: dict[tuple[str, int], float] = {}
    with postgres_server() as url:
        # One database per sampler, filled in steps as the sizes grow.
        for size in sorted(args.sizes):
            for sampler in args.samplers:
                sampler_url = url if sampler == args.samplers[0] else _database(url, sampler)
                fill_study(sampler_url, study_document(sampler), size)
                for runners in args.runners:
                    set_budget(sampler_url, study_document(sampler), 10**9)
                    result = run_runners(
                        sampler_url, sampler, runners, args.claims, args.trial_seconds
                    )
                    totals = [r["total"] for r in result["steady"]]
                    p95 = pct(totals, 95)
                    base = baseline.setdefault((sampler, runners), p95)
                    row = {
                        "sampler": sampler,
                        "size": size,
                        "runners": runners,
                        "p50": pct(totals, 50) * 1000,
                        "p95": p95 * 1000,
                        "p99": pct(totals, 99) * 1000,
                        "claim_p50": pct([r["claim"] for r in result["steady"]], 50) * 1000,
                        "finish_p50": pct([r["finish"] for r in result["steady"]], 50) * 1000,
                        "first_p50": statistics.median(result["first"]) * 1000
                        if result["first"]
                        else float("nan"),
                        "growth": p95 / base if base else float("nan"),
                    }
                    rows.append(row)
                    print(
                        f"| {sampler} | {size:,} | {runners} | {row['p50']:.0f} | "
                        f"{row['p95']:.0f} | {row['p99']:.0f} | {row['claim_p50']:.0f} | "
                        f"{row['finish_p50']:.0f} | {row['first_p50']:.0f} | "
                        f"{row['growth']:.2f}× |",
                        flush=True,
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _database(url: str, name: str) -> str:
    """A database of its own on the same server (created if missing)."""
    import sqlalchemy as sa

    db = f"kubetune_bench_{name.lower()}"
    engine = sa.create_engine(
        "postgresql+psycopg2://" + url.split("://", 1)[1], isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        if not conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": db}
        ).scalar():
            conn.execute(sa.text(f"CREATE DATABASE {db}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + db


if __name__ == "__main__":
    main()
