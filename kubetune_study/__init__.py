"""The study as every process sees it: Optuna storages and the claim lock (``storage``), where a
study stands (``progress``), warm starts, storage outages, preemption of lost trials, the Pareto
front, the sampler and pruner (``search``) and the Prometheus metrics both processes serve.

It imports ``kubetune_api``, Optuna and NumPy — no torch, no kopf, no Kubernetes client.
"""
