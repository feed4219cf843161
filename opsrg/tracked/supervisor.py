"""Task supervisor and the single writer of ``status.json``. Standard library only.

This file is copied into each task folder and run there as ``python3 supervise.py run DIR``,
so it works on any pod with a Python 3, before opsrg is installed there. It runs the task's
``command.sh`` in its own process group, enforces the timeout (TERM, then KILL the whole
group), heartbeats, and writes the final status even when it is signalled. Every change to a
status file, from here or from opsrg, goes through :func:`update_status`: locked, atomic,
forward-only.

``run`` forks first: the parent is a small guardian (a Linux child subreaper, so orphans of the
task are re-parented to it) that waits for the supervisor child. If the supervisor dies without
recording an end (``kill -9``, a crash), the guardian kills the orphaned process tree and records
the task ``failed``/``lost`` at once, instead of leaving that to a later observer.

A task's processes end with the task, whatever the ending (success too). They are contained,
best first, by a cgroup v2 of their own (``<cgroup2 mount>/opsrg/<hash>``, where this process may
make one: root, a writable cgroup2 mount), by the guardian as their subreaper (every orphan of
the task is re-parented to it, so it is a descendant of the guardian), and by the task's tag in
their environment. ``status.json`` says which (``containment``). Only the cgroup holds a process
that both cleared its environment and left the tree while the guardian was gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

STATES = ("pending", "running", "success", "failed", "timed_out")
TERMINAL = ("success", "failed", "timed_out")
RANK = {"pending": 0, "running": 1, "success": 2, "failed": 2, "timed_out": 2}
STATUS = "status.json"
HEARTBEAT = "heartbeat"
LOG = "stdout.log"
EARLIER_LOG = "stdout.{n}.log"  # the log of attempt n of a task id started again (--replace)
COMMAND = "command.sh"
HEARTBEAT_EVERY = 2.0
ORPHAN_KILL_GRACE = 1.0  # TERM, then KILL, for the processes of a task whose supervisor died
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# Every process of a task inherits TAG=<task dir> in its environment: a process that left the
# process group and the tree (setsid, a double fork) still carries it, so it can be found and killed.
TAG = "OPSRG_TASK_TAG"
# The best containment a supervisor may use, weakest first; OPSRG_TASK_CONTAINMENT caps it (tests, or a pod
# whose cgroups must not be touched). A cgroup is used where this process may make one, else the subreaper.
CONTAINMENTS = ("tag", "subreaper", "cgroup")
CONTAINMENT_ENV = "OPSRG_TASK_CONTAINMENT"
CGROUP_PARENT = "opsrg"
# A write that must land (the running and the final record) is tried again after each of these delays
# (about 30 s in all) when the disk is full or failing, so a disk full for a moment costs a wait, not the
# task's exit code. The heartbeat is touched meanwhile (utime needs no space), so observers wait too.
WRITE_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 10.0)
RETRY_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parse_iso(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


@contextlib.contextmanager
def _lock(task_dir: str):
    fd = os.open(os.path.join(task_dir, STATUS + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# opsrg.atomic.TMP_MARK, copied (this file runs alone on pods): `doctor --fix` deletes only temp files
# that carry it, so a temp name here must carry it too (tests/ops/test_doctor.py checks that they agree).
TMP_MARK = ".opsrg-"


def write_json_atomic(path: str, obj: dict) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TMP_MARK, suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a failed write leaves the old file, and frees what it took
        if isinstance(e, OSError) and not e.filename:
            e.filename = path  # a full disk fails in write(), which names no file: say which one
        raise


def read_status(task_dir: str) -> dict:
    with open(os.path.join(task_dir, STATUS), encoding="utf-8") as fh:
        return json.load(fh)


def update_status(task_dir: str, **changes) -> tuple[dict, bool]:
    """Apply ``changes`` under the lock unless they would move the state backwards.

    Returns (record, applied). A terminal state is final: later writes are refused.
    """
    with _lock(task_dir):
        return _apply(task_dir, read_status(task_dir), changes)


def _apply(task_dir: str, rec: dict, changes: dict) -> tuple[dict, bool]:
    """:func:`update_status` for a caller that holds the lock and has just read ``rec``."""
    old, new = rec.get("state", "pending"), changes.get("state", rec.get("state", "pending"))
    if new not in RANK:
        raise ValueError(f"unknown task state {new!r}")
    if old in TERMINAL or RANK[new] < RANK[old]:
        return rec, False
    out = dict(rec)
    out.update(changes)
    out["updated_at"] = now_iso()
    write_json_atomic(os.path.join(task_dir, STATUS), out)
    return out, True


def _retrying(write, heartbeat: str | None = None):
    """``write()``, tried again after each of :data:`WRITE_RETRY_DELAYS` while the disk is full or failing."""
    for delay in (*WRITE_RETRY_DELAYS, None):
        try:
            return write()
        except OSError as e:
            if delay is None or e.errno not in RETRY_ERRNOS:
                raise
            print(f"[opsrg] writing the task record failed ({e}); trying again in {delay:g}s",
                  file=sys.stderr, flush=True)
            _beat(heartbeat)
            time.sleep(delay)
    return None


def _beat(heartbeat: str | None, create: bool = False) -> None:
    """Touch the heartbeat; never fails (a full disk still takes a utime)."""
    if not heartbeat:
        return
    with contextlib.suppress(OSError):
        if create:
            with open(heartbeat, "w") as fh:
                fh.write(now_iso())
        else:
            os.utime(heartbeat)


def _kill_requested(task_dir: str) -> bool:
    try:
        return bool(read_status(task_dir).get("kill_requested_at"))
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- processes

def proc_state(pid: int) -> str | None:
    """One-letter /proc state, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return line.split()[1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (it tells a reused pid apart); '' when there is
    no such process or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == "Z" else fields[19]


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip() or "?"
    except OSError:
        return "?"


def descendants(root: int) -> list[int]:
    """All live descendants of ``root`` (even ones that left its process group)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tagged(task_dir: str) -> list[int]:
    """Live processes started under the task in ``task_dir`` (its :data:`TAG` in their environment)."""
    needle = f"{TAG}={os.path.abspath(task_dir)}".encode()
    me = os.getpid()
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: nothing to find this way
        return out
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
        except OSError:  # gone, or another user's
            continue
        if needle in env.split(b"\0") and proc_state(int(name)) not in (None, "Z"):
            out.append(int(name))
    return out


def kill_tree(pid: int | None, pgid: int | None, grace: float, extra: tuple[int, ...] | list[int] = (),
              cgroup: str | None = None) -> None:
    """TERM the process group, every descendant, ``extra`` and every process in ``cgroup``, wait ``grace`` s,
    then KILL what is left (the whole cgroup at once, through ``cgroup.kill``, where there is one)."""
    targets = set(descendants(pid)) if pid else set()
    if pid:
        targets.add(pid)
    targets.update(extra)

    def send(sig: int) -> None:
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for p in targets | set(cgroup_procs(cgroup)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        if sig == signal.SIGKILL and cgroup:
            cgroup_kill(cgroup)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if (all(proc_state(p) in (None, "Z") for p in targets) and not _group_alive(pgid)
                and not cgroup_procs(cgroup)):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)


# ---------------------------------------------------------------- cgroup v2

def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``; ``.../unified`` on a hybrid host)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            for line in fh:
                pre, sep, post = line.partition(" - ")
                if sep and post.split()[:1] == ["cgroup2"]:
                    return pre.split()[4].replace("\\040", " ")
    except (OSError, IndexError):
        pass
    return None


def cgroup_create(task_dir: str, created_at: str) -> str | None:
    """A new cgroup for one task, ``<cgroup2 mount>/opsrg/<hash>``; None where this process may not make one."""
    path = cgroup_path(task_dir, created_at)
    if not path:
        return None
    try:
        os.makedirs(path)
    except FileExistsError:
        pass
    except OSError:  # not root, a read-only mount, a cgroup namespace that forbids it
        return None
    if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
        cgroup_remove(path, 0)
        return None
    return path


def cgroup_path(task_dir: str, created_at: str) -> str | None:
    """The cgroup a supervisor of this record makes (see :func:`cgroup_create`), made or not."""
    root = cgroup2_root()
    if not root:
        return None
    name = hashlib.sha256(f"{os.path.abspath(task_dir)}\0{created_at}".encode()).hexdigest()[:16]
    return os.path.join(root, CGROUP_PARENT, name)


def _cgroup_of(task_dir: str, rec: dict) -> str | None:
    """The task's cgroup if it exists: the recorded one, or the one its supervisor made before it could record it."""
    cg = rec.get("cgroup") or cgroup_path(task_dir, str(rec.get("created_at") or ""))
    return cg if cg and os.path.isdir(cg) else None


def cgroup_procs(cgroup: str | None) -> list[int]:
    if not cgroup:
        return []
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), encoding="utf-8") as fh:
            return [int(x) for x in fh.read().split()]
    except (OSError, ValueError):
        return []


