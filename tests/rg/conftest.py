"""Shared fixtures of the RG tests: the backends to parametrise over and a small FP run."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsrg.core.errors import BackendUnavailableError

from support import unavailable, warm_once

BACKENDS = ("numpy", "cpu", "cupy")


def backend_or_skip(name: str):
    """The named backend, or skip (only) because it cannot run here, saying why."""
    from opsrg.rg.backends import get_backend

    try:
        b = get_backend(name)
    except BackendUnavailableError as exc:
        if name != "cupy":  # only cupy needs hardware this machine kind lacks: the others fail in CI
            unavailable(f"backend {name} unavailable: {exc}")
        pytest.skip(f"backend {name} unavailable: {exc}")
    if name == "cpu":
        warm_once(b)
    return b


# the cupy case carries the gpu mark, so `pytest -m gpu` on a GPU machine runs it too
@pytest.fixture(params=[pytest.param(b, marks=pytest.mark.gpu) if b == "cupy" else b for b in BACKENDS])
def backend(request):
    return backend_or_skip(request.param)


@pytest.fixture(scope="session")
def fp_run(tmp_path_factory) -> Path:
    """A 6-step FP run at N = 1e6 (numpy backend): the input of the EXP tests."""
    from opsrg.rg.pipeline import RunConfig, RunPaths, run_loop

    out = tmp_path_factory.mktemp("fp_run")
    cfg = RunConfig(mode="fp", samples=1_000_000, seed=2024)
    run_loop(cfg, RunPaths(out), 6, "numpy", log=lambda m: None)
    return out
