"""Operator scale: N studies x R runners on M simulated GPU/MIG nodes, on a real control plane.

    nice python bench/operator_scale.py                       # 10 and 30 studies, 40 nodes
    nice python bench/operator_scale.py --studies 10 100 --nodes 250   # the full size

One run starts the test control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, see ``tests/harness/controlplane.py``), one PostgreSQL, and M kwok nodes:
half with 8 whole H100-80GB GPUs each, half with 8 A100-80GB split into 7 ``1g.10gb`` MIG
slices each. Then, for each study count N in ``--studies``, on a fresh namespace:

* the operator starts as its own process (``python -m hpo_operator --all-namespaces``), as the
  API server's audited user, so its audit log counts every request the operator makes;
* each study's Optuna study is created beforehand with ``--trials`` finished trials (the kwok
  runners run nothing), so that every pass reads a study of that size;
* N studies of R runners are applied with one ``kubectl apply`` (alternately MIG studies, sized
  to a 1g.10gb slice, and GPU studies, sized to a whole GPU, both from ``spec.resources.
  peakMemory``); kube-scheduler binds the runner pods to the kwok nodes;
* **bound**: seconds from the apply to every runner pod bound to a node (``spec.nodeName``);
* **steady state**: once every study is Ready, a window of ``--window`` seconds: the
  operator's passes (its ``kubetune_reconcile_duration_seconds`` count, scraped from its
  ``/metrics``), its API requests by verb (audit log; ``list`` calls are what a polling
  operator makes per pass, ``watch`` are its watches reconnecting), its CPU seconds per pass;
* the operator's CPU seconds from its start to every pod bound, and its RSS (VmRSS, VmHWM);
* the studies are deleted (the operator removes its runners and finalizers) and the
  operator stops.

Every figure comes with its growth from the smallest N to each larger one, measured side by
side in this run. The machine is shared and noisy: read the ratios, and do not treat any
number as a timing assertion. Needs the control-plane binaries (``bash hack/test.sh`` builds
them, or ``KUBETUNE_CONTROL_PLANE_BIN``) and PostgreSQL's server binaries.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Appended, not prepended: the checkout's operator/ must not hide the standard library's.
sys.path.append(str(REPO))

import kubernetes  # noqa: E402

from kubetune_api.contract import (  # noqa: E402
    COMPONENT_LABEL,
    COMPONENT_RUNNER,
    GROUP,
    PLURAL,
    VERSION,
)
from tests.harness import studies  # noqa: E402
from tests.harness.controlplane import ControlPlane, find_bin_dir  # noqa: E402
from tests.harness.helpers import free_port, wait_until  # noqa: E402
from tests.harness.operator_fixtures import (  # noqa: E402
    add_finished_trials,
    api_requests,
    install_crd,
)
from tests.harness.postgres import postgres_server  # noqa: E402
from tests.harness.simulated_cluster import NodeGroup, create_nodes  # noqa: E402

k8s: Any = kubernetes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------- what is applied


def study(name: str, runners: int, gpu: bool) -> dict[str, Any]:
    """A study the operator sizes from its spec: a whole GPU (40Gi peak) or a 1g.10gb MIG
    slice (6Gi peak); the search space and budget are those of a real study."""
    return studies.study_document(
        name,
        task={
            "entrypoint": "trial_runner.tasks.sequence:SequenceTransformer",
            "image": "kubetune:bench",
        },
        searchSpace=[
            studies.float_param("learning_rate", "1e-5", "3e-3", log=True),
            studies.categorical_param("batch_size", [32, 64, 128]),
            studies.int_param("n_layers", 2, 8),
        ],
        stages=None,
        budget={"maxTrials": 1000},
        sampler={"type": "TPE", "seed": 0},
        resources={
            "accelerator": "GPU" if gpu else "MIG",
            "parallelism": runners,
            "peakMemory": "40Gi" if gpu else "6Gi",
            "cpu": "1",
            "memory": "4Gi",
        },
    )


def fill(storage_url: str, namespace: str, documents: list[dict[str, Any]], trials: int) -> None:
    """Create each study's Optuna study (as the operator would) with ``trials`` complete trials
    of its search space, as runners would have left them."""
    from hpo_operator.manifests import optuna_study_name

    for seed, document in enumerate(documents):
        name = optuna_study_name(namespace, document["metadata"]["name"])
        add_finished_trials(storage_url, name, document["spec"], trials, seed)


def node_groups(nodes: int) -> list[NodeGroup]:
    whole = max(1, nodes // 2)
    return [
        NodeGroup(count=whole, gpu="H100-80GB", gpus=8, name="h100"),
        NodeGroup(count=max(1, nodes - whole), gpu="A100-80GB", gpus=8, mig={"1g.10gb": 7}),
    ]


# --------------------------------------------------------------------------- helpers


@dataclass
class Usage:
    cpu_seconds: float
    rss_mib: float
    peak_rss_mib: float


def usage(pid: int) -> Usage:
    """CPU seconds (user + system) and resident memory of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Usage(
        cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    )


