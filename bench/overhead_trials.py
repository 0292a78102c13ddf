"""Per-trial overhead of kubetune's runners on PostgreSQL, and the time between trials as the
study grows (Ray Tune's published shape, 1,000+ trials of about 1 s, scaled to this machine).

    nice python bench/overhead_trials.py                                   # scaled (minutes)
    nice python bench/overhead_trials.py --trials 1000 --trial-seconds 1 --prefill 0 20000
    nice python bench/overhead_trials.py --sampler Random ...   # without TPE's sampling cost

``--runners`` runner processes (2) run the real runner loop (``trial_runner.runner.run_runner``:
claim lock, stale-trial sweep, progress, sampler, heartbeat, attributes, telemetry, final state)
on a throwaway PostgreSQL server (:mod:`tests.harness.postgres`) until ``--trials`` more trials
are done. Only the training is replaced: each trial sleeps ``--trial-seconds``
(:class:`bench.storage.SleepEngine`), so what is left is the runner's own cost.

Once from each ``--prefill`` size (the study first filled with that many finished trials,
:func:`bench.storage.fill_study`):

* *overhead* = 1 - (trial time) / (runners × wall time), wall time from the runners' start
  (after loading) to the last trial's end: Ray Tune's definition (14% at 10,000 × 1 s trials
  on 16 CPUs; goal here ≤ 2%);
* *gap* = the time between one trial's end and the next trial's start on the same runner, from
  the trials' own timestamps in the storage; its median in each tenth of the run shows whether
  it grows as the study does.

The machine is shared and noisy: read ratios within one run; no number is an assertion.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after the stdlib (operator/)

from bench.storage import (
    STUDY_NAME,
    SleepEngine,
    fill_study,
    machine,
    set_budget,
    start_together,
    study_document,
)


def runner_process(url: str, seconds: float, slot: int, sampler: str, start: Any, out: Any) -> None:
    import optuna

    import trial_runner.runner as runner_module
    from kubetune_api.spec import study_from_mapping

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The runner builds its engine from the task; here the engine only sleeps.
    runner_module.Engine = lambda *_a, **_k: SleepEngine(seconds, slot)  # type: ignore[assignment,misc]
    doc = study_from_mapping(study_document(sampler))
    start.wait()
    began = time.perf_counter()
    summary = runner_module.run_runner(doc, url, STUDY_NAME, install_signal_handlers=False)
    out.put({"trials": summary.trials_run, "wall": time.perf_counter() - began})


def run(
    url: str, runners: int, trials: int, seconds: float, prefill: int, sampler: str
) -> dict[str, Any]:
    import optuna

    from kubetune_api.contract import WORKER_ATTR
    from kubetune_study.storage import open_storage

    doc = study_document(sampler)
    fill_study(url, doc, prefill)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(url, heartbeat=False))
    before = len(study.get_trials(deepcopy=False))
    set_budget(url, doc, before + trials)
    results, wall = start_together(
        runner_process, [(url, seconds, i, sampler) for i in range(runners)]
    )
    ran = [t for t in study.get_trials(deepcopy=False) if t.number >= before]
    done = sum(r["trials"] for r in results)
    overhead = 1 - done * seconds / (runners * wall)
    by_worker: dict[str, list[Any]] = {}
    for t in ran:
        by_worker.setdefault(str(t.user_attrs.get(WORKER_ATTR)), []).append(t)
    gaps: list[tuple[int, float]] = []
    for mine in by_worker.values():
        mine.sort(key=lambda t: t.datetime_start)
        for prev, nxt in itertools.pairwise(mine):
            if prev.datetime_complete and nxt.datetime_start:
                gap = (nxt.datetime_start - prev.datetime_complete).total_seconds()
                gaps.append((nxt.number, gap))
    gaps.sort()
    parts = min(10, len(gaps))
    bounds = [round(i * len(gaps) / parts) for i in range(parts + 1)]
    buckets = [
        (gaps[a][0], statistics.median(g for _, g in gaps[a:b]))
        for a, b in itertools.pairwise(bounds)
    ]
    return {"trials": done, "wall": wall, "overhead": overhead, "buckets": buckets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--trial-seconds", type=float, default=0.5)
    parser.add_argument("--prefill", type=int, nargs="+", default=[0, 5000])
    parser.add_argument(
        "--sampler", default="TPE", choices=["TPE", "Random"], help="the study's sampler"
    )
    args = parser.parse_args()

    from tests.harness.postgres import postgres_server

    print(f"# Per-trial overhead on PostgreSQL ({machine()})\n")
    print(
        f"{args.runners} runner processes, {args.sampler}, {args.trials} trials of "
        f"{args.trial_seconds:g}s (sleep) from each starting size\n"
    )
    print(
        "| study at start | trials | wall s | ideal s | overhead | median gap ms "
        "(first tenth → last tenth) |"
    )
    print("|---|---|---|---|---|---|")
    with postgres_server() as url:
        for prefill in sorted(args.prefill):
            result = run(url, args.runners, args.trials, args.trial_seconds, prefill, args.sampler)
            ideal = result["trials"] * args.trial_seconds / args.runners
            buckets = result["buckets"]
            gaps = " → ".join(f"{g * 1000:.0f}" for _, g in buckets)
            print(
                f"| {prefill:,} | {result['trials']} | {result['wall']:.1f} | {ideal:.1f} | "
                f"{result['overhead'] * 100:.1f}% | {gaps} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
