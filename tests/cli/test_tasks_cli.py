"""The invoke command line, run as a user runs it (`inv ...` in a subprocess)."""

from __future__ import annotations

import json
import re

import pytest

from support import inv

TASK_NAMES = ["config-show", "fsm-status", "fsm-history", "fsm-reset", "fsm-check", "pod-up", "pod-status",
              "bootstrap", "task-run", "task-status", "task-wait", "task-list", "task-logs", "task-attach",
              "task-kill"]


def test_every_task_has_help():
    listing = inv("--list").stdout
    for name in TASK_NAMES:
        assert re.search(rf"^\s+{name}\s", listing, re.M), name
        r = inv(name, "--help")
        assert r.returncode == 0 and "Usage: inv" in r.stdout and "Docstring:" in r.stdout, name


def test_fsm_commands(project):
    r = inv("fsm-status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "INIT"
    r = inv("fsm-check", "sweep-start")
    assert r.returncode == 2 and "not allowed in state INIT" in r.stderr and "CHECKED_OUT" in r.stderr
    assert inv("fsm-check", "pod-up").returncode == 0
    r = inv("fsm-reset", "NOT_A_STATE")
    assert r.returncode == 2 and "unknown state" in r.stderr
    assert inv("fsm-reset", "checked_out").returncode == 0
    assert inv("fsm-check", "sweep-start").returncode == 0
    hist = json.loads(inv("fsm-history", "--json").stdout)
    assert hist[-1]["to"] == "CHECKED_OUT" and hist[-1]["command"] == "fsm-reset"


def test_illegal_command_exits_2_and_does_nothing(project):
    r = inv("bootstrap")
    assert r.returncode == 2 and "'bootstrap' is not allowed in state INIT" in r.stderr
    assert not (project / "outputs" / "_control" / "workflow_state.json").exists()


def test_enforce_off_warns_and_proceeds(project):
    r = inv("bootstrap", env={"WF_FSM_ENFORCE": "0"})
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr
    assert json.loads(inv("fsm-status", "--json").stdout)["state"] == "BOOTSTRAPPED"


def test_config_show_masks_secrets_and_names_sources(project):
    r = inv("config-show", "--json", env={"WANDB_API_KEY": "sekret"})
    data = json.loads(r.stdout)["settings"]
    assert data["WANDB_API_KEY"] == {"value": "********", "source": "env"}
    assert data["POD_PROVIDER"]["source"].endswith("workflow.env:1")
    assert "sekret" not in r.stdout


def test_bad_settings_exit_2_before_anything_runs(project):
    env_file = project / "workflow.env"
    env_file.write_text(env_file.read_text() + "SWEEP_BACKNED=tmux\n")
    r = inv("pod-up")
    assert r.returncode == 2 and "did you mean SWEEP_BACKEND?" in r.stderr and f"{env_file}:6" in r.stderr
    assert not (project / "outputs").exists()


@pytest.mark.tmux
def test_task_lifecycle_exit_codes(project):
    assert inv("task-run", "--id", "x", "--cmd", "true").returncode == 2  # INIT: no pod yet
    assert inv("pod-up").returncode == 0
    assert inv("task-run", "--id", "ok", "--cmd", "echo hi").returncode == 0
    assert inv("task-wait", "--id", "ok").returncode == 0
    assert inv("task-run", "--id", "no", "--cmd", "exit 3").returncode == 0
    r = inv("task-wait", "--id", "no")
    assert r.returncode == 1 and "to run it again: inv task-run --id no --replace --cmd 'exit 3'" in r.stderr
    assert inv("task-run", "--id", "to", "--cmd", "sleep 30", "--timeout-secs", "1").returncode == 0
    assert inv("task-wait", "--id", "to").returncode == 124
    assert inv("task-run", "--id", "long", "--cmd", "sleep 30").returncode == 0
    r = inv("task-wait", "--id", "long", "--timeout-secs", "1")
    assert r.returncode == 124 and "still" in r.stderr
    r = inv("task-kill", "--id", "long")
    assert r.returncode == 0 and "killed by task-kill" in r.stdout
    listed = {t["id"]: t["state"] for t in json.loads(inv("task-list", "--json").stdout)}
    assert listed == {"ok": "success", "no": "failed", "to": "timed_out", "long": "failed"}
    assert "hi" in inv("task-logs", "--id", "ok").stdout
    st = json.loads(inv("task-status", "--id", "no", "--json").stdout)
    assert st["exit_code"] == 3
    r = inv("task-status", "--id", "missing")
    assert r.returncode == 1 and "no task 'missing'" in r.stderr
    r = inv("task-run", "--id", "../evil", "--cmd", "true")
    assert r.returncode == 2 and "invalid task id" in r.stderr


# ------------------------------------------------------------------ numeric options, dry runs
NUMERIC_OPTIONS = [  # (argv before the value, option); every numeric option of every task
    (["task-run", "--id", "n", "--cmd", "true", "--timeout-secs"], "--timeout-secs"),
    (["task-wait", "--id", "n", "--timeout-secs"], "--timeout-secs"),
    (["sweep-monitor", "--wait", "--timeout-secs"], "--timeout-secs"),
    (["artifacts-gc", "--dry-run", "--ttl-days"], "--ttl-days"),
]


@pytest.mark.parametrize("value", ["10s", "nan", "inf", "-1", "", "1e999"])
@pytest.mark.parametrize("argv,option", NUMERIC_OPTIONS, ids=[a[0] for a, _ in NUMERIC_OPTIONS])
def test_numeric_options_refuse_what_is_not_a_finite_number(project, argv, option, value):
    r = inv(*argv, value)  # refused before anything is read or run
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {option} must be" in r.stderr and repr(value) in r.stderr and "Traceback" not in r.stderr
    assert not (project / "outputs" / "_tasks" / "n").exists()


def test_zero_timeout_is_refused_but_zero_ttl_is_allowed(project):
    assert inv("pod-up").returncode == 0
    r = inv("task-run", "--id", "z", "--cmd", "true", "--timeout-secs", "0")
    assert r.returncode == 2 and "--timeout-secs must be a positive number" in r.stderr
    r = inv("artifacts-gc", "--ttl-days", "0", "--dry-run")
    assert r.returncode == 0, r.stderr


@pytest.mark.tmux
def test_a_fractional_timeout_is_enforced_and_recorded_as_a_number(project):
    assert inv("pod-up").returncode == 0
    assert inv("task-run", "--id", "t", "--cmd", "sleep 30", "--timeout-secs", "0.5").returncode == 0
    assert inv("task-wait", "--id", "t", "--timeout-secs", "20").returncode == 124
    rec = json.loads((project / "outputs" / "_tasks" / "t" / "status.json").read_text())  # strict JSON
    assert rec["timeout_secs"] == 0.5 and rec["state"] == "timed_out"


def test_sweep_dry_run_follows_the_same_fsm_rule_as_the_real_start(project):
    csv = project / "s.csv"
    csv.write_text("run_id,config,seed,overrides,notes\nr1,sweeps/configs/shell.toml,1,,\n")
    r = inv("sweep-start", "--csv", str(csv), "--dry-run")  # INIT: refused, as the real start is
    assert r.returncode == 2 and "'sweep-start' is not allowed in state INIT" in r.stderr
    r = inv("sweep-start", "--csv", str(csv), "--dry-run", env={"WF_FSM_ENFORCE": "0"})
    assert r.returncode == 0, r.stderr
    assert "warning: 'sweep-start' is not allowed in state INIT" in r.stderr and "WF_FSM_ENFORCE=0" in r.stderr
    assert "dry run (tmux): 1 jobs for runs r1" in r.stdout
    assert json.loads(inv("fsm-status", "--json").stdout)["state"] == "INIT"  # a dry run moves nothing
    assert not (project / "outputs" / "r1").exists()


@pytest.mark.tmux
def test_task_list_shows_live_tasks_and_the_newest_ended_ones_all_with_all(project):
    from datetime import UTC, datetime, timedelta

    root = project / "outputs" / "_tasks"
    t0 = datetime.now(UTC) - timedelta(hours=1)

    def record(tid: str, state: str, at: datetime) -> None:
        (root / tid).mkdir(parents=True)
        (root / tid / "status.json").write_text(json.dumps({"id": tid, "state": state, "runner": "tmux",
                                                            "created_at": at.isoformat(), "exit_code": 0}))

    record("live", "pending", datetime.now(UTC))  # in its start-up grace: alive
    for i in range(40):
        record(f"done{i:02d}", "success", t0 + timedelta(seconds=i))
    r = inv("task-list")
    assert r.returncode == 0, r.stderr
    assert "live" in r.stdout and "done39" in r.stdout and "done10" in r.stdout and "done09" not in r.stdout
    assert "10 older ended tasks not shown: inv task-list --all" in r.stdout
    r = inv("task-list", "--all")
    assert "done00" in r.stdout and "not shown" not in r.stdout
    assert len(json.loads(inv("task-list", "--json").stdout)) == 41