def passes(metrics_port: int) -> float:
    """The operator's passes so far (its reconcile histogram's count)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("kubetune_reconcile_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


# --------------------------------------------------------------------------- one size


@dataclass
class Row:
    studies: int
    runners: int
    bound_seconds: float
    ready_seconds: float
    passes: float
    window: float
    steady: Counter[tuple[str, str]]
    cpu_to_bound: float
    cpu_per_pass_ms: float
    rss_mib: float
    peak_rss_mib: float
    delete_seconds: float

    def requests(self, verb: str) -> int:
        return sum(n for (v, _), n in self.steady.items() if v == verb)

    def per_pass(self) -> float:
        """API requests per study-pass in the window (watches left out: they are not passes')."""
        made = sum(n for (v, _), n in self.steady.items() if v != "watch")
        return made / self.passes if self.passes else float("nan")


def measure(
    plane: ControlPlane,
    storage_url: str,
    studies: int,
    args: argparse.Namespace,
    work: Path,
) -> Row:
    runners, interval, window = args.runners, args.interval, args.window
    namespace = f"scale-{studies}-{uuid.uuid4().hex[:4]}"
    plane.kubectl("create", "namespace", namespace)
    wait_until(
        lambda: (
            plane.kubectl(
                "get", "serviceaccount", "default", "-n", namespace, check=False
            ).returncode
            == 0
        ),
        60,
        "the namespace's default service account",
    )
    kubeconfig = plane.audited_kubeconfig(work / f"operator-{studies}.kubeconfig")
    metrics_port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_STORAGE_URL": storage_url,
        "KUBETUNE_RECONCILE_INTERVAL": str(interval),
        "KUBETUNE_RUNNER_IMAGE": "kubetune:bench",
        "KUBETUNE_METRICS_PORT": str(metrics_port),
    }
    log = (work / f"operator-{studies}.log").open("wb")
    cwd = work / "cwd"  # not the checkout: its operator/ would hide the standard library's
    cwd.mkdir(exist_ok=True)
    operator = subprocess.Popen(
        [sys.executable, "-m", "hpo_operator", "--all-namespaces", "--standalone"],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        documents = [study(f"s{i:03d}", runners, gpu=i % 2 == 1) for i in range(studies)]
        fill(storage_url, namespace, documents, args.trials)
        wait_until(lambda: _answers(metrics_port), 120, "the operator's metrics endpoint")
        listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": documents})
        applied = time.monotonic()
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=listing, timeout=600)
        client = plane.api_client()
        core = k8s.client.CoreV1Api(client)
        selector = f"{COMPONENT_LABEL}={COMPONENT_RUNNER}"

        def bound() -> bool:
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            return len(pods) == studies * runners and all(p.spec.node_name for p in pods)

        wait_until(bound, 1800, f"{studies * runners} runner pods bound")
        bound_seconds = time.monotonic() - applied
        cpu_to_bound = usage(operator.pid).cpu_seconds
        custom = k8s.client.CustomObjectsApi(client)

        def all_ready() -> bool:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            return len(items) == studies and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (i.get("status") or {}).get("conditions") or []
                )
                for i in items
            )

        wait_until(all_ready, 1800, "every study Ready", interval=1.0)
        ready_seconds = time.monotonic() - applied
        time.sleep(interval + 1)  # the passes that wrote Ready have been answered
        since, before, cpu_before = (
            dt.datetime.now(dt.UTC),
            passes(metrics_port),
            usage(operator.pid).cpu_seconds,
        )
        time.sleep(window)
        until, made = dt.datetime.now(dt.UTC), passes(metrics_port) - before
        end = usage(operator.pid)
        time.sleep(1)  # the audit log has what was answered by then
        steady = api_requests(plane.audit_events(), since, until)
        deleting = time.monotonic()
        plane.kubectl(
            "delete", "hpostudies", "--all", "-n", namespace, "--wait=true", "--timeout=900s",
            timeout=960,
        )  # fmt: skip
        delete_seconds = time.monotonic() - deleting
        client.close()
        return Row(
            studies=studies,
            runners=runners,
            bound_seconds=bound_seconds,
            ready_seconds=ready_seconds,
            passes=made,
            window=window,
            steady=steady,
            cpu_to_bound=cpu_to_bound,
            cpu_per_pass_ms=1000 * (end.cpu_seconds - cpu_before) / made if made else 0.0,
            rss_mib=end.rss_mib,
            peak_rss_mib=end.peak_rss_mib,
            delete_seconds=delete_seconds,
        )
    finally:
        operator.terminate()
        try:
            operator.wait(60)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        log.close()
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _answers(port: int) -> bool:
    try:
        passes(port)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- report


