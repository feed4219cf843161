"""push, pull, fetch-run (verified, resumable, idempotent, sshd dying mid-transfer) and
local_sync, against a real sshd on loopback (and the local provider for local_sync)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.core.errors import HostError, InputError, UnreachableError
from opsrg.hosts import rsync
from opsrg.pods import localsync, transfer

from sshd import write_ssh_env
from support import inv, unavailable

SIZES = {"empty.txt": 0, "one.bin": 1, "small.json": 700, "sub/mid.npz": 100_000, "sub/deep/big.bin": 3_000_000}


def make_run(outputs: Path, run_id: str, sizes=SIZES) -> dict[str, str]:
    digests = {}
    for rel, n in sizes.items():
        p = outputs / run_id / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(n)
        p.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


def local_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and p.name != transfer.FETCHED}


@pytest.mark.ssh
def test_fetch_run_verified_and_idempotent(ssh_project):
    outputs = ssh_project / "pod" / "outputs"
    digests = make_run(outputs, "run-a")
    make_run(outputs, "run-b", {"x": 10})
    ctx = Context.load()
    res = transfer.fetch_run(ctx, "run-a")
    local = ssh_project / "artifacts" / "run-a"
    assert res.files == len(SIZES) and res.transferred == len(SIZES) and not res.already_complete
    assert local_digests(local) == digests
    marker = json.loads((local / transfer.FETCHED).read_text())
    assert marker["complete"] and marker["n_files"] == len(SIZES)
    assert {f["path"]: f["sha256"] for f in marker["files"]} == digests
    # Idempotent: nothing is transferred again.
    again = transfer.fetch_run(Context.load(), "run-a")
    assert again.already_complete and again.transferred == 0
    # A file changed on the pod: exactly that one travels.
    (outputs / "run-a" / "small.json").write_bytes(b"{}")
    third = transfer.fetch_run(Context.load(), "run-a")
    assert third.transferred == 1 and (local / "small.json").read_bytes() == b"{}"
    # A damaged local copy is noticed and repaired.
    big = local / "sub" / "deep" / "big.bin"
    data = bytearray(big.read_bytes())
    data[10] ^= 0xFF
    big.write_bytes(bytes(data))
    fourth = transfer.fetch_run(Context.load(), "run-a")
    assert not fourth.already_complete and local_digests(local)["sub/deep/big.bin"] == digests["sub/deep/big.bin"]


@pytest.mark.ssh
def test_fetch_run_unknown_id_lists_known(ssh_project):
    make_run(ssh_project / "pod" / "outputs", "run-a", {"f": 1})
    (ssh_project / "pod" / "outputs" / "_control").mkdir(exist_ok=True)
    with pytest.raises(InputError, match=r"no run 'nope'.*known run ids: run-a$"):
        transfer.fetch_run(Context.load(), "nope")
    with pytest.raises(InputError, match="invalid run id"):
        transfer.fetch_run(Context.load(), "../etc")
    assert inv("pod-up").returncode == 0
    r = inv("fetch-run", "nope")
    assert r.returncode == 2 and "known run ids: run-a" in r.stderr


@pytest.mark.ssh
def test_fetch_survives_sshd_restart_mid_transfer(sshd_private, tmp_path, monkeypatch, tmux_socket):
    """The link drops in the middle of rsync; sshd comes back; fetch-run resumes and verifies."""
    env = write_ssh_env(tmp_path, sshd_private, tmux_socket, OPS_SSH_RETRY_SECS="20",
                        OPS_RSYNC_BWLIMIT_KBPS="4000")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    digests = make_run(tmp_path / "pod" / "outputs", "run-x", {"a.bin": 8_000_000, "b.bin": 1000})
    partial_seen, restarted = [], []

    def cut():
        local = tmp_path / "artifacts" / "run-x"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and not any(local.rglob("*a.bin*")):
            time.sleep(0.05)
        time.sleep(0.5)
        sizes = [p.stat().st_size for p in local.rglob("*a.bin*") if p.is_file()]
        partial_seen.append((not (local / transfer.FETCHED).exists(), max(sizes) < 8_000_000))
        sshd_private.stop()  # listener and the live session carrying rsync
        time.sleep(1.0)
        sshd_private.start()
        restarted.append(time.monotonic())

    t = threading.Thread(target=cut)
    t.start()
    res = transfer.fetch_run(Context.load(), "run-x")
    done = time.monotonic()
    t.join()
    assert partial_seen == [(True, True)]  # cut mid-file, before anything was marked complete
    assert restarted and done > restarted[0]
    assert local_digests(tmp_path / "artifacts" / "run-x") == digests
    assert (tmp_path / "artifacts" / "run-x" / transfer.FETCHED).is_file() and res.files == 2


@pytest.mark.ssh
def test_fetch_fails_clearly_when_pod_stays_down(sshd_private, tmp_path, monkeypatch, tmux_socket):
    env = write_ssh_env(tmp_path, sshd_private, tmux_socket, OPS_SSH_RETRY_SECS="1",
                        OPS_RSYNC_BWLIMIT_KBPS="3000")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    make_run(tmp_path / "pod" / "outputs", "run-y", {"a.bin": 6_000_000})
    local = tmp_path / "artifacts" / "run-y"

    def cut():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and not any(local.rglob("*a.bin*")):
            time.sleep(0.05)
        time.sleep(0.3)
        sshd_private.stop()

    t = threading.Thread(target=cut)
    t.start()
    with pytest.raises(UnreachableError) as e:
        transfer.fetch_run(Context.load(), "run-y")
    t.join()
    assert "inv fetch-run run-y" in str(e.value) and "not marked complete" in str(e.value)
    assert not (local / transfer.FETCHED).exists()
    r = inv("pod-status", "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["reachable"] is False and info["state"] == "unreachable"


@pytest.mark.ssh
def test_push_and_pull_with_dry_run(ssh_project):
    src = ssh_project / "code"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("x = 1\n")
    (src / ".venv").mkdir()
    (src / ".venv" / "junk").write_text("no")
    ctx = Context.load()
    assert transfer.push(ctx, src=str(src), dry_run=True).startswith("would push 1 files")
    repo = ssh_project / "pod" / "repo"
    assert not (repo / "pkg" / "m.py").exists()
    assert transfer.push(ctx, src=str(src)).startswith("pushed 1 files")
    assert (repo / "pkg" / "m.py").read_text() == "x = 1\n" and not (repo / ".venv").exists()
    assert transfer.push(ctx, src=str(src)).startswith("pushed 0 files")
    make_run(ssh_project / "pod" / "outputs", "r1", {"o.txt": 5})
    assert transfer.pull(ctx, dry_run=True).startswith("would pull 1 files")
    assert not (ssh_project / "artifacts" / "r1").exists()
    assert transfer.pull(ctx).startswith("pulled 1 files")
    assert (ssh_project / "artifacts" / "r1" / "o.txt").stat().st_size == 5


def make_non_results(run: Path) -> set[str]:
    """What a live run folder also holds: a lock, an atomic write's temp file (named as
    opsrg.atomic names it), a killed rsync's temp file (in opsrg's temp folder), partial folders.
    None of it is a result."""
    import tempfile

    from opsrg.core.atomic import TMP_SUFFIX, tmp_prefix

    (run / "sub" / ".rsync-partial").mkdir(parents=True)
    (run / "sub" / ".rsync-partial" / "mid.npz").write_bytes(b"p" * 10)
    (run / rsync.TEMP_DIR).mkdir(parents=True)
    (run / ".rsync-partial" / "small.json").write_bytes(b"{")
    (run / rsync.TEMP_DIR / "mid.npz.Ab12Cd").write_bytes(b"t" * 300)
    fd, _ = tempfile.mkstemp(prefix=tmp_prefix("small.json"), suffix=TMP_SUFFIX, dir=run)
    os.write(fd, b"{half")
    os.close(fd)
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_fetch_run_and_pull_bring_home_only_results(provider, request):
    from opsrg.core.atomic import locked

    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    outputs = root / "pod" / "outputs" if provider == "ssh" else root / "outputs"
    digests = make_run(outputs, "run-r", {"small.json": 700, "sub/mid.npz": 5000, "out.lock.json": 3})
    run = outputs / "run-r"
    ctx = Context.load()
    with locked(run / "small.json"):  # a writer holds the run's lock (flock) while it is fetched
        junk = make_non_results(run) - set(digests)
        assert "small.json.lock" in junk and len(junk) == 5
        res = transfer.fetch_run(ctx, "run-r")
        local = ctx.artifacts_dir / "run-r"
        assert res.files == 3 and local_digests(local) == digests  # outputs only, each verified
        marker = json.loads((local / transfer.FETCHED).read_text())
        pod_manifest = json.loads((Path(ctx.control_dir) / "manifests" / "run-r.json").read_text())
        assert sorted(f["path"] for f in marker["files"]) == sorted(f["path"] for f in pod_manifest["files"]) \
            == sorted(digests)
        assert transfer.fetch_run(Context.load(), "run-r").already_complete
        transfer.pull(ctx)
    pulled = [p for p in ctx.artifacts_dir.rglob("*") if p.name.endswith((".lock", ".tmp", ".Ab12Cd"))
              or p.name == ".rsync-partial"]
    assert pulled == [] and local_digests(local) == digests


# Files of the user's that merely look like temp files: results like any other (once left out of
# fetch-run and pull by a ".NAME.XXXXXX" pattern).
USER_DOTFILES = {".model.pickle": 40, ".env.backup": 3, ".results.sqlite": 70, ".notes.tmp": 5,
                 "sub/.z.npz.Ab12Cd": 9}


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_user_dotfiles_are_fetched_and_pulled(provider, request):
    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    outputs = root / "pod" / "outputs" if provider == "ssh" else root / "outputs"
    digests = make_run(outputs, "run-u", {"a.json": 10, **USER_DOTFILES})
    ctx = Context.load()
    res = transfer.fetch_run(ctx, "run-u")
    local = ctx.artifacts_dir / "run-u"
    assert res.files == len(digests) and local_digests(local) == digests
    assert sorted(f["path"] for f in json.loads((local / transfer.FETCHED).read_text())["files"]) == sorted(digests)
    assert not (local / rsync.PARTIAL_DIR).exists()  # rsync's (empty) temp folder is not left behind
    import shutil

    shutil.rmtree(ctx.artifacts_dir)
    transfer.pull(ctx)
    assert local_digests(ctx.artifacts_dir / "run-u") == digests


def _links(outputs: Path, run_id: str) -> None:
    run = outputs / run_id
    os.symlink("/etc", run / "etc")
    os.symlink("../../..", run / "sub" / "up")
    os.symlink("small.json", run / "latest")       # inside the run: copied as a link
    os.symlink("sub", run / "subdir")                # a folder inside the run
    os.symlink("../small.json", run / "sub" / "back")
    os.symlink("missing.txt", run / "dangling")      # inside, pointing at nothing yet


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_fetch_run_never_follows_a_symlink_out_of_the_run(provider, request):
    """Links out of the run refuse the fetch, naming them, with nothing copied nor marked fetched;
    links within the run are copied as links, listed with their targets and verified."""
    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    outputs = root / "pod" / "outputs" if provider == "ssh" else root / "outputs"
    digests = make_run(outputs, "run-l", {"small.json": 70, "sub/mid.npz": 500})
    _links(outputs, "run-l")
    ctx = Context.load()
    local = ctx.artifacts_dir / "run-l"
    with pytest.raises(InputError) as e:
        transfer.fetch_run(ctx, "run-l")
    msg = str(e.value)
    assert "2 symlink(s)" in msg and "etc -> /etc" in msg and "sub/up -> ../../.." in msg and "latest" not in msg
    assert not local.exists() or not any(local.rglob("*"))
    assert inv("pod-up").returncode == 0
    r = inv("fetch-run", "run-l")
    assert r.returncode == 2 and "etc -> /etc" in r.stderr and "Traceback" not in r.stderr
    assert not (local / transfer.FETCHED).exists()

    (outputs / "run-l" / "etc").unlink()
    (outputs / "run-l" / "sub" / "up").unlink()
    res = transfer.fetch_run(Context.load(), "run-l")
    files = {k: v for k, v in local_digests(local).items() if not (local / k).is_symlink()}
    assert res.files == 2 and res.links == 4 and files == digests
    want = {"latest": "small.json", "subdir": "sub", "sub/back": "../small.json", "dangling": "missing.txt"}
    assert {rel: os.readlink(local / rel) for rel in want} == want
    marker = json.loads((local / transfer.FETCHED).read_text())
    assert {ln["path"]: ln["target"] for ln in marker["links"]} == want and marker["n_links"] == 4
    assert transfer.fetch_run(Context.load(), "run-l").already_complete
    # A link changed at home is noticed and the fetch repairs it.
    (local / "latest").unlink()
    os.symlink("/etc/passwd", local / "latest")
    again = transfer.fetch_run(Context.load(), "run-l")
    assert not again.already_complete and os.readlink(local / "latest") == "small.json"
    # A fetched run that later gains a link out of it is no longer marked fetched.
    os.symlink("/", outputs / "run-l" / "root")
    with pytest.raises(InputError, match="root -> /"):
        transfer.fetch_run(Context.load(), "run-l")
    assert not (local / transfer.FETCHED).exists()


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_fetch_run_refuses_a_run_folder_that_is_a_symlink(provider, request, tmp_path_factory):
    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    outputs = root / "pod" / "outputs" if provider == "ssh" else root / "outputs"
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "secret.txt").write_text("not the run's")
    outputs.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, outputs / "run-s")
    ctx = Context.load()
    with pytest.raises(InputError, match="is a symlink"):
        transfer.fetch_run(ctx, "run-s")
    assert not (ctx.artifacts_dir / "run-s" / "secret.txt").exists()
    assert not (ctx.artifacts_dir / "run-s" / transfer.FETCHED).exists()


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_fetch_run_copies_a_sparse_file_sparsely(provider, request):
    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    outputs = root / "pod" / "outputs" if provider == "ssh" else root / "outputs"
    run = outputs / "run-sp"
    run.mkdir(parents=True)
    size = 256 << 20
    with open(run / "sparse.bin", "wb") as fh:
        fh.write(b"head")
        fh.truncate(size)
    if os.stat(run / "sparse.bin").st_blocks * 512 > 1 << 20:
        unavailable("this filesystem does not keep holes")
    ctx = Context.load()
    res = transfer.fetch_run(ctx, "run-sp")
    copy = ctx.artifacts_dir / "run-sp" / "sparse.bin"
    assert res.files == 1 and copy.stat().st_size == size
    assert copy.stat().st_blocks * 512 < 1 << 20  # not 256 MiB of zeros at home
    entry = json.loads((ctx.artifacts_dir / "run-sp" / transfer.FETCHED).read_text())["files"][0]
    assert entry["size"] == size and entry["alloc"] < 1 << 20


def test_fetch_run_fails_clearly_when_it_would_not_fit(project, monkeypatch):
    make_run(project / "outputs", "run-big", {"a.bin": 300_000, "b.bin": 5000})
    ctx = Context.load()
    with monkeypatch.context() as m, pytest.raises(HostError) as e:
        m.setattr(transfer, "_free_bytes", lambda path: 100_000)
        transfer.fetch_run(ctx, "run-big")
    assert "needs 297.9 KiB" in str(e.value) and "97.7 KiB is free" in str(e.value)
    assert "nothing was copied" in str(e.value) and "inv fetch-run run-big" in str(e.value)
    local = ctx.artifacts_dir / "run-big"
    assert not (local / transfer.FETCHED).exists() and not (local / "a.bin").exists()
    assert transfer.fetch_run(Context.load(), "run-big").files == 2
    # Files already at home need no room again.
    assert transfer.space_needed(local, transfer.manifest(Context.load(), "run-big")["files"]) == 0


@pytest.mark.parametrize("provider", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_every_transfer_keeps_rsync_temp_files_in_opsrg_folder(provider, request):
    """push and pull (and so fetch-run) pass --temp-dir inside .rsync-partial, whose folder they make
    first (on the pod too, for a push) and remove again once empty."""
    root = request.getfixturevalue("ssh_project" if provider == "ssh" else "project")
    src = root / "code"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("x = 1\n")
    ctx = Context.load()
    repo = Path(ctx.pod_path(ctx.s.ops_remote_repo))
    r = ctx.host.sync(str(src), str(repo), to_host=True)
    assert f"--temp-dir={rsync.TEMP_DIR}" in r.command and f"--partial-dir={rsync.PARTIAL_DIR}" in r.command
    assert "--sparse" in r.command
    assert (repo / "pkg" / "m.py").exists() and not (repo / rsync.PARTIAL_DIR).exists()
    r = ctx.host.sync(str(repo), str(root / "back"), to_host=False, dry_run=True)
    assert "--temp-dir" not in r.command and not (root / "back" / rsync.PARTIAL_DIR).exists()
    assert f"--temp-dir={rsync.TEMP_DIR}" in " ".join(rsync.RSYNC_PASS)
    loop = localsync.LOOP_SH.format(src="s", dst="d", stop="x", every=1, temp=rsync.TEMP_DIR,
                                    rsync="rsync", clean="")
    assert f'mkdir -p "$dst/{rsync.TEMP_DIR}" && rsync' in loop


def test_fetch_run_local_provider(project):
    make_run(project / "outputs", "loc", {"a": 10, "d/b": 2000})
    ctx = Context.load()
    res = transfer.fetch_run(ctx, "loc")
    assert res.files == 2 and (ctx.artifacts_dir / "loc" / transfer.FETCHED).is_file()
    assert transfer.fetch_run(Context.load(), "loc").already_complete


# ------------------------------------------------------------------ local_sync
@pytest.mark.tmux
def test_local_sync_mirrors_and_final_sync(project):
    ctx = Context.load()
    tid = localsync.start_sync(ctx, "run-1", interval=1)
    assert tid == "sync-run-1"
    scratch = Path(localsync.scratch_dir(ctx, "run-1"))
    durable = Path(localsync.durable_dir(ctx, "run-1"))
    (scratch / "part1.txt").write_text("one")
    t0 = time.monotonic()
    while not (durable / "part1.txt").exists():
        assert time.monotonic() - t0 < 15, "periodic sync did not happen"
        time.sleep(0.1)
    (scratch / "final.npz").write_bytes(b"x" * 1000)
    msg = localsync.final_sync(ctx, "run-1", timeout=30)
    assert "by task sync-run-1" in msg
    assert (durable / "final.npz").read_bytes() == b"x" * 1000
    assert ctx.tasks.status(tid).state.value == "success"


@pytest.mark.tmux
def test_local_sync_final_sync_without_loop(project):
    ctx = Context.load()
    localsync.start_sync(ctx, "run-2", interval=60)
    ctx.tasks.kill("sync-run-2")
    scratch = Path(localsync.scratch_dir(ctx, "run-2"))
    (scratch / "late.txt").write_text("late")
    msg = localsync.final_sync(ctx, "run-2", timeout=10)
    assert "directly" in msg
    assert (Path(localsync.durable_dir(ctx, "run-2")) / "late.txt").read_text() == "late"


@pytest.mark.ssh
@pytest.mark.tmux
def test_local_sync_over_ssh(ssh_project):
    ctx = Context.load()
    localsync.start_sync(ctx, "r", interval=1)
    scratch = Path(localsync.scratch_dir(ctx, "r"))
    (scratch / "f.txt").write_text("hi")
    assert "by task" in localsync.final_sync(ctx, "r", timeout=30)
    assert (ssh_project / "pod" / "outputs" / "r" / "f.txt").read_text() == "hi"


def test_hosterror_is_raised_for_bad_local_rsync(project):
    ctx = Context.load()
    with pytest.raises(HostError):
        ctx.host.sync("/definitely/not/here", str(project / "x"), to_host=False)
