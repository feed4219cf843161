import json
import os
import time

import pytest

from opsrg import artifacts
from opsrg.context import Context

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
