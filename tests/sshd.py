"""A real sshd on 127.0.0.1 as a pytest plugin: the "pod" of the SSH tests.

``sshd_server`` (session): ``/usr/sbin/sshd`` on a free port, host and client keys generated
in a temp folder, torn down at the end. ``ssh_project`` (per test): a project whose
workflow.env says POD_PROVIDER=ssh and points at it, with the pod's outputs in a temp folder.
Tests using them carry ``@pytest.mark.ssh``: they skip when sshd is missing, and fail in CI.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support import REPO, retry_until, unavailable

SSHD_BIN = "/usr/sbin/sshd"

CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {d}/hostkey
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv HOME={d}/home TMUX_TMPDIR={tmux_tmpdir} PIP_CACHE_DIR={pip_cache}
"""


_PORTS = itertools.count()
# opsrg's own install on the test pods: one per build for the whole run (its install is locked on
# the pod), instead of one per test home
POD_TOOL_DIR = REPO / ".pytest_cache" / "opsrg-pod-tool"


def free_port() -> int:
    """A port of 127.0.0.1 where nothing listens, from a block of 100 of this checkout and worker in
    30000-32699, below the kernel's ephemeral range (32768 on): no client socket, ``bind(0)``, other
    xdist worker or (most likely) test run of another checkout takes it, also while an sshd of ours
    is down for a restart. Each call gives the next port of the block."""
    from support import CHECKOUT, worker_index

    base = 30000 + (int(CHECKOUT, 16) + worker_index()) % 27 * 100
    for _ in range(100):
        port = base + next(_PORTS) % 100
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {base}-{base + 99}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(1.0)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class SSHD:
    """One sshd: start, stop (listener and every session), restart on the same port and key."""

    def __init__(self, root: Path, sftp: bool = True) -> None:
        self.dir = root
        self.port = free_port()
        self.hostkey = root / "hostkey"
        self.clientkey = root / "clientkey"
        for key in (self.hostkey, self.clientkey):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(f"{self.clientkey}.pub", root / "authorized_keys")
        os.chmod(root / "authorized_keys", 0o600)
        # The pod user's HOME is an empty folder: bash sources ~/.bashrc for every SSH command, and
        # a developer's rc files (pyenv init: 0.2 s) would otherwise slow each one down.
        (root / "home").mkdir()
        # The pod's tmux servers go where this test run's go (tests/conftest.py).
        # pip on the pod (opsrg's own install there) shares this machine's download cache.
        pip_cache = os.environ.get("PIP_CACHE_DIR") or os.path.expanduser("~/.cache/pip")
        config = CONFIG.format(port=self.port, d=root, tmux_tmpdir=os.environ.get("TMUX_TMPDIR", "/tmp"),
                               pip_cache=pip_cache)
        if not sftp:  # a pod whose sshd offers no SFTP subsystem (shell commands only)
            config = "".join(ln for ln in config.splitlines(keepends=True) if not ln.startswith("Subsystem sftp"))
        (root / "sshd_config").write_text(config)
        self.user = _user()

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        p = subprocess.run([SSHD_BIN, "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"sshd failed to start ({p.returncode}): {p.stderr}")
        retry_until(lambda: _answers(self.port), 10, what=f"sshd on port {self.port}")

    def pid(self) -> int | None:
        try:
            return int((self.dir / "sshd.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _session_pids(self, parent: int) -> list[int]:
        """Per-connection sshd processes: the children of the listener (started by this fixture)."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                out.append(int(d.name))
        return out

    def stop(self, sessions: bool = True) -> None:
        """Kill the listener and, with ``sessions``, every open connection (a pod going down)."""
        pid = self.pid()
        if pid is None:
            return
        children = self._session_pids(pid) if sessions else []
        for p in [pid, *children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (self.dir / "sshd.pid").unlink(missing_ok=True)
        retry_until(lambda: not _answers(self.port), 5, what="sshd to stop")

    def restart(self) -> None:
        self.stop()
        self.start()


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return "root"


def _require_sshd() -> None:
    missing = [t for t in ("ssh", "rsync", "ssh-keygen") if shutil.which(t) is None]
    if not os.path.exists(SSHD_BIN):
        missing.append(SSHD_BIN)
    if missing:
        unavailable(f"not installed: {', '.join(missing)} (apt-get install openssh-server openssh-client rsync)")


def _prune_tool_builds() -> None:
    """Drop the pod installs of other builds than this one (each is a venv of its own)."""
    from opsrg.pods import tool

    keep = f"-{tool.build_id()}"
    for d in POD_TOOL_DIR.glob("*") if POD_TOOL_DIR.is_dir() else []:
        if not d.name.endswith(keep):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_server():
    _require_sshd()
    _prune_tool_builds()
    root = Path(tempfile.mkdtemp(prefix="opsrg-sshd-"))
    server = SSHD(root)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sshd_private(request, tmp_path_factory):
    """An sshd of this test's own, for tests that kill or change it. Indirect parameters are
    SSHD's options: ``@pytest.mark.parametrize("sshd_private", [{"sftp": False}], indirect=True)``."""
    _require_sshd()
    server = SSHD(tmp_path_factory.mktemp("sshd"), **getattr(request, "param", {}))
    server.start()
    yield server
    server.stop()


def write_ssh_env(root: Path, server: SSHD, tmux_socket: str, **extra: str) -> Path:
    pod = root / "pod"
    values = {
        "POD_PROVIDER": "ssh",
        "OPS_DEFAULT_HOST": server.spec,
        "OPS_SSH_KEY": str(server.clientkey),
        "OPS_SSH_RETRY_SECS": "3",
        "OPS_SSH_CONNECT_TIMEOUT": "3",
        "OPS_REMOTE_OUTPUTS_DIR": str(pod / "outputs"),
        "OPS_REMOTE_REPO": str(pod / "repo"),
        "REMOTE_ENV_PATH": str(pod / "workflow.env"),
        "RUN_OUT_LOCAL_ROOT": str(pod / "scratch"),
        "REMOTE_PYTHON_BIN": sys.executable,
        "LOCAL_ARTIFACTS_DIR": str(root / "artifacts"),
        "OPS_TMUX_SOCKET": tmux_socket,
        "WF_TMUX_SESSION": "t",
        "TASK_KILL_GRACE_SECS": "2",
        "POD_TOOL_DIR": str(POD_TOOL_DIR),
        **extra,
    }
    env = root / "workflow.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return env


@pytest.fixture
def ssh_project(tmp_path, monkeypatch, tmux_socket, sshd_server):
    """A throw-away project on the test sshd: POD_PROVIDER=ssh, outputs under tmp_path/pod."""
    from opsrg.core.settings import KNOWN_KEYS

    for k in list(os.environ):
        if k.upper() in KNOWN_KEYS:
            monkeypatch.delenv(k, raising=False)
    env = write_ssh_env(tmp_path, sshd_server, tmux_socket)
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    return tmp_path
