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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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
KILL_REQUEST = "kill_requested"
LOG = "stdout.log"
COMMAND = "command.sh"
HEARTBEAT_EVERY = 2.0
ORPHAN_KILL_GRACE = 1.0  # TERM, then KILL, for the processes of a task whose supervisor died
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
# Every process of a task inherits TAG=<task dir> in its environment: a process that left the
# process group and the tree (setsid, a double fork) still carries it, so it can be found and killed.
TAG = "OPSRG_TASK_TAG"


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


def write_json_atomic(path: str, obj: dict) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status(task_dir: str) -> dict:
    with open(os.path.join(task_dir, STATUS), encoding="utf-8") as fh:
        return json.load(fh)


def update_status(task_dir: str, **changes) -> tuple[dict, bool]:
    """Apply ``changes`` under the lock unless they would move the state backwards.

    Returns (record, applied). A terminal state is final: later writes are refused.
    """
    with _lock(task_dir):
        rec = read_status(task_dir)
        old, new = rec.get("state", "pending"), changes.get("state", rec.get("state", "pending"))
        if new not in RANK:
            raise ValueError(f"unknown task state {new!r}")
        if old in TERMINAL or RANK[new] < RANK[old]:
            return rec, False
        rec.update(changes)
        rec["updated_at"] = now_iso()
        write_json_atomic(os.path.join(task_dir, STATUS), rec)
        return rec, True


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


def kill_tree(pid: int | None, pgid: int | None, grace: float, extra: tuple[int, ...] | list[int] = ()) -> None:
    """TERM the process group, every descendant and ``extra``, wait ``grace`` s, then KILL what is left."""
    targets = set(descendants(pid)) if pid else set()
    if pid:
        targets.add(pid)
    targets.update(extra)

    def send(sig: int) -> None:
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for p in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if all(proc_state(p) in (None, "Z") for p in targets) and not _group_alive(pgid):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)


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


def _pdeathsig_setter():
    """A preexec_fn: die with the supervisor, so a kill -9 of it never leaves ``bash`` unsupervised."""
    parent = os.getpid()
    with contextlib.suppress(ImportError, OSError):
        _libc()  # loaded here, not in the forked child

    def set_it() -> None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before the line above: follow it
            os.kill(os.getpid(), signal.SIGKILL)

    return set_it


# ---------------------------------------------------------------- supervise

