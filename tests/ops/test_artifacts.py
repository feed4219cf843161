import json
import os
import time
from pathlib import Path

import pytest

from opsrg.context import Context
from opsrg.ops import artifacts

from support import inv


def _age(path, days):
    t = time.time() - days * 86400
    for dirpath, dirs, files in os.walk(path):
        for n in files + dirs:
            os.utime(os.path.join(dirpath, n), (t, t))
    os.utime(path, (t, t))


@pytest.mark.tmux
def test_ls_and_gc_never_remove_a_live_run(project):
    ctx = Context.load()
    out = ctx.outputs_dir
    for name, summary in (("old-ok", {"ok": True}), ("old-bad", {"ok": False}), ("fresh", {"ok": True})):
        os.makedirs(f"{out}/{name}")
        open(f"{out}/{name}/summary.json", "w").write(json.dumps(summary))
        open(f"{out}/{name}/meta.json", "w").write(json.dumps({"identity": f"id-{name}"}))
    os.makedirs(f"{out}/old-live")
    open(f"{out}/old-live/meta.json", "w").write("{}")  # a run carries a marker from its start
    ctx.tasks.run("writer", f"sleep 30 # writes {out}/old-live")
    for name in ("old-ok", "old-bad", "old-live"):
        _age(f"{out}/{name}", 10)

    runs = {r.run_id: r for r in artifacts.list_runs(ctx)}
    assert runs["old-ok"].state == "completed" and runs["old-bad"].state == "failed"
    assert runs["old-live"].state == "incomplete" and runs["old-live"].live_task == "writer"
    assert runs["old-ok"].identity == "id-old-ok" and runs["old-ok"].age_days > 9

    r = inv("artifacts-gc", "--ttl-days", "5", "--dry-run")
    assert r.returncode == 0 and "would remove old-ok" in r.stdout and "kept old-live" in r.stdout
    assert os.path.exists(f"{out}/old-ok")
    r = inv("artifacts-gc", "--ttl-days", "5")
    assert r.returncode == 0, r.stderr
    left = sorted(os.listdir(out))
    assert "old-ok" not in left and "old-bad" not in left
    assert "old-live" in left and "fresh" in left and "_tasks" in left
    ls = json.loads(inv("artifacts-ls", "--json").stdout)
    assert sorted(x["run_id"] for x in ls) == ["fresh", "old-live"]
    ctx.tasks.kill("writer")
    assert inv("artifacts-gc", "--ttl-days", "x").returncode == 2


def test_run_markers_are_what_runs_write():
    from opsrg.rg.pipeline import RunPaths
    from opsrg.sweeps.runs import SweepPaths

    rg = RunPaths(Path("r"))
    assert {rg.run_json.name, rg.summary.name} <= set(artifacts.RUN_MARKERS)
    sweep = SweepPaths(Path("out"))
    assert {sweep.run_manifest("r").name, sweep.summary("r").name} <= set(artifacts.RUN_MARKERS)
    assert "meta.json" in artifacts.RUN_MARKERS  # opsrg.provenance begin


@pytest.mark.tmux
def test_gc_removes_only_runs_and_never_follows_a_symlink(project, tmp_path_factory):
    ctx = Context.load()
    out = Path(ctx.outputs_dir)
    for name, files in (("done", {"summary.json": '{"ok": true}'}), ("begun", {"meta.json": "{}"}),
                        ("rg", {"run.json": "{}"}), ("sweeps", {"demo.csv": "run_id\n"}),
                        ("notes", {"summary.txt": "mine"}), ("decoy", {})):
        (out / name).mkdir(parents=True)
        for n, text in files.items():
            (out / name / n).write_text(text)
    (out / "decoy" / "meta.json").mkdir()  # a marker's name, but not a file
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "summary.json").write_text('{"ok": true}')  # a run, but not in the outputs folder
    os.symlink(elsewhere, out / "linked")
    os.symlink(out / "done", out / "alias")
    for p in out.iterdir():
        _age(p, 40)
        os.utime(p, (time.time() - 40 * 86400,) * 2, follow_symlinks=False)

    ls = {x["run_id"]: x for x in json.loads(inv("artifacts-ls", "--json").stdout)}
    kinds = {k: v["kind"] for k, v in ls.items()}
    assert kinds == {"done": "run", "begun": "run", "rg": "run", "sweeps": "not a run", "notes": "not a run",
                     "decoy": "not a run", "linked": "symlink", "alias": "symlink"}
    assert ls["linked"]["note"].startswith(f"symlink to {elsewhere}") and ls["linked"]["size_bytes"] == 0
    assert ls["begun"]["state"] == "incomplete" and ls["done"]["state"] == "completed"

    r = inv("artifacts-gc", "--ttl-days", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == [
        "alias", "decoy", "linked", "notes", "sweeps"]
    assert "kept linked: symlink to" in r.stdout and "kept sweeps: no run marker" in r.stdout
    assert (elsewhere / "summary.json").exists() and os.path.islink(out / "linked")
    assert "3 run(s) removed, 5 kept" in r.stdout


@pytest.mark.parametrize("where", ["project", "parent", "home", "root"])
def test_gc_refuses_an_outputs_folder_that_holds_more_than_runs(tmp_path, where):
    home = tmp_path / "home"
    proj = home / "work" / "proj"
    (proj / "sweeps").mkdir(parents=True)
    (proj / "sweeps" / "summary.json").write_text('{"ok": true}')  # looks like a run, in the project
    old = time.time() - 40 * 86400
    os.utime(proj / "sweeps" / "summary.json", (old, old))
    os.utime(proj / "sweeps", (old, old))
    value = {"project": ".", "parent": "..", "home": "~", "root": "/"}[where]
    env = proj / "workflow.env"
    env.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={value}\n")
    # --dry-run and a TTL nothing reaches: even a broken guard could not remove anything here
    args = ["artifacts-gc", "--ttl-days", "30"] if where == "project" else \
        ["artifacts-gc", "--ttl-days", "100000", "--dry-run"]
    r = inv(*args, env={"OPSRG_ENV_FILE": str(env), "HOME": str(home)})
    assert r.returncode == 2, r.stdout + r.stderr
    what = {"project": "the project folder", "parent": "a folder above the project folder",
            "home": "your home folder", "root": "the root folder"}[where]
    assert what in r.stderr and "Traceback" not in r.stderr
    assert (proj / "sweeps" / "summary.json").exists()
