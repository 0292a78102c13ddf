"""The test harness: what the tests and the benchmarks (``bench/``) build on.

Test modules and ``conftest.py`` files hold tests and fixtures; what those start, build and wait
for lives here, imported by package path (``from tests.harness.controlplane import
ControlPlane``; pytest runs with ``--import-mode=importlib`` and ``pythonpath = ["."]``, and the
benchmarks put the checkout on ``sys.path``).

- :mod:`~tests.harness.helpers`: the one wait (``wait_until``), ``IN_CI``, ``REPO_ROOT``,
  ``free_port``, ``unavailable`` (skip, or fail under ``CI=true``), ``started`` (start a
  component for a block, fail the test if it does not start), ``secret_leaks``.
- :mod:`~tests.harness.studies`: the one study builder (``study_document`` and what is cut from
  it: ``study_model``, ``spec_model``, ``small_runner_study``, ``digits_study``,
  ``small_cpu_study``, ``mlp_search_space``) and the search-space entry helpers.
- :mod:`~tests.harness.postgres`: ``PG_CTL`` (``tests/support/pg_ctl``), ``postgres_server``
  (a throwaway server outside pytest), ``RestartablePostgres``.
- :mod:`~tests.harness.runners`: real runner processes (``kubetune``, ``start_runner``,
  ``runner_env``).
- :mod:`~tests.harness.tcp_proxy`: a TCP proxy on loopback that can cut every connection at
  once, and a port that never answers (storage outages).
- :mod:`~tests.harness.browser`: headless Chromium (``Browser``, ``page_text``,
  ``publish_screenshot``).
- :mod:`~tests.harness.controlplane`: ``ControlPlane``, a real etcd, kube-apiserver,
  controller manager, scheduler and kwok on loopback; ``find_bin_dir``.
- ``kwok-stages.yaml``: the kwok lifecycle of simulated nodes and pods (read by
  ``controlplane.py`` by path).
- :mod:`~tests.harness.netns`: relays across network namespaces and the API server's egress
  proxy.
- :mod:`~tests.harness.real_node`: ``RealNode``, a real kubelet, containerd, runc, CNI and
  kube-proxy in namespaces of their own.
- :mod:`~tests.harness.gpu_catalog`: GPU models, MIG profiles and the labels and resources a
  GPU node publishes.
- :mod:`~tests.harness.simulated_cluster`: ``NodeGroup``, ``create_nodes``, ``delete_nodes``
  (kwok nodes).
- :mod:`~tests.harness.kueue`: ``Kueue``, the real Kueue controller on loopback, and its queues.
- :mod:`~tests.harness.prerequisites`: the control-plane binaries and the images built from
  this checkout (``BuiltImages``), found or reported missing.
- :mod:`~tests.harness.operator_fixtures`: the operator in this process (``run_operator``,
  ``operator_env``), the CRD (``install_crd``), fresh namespaces, ``StudyClient``, audit-log
  counts, finished trials written into a study's storage.
- :mod:`~tests.harness.node_fixtures`: what tests on the real node use: databases pods reach,
  the chart's operator as a container, restricted namespaces, pod watches.
"""
