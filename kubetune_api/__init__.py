"""The HPOStudy API: every name the operator, the pods and the runners share (``contract``), the
spec model with its rules and loading (``spec``), the status model (``status``) and the CRD
generated from both (``crd``).

Pure: it imports pydantic, PyYAML and (lazily, for the pod template) the Kubernetes client's
models — no torch, no kopf, no Optuna.
"""