def cgroup_kill(cgroup: str) -> None:
    """SIGKILL every process in ``cgroup``: at once through ``cgroup.kill`` (Linux >= 5.14), else one by one
    until none is left (a process forking meanwhile is caught on the next pass)."""
    try:
        with open(os.path.join(cgroup, "cgroup.kill"), "w") as fh:
            fh.write("1")
        return
    except OSError:
        pass
    for _ in range(50):
        procs = cgroup_procs(cgroup)
        if not procs:
            return
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.02)


def cgroup_remove(cgroup: str | None, wait: float = 2.0) -> None:
    """Remove ``cgroup`` once it is empty (killed processes take a moment to leave it); never fails."""
    if not cgroup:
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(cgroup)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)


def _group_alive(pgid: int | None) -> bool:
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return bool(group_members(pgid))  # a group whose members are all zombies is gone for our purposes


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    if not pgid:
        return []
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid and proc_state(int(name)) not in (None, "Z"):
                    out.append(int(name))
            except (ProcessLookupError, PermissionError):
                continue
    return out


_LIBC: list = []


def _libc():
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _prctl(option: int, arg: int) -> bool:
    """prctl(2) through ctypes; False where there is none (not Linux, no ctypes)."""
    try:
        return _libc().prctl(option, arg, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        return False


def _child_setup(cgroup: str | None = None):
    """A preexec_fn: join ``cgroup`` (before ``exec``, so no process of the task can start outside it), and die
    with the supervisor, so a kill -9 of it never leaves ``bash`` unsupervised. Failing to join raises, so
    ``Popen`` raises ``SubprocessError`` and nothing ran: the caller starts the command again without it."""
    parent = os.getpid()
    procs = os.path.join(cgroup, "cgroup.procs") if cgroup else None
    with contextlib.suppress(ImportError, OSError):
        _libc()  # loaded here, not in the forked child

    def set_it() -> None:
        if procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before the line above: follow it
            os.kill(os.getpid(), signal.SIGKILL)

    return set_it


def _allowed(containment: str) -> bool:
    cap = os.environ.get(CONTAINMENT_ENV, "") or CONTAINMENTS[-1]
    if cap not in CONTAINMENTS:
        cap = CONTAINMENTS[-1]
    return CONTAINMENTS.index(containment) <= CONTAINMENTS.index(cap)


def _strays(task_dir: str, guardian: int | None, subreaper: bool) -> list[int]:
    """Processes of the task outside its group: every descendant of its guardian (orphans are re-parented
    to it) but this supervisor, and every process that carries its tag."""
    out = set(tagged(task_dir))
    if guardian and subreaper:
        out.update(descendants(guardian))
    out.discard(os.getpid())
    return sorted(p for p in out if proc_state(p) not in (None, "Z"))


# ---------------------------------------------------------------- supervise

class _Signals:
    def __init__(self) -> None:
        self.received: int | None = None
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, self._on)

    def _on(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum


def supervise(task_dir: str, guardian: int | None = None, subreaper: bool = False) -> int:
    task_dir = os.path.abspath(task_dir)
    rec = read_status(task_dir)
    if rec.get("state") != "pending":
        print(f"[opsrg] task {rec.get('id')} is {rec.get('state')}, not pending: not starting it", file=sys.stderr)
        return 2
    sigs = _Signals()
    timeout = float(rec.get("timeout_secs") or 0)
    grace = float(rec.get("kill_grace_secs", 5.0))
    log = open(os.path.join(task_dir, LOG), "ab", buffering=0)
    hb = os.path.join(task_dir, HEARTBEAT)
    _beat(hb, create=True)
    started = _start(task_dir, log, hb, guardian, subreaper)
    if started is None:
        with contextlib.suppress(OSError):
            log.close()
        return 1
    proc, cg = started
    t0 = time.monotonic()
    last_hb = t0
    state, reason, evidence, rc = None, "", "", None
    while True:
        try:
            rc = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        beat = now - last_hb >= HEARTBEAT_EVERY
        if beat:
            _beat(hb)
            last_hb = now
        # the record is read on a signal, and with each heartbeat for a request whose signal was lost
        # (or sent by another user): not on every tick
        asked = (sigs.received is not None or beat) and _kill_requested(task_dir)
        if sigs.received is not None or asked:
            rc, stopped = _stop(proc, cg, grace, task_dir, guardian, subreaper)
            if stopped and rc != 0:
                name = signal.Signals(sigs.received).name if sigs.received is not None else ""
                state = "failed"
                reason = "killed by task-kill" if asked else (
                    f"supervisor received {name}" + (" (tmux window or server closed)" if name == "SIGHUP" else ""))
            elif asked:  # it ended by itself (or took the TERM and exited 0): what it did is what is recorded
                evidence = "task-kill came as the command ended: its own exit status is recorded"
            break
        if timeout and now - t0 > timeout:
            rc, stopped = _stop(proc, cg, grace, task_dir, guardian, subreaper)
            if stopped:
                state, reason = "timed_out", f"exceeded timeout of {timeout:g}s"
            break
    if state is None:
        state = "success" if rc == 0 else "failed"
        reason = "" if rc == 0 else (
            f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}")
    # A task's processes end with it, whatever the ending: what is left in its group and cgroup, the orphans
    # its guardian adopted (setsid daemons too) and what carries its tag.
    left = sorted(set(_strays(task_dir, guardian, subreaper)) | set(group_members(proc.pid)) | set(cgroup_procs(cg)))
    named = [f"{p} {_comm(p)}" for p in left]
    kill_tree(None, proc.pid, 0.5, extra=left, cgroup=cg)
    cgroup_remove(cg)
    elapsed = time.monotonic() - t0
    changes = {"state": state, "exit_code": rc, "reason": reason, "ended_at": now_iso(),
               "elapsed_secs": round(elapsed, 3)}
    if evidence:
        changes["evidence"] = evidence
    if named:
        changes["killed_at_end"] = named[:20]
    _retrying(lambda: update_status(task_dir, **changes), hb)
    with contextlib.suppress(OSError):
        left_note = f"; killed what it left running: {', '.join(named[:8])}" if named else ""
        log.write(f"\n[opsrg] task {rec.get('id')} {state}{' (' + reason + ')' if reason else ''} "
                  f"after {elapsed:.1f}s{left_note}\n".encode())
        log.close()
    return 0 if state == "success" else 1


def _start(task_dir: str, log, hb: str, guardian: int | None, subreaper: bool):
    """Start ``command.sh`` and record ``running``, or honour a kill request that came first: one step under the
    status lock, so a task-kill finds the task either pending (and then it never starts) or running with its
    pids. Returns (process, cgroup), or None when nothing was started (the record says why)."""
    with _lock(task_dir):
        rec = read_status(task_dir)
        if rec.get("state") != "pending":
            print(f"[opsrg] task {rec.get('id')} is {rec.get('state')}, not pending: not starting it",
                  file=sys.stderr)
            return None
        base = {"pid": os.getpid(), "host": socket.gethostname(), "supervisor": sys.executable}
        if guardian:
            base["guardian_pid"] = guardian

        def record(**changes):
            _retrying(lambda: _apply(task_dir, read_status(task_dir), {**base, **changes}), hb)

        if rec.get("kill_requested_at"):
            record(state="failed", reason="killed by task-kill", exit_code=None, ended_at=now_iso(),
                   evidence="task-kill came before the supervisor started the command: it never ran")
            with contextlib.suppress(OSError):
                log.write(f"[opsrg] task {rec.get('id')} killed by task-kill before it started\n".encode())
            return None
        cg = cgroup_create(task_dir, str(rec.get("created_at") or "")) if _allowed("cgroup") else None
        cwd, env = child_place(rec, task_dir)
        proc, err = None, None
        for group in ([cg, None] if cg else [None]):
            try:
                proc = subprocess.Popen(
                    command_argv(rec, task_dir), cwd=cwd,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_child_setup(group), env=env,
                )
                cg = group
                break
            except subprocess.SubprocessError as e:  # the child could not join the cgroup; it never exec'd
                cgroup_remove(group, 0)
                err = e
            except OSError as e:
                err = e
                break
        if proc is None:
            cgroup_remove(cg, 0)
            record(state="failed", reason=f"could not start: {err}", ended_at=now_iso(), exit_code=None)
            return None
        changes = {"state": "running", "child_pid": proc.pid, "pgid": proc.pid, "started_at": now_iso(),
                   "containment": "cgroup" if cg else ("subreaper" if guardian and subreaper else "tag")}
        if cg:
            changes["cgroup"] = cg
        try:
            record(**changes)
        except OSError:  # the task cannot be recorded running: it must not run unrecorded
            kill_tree(proc.pid, proc.pid, 0.5, extra=_strays(task_dir, guardian, subreaper), cgroup=cg)
            proc.wait()
            cgroup_remove(cg)
            raise
        return proc, cg


def _stop(proc, cg: str | None, grace: float, task_dir: str, guardian: int | None, subreaper: bool):
    """Kill the task's processes; returns (exit status, whether the kill ended it: False if it had ended)."""
    rc = proc.poll()
    if rc is not None:
        return rc, False
    kill_tree(proc.pid, proc.pid, grace, extra=_strays(task_dir, guardian, subreaper), cgroup=cg)
    return proc.wait(), True


# ---------------------------------------------------------------- guardian

def guard(task_dir: str) -> int:
    """Run the supervisor in a forked child and outlive it (what ``supervise.py run`` does).

    The parent stays in the tmux window as the child's guardian: it forwards TERM/HUP/INT to the
    supervisor, reaps orphans re-parented to it (it is a child subreaper), and when the supervisor
    dies without recording an end it settles the task at once (:func:`settle_orphaned`). It never
    writes while the supervisor lives, so the supervisor stays the single writer of a live task.
    """
    task_dir = os.path.abspath(task_dir)
    subreaper = _allowed("subreaper") and _prctl(PR_SET_CHILD_SUBREAPER, 1)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # none is lost between fork and handlers
    child = os.fork()
    if child == 0:
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = supervise(task_dir, guardian=os.getppid(), subreaper=subreaper)
        except BaseException:  # noqa: BLE001  (any crash: recorded in the log, then settled below)
            import traceback

            with contextlib.suppress(Exception):  # the window shows it too (the log may be on a full disk)
                traceback.print_exc()
            with contextlib.suppress(OSError), open(os.path.join(task_dir, LOG), "a") as fh:
                fh.write("\n[opsrg] supervisor crashed:\n" + traceback.format_exc())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    while True:  # also reaps orphans re-parented to us while the supervisor runs
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    for sig in FORWARDED:  # the child's pid may be reused now; and settling must not be cut short
        signal.signal(sig, signal.SIG_IGN)
    try:
        code = settle_orphaned(task_dir, child, status, subreaper)
    except Exception as e:  # noqa: BLE001  (never a traceback instead of the reaping below)
        print(f"[opsrg] guardian could not settle task {task_dir}: {e!r}", file=sys.stderr, flush=True)
        code = 1
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    return code


def settle_orphaned(task_dir: str, sup_pid: int, wait_status: int, subreaper: bool) -> int:
    """After supervisor ``sup_pid`` ended: if it left its task unfinished, kill what is left and record it lost.

    What an observer's :func:`check` would do, done by the supervisor's guardian the moment the
    supervisor dies. Refused (by :func:`update_status`) if the record is already terminal.
    """
    if os.WIFSIGNALED(wait_status):
        how, code = f"was killed by {signal.Signals(os.WTERMSIG(wait_status)).name}", 1
    else:
        code = os.WEXITSTATUS(wait_status)
        how = f"exited with code {code}"
    try:
        rec = read_status(task_dir)
    except (OSError, ValueError):
        rec = None
    if rec is None:  # no record to settle; still, a killed supervisor's processes must not live on
        if os.WIFSIGNALED(wait_status) and subreaper:
            kill_tree(None, None, ORPHAN_KILL_GRACE, extra=descendants(os.getpid()))
        return code
    state = rec.get("state")
    ours = rec.get("pid") == sup_pid or (state == "pending" and not rec.get("pid"))
    if not ours or state in TERMINAL:
        return code  # ended properly, or another supervisor's task (ours refused to start it)
    orphans = descendants(os.getpid()) if subreaper else []
    pgid = rec.get("pgid")
    cg = _cgroup_of(task_dir, rec)
    victims = sorted(set(orphans) | set(group_members(pgid)) | set(tagged(task_dir)) | set(cgroup_procs(cg)))
    named = ", ".join(f"{p} {_comm(p)}" for p in victims[:8])
    kill_tree(None, pgid, ORPHAN_KILL_GRACE, extra=victims, cgroup=cg)
    cgroup_remove(cg)
    evidence = (f"supervisor pid {sup_pid} {how} before recording an end; its guardian pid {os.getpid()} "
                + (f"killed the orphaned process tree ({len(victims)}: {named}{', ...' if len(victims) > 8 else ''})"
                   if victims else "found no process of the task left"))
    try:
        _retrying(lambda: update_status(task_dir, state="failed", reason="lost", evidence=evidence,
                                        ended_at=now_iso(), exit_code=None))
    except OSError as e:  # the disk stayed full: say so where it can be seen, and end
        print(f"[opsrg] could not record task {rec.get('id')} lost ({evidence}): {e}", file=sys.stderr, flush=True)
        return 1
    with contextlib.suppress(OSError), open(os.path.join(task_dir, LOG), "ab") as fh:
        fh.write(f"\n[opsrg] task {rec.get('id')} lost: {evidence}\n".encode())
    return 1


# ---------------------------------------------------------------- liveness

def probe(task_dir: str, stale_secs: float = 30.0, pending_grace: float = 30.0) -> dict:
    """Is the task's supervisor alive? Returns {'alive': bool|None, 'evidence': str}.

    ``alive`` None means "cannot tell here" (e.g. a Slurm task, which the scheduler answers for).
    """
    rec = read_status(task_dir)
    state = rec.get("state")
    if state in TERMINAL:
        return {"alive": False, "evidence": f"terminal state {state}"}
    if rec.get("runner") not in (None, "tmux"):
        return {"alive": None, "evidence": f"runner {rec.get('runner')} answers for liveness"}
    pid = rec.get("pid")
    if state == "pending" or not pid:
        age = time.time() - parse_iso(rec.get("created_at") or now_iso())
        window = rec.get("tmux") or {}
        gone = _launcher_gone(rec)
        if gone and not (window and _tmux_window_exists(window)):  # nothing can start it any more
            return {"alive": False, "evidence": f"still pending after {age:.1f}s; {gone} and its tmux window "
                    "never came: the supervisor never started"}
        if age < pending_grace:
            return {"alive": True, "evidence": f"pending for {age:.1f}s (< {pending_grace:g}s grace)"}
        if window and _tmux_window_exists(window):
            return {"alive": True, "evidence": "pending; its tmux window exists"}
        return {"alive": False, "evidence": f"still pending after {age:.0f}s and its tmux window is gone: "
                "the supervisor never started"}
    st = proc_state(int(pid))
    if st is None:
        return {"alive": False, "evidence": f"supervisor pid {pid} is gone (no /proc/{pid})"}
    if st == "Z":
        return {"alive": False, "evidence": f"supervisor pid {pid} is a zombie (exited)"}
    cmd = proc_cmdline(int(pid))
    if not cmd:  # kernel threads and exiting processes have no command line
        return {"alive": False, "evidence": f"supervisor pid {pid} is gone (exiting, no command line)"}
    if "supervise" not in cmd or os.path.basename(task_dir) not in cmd:
        return {"alive": False, "evidence": f"pid {pid} now belongs to another process: {cmd[:120]!r}"}
    try:
        age = time.time() - os.stat(os.path.join(task_dir, HEARTBEAT)).st_mtime
    except FileNotFoundError:
        age = None
    if age is not None and age > stale_secs:
        return {"alive": False, "evidence": f"supervisor pid {pid} exists but its heartbeat is {age:.0f}s old "
                f"(stale after {stale_secs:g}s)"}
    return {"alive": True, "evidence": f"supervisor pid {pid} alive, heartbeat {age or 0:.1f}s old"}


def _launcher_gone(rec: dict) -> str | None:
    """Evidence that the process that created a pending record (``task-run``) is gone, where it can be seen:
    on this host only (a pid means nothing elsewhere)."""
    pid, host = rec.get("launcher_pid"), rec.get("launcher_host")
    if not pid or host != socket.gethostname() or proc_state(int(pid)) not in (None, "Z"):
        return None
    return f"the process that created it (pid {pid} on {host}) is gone"


def _is_supervisor(pid, task_dir: str) -> bool:
    """Is ``pid`` (still) the live supervisor of the task in ``task_dir``?"""
    if not pid or proc_state(int(pid)) in (None, "Z"):
        return False
    cmd = proc_cmdline(int(pid))
    return "supervise" in cmd and os.path.basename(os.path.abspath(task_dir)) in cmd


def _tmux_window_exists(window: dict) -> bool:
    try:
        p = subprocess.run(["tmux", "-L", window["socket"], "list-windows", "-t", window["session"],
                            "-F", "#{window_name}"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired, KeyError):
        return False
    return p.returncode == 0 and window.get("window") in p.stdout.split()


def check(task_dir: str, stale_secs: float = 30.0) -> dict:
    """Probe, and on evidence of death record ``failed`` with reason ``lost``."""
    result = probe(task_dir, stale_secs)
    rec = read_status(task_dir)
    if result["alive"] is False and rec.get("state") not in TERMINAL:
        # Processes outlive their supervisor only if something left them (its group, or ones that
        # left the group: found by their tag); stop them.
        strays = tagged(task_dir)
        cg = _cgroup_of(task_dir, rec)
        in_cgroup = cgroup_procs(cg)
        if (rec.get("pgid") and _group_alive(rec["pgid"])) or strays or in_cgroup:
            kill_tree(rec.get("child_pid"), rec.get("pgid"), 1.0, extra=strays, cgroup=cg)
            result["evidence"] += (f"; orphaned process group {rec.get('pgid')} killed"
                                   + (f" ({len(strays)} processes of the task, tag included)" if strays else "")
                                   + (f" ({len(in_cgroup)} in its cgroup)" if in_cgroup else ""))
        cgroup_remove(cg)
        rec, _ = update_status(task_dir, state="failed", reason="lost", evidence=result["evidence"],
                               ended_at=now_iso(), exit_code=None)
    result["record"] = rec
    return result


def request_kill(task_dir: str, grace: float = 5.0) -> dict:
    """Stop a task's whole process tree; its supervisor records it killed.

    The request is recorded first, under the status lock (``kill_requested_at``). A supervisor that has not
    started the command yet sees it there and never starts it; one that has is signalled, and sees it on
    its next tick too. Only when no supervisor answers is the end decided here, under the lock again: a task
    still pending is recorded killed (its command never ran, and now never will); a running one has its
    processes killed and is recorded killed only if its command was still running, else lost (how it ended
    is unknown). A task whose command ran to success is never recorded killed.
    """
    task_dir = os.path.abspath(task_dir)
    rec, applied = update_status(task_dir, kill_requested_at=now_iso())
    if not applied:
        return rec  # already ended
    signalled, next_probe = False, 0.0
    deadline = time.monotonic() + grace + 5.0
    while time.monotonic() < deadline:
        rec = read_status(task_dir)
        if rec.get("state") in TERMINAL:
            return rec
        if rec.get("state") == "running" and rec.get("pid"):
            if not _is_supervisor(rec["pid"], task_dir):
                break
            if not signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(rec["pid"]), signal.SIGTERM)
                signalled = True
        elif time.monotonic() >= next_probe:  # pending: a supervisor that starts now sees the request
            if probe(task_dir)["alive"] is False:
                break
            next_probe = time.monotonic() + 0.5
        time.sleep(0.05)
    with _lock(task_dir):
        rec = read_status(task_dir)
        if rec.get("state") in TERMINAL:
            return rec
        if rec.get("state") == "pending":
            rec, _ = _apply(task_dir, rec, {
                "state": "failed", "reason": "killed by task-kill", "exit_code": None, "ended_at": now_iso(),
                "evidence": "no supervisor had started the command: it never ran, and now never will"})
            return rec
    # Running, and its supervisor did not answer: kill what is left of the task here.
    child = rec.get("child_pid")
    command_running = bool(child) and proc_state(int(child)) not in (None, "Z")
    if not command_running and _is_supervisor(rec.get("pid"), task_dir):
        return rec  # the command has ended and its supervisor lives: the end it records is the true one
    cg = _cgroup_of(task_dir, rec)
    kill_tree(child, rec.get("pgid"), grace, extra=tagged(task_dir), cgroup=cg)
    cgroup_remove(cg)
    if command_running:
        why = {"reason": "killed by task-kill", "evidence": "no live supervisor answered; process tree killed directly"}
    else:
        why = {"reason": "lost", "evidence": "no live supervisor answered and its command had already ended, how is "
               "unknown; what was left of the task was killed"}
    rec, _ = update_status(task_dir, state="failed", ended_at=now_iso(), exit_code=None, **why)
    return rec


def _state_of(task_dir: str) -> str:
    try:
        return str(read_status(task_dir).get("state") or "unreadable")
    except FileNotFoundError:
        return "unreadable" if os.path.isdir(task_dir) else "gone"
    except (OSError, ValueError, AttributeError):
        return "unreadable"


# RUN_ENV_FILE: a file on the pod whose assignments every run gets, sourced by bash (set -a)
# just before the command, which the same bash then becomes (exec): its pid stays the child's.
ENV_FILE_SH = 'if [ -n "$1" ] && [ -f "$1" ]; then set -a; . "$1" || exit 1; set +a; fi; exec bash "$2"'


def command_argv(rec: dict, task_dir: str) -> list:
    """How the command runs: ``bash command.sh``, after the record's ``env_file`` when it has one."""
    command = os.path.join(task_dir, COMMAND)
    if not rec.get("env_file"):
        return ["bash", command]
    return ["bash", "-c", ENV_FILE_SH, "opsrg-env", rec["env_file"], command]


def child_place(rec: dict, task_dir: str) -> tuple[str, dict]:
    """Where the command runs, and with what environment: its ``cwd``, else the project's checkout
    (``workdir``) when the pod has one, else the task's folder; the checkout's ``.venv/bin`` first
    on PATH when there is one, so that ``python`` is the project's; the folder of the python that
    runs this supervisor last on PATH, so that a pod without either still has a ``python``."""
    env = dict(os.environ)
    env[TAG] = task_dir
    path = env.get("PATH", os.defpath).split(os.pathsep)
    mine = os.path.dirname(sys.executable)
    if mine and mine not in path:
        env["PATH"] = os.pathsep.join(path + [mine])
    workdir = rec.get("workdir") or ""
    venv = os.path.join(workdir, ".venv") if workdir else ""
    if venv and os.path.isdir(os.path.join(venv, "bin")):
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", os.defpath)
        env["VIRTUAL_ENV"] = venv
    if rec.get("cwd"):
        return rec["cwd"], env
    return (workdir if workdir and os.path.isdir(workdir) else task_dir), env


def earlier_logs(task_dir: str) -> list[tuple[int, str]]:
    """The numbered logs of earlier attempts in ``task_dir``: (attempt, file name), oldest first."""
    pat = re.compile("^" + re.escape(EARLIER_LOG).replace(re.escape("{n}"), "([0-9]+)") + "$")
    try:
        found = [(int(m.group(1)), name) for name in os.listdir(task_dir) for m in [pat.match(name)] if m]
    except FileNotFoundError:
        return []
    return sorted(found)


def carry_logs(old_dir: str, new_dir: str) -> None:
    """The logs of a task id's earlier attempts travel to its new folder: the old one's numbered
    logs as they are, its ``stdout.log`` as the next number (hard links where the disk allows)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    earlier = earlier_logs(old_dir)
    for _, name in earlier:
        link(os.path.join(old_dir, name), os.path.join(new_dir, name))
    if os.path.isfile(os.path.join(old_dir, LOG)):
        n = earlier[-1][0] + 1 if earlier else 1
        link(os.path.join(old_dir, LOG), os.path.join(new_dir, EARLIER_LOG.format(n=n)))


def keep_logs(task_dir: str, dest: str) -> list[str]:
    """Copy a task's log and its earlier attempts' into ``dest`` (a run's ``logs/``, so that they
    travel with its results), each replacing its older copy atomically; returns the names copied."""
    names = [name for _, name in earlier_logs(task_dir)] + [LOG]
    os.makedirs(dest, exist_ok=True)
    kept = []
    for name in names:
        src = os.path.join(task_dir, name)
        if not os.path.isfile(src):
            continue
        fd, tmp = tempfile.mkstemp(prefix="." + name + TMP_MARK, suffix=".tmp", dir=dest)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            os.chmod(tmp, 0o644)
            os.replace(tmp, os.path.join(dest, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        kept.append(name)
    return kept


def claim(prepared: str, task_dir: str, keep: str | None = None) -> dict:
    """Make the prepared folder ``prepared`` the task folder ``task_dir``, only if no task holds that name.

    rename(2) of a folder onto a folder that has files in it fails, so of any number of concurrent claims
    exactly one wins and the others change nothing. With ``keep`` (``--replace``), a task folder whose task
    has ended (or whose record is unreadable) is first moved to ``keep``, holding its status lock, and only
    if the folder by that name is still the one whose lock is held: of two replacers, one moves the old
    folder and the other finds it gone. Returns ``{"claimed": bool, "why": "exists"|"live"|"raced",
    "state": ...}``.
    """
    try:
        os.rename(prepared, task_dir)
        return {"claimed": True}
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    if keep is None:
        return {"claimed": False, "why": "exists", "state": _state_of(task_dir)}
    lock = os.path.join(task_dir, STATUS + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # moved away meanwhile
        return {"claimed": False, "why": "raced", "state": _state_of(task_dir)}
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if not same:  # another replacer moved the folder while we waited for its lock
            return {"claimed": False, "why": "raced", "state": _state_of(task_dir)}
        old = _state_of(task_dir)
        if old in ("pending", "running"):
            return {"claimed": False, "why": "live", "state": old}
        os.makedirs(os.path.dirname(keep), exist_ok=True)
        os.rename(task_dir, keep)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # the old folder, logs and all, is kept at ``keep`` regardless
        carry_logs(keep, prepared)
    try:
        os.rename(prepared, task_dir)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        return {"claimed": False, "why": "raced", "state": _state_of(task_dir), "replaced": keep}
    return {"claimed": True, "replaced": keep, "old_state": old}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("run", "check", "kill", "probe", "claim") or (
            argv[0] == "claim" and len(argv) < 3):
        print("usage: supervise.py run|check|probe|kill TASK_DIR [STALE_SECS|GRACE]\n"
              "       supervise.py claim PREPARED_DIR TASK_DIR [KEEP_DIR]", file=sys.stderr)
        return 2
    if argv[0] == "claim":
        print(json.dumps(claim(argv[1], argv[2], argv[3] if len(argv) > 3 else None)))
        return 0
    cmd, task_dir = argv[0], argv[1]
    extra = float(argv[2]) if len(argv) > 2 else None
    if cmd == "run":
        return guard(task_dir)
    if cmd == "probe":
        out = probe(task_dir, extra or 30.0)
    elif cmd == "check":
        out = check(task_dir, extra or 30.0)
    else:
        out = request_kill(task_dir, extra if extra is not None else 5.0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
