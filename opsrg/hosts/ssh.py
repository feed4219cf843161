"""A pod reached over SSH: the :class:`~opsrg.hosts.Host` contract on top of fabric.

One fabric ``Connection`` per host object, opened on first use and reused for every command
and SFTP operation of a command-line invocation. Every connection has a connect timeout,
keepalives and a per-command timeout; transient failures (refused, reset, sshd restarting)
are retried with backoff for ``OPS_SSH_RETRY_SECS``, then raise :class:`UnreachableError`.

Host keys live in a project-local ``known_hosts``: a new host is accepted and recorded on
first use, a changed key is refused (for fabric and for rsync/ssh alike).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from opsrg.core.atomic import TMP_SUFFIX, tmp_prefix
from opsrg.core.errors import ConfigError, HostError, InputError, LinkDropped, UnreachableError
from opsrg.hosts.base import ENV_NAME_RE, Command, RunResult, as_shell
from opsrg.hosts.rsync import TEMP_DIR, drop_temp_dir, safe_args, stale_temp_sh

T = TypeVar("T")
# paramiko logs a dropped link from its transport thread; the retry below reports it properly.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
KEEPALIVE_SECS = 15
# rsync exit codes that mean "the link broke", worth a retry: 10 socket I/O, 12 protocol
# stream, 30 timeout, 35 daemon timeout, 255 ssh could not connect or was cut.
RSYNC_TRANSIENT = {10, 12, 30, 35, 255}
# paramiko's AuthenticationException when the transport closed during authentication (sshd died).
AUTH_LINK_DROPPED = "transport shut down or saw EOF"
HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]%][A-Za-z0-9_.:\[\]%-]*$")
USER_RE = re.compile(r"^[^-\s@:/\x00-\x1f\x7f][^\s@:/\x00-\x1f\x7f]*$")


@dataclass(frozen=True)
class SSHTarget:
    """Where to connect: resolved from ``user@host:port`` or an alias in ``~/.ssh/config``."""

    host: str
    user: str
    port: int = 22
    key: str = ""

    def __post_init__(self) -> None:
        # Both reach ssh(1) as arguments (rsync's `-l USER HOST`): a leading '-' would be an option
        # there (``-oProxyCommand=...`` runs a command), whitespace or control characters no name.
        if not HOST_RE.match(self.host or ""):
            raise ConfigError(f"ssh host {self.host!r} is not a host name or address (OPS_DEFAULT_HOST, or the "
                              "pod lium recorded): letters, digits and '.-_:[]%', not starting with '-'")
        if not USER_RE.match(self.user or ""):
            raise ConfigError(f"ssh user {self.user!r} is not a user name (OPS_DEFAULT_HOST): no leading '-', "
                              "no whitespace, control characters, '@', ':' or '/'")

    @property
    def name(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @classmethod
    def parse(cls, spec: str, key: str = "", ssh_config: str | None = None) -> SSHTarget:
        """``user@host:port``, ``user@host``, ``host`` or an alias of ``~/.ssh/config``."""
        spec = spec.strip()
        if not spec:
            raise ConfigError("OPS_DEFAULT_HOST is empty: set it to user@host:port or an ~/.ssh/config alias")
        user, _, hostport = spec.rpartition("@")
        host, port = hostport, None
        if hostport.count(":") == 1:
            host, _, p = hostport.partition(":")
            if not p.isdigit():
                raise ConfigError(f"OPS_DEFAULT_HOST={spec!r}: port {p!r} is not a number")
            port = int(p)
        cfg_path = Path(ssh_config or os.path.expanduser("~/.ssh/config"))
        entry: dict = {}
        if cfg_path.is_file():
            import paramiko

            entry = paramiko.SSHConfig.from_path(str(cfg_path)).lookup(host)
        default_user = os.environ.get("USER") or _whoami()
        identity = (entry.get("identityfile") or [""])[0] if "identityfile" in entry else ""
        return cls(
            host=entry.get("hostname", host),
            user=user or entry.get("user", default_user),
            port=port or int(entry.get("port", 22)),
            key=os.path.expanduser(key or identity),
        )


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "root"


def _accept_new_policy(known_hosts: Path):
    """A paramiko policy: record unknown hosts in ``known_hosts``; a mismatch never gets here.

    paramiko itself raises ``BadHostKeyException`` when a loaded entry disagrees with the
    server's key, so loading the file plus this policy gives OpenSSH's ``accept-new``.
    """
    import paramiko

    class AcceptNew(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            # Appending one line keeps concurrent first connections from erasing each other.
            with open(known_hosts, "a", encoding="utf-8") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return AcceptNew()


class SSHHost:
    """A remote machine over SSH, offering exactly the Host interface."""

    def __init__(self, target: SSHTarget, *, known_hosts: str | os.PathLike[str], python: str = "python3",
                 venv_python: str | None = None, connect_timeout: float = 10.0, retry_secs: float = 30.0,
                 command_timeout: float = 600.0, rsync_bwlimit_kbps: int = 0) -> None:
        self.target = target
        self.name = target.name
        self.known_hosts = Path(known_hosts)
        self.base_python = python
        self.venv_python = venv_python
        self.connect_timeout = connect_timeout
        self.retry_secs = retry_secs
        self.command_timeout = command_timeout
        self.rsync_bwlimit_kbps = rsync_bwlimit_kbps
        self._conn = None
        self._sftp = None
        self._python: str | None = None
        self._home: str | None = None
        # Why the pod's sshd gave no SFTP session ("" while it does): files then go through
        # shell commands on exec channels (cat, test -e, cat > tmp && mv), as ``run`` does.
        self.no_sftp = ""

    # ------------------------------------------------------------ connection
    def _connection(self):
        if self._conn is not None and self._conn.is_connected:
            return self._conn
        self.close()
        from fabric import Config, Connection

        kwargs = {"look_for_keys": not self.target.key, "allow_agent": not self.target.key,
                  "banner_timeout": self.connect_timeout, "auth_timeout": self.connect_timeout}
        if self.target.key:
            kwargs["key_filename"] = self.target.key
        c = Connection(self.target.host, user=self.target.user, port=self.target.port,
                       connect_timeout=max(1, int(round(self.connect_timeout))), connect_kwargs=kwargs,
                       config=Config(overrides={"load_ssh_configs": False}))
        c.client.set_missing_host_key_policy(_accept_new_policy(self.known_hosts))
        if self.known_hosts.is_file():
            c.client.load_host_keys(str(self.known_hosts))
        c.open()
        c.transport.set_keepalive(KEEPALIVE_SECS)
        self._conn = c
        return c

    def _sftp_client(self):
        """The SFTP session, or None when the pod's sshd has no SFTP subsystem (see ``no_sftp``)."""
        conn = self._connection()
        if self._sftp is None and not self.no_sftp:
            import paramiko

            chan = conn.transport.open_session(timeout=self.connect_timeout)  # fails: the link (retried)
            try:
                chan.invoke_subsystem("sftp")
                self._sftp = paramiko.SFTPClient(chan)
            except (paramiko.SSHException, EOFError) as e:
                # A refused subsystem ("Channel closed.") or a missing sftp-server (EOF during
                # negotiation) is no dropped link: the link still runs commands. Not retried.
                chan.close()
                if not self._link_runs_commands():
                    raise
                self.no_sftp = (f"sshd on {self.name} has no SFTP subsystem (no working `Subsystem sftp` "
                                f"line in its sshd_config; {e.__class__.__name__}: {e}); using shell commands")
                return None
            self._sftp.get_channel().settimeout(self.command_timeout)
        return self._sftp

    def _link_runs_commands(self) -> bool:
        try:
            return self._exec("true", timeout=self.connect_timeout)[0] == 0
        except Exception:  # whatever it is, the link does not run commands
            return False

    def _exec(self, script: str, data: bytes | None = None, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run ``script`` (bash) on an exec channel of the open link: (exit code, stdout, stderr) as bytes,
        ``data`` on its stdin. A dropped link raises EOFError (for ``_retry``)."""
        limit = timeout if timeout is not None else self.command_timeout
        chan = self._connection().transport.open_session(timeout=self.connect_timeout)
        try:
            chan.settimeout(limit)
            chan.exec_command(f"bash -c {shlex.quote(script)}")
            if data is not None:
                chan.sendall(data)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + limit
            while True:
                busy = False
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                    busy = True
                # Done only at EOF: sshd may send the exit status before the last of the output.
                drained = not chan.recv_ready() and not chan.recv_stderr_ready()
                if (chan.eof_received or chan.closed) and chan.exit_status_ready() and drained:
                    break
                if (chan.closed and drained) or not chan.get_transport().is_active():
                    raise EOFError("the link dropped while a file command ran")
                if time.monotonic() > deadline:
                    raise HostError(f"{self.name}: command timed out after {limit:g}s: {script[:80]}")
                if not busy:
                    time.sleep(0.002)
            return chan.recv_exit_status(), bytes(out), bytes(err)
        finally:
            chan.close()

    def _shell_file(self, what: str, script: str, data: bytes | None = None) -> tuple[int, bytes]:
        """A file operation as a shell command (no SFTP): (exit code, stdout); an error other than
        the script's own 0 and 44 (no such file) raises HostError."""
        rc, out, err = self._exec(script, data)
        if rc not in (0, 44):
            raise HostError(f"{self.name}: {what} failed with exit {rc}: {err.decode('utf-8', 'replace').strip()[-800:]}")
        return rc, out

    def _shell_read(self, path: str, what: str) -> bytes | None:
        q = shlex.quote(path)
        rc, out = self._shell_file(what, f"test -e {q} || exit 44; exec cat -- {q}")
        return None if rc == 44 else out

    def close(self) -> None:
        for obj in (self._sftp, self._conn):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self._sftp = self._conn = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; on a transient failure reconnect with backoff until the budget is spent."""
        import paramiko

        t0 = time.monotonic()
        delay = 0.2
        while True:
            try:
                return fn()
            except paramiko.BadHostKeyException as e:
                self.close()
                raise HostError(
                    f"{self.name}: {what}: the host key changed (got {e.key.get_name()} "
                    f"{e.key.get_fingerprint().hex()}); refusing to connect",
                    hint=f"if the pod was rebuilt on purpose, delete the {self.target.known_hosts_name} "
                         f"line from {self.known_hosts}, then rerun the command",
                ) from None
            except paramiko.AuthenticationException as e:
                self.close()
                if AUTH_LINK_DROPPED not in str(e):
                    raise HostError(f"{self.name}: {what}: authentication failed ({e})",
                                    hint="check OPS_SSH_KEY and the pod's authorized_keys, then rerun the command") from None
                last = f"{e.__class__.__name__}: {e}"  # sshd went away mid-handshake: the link, not the key
            except (OSError, EOFError, paramiko.SSHException) as e:
                self.close()
                last = f"{e.__class__.__name__}: {e}"
            if time.monotonic() - t0 + delay > self.retry_secs:
                raise UnreachableError(
                    f"{self.name}: unreachable during {what} after retrying for {self.retry_secs:g}s "
                    f"(last error: {last})",
                    hint="the pod may be restarting; check it with `inv pod-status`, then rerun the command",
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------ paths
    @property
    def home(self) -> str:
        """The login user's home folder on the pod (relative paths are taken against it)."""
        if self._home is None:
            def once():
                sftp = self._sftp_client()
                # The login folder, as sftp-server (and a relative rsync path) take it.
                return sftp.normalize(".") if sftp is not None else self._shell_file("home", "pwd")[1].decode().strip()

            self._home = self._retry("home", once)
        return self._home

    @property
    def python(self) -> str:
        """The checked-out venv's python once it exists on the pod, else REMOTE_PYTHON_BIN."""
        if self._python is None:
            self._python = self.base_python
            vp = self.venv_python
            if vp and not vp.startswith("/"):
                vp = f"{self.home}/{vp.removeprefix('~/')}"
            if vp and self.exists(vp):
                self._python = vp
        return self._python

    @python.setter
    def python(self, value: str | None) -> None:
        """Set the interpreter; ``None`` looks again (after a checkout created the venv)."""
        self._python = value

    # ------------------------------------------------------------ commands
    def run(self, cmd: Command, *, check: bool = True, timeout: float | None = None,
            env: dict[str, str] | None = None, cwd: str | None = None) -> RunResult:
        shell = as_shell(cmd)
        full = shell
        if env:
            bad = [k for k in env if not ENV_NAME_RE.match(k)]
            if bad:
                raise InputError(f"{self.name}: invalid environment variable name {bad[0]!r}")
            full = " ".join(f"export {k}={shlex.quote(v)};" for k, v in env.items()) + " " + full
        if cwd:
            full = f"cd -- {shlex.quote(cwd)} && {full}"
        remote = f"bash -c {shlex.quote(full)}"
        limit = timeout if timeout is not None else self.command_timeout

        def once():
            from invoke.exceptions import CommandTimedOut

            try:
                r = self._connection().run(remote, hide=True, warn=True, timeout=limit, in_stream=False)
            except CommandTimedOut:
                self.close()
                raise HostError(f"{self.name}: command timed out after {limit:g}s: {shell}") from None
            transport = self._conn.transport if self._conn is not None else None
            if r.exited == -1 and not (transport is not None and transport.is_active()):
                # The link dropped mid-command (no exit status came back). Not retried: the
                # command may have run, in part or in full, and need not be safe to repeat.
                self.close()
                raise LinkDropped(
                    f"{self.name}: unreachable: the link dropped during run {shell[:80]!r}, "
                    f"which may or may not have finished on the pod",
                    hint="the pod may be restarting; check it with `inv pod-status`, then rerun the command")
            return RunResult(shell, r.exited, r.stdout, r.stderr)

        res = self._retry(f"run {shell[:80]!r}", once)
        if check and not res.ok:
            raise HostError(f"{self.name}: command failed with exit {res.exited}: {shell}\n"
                            f"{res.stderr.strip()[-2000:]}", result=res)
        return res

    # ------------------------------------------------------------ files
    def put(self, local: str | os.PathLike[str], remote: str) -> None:
        data = Path(local).read_bytes()
        mode = stat.S_IMODE(os.stat(local).st_mode)
        self._write_bytes(remote, data, mode, f"put {remote}")

    def get(self, remote: str, local: str | os.PathLike[str]) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)

        def once():
            sftp = self._sftp_client()
            if sftp is None:
                data = self._shell_read(remote, f"get {remote}")
                if data is None:
                    raise HostError(f"{self.name}: get {remote}: no such file")
                Path(local).write_bytes(data)
                return
            try:
                sftp.get(remote, str(local))
            except FileNotFoundError:
                raise HostError(f"{self.name}: get {remote}: no such file") from None

        self._retry(f"get {remote}", once)

    def exists(self, path: str) -> bool:
        def once():
            sftp = self._sftp_client()
            if sftp is None:
                return self._shell_file(f"exists {path}", f"test -e {shlex.quote(path)} || exit 44")[0] == 0
            try:
                sftp.stat(path)
                return True
            except FileNotFoundError:
                return False

        return self._retry(f"exists {path}", once)

    def read_text(self, path: str) -> str | None:
        def once():
            sftp = self._sftp_client()
            if sftp is None:
                data = self._shell_read(path, f"read {path}")
                return None if data is None else data.decode("utf-8")
            try:
                with sftp.open(path, "rb") as fh:
                    return fh.read().decode("utf-8")
            except FileNotFoundError:
                return None

        return self._retry(f"read {path}", once)

    def write_text(self, path: str, text: str, mode: int = 0o644) -> None:
        self._write_bytes(path, text.encode("utf-8"), mode, f"write {path}")

    def _write_bytes(self, path: str, data: bytes, mode: int, what: str) -> None:
        """Atomic on the pod: a temp file in the same folder, then an atomic rename over ``path``."""
        folder, name = os.path.split(path)
        tmp = f"{folder or '.'}/{tmp_prefix(name)}{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"

        def once():
            sftp = self._sftp_client()
            if sftp is None:
                q = shlex.quote
                self._shell_file(what, f"mkdir -p -- {q(folder or '.')} && cat > {q(tmp)} && chmod {mode:o} {q(tmp)} "
                                       f"&& mv -f -- {q(tmp)} {q(path)}", data)
                return
            try:
                sftp.putfo(io.BytesIO(data), tmp, confirm=True)
            except FileNotFoundError:
                self.run(["mkdir", "-p", folder or "."])
                sftp = self._sftp_client()
                sftp.putfo(io.BytesIO(data), tmp, confirm=True)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, path)

        try:
            self._retry(what, once)
        except HostError as e:
            if not isinstance(e, UnreachableError):
                try:
                    self.run(["rm", "-f", tmp], check=False)
                except HostError:
                    pass
            raise

    # ------------------------------------------------------------ rsync
    def ssh_command(self) -> list[str]:
        """The ``ssh`` command line rsync uses: same key, port, known_hosts and timeouts as fabric."""
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        argv = ["ssh", "-p", str(self.target.port)]
        if self.target.key:
            argv += ["-i", self.target.key, "-o", "IdentitiesOnly=yes"]
        argv += ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                 "-o", "StrictHostKeyChecking=accept-new", "-o", "GlobalKnownHostsFile=/dev/null",
                 "-o", f"ServerAliveInterval={KEEPALIVE_SECS}", "-o", "ServerAliveCountMax=3",
                 "-o", f"ConnectTimeout={max(1, int(round(self.connect_timeout)))}", "-o", "LogLevel=ERROR"]
        return argv

    def sync(self, src: str, dst: str, *, to_host: bool = True, delete: bool = False,
             dry_run: bool = False, excludes: Sequence[str] = ()) -> RunResult:
        """rsync a folder: this machine -> pod (``to_host``) or pod -> this machine; resumable."""
        remote_dir = dst if to_host else src
        remote = f"{self.target.user}@{self.target.host}:"
        # --protect-args: the remote paths travel inside rsync's protocol, never through the pod's
        # shell (a shell-quoted path would be quoted twice by rsync >= 3.2.4, which escapes it itself).

        # --temp-dir (in safe_args): a killed pass leaves its temp file in opsrg's TEMP_DIR.
        args = ["rsync", "-a", "--protect-args", "--sparse", "--partial", *safe_args(dry_run), "--itemize-changes",
                "--timeout=60", "-e", shlex.join(self.ssh_command())]
        if self.rsync_bwlimit_kbps:
            args.append(f"--bwlimit={self.rsync_bwlimit_kbps}")
        if delete:
            args.append("--delete")
        if dry_run:
            args.append("--dry-run")
        args += [f"--exclude={x}" for x in excludes]
        if to_host:
            if not dry_run:
                self.run(["mkdir", "-p", f"{remote_dir.rstrip('/')}/{TEMP_DIR}"])
            args += [_local_arg(src.rstrip("/") + "/"), remote + dst.rstrip("/") + "/"]
        else:
            Path(dst, TEMP_DIR if not dry_run else "").mkdir(parents=True, exist_ok=True)
            args += [remote + src.rstrip("/") + "/", _local_arg(dst.rstrip("/") + "/")]
        t0, delay = time.monotonic(), 0.2
        while True:
            attempt = time.time() - 1.0  # a temp file older than this attempt is a killed one's
            p = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if p.returncode == 0:
                if not dry_run and not to_host:
                    drop_temp_dir(dst, attempt)
                elif not dry_run:  # a killed attempt's temp files, the empty folders on the pod; best effort
                    with contextlib.suppress(HostError):
                        self.run(stale_temp_sh(remote_dir.rstrip("/"), attempt), check=False)
                return RunResult(shlex.join(args), 0, p.stdout, p.stderr)
            err = p.stderr.strip()[-1500:]
            if "REMOTE HOST IDENTIFICATION HAS CHANGED" in p.stderr or "Host key verification failed" in p.stderr:
                raise HostError(f"{self.name}: rsync refused: the host key changed\n{err}",
                                hint=f"if the pod was rebuilt on purpose, delete the {self.target.known_hosts_name} "
                                     f"line from {self.known_hosts}, then rerun the command")
            if p.returncode not in RSYNC_TRANSIENT:
                raise HostError(f"{self.name}: rsync {src} -> {dst} failed ({p.returncode}): {err}")
            if time.monotonic() - t0 + delay > self.retry_secs:
                raise UnreachableError(
                    f"{self.name}: unreachable during rsync {src} -> {dst} after retrying for "
                    f"{self.retry_secs:g}s (last: rsync exit {p.returncode}: {err})",
                    hint="rsync resumes where it stopped; check the pod with `inv pod-status`, then rerun the command")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _local_arg(path: str) -> str:
    """A local rsync path that rsync reads as a path: never as an option ('-x'), nor as a remote
    ``host:path`` (a ':' before the first '/')."""
    return path if path.startswith("/") else f"./{path}"


def probe(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at host:port (no SSH involved)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
