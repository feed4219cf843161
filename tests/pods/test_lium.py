"""POD_PROVIDER=lium against a fake `lium` executable on PATH (no account is reachable from
tests): the exact command lines opsrg calls, and a full pod-up whose rented "pod" is the test
sshd."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from opsrg.core.errors import HostError
from opsrg.pods import lium

from sshd import write_ssh_env
from support import inv

FAKE = r'''#!{python}
import json, os, sys
state = os.environ["FAKE_LIUM_STATE"]
with open(state + ".argv", "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
pods = json.load(open(state)) if os.path.exists(state) else []
cmd = sys.argv[1]
if cmd == "ps":
    print(json.dumps(pods))
elif cmd == "up":
    name = sys.argv[sys.argv.index("--name") + 1]
    pods.append({{"index": 1, "id": "0f1e2d3c-aaaa", "huid": "eager-wolf-a1", "name": name,
                  "status": "RUNNING", "config": "1xH100",
                  "ssh_cmd": "ssh " + os.environ["FAKE_LIUM_SSH"]}})
    json.dump(pods, open(state, "w"))
    print("pod created")
elif cmd == "rm":
    pods = [p for p in pods if p["name"] != sys.argv[2]]
    json.dump(pods, open(state, "w"))
else:
    sys.exit(2)
'''


@pytest.fixture
def fake_lium(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "lium"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    state = tmp_path / "lium_state.json"
    monkeypatch.setenv("FAKE_LIUM_STATE", str(state))
    return state


def calls(state) -> list[list[str]]:
    path = f"{state}.argv"
    return [json.loads(ln) for ln in open(path)] if os.path.exists(path) else []


def test_command_lines():
    assert lium.up_argv("H100", "opsrg") == ["lium", "up", "--gpu", "H100", "--name", "opsrg", "--yes"]
    assert lium.up_argv("3", "p") == ["lium", "up", "3", "--name", "p", "--yes"]
    assert lium.up_argv("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "p")[:3] == [
        "lium", "up", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]
    assert lium.ps_argv() == ["lium", "ps", "--format", "json"]
    assert lium.rm_argv("p") == ["lium", "rm", "p", "--yes"]


def test_parse_ssh_cmd():
    assert lium.parse_ssh_cmd("ssh root@203.0.113.7 -p 40022") == ("root", "203.0.113.7", 40022)
    assert lium.parse_ssh_cmd("ssh -p 22 -i ~/.ssh/k ubuntu@host") == ("ubuntu", "host", 22)
    with pytest.raises(HostError):
        lium.parse_ssh_cmd("")


@pytest.mark.ssh
def test_pod_up_rents_records_and_reaches_the_pod(fake_lium, tmp_path, monkeypatch, tmux_socket, sshd_server):
    monkeypatch.setenv("FAKE_LIUM_SSH", f"{sshd_server.user}@127.0.0.1 -p {sshd_server.port}")
    env = write_ssh_env(tmp_path, sshd_server, tmux_socket, LIUM_TARGET="H100", LIUM_POD_NAME="opsrg-test")
    env.write_text(env.read_text().replace("POD_PROVIDER=ssh", "POD_PROVIDER=lium"))
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    r = inv("pod-up")
    assert r.returncode == 0 and "lium pod opsrg-test" in r.stdout, r.stderr
    argvs = calls(fake_lium)
    assert ["up", "--gpu", "H100", "--name", "opsrg-test", "--yes"] in argvs
    assert argvs[0] == ["ps", "--format", "json"]
    rec = json.loads((tmp_path / ".opsrg" / "lium_pod.json").read_text())
    assert (rec["host"], rec["port"], rec["huid"]) == ("127.0.0.1", sshd_server.port, "eager-wolf-a1")
    assert (tmp_path / "pod" / "outputs" / "_tasks").is_dir()  # reached over SSH
    # Again: the pod is reused, not rented twice.
    assert inv("pod-up").returncode == 0
    assert sum(1 for a in calls(fake_lium) if a[0] == "up") == 1
    r = inv("pod-down")
    assert r.returncode == 0 and ["rm", "opsrg-test", "--yes"] in calls(fake_lium)
    assert not (tmp_path / ".opsrg" / "lium_pod.json").exists()


def test_missing_lium_cli_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    from opsrg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="lium.io"):
        lium.list_pods()
