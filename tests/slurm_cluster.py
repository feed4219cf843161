"""Pytest plugin: a real single-node Slurm cluster for the ``slurm`` tests.

Brought up once per session with the project's ``scripts/slurm-local-up.sh`` in a dedicated
``SLURM_LOCAL_DIR`` (reused when already up), with accounting ``dbd`` when it comes up within
``OPSRG_TEST_SLURM_DBD_SECS`` (default 40 s), else ``none``; taken down at the end. Skipped
locally, failed in CI, when the Slurm binaries are missing.

Each checkout, and under pytest-xdist each worker, has clusters of its own, so that test runs of
two checkouts, or two workers of one run, never share one: the folders end in the checkout's tag
(and ``-gwN``), and each cluster's four ports (slurmctld, slurmd, slurmdbd, MariaDB) are a block
in 10000-29999 drawn from a hash of checkout, worker and cluster, or the next free one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UP, DOWN = REPO / "scripts" / "slurm-local-up.sh", REPO / "scripts" / "slurm-local-down.sh"


@dataclass
class SlurmCluster:
    dir: Path
    conf: str
    accounting: str
    up_secs: float

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.conf}


def _dir(override: str | None, default: str) -> Path:
    """``override`` (``OPSRG_TEST_SLURM_..._DIR``; ``-gwN`` appended under xdist) or ``default`` with
    this checkout's (and worker's) tag appended."""
    from support import WORKER, instance_tag

    if override:
        return Path(f"{override}-{WORKER}" if WORKER else override)
    return Path(f"{default}-{instance_tag()}")


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons bind: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError, IndexError):
        return False


def _port(d: Path, requested: str | None, name: str) -> str:
    """The slurmctld port of cluster ``name`` in ``d`` (slurmd +1, slurmdbd +2, MariaDB +3): the one asked
    for (plus 1000 per xdist worker); else the one its live controller already listens on; else the
    block this checkout, worker and cluster hash to, or the next free one."""
    from support import WORKER, worker_index

    if requested:
        return str(int(requested) + 1000 * worker_index())
    conf = d / "etc" / "slurm.conf"
    if conf.exists() and _alive(d / "run" / "slurmctld.pid"):
        m = re.search(r"^SlurmctldPort=(\d+)$", conf.read_text(), re.M)
        if m:
            return m.group(1)
    h = int(hashlib.sha256(f"{REPO}|{WORKER}|{name}".encode()).hexdigest(), 16)
    for i in range(5000):
        p = 10000 + (h + i) % 5000 * 4
        if all(_free(p + k) for k in range(4)):
            return str(p)
    raise RuntimeError("no 4 free ports in 10000-29999 for a Slurm cluster")


def _up(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def slurm_cluster():
    from support import require

    for tool in ("sbatch", "slurmctld", "slurmd", "munged"):
        require(tool, "the slurm tests need a real single-node cluster")
    d = _dir(os.environ.get("OPSRG_TEST_SLURM_DIR"), "/tmp/opsrg-test-slurm")
    port = _port(d, os.environ.get("OPSRG_TEST_SLURM_PORT"), "session")
    base = {**os.environ, "SLURM_LOCAL_DIR": str(d), "SLURM_LOCAL_PORT": port,
            "SLURM_LOCAL_MIN_JOB_AGE": "3600", "SLURM_LOCAL_INSTALL": "0"}
    t0 = time.monotonic()
    acct = os.environ.get("OPSRG_TEST_SLURM_ACCT", "")
    r = None
    if acct in ("", "dbd"):
        try:
            r = _up({**base, "SLURM_LOCAL_ACCT": "dbd"}, float(os.environ.get("OPSRG_TEST_SLURM_DBD_SECS", "40")))
            acct = "dbd" if r.returncode == 0 else ""
        except subprocess.TimeoutExpired:
            acct = ""
        if not acct:
            subprocess.run(["bash", str(DOWN)], env=base, capture_output=True, timeout=60, check=False)
    if not acct or acct == "none":
        acct = "none"
        r = _up({**base, "SLURM_LOCAL_ACCT": "none"}, 60)
    if r is None or r.returncode != 0:
        pytest.fail(f"slurm-local-up.sh failed:\n{r.stderr if r else ''}")
    conf = str(d / "etc" / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    cluster = SlurmCluster(d, conf, acct, time.monotonic() - t0)
    yield cluster
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if os.environ.get("OPSRG_TEST_SLURM_KEEP", "") != "1":
        subprocess.run(["bash", str(DOWN)], env=base, capture_output=True, timeout=120, check=False)


# ------------------------------------------------------------- a module's own cluster
@dataclass
class PrivateCluster:
    """A cluster of one test module that breaks it (kills its daemons, fails its node, preempts)."""

    dir: Path
    env: dict[str, str]  # for the up/down scripts

    @property
    def conf(self) -> str:
        return str(self.dir / "etc" / "slurm.conf")

    def up(self) -> float:
        """Bring up (or back) whatever of it is down, as the fixture did; seconds taken."""
        t0 = time.monotonic()
        r = _up(self.env, 90)
        assert r.returncode == 0, r.stderr
        return time.monotonic() - t0

    def ctld_pid(self) -> int:
        return int((self.dir / "run" / "slurmctld.pid").read_text())


def scheduler(d: Path, *argv: str) -> subprocess.CompletedProcess:
    """A Slurm command against the cluster in folder ``d``."""
    return subprocess.run(list(argv), env={**os.environ, "SLURM_CONF": str(d / "etc" / "slurm.conf")},
                          capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def private_cluster(name: str, **knobs: str) -> Iterator[PrivateCluster]:
    """Its own folder and port (``OPSRG_TEST_SLURM_<NAME>_DIR``/``_PORT`` override them; per worker
    under xdist, as the session cluster's), no accounting, ``slurm-local-up.sh`` knobs as keywords;
    purged at the end."""
    from support import require

    for tool in ("sbatch", "slurmctld", "slurmd", "munged", "scontrol", "sinfo"):
        require(tool, f"the slurm {name} tests need a real single-node cluster")
    var = "OPSRG_TEST_SLURM_" + name.upper().replace("-", "_")
    d = _dir(os.environ.get(var + "_DIR"), f"/tmp/opsrg-test-slurm-{name}")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(d), "SLURM_LOCAL_PORT": _port(d, os.environ.get(var + "_PORT"), name),
           "SLURM_LOCAL_ACCT": "none", "SLURM_LOCAL_MIN_JOB_AGE": "3600", "SLURM_LOCAL_INSTALL": "0", **knobs}
    c = PrivateCluster(d, env)
    c.up()
    try:
        yield c
    finally:
        if os.environ.get("OPSRG_TEST_SLURM_KEEP", "") != "1":
            subprocess.run(["bash", str(DOWN), "--purge"], env=env, capture_output=True, timeout=120, check=False)
