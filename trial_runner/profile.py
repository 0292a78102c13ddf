"""``spec.training.profile``: ``torch.profiler`` traces of chosen trials.

A trace covers the whole trial (model build, every fold's steps, validation, bookkeeping), so
it shows where a slow trial spends its time, overhead included. It is written in the Chrome
trace format, which Perfetto (https://ui.perfetto.dev) and ``chrome://tracing`` open. The
trace's path is recorded in the trial's :data:`~kubetune_api.contract.PROFILE_ATTR`, where the
report links it from.

Which trials (:func:`should_profile`) and where (:func:`profile_directory`) are pure decisions;
:func:`record_trace` does the profiling, :func:`trace_trial` for a trial.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import torch

from kubetune_api.contract import PROFILE_ATTR
from kubetune_api.spec import Profile, Training

__all__ = ["profile_directory", "record_trace", "should_profile", "trace_path", "trace_trial"]

log = logging.getLogger("kubetune.profile")


def should_profile(profile: Profile | None, trial_number: int, trials_in_process: int) -> bool:
    """Whether this trial is traced.

    Args:
        profile: ``spec.training.profile`` (``None``: no trial is).
        trial_number: The trial's number in the study.
        trials_in_process: Trials this runner process ran before this one.
    """
    if profile is None:
        return False
    if profile.trials == "First":
        return trials_in_process == 0
    return profile.every is not None and trial_number % profile.every == 0


def profile_directory(training: Training, study_name: str, temporary: str | None = None) -> Path:
    """``profile.directory``, else ``profiles/`` beside the checkpoint directory, else
    ``kubetune-profiles/<study>`` in the temporary directory (``/tmp`` in a pod)."""
    profile = training.profile
    if profile is not None and profile.directory:
        return Path(profile.directory)
    if training.checkpoint is not None:
        return Path(training.checkpoint.directory) / "profiles"
    base = Path(temporary or tempfile.gettempdir())
    return base / "kubetune-profiles" / _safe(study_name)


def trace_path(directory: Path, trial_number: int, worker: str) -> Path:
    """The trace file of one trial: its number and the process that ran it (a retried trial
    runs again elsewhere, and its traces must not overwrite each other)."""
    return directory / f"trial-{trial_number:05d}-{_safe(worker)}.pt.trace.json"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@contextlib.contextmanager
def record_trace(path: Path, device: torch.device) -> Iterator[None]:
    """Profile the block (CPU, and CUDA kernels on a GPU) and write its trace to ``path``.

    The trace is written even when the block raises (a failed trial is worth looking at).
    A trace that cannot be written is logged, never fatal: the trial's result stands.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    profiler = profile(activities=activities)
    try:
        with profiler:
            yield
    finally:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            profiler.export_chrome_trace(str(path))
        except OSError as error:
            log.warning("could not write the profile trace %s: %s", path, error)


@contextlib.contextmanager
def trace_trial(
    trial: optuna.Trial,
    profile: Profile | None,
    directory: Path,
    device: torch.device,
    trials_in_process: int,
    worker: str,
) -> Iterator[None]:
    """Trace the block when :func:`should_profile` says so, and record where the trace is in
    the trial's :data:`~kubetune_api.contract.PROFILE_ATTR`, however the block ends."""
    traced = should_profile(profile, trial.number, trials_in_process)
    trace = trace_path(directory, trial.number, worker)
    try:
        with record_trace(trace, device) if traced else contextlib.nullcontext():
            yield
    finally:
        if traced and trace.is_file():
            trial.set_user_attr(PROFILE_ATTR, str(trace.resolve()))
