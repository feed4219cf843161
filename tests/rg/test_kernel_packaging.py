"""The CUDA source ships with the package, not only with a source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib

from support import REPO

KERNEL = REPO / "kernels" / "rg_step.cu"
PACKAGED = REPO / "opsrg" / "rg" / "backends" / "rg_step.cu"


def test_packaged_kernel_is_the_kernels_source():
    # a link, so kernels/ stays the one place the CUDA code is edited
    assert PACKAGED.is_symlink()
    assert PACKAGED.resolve() == KERNEL.resolve()


def test_pyproject_ships_the_kernel_as_package_data():
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "rg_step.cu" in conf["tool"]["setuptools"]["package-data"]["opsrg.rg.backends"]


def test_installed_copy_finds_its_kernel_without_a_checkout(tmp_path):
    # an installed package is a plain copy of opsrg/ (links resolved) with no kernels/ beside it
    site = tmp_path / "site"
    shutil.copytree(REPO / "opsrg", site / "opsrg", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "kernels").exists()
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_RG_KERNEL"}
    env["PYTHONPATH"] = str(site)
    code = ("from opsrg.rg.backends.cupy_backend import kernel_path, kernel_source; "
            "p = kernel_path(); print(p); assert 'rg_step_f32' in kernel_source()")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True)
    found = out.stdout.strip()
    assert found.startswith(str(site)), found
    assert (site / "opsrg" / "rg" / "backends" / "rg_step.cu").read_bytes() == KERNEL.read_bytes()