class _Signals:
    def __init__(self) -> None:
        self.received: int | None = None
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, self._on)

    def _on(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum


def supervise(task_dir: str, guardian: int | None = None) -> int:
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
    with open(hb, "w") as fh:
        fh.write(now_iso())
    try:
        proc = subprocess.Popen(
            ["bash", os.path.join(task_dir, COMMAND)], cwd=rec.get("cwd") or task_dir,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig_setter(), env={**os.environ, TAG: task_dir},
        )
    except OSError as e:
        update_status(task_dir, state="failed", reason=f"could not start: {e}", ended_at=now_iso(),
                      exit_code=None)
        return 1
    t0 = time.monotonic()
    update_status(task_dir, state="running", pid=os.getpid(), child_pid=proc.pid, pgid=proc.pid,
                  host=socket.gethostname(), started_at=now_iso(), supervisor=sys.executable,
                  **({"guardian_pid": guardian} if guardian else {}))
    last_hb = t0
    state, reason, rc = None, "", None
    while True:
        try:
            rc = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - last_hb >= HEARTBEAT_EVERY:
            with contextlib.suppress(OSError):
                os.utime(hb)
            last_hb = now
        if sigs.received is not None:
            killed = os.path.exists(os.path.join(task_dir, KILL_REQUEST))
            kill_tree(proc.pid, proc.pid, grace, extra=tagged(task_dir))
            rc = proc.wait()
            state = "failed"
            name = signal.Signals(sigs.received).name
            reason = "killed by task-kill" if killed else (
                f"supervisor received {name}" + (" (tmux window or server closed)" if name == "SIGHUP" else ""))
            break
        if timeout and now - t0 > timeout:
            kill_tree(proc.pid, proc.pid, grace, extra=tagged(task_dir))
            rc = proc.wait()
            state, reason = "timed_out", f"exceeded timeout of {timeout:g}s"
            break
    if state is None:
        state = "success" if rc == 0 else "failed"
        reason = "" if rc == 0 else (
            f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}")
    kill_tree(None, proc.pid, 0.5)  # stragglers left in the group after the main command ended
    elapsed = time.monotonic() - t0
    update_status(task_dir, state=state, exit_code=rc, reason=reason, ended_at=now_iso(),
                  elapsed_secs=round(elapsed, 3))
    with contextlib.suppress(OSError):
        log.write(f"\n[opsrg] task {rec.get('id')} {state}"
                  f"{' (' + reason + ')' if reason else ''} after {elapsed:.1f}s\n".encode())
        log.close()
    return 0 if state == "success" else 1


# ---------------------------------------------------------------- guardian

def guard(task_dir: str) -> int:
    """Run the supervisor in a forked child and outlive it (what ``supervise.py run`` does).

    The parent stays in the tmux window as the child's guardian: it forwards TERM/HUP/INT to the
    supervisor, reaps orphans re-parented to it (it is a child subreaper), and when the supervisor
    dies without recording an end it settles the task at once (:func:`settle_orphaned`). It never
    writes while the supervisor lives, so the supervisor stays the single writer of a live task.
    """
    task_dir = os.path.abspath(task_dir)
    subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # none is lost between fork and handlers
    child = os.fork()
    if child == 0:
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = supervise(task_dir, guardian=os.getppid())
        except BaseException:  # noqa: BLE001  (any crash: recorded in the log, then settled below)
            import traceback

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
    code = settle_orphaned(task_dir, child, status, subreaper)
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
    victims = sorted(set(orphans) | set(group_members(pgid)) | set(tagged(task_dir)))
    named = ", ".join(f"{p} {_comm(p)}" for p in victims[:8])
    kill_tree(None, pgid, ORPHAN_KILL_GRACE, extra=victims)
    evidence = (f"supervisor pid {sup_pid} {how} before recording an end; its guardian pid {os.getpid()} "
                + (f"killed the orphaned process tree ({len(victims)}: {named}{', ...' if len(victims) > 8 else ''})"
                   if victims else "found no process of the task left"))
    update_status(task_dir, state="failed", reason="lost", evidence=evidence, ended_at=now_iso(), exit_code=None)
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
        if (rec.get("pgid") and _group_alive(rec["pgid"])) or strays:
            kill_tree(rec.get("child_pid"), rec.get("pgid"), 1.0, extra=strays)
            result["evidence"] += (f"; orphaned process group {rec.get('pgid')} killed"
                                   + (f" ({len(strays)} processes of the task, tag included)" if strays else ""))
        rec, _ = update_status(task_dir, state="failed", reason="lost", evidence=result["evidence"],
                               ended_at=now_iso(), exit_code=None)
    result["record"] = rec
    return result


def request_kill(task_dir: str, grace: float = 5.0) -> dict:
    """Stop a task's whole process tree; the supervisor records it as killed."""
    rec = read_status(task_dir)
    if rec.get("state") in TERMINAL:
        return rec
    with open(os.path.join(task_dir, KILL_REQUEST), "w") as fh:
        fh.write(now_iso())
    pid = rec.get("pid")
    if pid and proc_state(int(pid)) not in (None, "Z") and "supervise" in proc_cmdline(int(pid)):
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + grace + 5.0
        while time.monotonic() < deadline:
            rec = read_status(task_dir)
            if rec.get("state") in TERMINAL:
                return rec
            time.sleep(0.05)
    # No live supervisor (or it did not answer): kill what is left ourselves.
    kill_tree(rec.get("child_pid"), rec.get("pgid"), grace, extra=tagged(task_dir))
    rec, _ = update_status(task_dir, state="failed", reason="killed by task-kill", ended_at=now_iso(),
                           evidence="no live supervisor answered; process tree killed directly")
    return rec


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("run", "check", "kill", "probe"):
        print("usage: supervise.py run|check|probe|kill TASK_DIR [STALE_SECS|GRACE]", file=sys.stderr)
        return 2
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
