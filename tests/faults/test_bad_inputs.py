"""Bad input corpus: broken settings, torn status and state files, garbage histograms.

Each gets a clear error naming the file, a non-zero exit, and nothing is run or overwritten.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import inv

BROKEN_ENVS = {
    "unknown key": ("POD_PROVIDER=local\nPOD_PROVDER=ssh\n", ":2: POD_PROVDER: unknown key (did you mean POD_PROVIDER?)"),
    "bad int": ("RUN_TIMEOUT_SECS=10m\n", ":1: RUN_TIMEOUT_SECS"),
    "bad bool": ("WF_FSM_ENFORCE=maybe\n", ":1: WF_FSM_ENFORCE"),
    "bad choice": ("\nSWEEP_BACKEND=k8s\n", ":2: SWEEP_BACKEND"),
    "not key=value": ("just words here\n", ":1: cannot parse"),
    "no value": ("DATA_DIR\n", ":1: DATA_DIR: missing '='"),
    "duplicate": ("SLURM_MEM=1G\nSLURM_MEM=2G\n", ":2: SLURM_MEM: set twice"),
    "ssh without host": ("POD_PROVIDER=ssh\n", ":1: OPS_DEFAULT_HOST: required"),
    "negative": ("SLURM_CPUS_PER_TASK=-1\n", ":1: SLURM_CPUS_PER_TASK"),
    "bad tmux name": ("WF_TMUX_SESSION=a:b\n", ":1: WF_TMUX_SESSION"),
    "shell injection in name": ("OPS_TMUX_SOCKET=x;rm -rf ~\n", ":1: OPS_TMUX_SOCKET"),
    "empty path": ("LOCAL_ARTIFACTS_DIR=\n", ":1: LOCAL_ARTIFACTS_DIR: Value error, must be a path, not empty"),
    "unexpanded path": ("RUN_OUT_LOCAL_ROOT=${HOME}/scratch\n", ":1: RUN_OUT_LOCAL_ROOT: Value error, '$' is not"),
    "unexpanded optional path": ("DATA_DIR=$HOME/data\n", ":1: DATA_DIR: Value error, '$' is not expanded"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ENVS))
def test_broken_workflow_env(tmp_path, case):
    text, expected = BROKEN_ENVS[case]
    env = tmp_path / "workflow.env"
    env.write_text(f"OPS_REMOTE_OUTPUTS_DIR={tmp_path}/out\n" + text)
    expected = f"{env}:{int(expected.split(':')[1]) + 1}:{expected.split(':', 2)[2]}"
    r = inv("pod-up", env={"OPSRG_ENV_FILE": str(env)})
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["", "${HOME}/out", "$O/x$(touch PWNED)"])
def test_empty_or_unexpanded_outputs_dir_is_refused(tmp_path, value):
    """Empty once meant the project folder (and artifacts-gc then removed sweeps/ from it); ``${HOME}``
    made a folder literally named so. Both stop every command, before it does anything."""
    env = tmp_path / "workflow.env"
    env.write_text(f"POD_PROVIDER=local\nOPS_REMOTE_OUTPUTS_DIR={value}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args in (("pod-up",), ("artifacts-gc", "--ttl-days", "0"), ("doctor", "--fix")):
        r = inv(*args, env={"OPSRG_ENV_FILE": str(env)})
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert f"{env}:2: OPS_REMOTE_OUTPUTS_DIR: " in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ${HOME} folder, no outputs here


@pytest.mark.parametrize("case", ["folder", "unreadable"])
def test_env_file_that_is_no_readable_file(tmp_path, case):
    """OPSRG_ENV_FILE naming a folder, or a file that cannot be read: `PATH: problem`, exit 2."""
    import os

    if case == "folder":
        path, expected = tmp_path, f"{tmp_path}: not a file"
    elif os.geteuid() != 0:
        path = tmp_path / "workflow.env"
        path.write_text("POD_PROVIDER=local\n")
        path.chmod(0)
        expected = f"{path}: cannot read the settings file (permission denied)"
    else:  # root reads any mode; a file whose read fails (EIO) takes the same path through the code
        path, expected = "/proc/self/mem", ": cannot read the settings file (Input/output error)"
    r = inv("fsm-status", env={"OPSRG_ENV_FILE": str(path)})
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_non_utf8_env(tmp_path):
    env = tmp_path / "workflow.env"
    env.write_bytes(b"DATA_DIR=\xff\xfe\n")
    r = inv("fsm-status", env={"OPSRG_ENV_FILE": str(env)})
    assert r.returncode == 2 and "not UTF-8" in r.stderr and str(env) in r.stderr


@pytest.mark.parametrize("content", ['{"state": "POD_', "", "null", '{"state": "WEIRD"}', "\x00\x01"])
def test_torn_or_garbage_state_file(project, content):
    state = project / "outputs" / "_control" / "workflow_state.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    r = inv("fsm-status")
    assert r.returncode == 2 and str(state) in r.stderr and "fsm-reset" in r.stderr
    r = inv("pod-up")
    assert r.returncode == 2 and state.read_text() == content  # nothing overwritten


@pytest.mark.tmux
@pytest.mark.parametrize("content", ['{"id": "t", "state": "runn', "", "[]", '{"id": "t", "state": "exploded"}'])
def test_torn_or_garbage_status_json(project, content):
    assert inv("pod-up").returncode == 0
    assert inv("task-run", "--id", "t", "--cmd", "true").returncode == 0
    assert inv("task-wait", "--id", "t").returncode == 0
    status = project / "outputs" / "_tasks" / "t" / "status.json"
    status.write_text(content)
    r = inv("task-status", "--id", "t")
    assert r.returncode == 1 and f"{status}: unreadable task status" in r.stderr
    r = inv("task-list")
    assert r.returncode == 0 and f"warning: {status}: unreadable" in r.stderr
    r = inv("task-run", "--id", "t", "--cmd", "true")
    assert r.returncode == 1 and "already exists" in r.stderr and status.read_text() == content


@pytest.mark.parametrize("content", [b"garbage", b"PK\x03\x04truncated", b""])
def test_garbage_histogram_npz(tmp_path, content):
    bad = tmp_path / "fp.npz"
    bad.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "opsrg.rg", "exp", "--fp", str(bad), "--shifts", "0.01", "--steps",
                        "1", "--samples", "1000", "--seed", "1", "--out", str(tmp_path / "exp")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and str(bad) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "exp").exists()


def test_hostile_task_ids_and_commands(project):
    assert inv("pod-up").returncode == 0
    for bad in ("../../etc", "a/b", "$(id)", "x;y", "-rf"):
        r = inv("task-run", "--id", bad, "--cmd", "true")
        assert r.returncode == 2 and "invalid task id" in r.stderr, bad
    assert not list((project / "outputs" / "_tasks").glob("*")) or all(
        p.name.startswith(".") for p in (project / "outputs" / "_tasks").iterdir())


# ------------------------------------------------------------------ hostile values for command builders
# Settings that reach a command opsrg builds where no shell quoting applies (an '#SBATCH' line, an
# argument git or ssh would read as an option): each is refused with exit 2 naming the key, at once.
HOSTILE_SETTINGS = {
    "slurm partition with a newline": ({"SLURM_PARTITION": "debug\ntouch {o}/PWNED"}, "CHECKED_OUT", "slurm",
                                       "SLURM_PARTITION"),
    "slurm account with a space": ({"SLURM_ACCOUNT": "a --wrap=touch"}, "CHECKED_OUT", "slurm", "SLURM_ACCOUNT"),
    "slurm mem with a quote": ({"SLURM_MEM": '2G"'}, "CHECKED_OUT", "slurm", "SLURM_MEM"),
    "slurm gres with a comment": ({"SLURM_GRES": "gpu:1#x"}, "CHECKED_OUT", "slurm", "SLURM_GRES"),
    "outputs with a newline, slurm": ({"OPS_REMOTE_OUTPUTS_DIR": "{o}/out\ntouch {o}/PWNED"}, "CHECKED_OUT", "slurm",
                                      "#SBATCH --output="),
    "outputs with a quote, slurm": ({"OPS_REMOTE_OUTPUTS_DIR": "{o}/it's"}, "CHECKED_OUT", "slurm", "#SBATCH --output="),
    "branch that is an option": ({"CHECKOUT_BRANCH": "--upload-pack=touch {o}/PWNED"}, "BOOTSTRAPPED", "checkout",
                                 "CHECKOUT_BRANCH"),
    "repo url that is an option": ({"REPO_URL": "--upload-pack=touch {o}/PWNED"}, "BOOTSTRAPPED", "checkout",
                                   "REPO_URL"),
    "ssh host that is an option": ({"POD_PROVIDER": "ssh", "OPS_DEFAULT_HOST": "-oProxyCommand=touch {o}/PWNED"},
                                   "INIT", "pod-up", "ssh host"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SETTINGS))
def test_hostile_settings_for_command_builders_are_refused(project, case):
    values, state, what, named = HOSTILE_SETTINGS[case]
    env = {k: v.format(o=project) for k, v in values.items()}
    if state != "INIT":
        assert inv("fsm-reset", state, env=env).returncode == 0
    if what == "slurm":
        csv = project / "s.csv"
        csv.write_text("run_id,config,seed,overrides,notes\nr1,sweeps/configs/shell.toml,1,,\n")
        argv = ["sweep-start", "--csv", str(csv), "--backend", "slurm", "--dry-run"]
    else:
        argv = [what]
    r = inv(*argv, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert named in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (project / "PWNED").exists()
