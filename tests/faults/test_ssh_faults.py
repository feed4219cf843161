"""Fault injection on the SSH link: sshd (listener and every live session) is killed at random
moments during `inv push`, `inv fetch-run` and while tracked tasks run on the pod.

The pod is a real sshd on 127.0.0.1 (tests/sshd.py), so its files are also readable directly:
the tests compare what the commands report with what is really on disk. Each test prints one
``FIGURE`` line (trials, faults, completed, failed clearly, lost, corrupt); docs/reliability_ssh.md
records them. Nothing may be lost, nothing reported complete unless every checksum matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.core import layout
from opsrg.core.errors import UnreachableError
from opsrg.hosts.ssh import LinkDropped, SSHHost, SSHTarget
from opsrg.pods import transfer
from opsrg.tracked.records import TaskState

from sshd import write_ssh_env
from support import REPO, retry_until

pytestmark = pytest.mark.ssh

INV = str(Path(sys.executable).parent / "inv")
PARTIAL = ".rsync-partial"


# ------------------------------------------------------------------ helpers
def digests(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (hidden ones included)."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


# push's own record in the checkout (when, from where): opsrg's, not a file of the pushed tree
PUSHED = (layout.PUSHED,)


def compare(want: dict[str, str], got: dict[str, str]) -> tuple[int, int, int]:
    """(lost, corrupt, stray): files missing, files with another sha256, files that should not be there."""
    lost = sum(1 for k in want if k not in got)
    corrupt = sum(1 for k in want if k in got and got[k] != want[k])
    stray = sum(1 for k in got if k not in want)
    return lost, corrupt, stray


def make_tree(root: Path, rng: random.Random, n: int, big: int, small_max: int, big_size: int) -> int:
    """``n`` files in nested folders: ``big`` of ``big_size`` bytes, the rest up to ``small_max``."""
    total = 0
    for i in range(n):
        size = big_size if i < big else rng.randint(0, small_max)
        p = root / f"d{i % 7}" / f"s{i % 3}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        total += size
    return total


def start_inv(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([INV, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def run_inv(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([INV, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class Outage:
    """Kill sshd ``at`` seconds from now, or sooner once ``soon()`` is true (a share of the transfer
    has arrived: on a busy machine a command may take longer or shorter than the clean run that
    ``at`` was drawn from, and the kill must still land while it runs); bring it back after
    ``down_for`` seconds, or, with ``down_for=None``, once ``proc`` has exited (the command must
    give up on its own)."""

    def __init__(self, server, proc: subprocess.Popen, at: float, down_for: float | None,
                 soon=lambda: False) -> None:
        self.server, self.proc, self.at, self.down_for, self.soon = server, proc, at, down_for, soon
        self.hit = False  # the command was still running when the link went down
        self.down_at = self.up_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.at
        while time.monotonic() < deadline and not self.soon():
            time.sleep(0.02)
        self.hit = self.proc.poll() is None
        self.server.stop()
        self.down_at = time.monotonic()
        if self.down_for is None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(self.down_for)
        self.server.start()
        self.up_at = time.monotonic()

    def join(self) -> None:
        self.thread.join(90)
        assert not self.thread.is_alive(), "sshd was not restarted"


def arrived(root: Path, share: float, total: int):
    """``soon`` of an Outage: at least ``share`` of the ``total`` files of a transfer are in place
    under ``root`` (rsync moves each finished file there from its temp folder)."""
    need = max(1, int(share * total))

    def soon() -> bool:
        n = 0
        for _, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (PARTIAL, ".opsrg-tmp")]
            n += len(files)
        return n >= need

    return soon


def clear_failure(p: subprocess.CompletedProcess | tuple[int, str], host: str, resume: str) -> bool:
    """Exit 3 (UnreachableError), with the host, the operation and the command that resumes it."""
    rc, err = p if isinstance(p, tuple) else (p.returncode, p.stderr)
    operation = any(op in err for op in ("rsync", "run '", 'run "', "read ", "exists ", "write ", "home"))
    return rc == UnreachableError.exit_code and host in err and "unreachable" in err and operation \
        and resume in err


# ------------------------------------------------------------------ 1. push
def test_sshd_killed_during_push(sshd_private, tmp_path, monkeypatch, tmux_socket):
    """Each faulted push completes (remote tree == local tree) or exits 3 naming host, operation and
    `inv push --src ...`; the re-run after sshd is back completes and verifies."""
    env = write_ssh_env(tmp_path, sshd_private, tmux_socket, WF_FSM_ENFORCE="0",
                        OPS_RSYNC_BWLIMIT_KBPS="2500", OPS_SSH_RETRY_SECS="20")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    rng = random.Random(20240611)
    src = tmp_path / "code"
    nbytes = make_tree(src, rng, n=200, big=6, small_max=12_000, big_size=500_000)
    want = digests(src)
    repo = tmp_path / "pod" / "repo"
    resume = f"inv push --src {src}"

    t0 = time.monotonic()
    base = run_inv("push", "--src", str(src))
    base_s = time.monotonic() - t0
    assert base.returncode == 0, base.stderr
    assert compare(want, digests(repo, skip=PUSHED)) == (0, 0, 0)

    trials, faults, completed, failed_clearly, unclear, lost, corrupt, stray = 6, 0, 0, 0, 0, 0, 0, 0
    reruns_ok = 0
    for i in range(trials):
        shutil.rmtree(repo)
        stays_down = i % 2 == 1  # odd trials: the pod stays down past the retry budget
        proc = start_inv("push", "--src", str(src), env={"OPS_SSH_RETRY_SECS": "2"} if stays_down else None)
        share = rng.uniform(0.15, 0.9)
        out = Outage(sshd_private, proc, at=share * base_s, down_for=None if stays_down else 1.0,
                     soon=arrived(repo, share, len(want)))
        _, stderr = proc.communicate(timeout=60)
        out.join()
        faults += out.hit
        got = digests(repo, skip=PUSHED)
        if proc.returncode == 0:
            completed += 1
            n_lost, n_corrupt, n_stray = compare(want, got)
            lost, corrupt, stray = lost + n_lost, corrupt + n_corrupt, stray + n_stray
            if n_stray:
                print(f"\ntrial {i}: stray after a completed push: {sorted(set(got) - set(want))}")
            continue
        if clear_failure((proc.returncode, stderr), sshd_private.spec, resume):
            failed_clearly += 1
        else:
            unclear += 1
            print(f"\nunclear push failure (exit {proc.returncode}): {stderr}")
        again = run_inv("push", "--src", str(src))
        got = digests(repo, skip=PUSHED)
        n_lost, n_corrupt, n_stray = compare(want, got)
        if n_stray:
            print(f"\ntrial {i}: stray after a re-run push: {sorted(set(got) - set(want))}")
        reruns_ok += again.returncode == 0 and (n_lost, n_corrupt, n_stray) == (0, 0, 0)
        lost, corrupt, stray = lost + n_lost, corrupt + n_corrupt, stray + n_stray
    print(f"\nFIGURE sshd killed during push ({len(want)} files, {nbytes / 1e6:.1f} MB, clean push {base_s:.1f}s): "
          f"trials={trials} faults={faults} completed={completed} failed_clearly={failed_clearly} "
          f"unclear={unclear} reruns_ok={reruns_ok}/{trials - completed} lost={lost} corrupt={corrupt} stray={stray}")
    assert faults >= trials - 1, "the fault landed after the push ended too often: the test proves little"
    assert unclear == 0 and lost == 0 and corrupt == 0 and stray == 0
    assert completed + failed_clearly == trials and reruns_ok == trials - completed


# ------------------------------------------------------------------ 2. tracked tasks
def _pod_state(ctx: Context, task_id: str) -> dict:
    return json.loads(Path(ctx.tasks.paths(task_id).status).read_text())


@pytest.mark.tmux
def test_sshd_down_while_tasks_run(sshd_private, tmp_path, monkeypatch, tmux_socket):
    """Tasks keep running in the pod's tmux while sshd is down; task-status says 'unreachable'
    (exit 3) and changes nothing; task-wait, riding through the outage or started after it,
    returns each task's true final state. No task is marked lost or failed because of the link."""
    env = write_ssh_env(tmp_path, sshd_private, tmux_socket, OPS_SSH_RETRY_SECS="30")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    assert run_inv("pod-up").returncode == 0
    ctx = Context.load()
    n, run_for = 6, 10.0
    expect = {f"t{i}": (1 if i % 3 == 2 else 0) for i in range(n)}  # every third task fails with exit 1
    # Each task runs at least run_for seconds, and on until the test lets it end (file `go` on the pod):
    # on a busy machine the task-status calls below may take longer than run_for, and the tasks must
    # still be running while they answer.
    go = tmp_path / "pod" / "go"
    for tid, code in expect.items():
        ctx.tasks.run(tid, f"sleep {run_for}; while [ ! -e {go} ]; do sleep 0.1; done; "
                           f"echo finished {tid} > done-{tid}; exit {code}", cwd=str(tmp_path / "pod"))
    ctx.host.close()
    t0 = time.monotonic()
    while not all(_pod_state(ctx, t)["state"] == "running" for t in expect):
        assert time.monotonic() - t0 < 20, "tasks did not start"
        time.sleep(0.05)
    # Half the waiters are already polling when the link goes down; they must ride through it.
    riders = {t: start_inv("task-wait", "--id", t) for t in list(expect)[: n // 2]}
    time.sleep(0.8)
    sshd_private.stop()
    down_at = time.monotonic()
    # While down: task-status on every task answers 'unreachable', never a task state, and the
    # record on the pod is untouched.
    before = {t: Path(ctx.tasks.paths(t).status).read_bytes() for t in expect}
    status = {t: start_inv("task-status", "--id", t, env={"OPS_SSH_RETRY_SECS": "1"}) for t in expect}
    unreachable = changed = 0
    for p in status.values():
        _, err = p.communicate(timeout=30)
        unreachable += clear_failure((p.returncode, err), sshd_private.spec, "inv pod-status")
    still_running = sum(_pod_state(ctx, t)["state"] == "running" for t in expect)
    changed = sum(Path(ctx.tasks.paths(t).status).read_bytes() != before[t] for t in expect)
    go.touch()
    # The tasks run to their end on the pod with no link at all.
    while not all(TaskState(_pod_state(ctx, t)["state"]).is_terminal for t in expect):
        assert time.monotonic() - down_at < 30, "tasks did not finish on the pod"
        time.sleep(0.1)
    finished_while_down = sum((tmp_path / "pod" / f"done-{t}").is_file() for t in expect)
    time.sleep(0.5)
    sshd_private.start()
    outage_s = time.monotonic() - down_at
    rcs = {}
    for t, p in riders.items():
        p.communicate(timeout=60)
        rcs[t] = p.returncode
    for t in expect:
        if t not in rcs:
            rcs[t] = run_inv("task-wait", "--id", t).returncode
    true_state = lost = failed_by_link = 0
    for t, code in expect.items():
        rec = ctx.tasks.read(t)
        lost += rec.reason == "lost"
        ok = rec.state == (TaskState.SUCCESS if code == 0 else TaskState.FAILED) and rec.exit_code == code
        true_state += ok and rcs[t] == code
        if not (ok and rcs[t] == code):
            print(f"\n{t}: task-wait exit {rcs[t]}, record {rec.state} exit {rec.exit_code} {rec.reason!r}")
        failed_by_link += rec.state == TaskState.FAILED and code == 0
    ctx.host.close()
    print(f"\nFIGURE sshd down while tasks run: tasks={n} outage={outage_s:.1f}s "
          f"status_calls_while_down={len(status)} exit3_unreachable={unreachable} record_changed={changed} "
          f"still_running_during_calls={still_running} finished_while_down={finished_while_down} "
          f"waiters_through_outage={len(riders)} true_final_state={true_state}/{n} lost={lost} "
          f"failed_by_link={failed_by_link}")
    assert unreachable == n and changed == 0 and still_running == n
    assert finished_while_down == n and true_state == n and lost == 0 and failed_by_link == 0


# ------------------------------------------------------------------ 3. fetch-run
def test_sshd_killed_during_fetch_run(sshd_private, tmp_path, monkeypatch, tmux_socket):
    """No fetch is ever reported complete (FETCHED.json) unless every file's sha256 matches the pod's;
    a fetch cut for good exits 3 with `inv fetch-run ID`, and that re-run completes."""
    env = write_ssh_env(tmp_path, sshd_private, tmux_socket, OPS_RSYNC_BWLIMIT_KBPS="2500",
                        OPS_SSH_RETRY_SECS="20")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    assert run_inv("pod-up").returncode == 0
    rng = random.Random(7)
    outputs = tmp_path / "pod" / "outputs"
    artifacts = tmp_path / "artifacts"
    trials = 6
    for i in range(trials + 1):
        make_tree(outputs / f"run-{i}", rng, n=40, big=4, small_max=40_000, big_size=700_000)

    t0 = time.monotonic()
    base = run_inv("fetch-run", "run-0")
    base_s = time.monotonic() - t0
    assert base.returncode == 0, base.stderr
    assert compare(digests(outputs / "run-0"), digests(artifacts / "run-0", (transfer.FETCHED,))) == (0, 0, 0)

    faults = completed = failed_clearly = unclear = reruns_ok = 0
    false_complete = lost = corrupt = 0
    for i in range(1, trials + 1):
        run_id = f"run-{i}"
        want = digests(outputs / run_id)
        local = artifacts / run_id
        stays_down = i % 2 == 0
        proc = start_inv("fetch-run", run_id, env={"OPS_SSH_RETRY_SECS": "2"} if stays_down else None)
        share = rng.uniform(0.15, 0.9)
        out = Outage(sshd_private, proc, at=share * base_s, down_for=None if stays_down else 1.0,
                     soon=arrived(local, share, len(want)))
        _, stderr = proc.communicate(timeout=60)
        out.join()
        faults += out.hit
        got = digests(local, (transfer.FETCHED,))
        marked = (local / transfer.FETCHED).is_file()
        bad = marked and compare(want, {k: v for k, v in got.items() if PARTIAL not in k}) != (0, 0, 0)
        bad = bad or (marked != (proc.returncode == 0))
        if bad:
            print(f"\ntrial {i}: exit {proc.returncode}, marked={marked}, {compare(want, got)}: {stderr}")
        false_complete += bad
        if proc.returncode == 0:
            completed += 1
        else:
            if clear_failure((proc.returncode, stderr), sshd_private.spec, f"inv fetch-run {run_id}"):
                failed_clearly += 1
            else:
                unclear += 1
                print(f"\nunclear fetch-run failure (exit {proc.returncode}): {stderr}")
            again = run_inv("fetch-run", run_id)
            got = digests(local, (transfer.FETCHED,))
            reruns_ok += again.returncode == 0 and (local / transfer.FETCHED).is_file() and got == want
        n_lost, n_corrupt, _ = compare(want, got)
        lost, corrupt = lost + n_lost, corrupt + n_corrupt
        if (local / transfer.FETCHED).is_file():
            marker = json.loads((local / transfer.FETCHED).read_text())
            corrupt += sum(want.get(f["path"]) != f["sha256"] for f in marker["files"])
    stray = 0
    for i in range(trials + 1):
        extra = set(digests(artifacts / f"run-{i}", (transfer.FETCHED,))) - set(digests(outputs / f"run-{i}"))
        if extra:
            print(f"\nrun-{i}: stray files in the local copy: {sorted(extra)}")
        stray += len(extra)
    nbytes = sum(p.stat().st_size for p in (outputs / "run-0").rglob("*") if p.is_file())
    print(f"\nFIGURE sshd killed during fetch-run (40 files, {nbytes / 1e6:.1f} MB per run, clean fetch "
          f"{base_s:.1f}s): trials={trials} faults={faults} completed={completed} failed_clearly={failed_clearly} "
          f"unclear={unclear} reruns_ok={reruns_ok}/{trials - completed} marked_complete_unverified={false_complete} "
          f"lost={lost} mismatched={corrupt} stray={stray}")
    assert faults >= trials - 1, "the fault landed after the fetch ended too often: the test proves little"
    assert false_complete == 0 and unclear == 0 and lost == 0 and corrupt == 0 and stray == 0
    assert completed + failed_clearly == trials and reruns_ok == trials - completed


# ------------------------------------------------------------------ 4. a command cut mid-way
def test_link_cut_mid_command_is_unreachable_not_a_failure(sshd_private, tmp_path):
    """No exit status came back: that is the link (exit 3), never a command failure, and it is not
    re-run behind the caller's back (the command may have run). A signal on the pod still is a result."""
    target = SSHTarget("127.0.0.1", sshd_private.user, sshd_private.port, str(sshd_private.clientkey))
    host = SSHHost(target, known_hosts=tmp_path / "kh", retry_secs=10, connect_timeout=3)
    marks = tmp_path / "ran"
    host.run("true")
    cuts = 3
    caught = 0
    for i in range(cuts):
        # cut 0.6 s in, and not before the command runs on the pod (its mark is written; a busy
        # machine may take longer than that to start it)
        def cut(n: int, t: float) -> None:
            retry_until(lambda: marks.exists() and len(marks.read_text().splitlines()) >= n, 10, 0.02,
                        what="the command to start")
            time.sleep(max(0.0, 0.6 - (time.monotonic() - t)))
            sshd_private.restart()

        t0 = time.monotonic()
        threading.Thread(target=cut, args=(i + 1, t0), daemon=True).start()
        with pytest.raises(UnreachableError) as e:
            host.run(f"echo x >> {marks}; sleep 3; echo done")
        caught += isinstance(e.value, LinkDropped) and time.monotonic() - t0 < 2.5
        assert "link dropped" in str(e.value) and "echo x >>" in str(e.value) and sshd_private.spec in str(e.value)
        time.sleep(0.5)
    ran = len(marks.read_text().splitlines())
    killed = host.run("kill -9 $$", check=False).exited
    host.close()
    print(f"\nFIGURE link cut mid-command: trials={cuts} faults={cuts} reported_unreachable={caught} "
          f"times_run={ran} (not repeated) signal_on_pod_exit={killed}")
    assert caught == cuts and ran == cuts and killed == -1