def report(rows: list[Row], args: argparse.Namespace) -> str:
    base = rows[0]

    def growth(value: float, first: float) -> str:
        return f"{value / first:.2f}x" if first else "-"

    lines = [
        f"Operator scale: {args.nodes} kwok nodes ({args.nodes // 2} x 8 H100-80GB, "
        f"{args.nodes - args.nodes // 2} x 8 A100-80GB as 7 x 1g.10gb), {args.runners} runners "
        f"and {args.trials} finished trials per study, a pass every {args.interval:g}s per study, "
        "steady-state window "
        f"{args.window:g}s; {platform.node()}, {os.cpu_count()} CPUs, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "| studies | runner pods | apply to all bound | to all Ready | study-passes in window "
        "| list calls | API requests per study-pass | CPU ms per study-pass "
        "| CPU s to all bound | RSS MiB (peak) | delete all |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.studies} | {row.studies * row.runners} | {row.bound_seconds:.1f} s "
            f"| {row.ready_seconds:.1f} s | {row.passes:.0f} | {row.requests('list')} "
            f"| {row.per_pass():.3f} | {row.cpu_per_pass_ms:.1f} | {row.cpu_to_bound:.1f} "
            f"| {row.rss_mib:.0f} ({row.peak_rss_mib:.0f}) | {row.delete_seconds:.1f} s |"
        )
    lines += ["", f"Growth from {base.studies} studies (same run):", ""]
    lines += [
        "| studies | x studies | apply to all bound | CPU ms per study-pass | CPU s to all bound "
        "| RSS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.studies} | {row.studies / base.studies:.1f}x "
            f"| {growth(row.bound_seconds, base.bound_seconds)} "
            f"| {growth(row.cpu_per_pass_ms, base.cpu_per_pass_ms)} "
            f"| {growth(row.cpu_to_bound, base.cpu_to_bound)} "
            f"| {growth(row.rss_mib, base.rss_mib)} |"
        )
    lines += ["", "Steady-state requests by verb and resource (all studies, whole window):", ""]
    for row in rows:
        seen = ", ".join(f"{v} {r}: {n}" for (v, r), n in sorted(row.steady.items())) or "none"
        lines.append(f"- {row.studies} studies: {seen}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--runners", type=int, default=10, help="runner pods per study")
    parser.add_argument("--nodes", type=int, default=40, help="simulated GPU/MIG nodes")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="KUBETUNE_RECONCILE_INTERVAL (seconds)"
    )
    parser.add_argument("--window", type=float, default=20.0, help="steady-state seconds")
    parser.add_argument(
        "--trials", type=int, default=50, help="finished trials in each study's storage"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit(
            "the control-plane binaries are not built: run `bash hack/test.sh tests/unit -q` "
            "once, or set KUBETUNE_CONTROL_PLANE_BIN"
        )
    work = Path(tempfile.mkdtemp(prefix="kubetune-operator-scale-"))
    rows: list[Row] = []
    try:
        with (
            ControlPlane(bin_dir, work / "plane") as plane,
            postgres_server(max_connections=200) as url,
        ):
            install_crd(plane)
            client = plane.api_client()
            started = time.monotonic()
            create_nodes(client, node_groups(args.nodes), timeout=600)
            client.close()
            print(f"{args.nodes} nodes Ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
            for count in args.studies:
                row = measure(plane, url, count, args, work)
                print(
                    f"{count} studies: bound in {row.bound_seconds:.1f}s, "
                    f"{row.requests('list')} list calls in {row.passes:.0f} passes",
                    file=sys.stderr,
                )
                rows.append(row)
    finally:
        if args.keep:
            print(f"work directory: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rows, args))


if __name__ == "__main__":
    main()
