"""Names opsrg keeps for itself under the outputs folder are never a run id nor a task id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsrg.core.layout import RESERVED_NAMES, reserved
from opsrg.sweeps.rows import SweepCSVError, parse_text

from support import inv

REPO = Path(__file__).resolve().parents[2]
HEAD = "run_id,config,seed,overrides,notes\n"
SH = "sweeps/configs/shell.toml"


@pytest.mark.parametrize("name", ["_control", "_manifests", "_tasks", "_replaced", "docs", "DOCS", "_later"])
def test_reserved_run_ids_are_refused_with_file_line_and_field(name):
    with pytest.raises(SweepCSVError) as e:
        parse_text(HEAD + f"ok,{SH},1,,\n{name},{SH},1,,\n", "s.csv", [REPO])
    (p,) = e.value.problems
    assert p.startswith("s.csv:3:1: run_id:") and "reserved" in p


def test_a_reserved_name_is_refused_as_a_dependency_too():
    with pytest.raises(SweepCSVError) as e:
        parse_text(HEAD + f"a,{SH},1,after=_tasks,\n", "s.csv", [REPO])
    assert "reserved" in e.value.problems[0] and ":2:" in e.value.problems[0]


def test_every_control_folder_of_the_outputs_is_reserved():
    """The folders opsrg writes directly under the outputs are all covered by the rule."""
    from opsrg.sweeps.runs import SweepPaths

    p = SweepPaths("/o")
    used = {p.manifests.name, p.ledger.parent.name, "_tasks", "_control", "_replaced"}
    assert used <= RESERVED_NAMES
    assert all(reserved(n) for n in used) and reserved("fp-s1") is None


@pytest.mark.tmux
def test_sweep_start_refuses_a_reserved_row_and_writes_nothing(project):
    assert inv("fsm-reset", "CHECKED_OUT").returncode == 0
    csv = project / "s.csv"
    csv.write_text(HEAD + f"_control,{SH},1,\"command='true'\",\n")
    before = sorted(p.name for p in (project / "outputs").iterdir())
    r = inv("sweep-start", "--csv", str(csv))
    assert r.returncode == 2 and "reserved" in r.stderr and "s.csv:2:1: run_id" in r.stderr
    assert sorted(p.name for p in (project / "outputs").iterdir()) == before
    state = json.loads(inv("fsm-status", "--json").stdout)["state"]
    assert state == "CHECKED_OUT"


@pytest.mark.tmux
@pytest.mark.parametrize("task_id", ["_tasks", "_control", "docs"])
def test_task_run_refuses_a_reserved_id(project, task_id):
    assert inv("pod-up").returncode == 0
    r = inv("task-run", "--id", task_id, "--cmd", "true")
    assert r.returncode == 2 and "reserved" in r.stderr
    assert not (project / "outputs" / "_tasks" / task_id).exists()
    r = inv("task-list", "--json")
    assert r.returncode == 0, r.stderr
