"""opsrg itself on a pod: the wheel of the running package, and its install over the real sshd
from a wheelhouse sent along (a pod with no package index)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from opsrg.pods import tool

from sshd import write_ssh_env
from support import inv


def test_the_wheel_holds_the_running_package_with_a_valid_record(tmp_path):
    import opsrg

    w = tool.build_wheel(tmp_path)
    assert w.name == f"opsrg-{opsrg.__version__}-py3-none-any.whl"
    z = zipfile.ZipFile(w)
    info = f"opsrg-{opsrg.__version__}.dist-info"
    record = z.read(f"{info}/RECORD").decode().splitlines()
    for line in record:
        name, digest, size = line.rsplit(",", 2)
        if name == f"{info}/RECORD":
            continue
        data = z.read(name)
        assert int(size) == len(data)
        assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    names = set(z.namelist())
    assert "opsrg/cli/pod.py" in names and "opsrg/rg/backends/rg_step.cu" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    meta = z.read(f"{info}/METADATA").decode()
    assert f"Version: {opsrg.__version__}" in meta and "Requires-Dist: invoke" in meta
    assert 'numba>=0.60; extra == "rg"' in meta  # the RG engine's heavy parts are an extra
    assert "opsrg = opsrg.cli:main" in z.read(f"{info}/entry_points.txt").decode()
    assert tool.build_id() == tool.build_id() and len(tool.build_id()) == 12


@pytest.mark.ssh
@pytest.mark.tmux
@pytest.mark.slow
def test_bootstrap_installs_opsrg_from_a_wheelhouse_with_no_index(tmp_path, monkeypatch, tmux_socket, sshd_server):
    house = tmp_path / "house"
    wheel = tool.build_wheel(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(house),
                    str(wheel)], check=True, capture_output=True)
    (house / wheel.name).unlink()  # the client's own wheel travels by itself
    tool_dir = tmp_path / "tool"
    env = write_ssh_env(tmp_path, sshd_server, tmux_socket, POD_TOOL_DIR=str(tool_dir), POD_WHEELHOUSE=str(house),
                        WF_FSM_ENFORCE="0")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    r = inv("bootstrap", timeout=240)
    assert r.returncode == 0 and "from POD_WHEELHOUSE" in r.stdout, r.stdout + r.stderr
    d = tool_dir / f"0.1.0-{tool.build_id()}"
    script = (tmp_path / "pod" / "outputs" / "_tasks" / "tool-install" / "command.sh").read_text()
    assert "--no-index" in script and (d / "wheelhouse" / wheel.name).is_file()
    v = subprocess.run([str(d / "venv" / "bin" / "opsrg"), "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and "opsrg 0.1.0" in v.stdout, v.stderr
    assert json.loads((d / "tool.json").read_text())["build"] == tool.build_id()
    r = inv("bootstrap")  # that build is there: nothing installed again
    assert r.returncode == 0 and "already in" in r.stdout, r.stdout + r.stderr


@pytest.mark.ssh
@pytest.mark.tmux
def test_a_wheelhouse_missing_the_dependencies_fails_bootstrap_saying_how_to_resume(tmp_path, monkeypatch,
                                                                                  tmux_socket, sshd_server):
    house = tmp_path / "house"
    house.mkdir()
    env = write_ssh_env(tmp_path, sshd_server, tmux_socket, POD_TOOL_DIR=str(tmp_path / "tool"),
                        POD_WHEELHOUSE=str(house), WF_FSM_ENFORCE="0")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    r = inv("bootstrap", timeout=120)
    assert r.returncode == 1 and "tool-install" in r.stderr and "POD_WHEELHOUSE" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("bootstrap")
    assert not list((tmp_path / "tool").glob("*/tool.json"))  # not recorded as installed
    r = inv("bootstrap", env={"POD_WHEELHOUSE": str(tmp_path / "nope")})
    assert r.returncode == 2 and "POD_WHEELHOUSE" in r.stderr and "no such folder" in r.stderr, r.stderr
    assert Path(env).is_file()
