"""One Host contract for LocalHost and SSHHost (a real sshd on loopback), plus SSH specifics:
host keys, unreachable pods, target parsing, and tracked tasks driven over SSH by `inv`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from opsrg.core.errors import HostError, UnreachableError
from opsrg.hosts.local import LocalHost
from opsrg.hosts.ssh import SSHHost, SSHTarget
from opsrg.tracked.manager import TaskManager
from opsrg.tracked.records import TaskState

from support import inv, require


def make_ssh_host(server, known_hosts: Path, retry: float = 3.0) -> SSHHost:
    target = SSHTarget("127.0.0.1", server.user, server.port, str(server.clientkey))
    return SSHHost(target, known_hosts=known_hosts, retry_secs=retry, connect_timeout=3)


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def host(request, tmp_path):
    if request.param == "local":
        yield LocalHost()
        return
    server = request.getfixturevalue("sshd_server")
    h = make_ssh_host(server, tmp_path / "known_hosts")
    yield h
    h.close()


# ------------------------------------------------------------------ the contract
def test_run_exit_codes_output_and_quoting(host, tmp_path):
    r = host.run("echo out; echo err >&2; exit 3", check=False)
    assert (r.exited, r.stdout, r.stderr, r.ok) == (3, "out\n", "err\n", False)
    with pytest.raises(HostError, match="exit 4"):
        host.run("exit 4")
    tricky = ["printf", "%s|", "a b", "it's", '"q"', "$HOME", "`x`", ";", ""]
    assert host.run(tricky).stdout == "a b|it's|\"q\"|$HOME|`x`|;||"


def test_run_env_and_cwd(host, tmp_path):
    r = host.run('echo "$A:$B:$(pwd)"', env={"A": "x y", "B": "it's"}, cwd=str(tmp_path))
    assert r.stdout.strip() == f"x y:it's:{tmp_path}"


def test_files_put_get_exists_read_write(host, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    remote = f"{tmp_path}/pod/deep/er/file.bin"
    host.put(src, remote)
    assert host.exists(remote) and not host.exists(f"{tmp_path}/pod/nope")
    host.get(remote, tmp_path / "back" / "file.bin")
    assert (tmp_path / "back" / "file.bin").read_bytes() == src.read_bytes()
    assert host.read_text(f"{tmp_path}/missing.txt") is None
    target = f"{tmp_path}/pod/new/dir/state.json"
    host.write_text(target, "first", mode=0o600)
    host.write_text(target, "second ü")
    assert host.read_text(target) == "second ü"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    host.write_text(target, "x", mode=0o755)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    leftovers = [p.name for p in Path(target).parent.iterdir() if p.name != "state.json"]
    assert leftovers == []  # no temp files left behind


def test_sync_both_directions(host, tmp_path):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("a")
    (local / "sub" / "b.txt").write_text("b" * 5000)
    (local / "skip.log").write_text("no")
    pod = f"{tmp_path}/pod/tree"
    dry = host.sync(str(local), pod, to_host=True, dry_run=True, excludes=["*.log"])
    assert "a.txt" in dry.stdout and not Path(pod, "a.txt").exists()
    host.sync(str(local), pod, to_host=True, excludes=["*.log"])
    assert Path(pod, "sub", "b.txt").read_text() == "b" * 5000 and not Path(pod, "skip.log").exists()
    again = host.sync(str(local), pod, to_host=True, excludes=["*.log"])
    assert not [ln for ln in again.stdout.splitlines() if ln[1:2] == "f"]  # nothing re-sent
    Path(pod, "c.txt").write_text("c")
    back = tmp_path / "back"
    host.sync(pod, str(back), to_host=False)
    assert sorted(p.name for p in back.rglob("*.txt")) == ["a.txt", "b.txt", "c.txt"]
    (local / "a.txt").unlink()
    host.sync(str(local), pod, to_host=True, delete=True, excludes=["*.log"])
    assert not Path(pod, "a.txt").exists()


def test_sync_resumes_a_cut_transfer_from_the_partial_folder(host, tmp_path):
    # a cut pass leaves its copy in .rsync-partial/, never a truncated file under the real name;
    # the next pass finishes the file from there and removes the folder
    local = tmp_path / "local"
    local.mkdir()
    data = os.urandom(3_000_000)
    (local / "big.bin").write_bytes(data)
    pod = Path(tmp_path, "pod")
    (pod / ".rsync-partial").mkdir(parents=True)
    (pod / ".rsync-partial" / "big.bin").write_bytes(data[:1_000_000])
    host.sync(str(local), str(pod), to_host=True)
    assert (pod / "big.bin").read_bytes() == data
    assert not (pod / ".rsync-partial").exists()


@pytest.mark.tmux
def test_tracked_tasks_contract(host, tmp_path, tmux_socket):
    tm = TaskManager(host, f"{tmp_path}/outputs", tmux_socket=tmux_socket, tmux_session="t", kill_grace=1)
    tm.run("ok", "echo hello; echo oops >&2")
    tm.run("bad", "exit 7")
    tm.run("slow", "sleep 30", timeout_secs=1)
    rec, waited_out = tm.wait("ok", timeout=20)
    assert not waited_out and rec.state == TaskState.SUCCESS and rec.exit_code == 0
    assert "hello" in host.read_text(tm.paths("ok").log)
    rec, _ = tm.wait("bad", timeout=20)
    assert rec.state == TaskState.FAILED and rec.exit_code == 7
    rec, _ = tm.wait("slow", timeout=20)
    assert rec.state == TaskState.TIMED_OUT
    assert {r.id: r.state for r in tm.list()} == {
        "ok": TaskState.SUCCESS, "bad": TaskState.FAILED, "slow": TaskState.TIMED_OUT}
    assert json.loads(host.read_text(tm.paths("ok").status))["host"]


# ------------------------------------------------------------------ SSH specifics
@pytest.mark.ssh
def test_new_host_key_recorded_and_changed_key_refused(sshd_server, tmp_path):
    kh = tmp_path / "known_hosts"
    h = make_ssh_host(sshd_server, kh)
    h.run("true")
    line = kh.read_text().strip()
    assert line.startswith(f"[127.0.0.1]:{sshd_server.port} ssh-ed25519 ")
    h.run("true")  # a second connection does not add the host again
    h.close()
    h2 = make_ssh_host(sshd_server, kh)
    h2.run("true")
    assert kh.read_text().strip() == line
    # The pod "changes" its key: the recorded one is now some other key.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    kh.write_text(f"[127.0.0.1]:{sshd_server.port} {other[0]} {other[1]}\n")
    t0 = time.monotonic()
    with pytest.raises(HostError, match="host key changed") as e:
        make_ssh_host(sshd_server, kh).run("true")
    assert not isinstance(e.value, UnreachableError) and time.monotonic() - t0 < 3  # refused, not retried
    assert "known_hosts" in str(e.value)
    with pytest.raises(HostError, match="host key changed"):
        make_ssh_host(sshd_server, kh).sync(str(tmp_path), f"{tmp_path}/copy", to_host=False)


@pytest.mark.ssh
def test_unreachable_is_reported_as_unreachable(tmp_path):
    require("ssh", "rsync over ssh")
    from sshd import free_port

    h = SSHHost(SSHTarget("127.0.0.1", "root", free_port()), known_hosts=tmp_path / "kh", retry_secs=1,
                connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(UnreachableError) as e:
        h.run("true")
    assert 0.5 < time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "127.0.0.1" in msg and "run 'true'" in msg and "last error" in msg and "inv pod-status" in msg
    with pytest.raises(UnreachableError, match="rsync"):
        h.sync(str(tmp_path), "/tmp/x", to_host=True, dry_run=True)


def test_target_parsing(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text("Host gpu1\n  HostName 10.1.2.3\n  User ubuntu\n  Port 2200\n  IdentityFile ~/keys/gpu\n")
    t = SSHTarget.parse("gpu1", ssh_config=str(cfg))
    assert (t.host, t.user, t.port, t.key) == ("10.1.2.3", "ubuntu", 2200, os.path.expanduser("~/keys/gpu"))
    t = SSHTarget.parse("alice@example.org:2222", key="/k", ssh_config=str(cfg))
    assert (t.host, t.user, t.port, t.key, t.name) == ("example.org", "alice", 2222, "/k", "alice@example.org:2222")
    assert t.known_hosts_name == "[example.org]:2222"
    from opsrg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="port"):
        SSHTarget.parse("a@b:xx")


@pytest.mark.ssh
@pytest.mark.tmux
def test_cli_tracked_tasks_run_on_the_pod(ssh_project):
    assert inv("pod-up").returncode == 0
    r = inv("task-run", "--id", "hello", "--cmd", "echo from-pod $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    assert inv("task-run", "--id", "bad", "--cmd", "exit 5").returncode == 0
    r = inv("task-wait", "--id", "hello")
    assert r.returncode == 0 and "success" in r.stdout, r.stderr
    assert inv("task-wait", "--id", "bad").returncode == 1
    r = inv("task-list", "--json")
    recs = {t["id"]: t for t in json.loads(r.stdout)}
    assert recs["hello"]["state"] == "success" and recs["bad"]["exit_code"] == 5
    log = inv("task-logs", "--id", "hello").stdout
    assert "from-pod 127.0.0.1" in log  # it really ran in an SSH session
    # the pod's own environment, plus what RUN_ENV_PASS names from this shell, and nothing else of it
    env = {"RUN_ENV_PASS": "MY_*", "MY_VAR": "mine too", "MY_TOKEN": "tok-5e1f", "OTHER": "not-passed"}
    r = inv("task-run", "--id", "env", "--cmd", 'echo "my=$MY_VAR other=${OTHER:-unset} token=${#MY_TOKEN}"', env=env)
    assert r.returncode == 0, r.stderr
    assert inv("task-wait", "--id", "env").returncode == 0
    assert "my=mine too other=unset token=8" in inv("task-logs", "--id", "env").stdout
    out = Path(json.loads(inv("config-show", "--json").stdout)["settings"]["OPS_REMOTE_OUTPUTS_DIR"]["value"])
    assert (out / "_tasks" / "env" / "status.json").is_file()
    assert not [p for p in out.rglob("*") if p.is_file() and b"tok-5e1f" in p.read_bytes()]
    assert inv("fsm-reset", "POD_READY").returncode == 0
    t0 = time.monotonic()
    r = inv("fsm-status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "POD_READY"
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------ a pod without SFTP
NO_SFTP = pytest.param({"sftp": False}, id="no-sftp")


@pytest.mark.ssh
@pytest.mark.parametrize("sshd_private", [NO_SFTP], indirect=True)
def test_no_sftp_subsystem_falls_back_to_shell_commands_at_once(sshd_private, tmp_path):
    """paramiko's open_sftp fails with SSHException('Channel closed.') there: not a dropped link, so
    it is not retried for OPS_SSH_RETRY_SECS; every file operation goes through exec channels."""
    h = make_ssh_host(sshd_private, tmp_path / "known_hosts", retry=30.0)
    try:
        t0 = time.monotonic()
        assert h.home == os.path.expanduser("~") or h.home.startswith("/")
        assert "no SFTP subsystem" in h.no_sftp and "Subsystem sftp" in h.no_sftp and sshd_private.spec in h.no_sftp
        target = f"{tmp_path}/pod/it's a $(dir)/f.txt"
        assert not h.exists(target) and h.read_text(target) is None
        h.write_text(target, "héllo\n", mode=0o600)
        assert h.exists(target) and h.read_text(target) == "héllo\n"
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
        assert [p.name for p in Path(target).parent.iterdir()] == ["f.txt"]  # no temp file left
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(300_000))
        h.put(blob, f"{tmp_path}/pod/blob.bin")
        h.get(f"{tmp_path}/pod/blob.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
        with pytest.raises(HostError, match="no such file"):
            h.get(f"{tmp_path}/pod/missing", tmp_path / "x")
        assert time.monotonic() - t0 < 10  # never the 30 s retry budget
    finally:
        h.close()


@pytest.mark.ssh
@pytest.mark.tmux
@pytest.mark.parametrize("sshd_private", [NO_SFTP], indirect=True)
def test_cli_works_on_a_pod_without_sftp(sshd_private, tmp_path, monkeypatch, tmux_socket):
    from opsrg.core.settings import KNOWN_KEYS

    from sshd import write_ssh_env

    for k in list(os.environ):
        if k.upper() in KNOWN_KEYS:
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPSRG_ENV_FILE", str(write_ssh_env(tmp_path, sshd_private, tmux_socket,
                                                           OPS_SSH_RETRY_SECS="30")))
    t0 = time.monotonic()
    r = inv("pod-up")
    assert r.returncode == 0 and "unreachable" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 15
    assert inv("task-run", "--id", "hi", "--cmd", "seq 1 50000; echo done-on-pod").returncode == 0
    r = inv("task-wait", "--id", "hi", "--timeout-secs", "30")
    assert r.returncode == 0 and "success" in r.stdout, r.stdout + r.stderr
    log = inv("task-logs", "--id", "hi").stdout
    assert "\n49999\n50000\ndone-on-pod\n" in log and log.startswith("1\n2\n")
    assert json.loads(inv("task-status", "--id", "hi", "--json").stdout)["exit_code"] == 0


def test_a_failed_command_s_error_carries_its_result():
    from opsrg.core.errors import HostError

    with pytest.raises(HostError) as e:
        LocalHost().run("echo out; echo err >&2; exit 7")
    r = e.value.result
    assert r is not None and r.exited == 7 and r.stdout == "out\n" and r.stderr == "err\n"
    assert "exit 7" in str(e.value)
