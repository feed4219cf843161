"""sweep-grid: a product of axes and seeds written as a sweep CSV that sweep-start reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsrg.core.errors import InputError
from opsrg.sweeps.grid import KEY_FORM, Grid, expand, from_toml, parse_axis, parse_seeds, to_csv
from opsrg.sweeps.rows import parse_text

BIN = Path(sys.executable).parent


def test_axes_and_seeds_parse_and_refuse_what_is_not_one():
    assert parse_axis("lr=1e-3, 3e-3") == ("lr", ["1e-3", "3e-3"])
    assert parse_seeds("1-3,7") == [1, 2, 3, 7]
    for bad in ("lr", "=1,2", "lr=", "lr=1,1"):
        with pytest.raises(InputError):
            parse_axis(bad)
    for bad in ("3-1", "x", "1,1", ""):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_the_product_in_a_stable_order_with_ids_from_the_template(tmp_path):
    g = Grid("c.py", {"lr": ["1e-3", "3e-3"], "bs": ["32", "64"]}, [1, 2], run_id="lr{lr}-bs{bs}-s{seed}")
    rows = expand(g)
    assert [r["run_id"] for r in rows[:3]] == ["lr1e-3-bs32-s1", "lr1e-3-bs32-s2", "lr1e-3-bs64-s1"]
    assert len(rows) == 8 and rows[0]["overrides"] == "--lr=1e-3 --bs=32" and rows[0]["notes"] == "lr=1e-3, bs=32"
    (tmp_path / "c.py").write_text("")
    parsed = parse_text(to_csv(rows), "grid.csv", [tmp_path], run_command="python t.py {config} {overrides}")
    assert [(r.run_id, r.spec["args"], r.notes) for r in parsed][-1] == (
        "lr3e-3-bs64-s2", ["--lr=3e-3", "--bs=64"], "lr=3e-3, bs=64")


def test_colliding_ids_unknown_fields_and_bad_forms_are_refused():
    with pytest.raises(InputError, match="made twice"):
        expand(Grid("c.py", {"lr": ["1", "2"]}, [1], run_id="r{seed}"))
    with pytest.raises(InputError, match="no axis named 'lrr'"):
        expand(Grid("c.py", {"lr": ["1"]}, [1], run_id="r{lrr}"))
    with pytest.raises(InputError, match="not usable"):
        expand(Grid("c.py", {"path": ["a/b"]}, [1]))
    with pytest.raises(InputError, match="form"):
        expand(Grid("c.py", {"lr": ["1"]}, [1], form="--{key}"))


def test_a_toml_spec(tmp_path):
    spec = tmp_path / "grid.toml"
    spec.write_text('config = "sweeps/configs/fp.toml"\nseeds = "1-2"\nform = "{key}={value}"\n'
                    'run_id = "fp-n{samples}-s{seed}"\n[axes]\nsamples = [1000, 2000]\n')
    g = from_toml(spec)
    assert g.form == KEY_FORM and g.axes == {"samples": ["1000", "2000"]}
    assert [r["overrides"] for r in expand(g)] == ["samples=1000"] * 2 + ["samples=2000"] * 2
    spec.write_text('config = "c.py"\ncolour = 1\n[axes]\nx = [1]\n')
    with pytest.raises(InputError, match="unknown key 'colour'"):
        from_toml(spec)


@pytest.mark.tmux
def test_sweep_grid_writes_a_csv_that_the_dry_run_shows_row_by_row(tmp_path, tmux_socket):
    root = tmp_path / "p"
    root.mkdir()
    (root / "train.py").write_text("")
    (root / "c.py").write_text("lr = 1\n")
    (root / "fp.toml").write_text('mode = "fp"\nsteps = 2\nsamples = 100\n')
    (root / "workflow.env").write_text(
        f"POD_PROVIDER=local\nOPS_TMUX_SOCKET={tmux_socket}\nWF_FSM_ENFORCE=0\nSWEEP_CSV=grid.csv\n"
        "RUN_COMMAND=python train.py {config} --seed={seed} {overrides}\n")
    env = {k: v for k, v in os.environ.items() if k != "OPSRG_ENV_FILE"}

    def opsrg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=root, capture_output=True, text=True, timeout=60,
                              env=env)

    r = opsrg("sweep-grid", "--config", "c.py", "--axis", "lr=1e-3,3e-3,1e-2", "--axis", "batch_size=32,64",
              "--seeds", "1-3", "--id", "lr{lr}-bs{batch_size}-s{seed}")
    assert r.returncode == 0 and "18 rows (3 x 2 points x 3 seeds)" in r.stdout, r.stdout + r.stderr
    plan = json.loads(opsrg("sweep-start", "--dry-run", "--json").stdout)
    assert len(plan["jobs"]) == 18 and "lr1e-2-bs64-s3" in plan["runs"]
    job = next(j for j in plan["jobs"] if j["key"] == "lr3e-3-bs32-s2")
    assert "--seed=2 --lr=3e-3 --batch_size=32" in job["script"]
    r = opsrg("sweep-grid", "--config", "c.py", "--axis", "lr=1")
    assert r.returncode == 2 and "exists" in r.stderr  # never overwritten without --force
    # an RG run config takes opsrg's own keys (key=value), checked as sweep-start checks them
    r = opsrg("sweep-grid", "--config", "fp.toml", "--axis", "samples=200,400", "--out", "fp.csv")
    assert r.returncode == 0, r.stderr
    assert "samples=200" in (root / "fp.csv").read_text()
    r = opsrg("sweep-grid", "--config", "fp.toml", "--axis", "colour=1,2", "--out", "bad.csv")
    assert r.returncode == 2 and "unknown key 'colour'" in r.stderr and not (root / "bad.csv").exists(), r.stderr
