"""Command rows: the user's own program, with their own config files and arguments, in their own
checkout, driven through the installed `opsrg` command in a project of their own (real tmux)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tmux
BIN = Path(sys.executable).parent

TRAIN = '''\
"""A tiny trainer: a config file, --key=value overrides, metrics in the run folder."""
import json, os, sys

cfg_path, args = sys.argv[1], sys.argv[2:]
cfg = {}
exec(open(cfg_path).read(), {}, cfg)
for a in args:
    k, _, v = a.lstrip("-").partition("=")
    cfg[k] = v
out = os.environ["OPSRG_RUN_DIR"]
json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "venv": os.environ.get("MY_VENV_PYTHON", ""),
           "gpus": os.environ.get("OPSRG_GPUS", "")}, open(os.path.join(out, "seen.json"), "w"))
lr = float(cfg.get("lr", 1e-3))
if lr > 1:
    print(f"diverged: loss is nan at lr={lr}", file=sys.stderr)
    sys.exit(3)
if cfg.get("fake_fail"):
    json.dump({"ok": False, "why": "validation below target"}, open(os.path.join(out, "summary.json"), "w"))
json.dump({"loss": lr * 100}, open(os.path.join(out, "metrics.json"), "w"))
print("trained with", cfg)
'''


def _opsrg(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OPSRG_ENV_FILE", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([str(BIN / "opsrg"), *args], cwd=project, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def trainer(tmp_path, tmux_socket) -> Path:
    """A user's project: a git repository with train.py, a config file, a venv-like .venv/bin."""
    root = tmp_path / "nanotrain"
    (root / "config").mkdir(parents=True)
    (root / "train.py").write_text(TRAIN)
    (root / "config" / "train_small.py").write_text("lr = 1e-3\nbatch_size = 8\n")
    # the project's venv: its python says so, then runs the real one
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nMY_VENV_PYTHON=yes exec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(stat.S_IRWXU)
    (root / ".gitignore").write_text(".venv/\n.opsrg/\nartifacts/\n")
    (root / "workflow.env").write_text(
        "POD_PROVIDER=local\n"
        f"OPS_TMUX_SOCKET={tmux_socket}\n"
        "WF_TMUX_SESSION=t\nSWEEP_TMUX_SESSION=ts\nTASK_KILL_GRACE_SECS=2\n"
        f"OPS_REMOTE_REPO={root}\n"  # the local pod runs the rows in this very checkout
        "SWEEP_CSV=sweep.csv\n"
        "RUN_COMMAND=python train.py {config} --seed={seed} {overrides}\n")
    (root / "sweep.csv").write_text(
        "run_id,config,seed,overrides,notes\n"
        'lr3e-4-s1,config/train_small.py,1,"--lr=3e-4 --batch_size=32",baseline\n'
        'spaced,config/train_small.py,2,"--note=\'two words; $(touch PWNED)\' --lr=1e-3",quoting\n'
        'diverge,config/train_small.py,3,--lr=10,fails with exit 3\n'
        'judged,config/train_small.py,4,--fake_fail=1,exits 0 but its own summary says ok false\n'
        'eval,config/train_small.py,5,"after=lr3e-4-s1 --eval=1",runs after its trainer\n')
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
    return root


def test_command_rows_run_the_users_program_with_their_arguments(trainer):
    r = _opsrg(trainer, "sweep-start", "--dry-run", "--json")
    assert r.returncode == 2 and "not allowed in state INIT" in r.stderr  # the FSM guards it as any sweep
    assert _opsrg(trainer, "fsm-reset", "CHECKED_OUT").returncode == 0
    r = _opsrg(trainer, "sweep-start", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    script = {j["key"]: j["script"] for j in json.loads(r.stdout)["jobs"]}["lr3e-4-s1"]
    assert f"cd {trainer}" in script and "python train.py config/train_small.py --seed=1 --lr=3e-4 --batch_size=32" \
        in script

    r = _opsrg(trainer, "sweep-start")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _opsrg(trainer, "sweep-monitor", "--wait", "--timeout-secs", "120", timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr  # two rows fail
    st = {row["run_id"]: row for row in json.loads(_opsrg(trainer, "sweep-status", "--json").stdout)["runs"]}
    assert {k: v["state"] for k, v in st.items()} == {
        "lr3e-4-s1": "completed", "spaced": "completed", "diverge": "failed", "judged": "failed", "eval": "completed"}
    assert st["diverge"]["exit_code"] == 3 and "diverged: loss is nan at lr=10" in st["diverge"]["reason"]
    assert st["judged"]["exit_code"] == 1 and "the program's summary.json says ok: false" in st["judged"]["reason"]

    out = trainer / ".opsrg" / "pod" / "outputs"
    seen = json.loads((out / "lr3e-4-s1" / "seen.json").read_text())
    assert seen == {"argv": ["config/train_small.py", "--seed=1", "--lr=3e-4", "--batch_size=32"],
                    "cwd": str(trainer), "venv": "yes", "gpus": "1"}
    # an argument with a space, a semicolon and $(...) reaches the program as one word, unevaluated
    spaced = json.loads((out / "spaced" / "seen.json").read_text())
    assert spaced["argv"][2] == "--note=two words; $(touch PWNED)" and not list(trainer.rglob("PWNED"))
    assert json.loads((out / "lr3e-4-s1" / "summary.json").read_text())["ok"] is True
    assert json.loads((out / "lr3e-4-s1" / "metrics.json").read_text()) == {"loss": pytest.approx(0.03)}
    assert json.loads((out / "judged" / "summary.json").read_text()) == {"ok": False, "why": "validation below target"}
    # eval ran after its trainer had ended
    started = json.loads((out / "_tasks" / "eval" / "status.json").read_text())["started_at"]
    ended = json.loads((out / "_tasks" / "lr3e-4-s1" / "status.json").read_text())["ended_at"]
    assert started >= ended
    meta = json.loads((out / "lr3e-4-s1" / "meta.json").read_text())
    assert meta["config"]["args"] == ["--lr=3e-4", "--batch_size=32"] and meta["config"]["mode"] == "command"


def test_a_config_that_is_not_a_run_config_needs_run_command(trainer):
    env = (trainer / "workflow.env").read_text().replace("RUN_COMMAND=", "#RUN_COMMAND=")
    (trainer / "workflow.env").write_text(env)
    assert _opsrg(trainer, "fsm-reset", "CHECKED_OUT").returncode == 0
    r = _opsrg(trainer, "sweep-start", "--dry-run")
    assert r.returncode == 2
    assert "sweep.csv:2:" in r.stderr and "set RUN_COMMAND in workflow.env" in r.stderr
    (trainer / "workflow.env").write_text(env + "RUN_COMMAND=python train.py {cfg}\n")
    r = _opsrg(trainer, "sweep-start", "--dry-run")
    assert r.returncode == 2 and "RUN_COMMAND: unknown field {cfg}" in r.stderr
    assert not (trainer / ".opsrg" / "pod" / "outputs" / "lr3e-4-s1").exists()


def test_changed_code_is_never_reused_and_the_refusal_says_why(trainer):
    (trainer / "sweep.csv").write_text("run_id,config,seed,overrides,notes\n"
                                       "r1,config/train_small.py,1,--lr=3e-4,\n")
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run(["git", "remote", "add", "origin", "https://me:s3cr3t-token@example.com/me/nanotrain.git"],
                   cwd=trainer, check=True)
    subprocess.run([*git, "commit", "-qam", "the sweep"], cwd=trainer, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trainer, capture_output=True, text=True).stdout.strip()
    assert _opsrg(trainer, "fsm-reset", "CHECKED_OUT").returncode == 0

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        r = _opsrg(trainer, "sweep-start", "--json", *extra)
        if r.returncode == 0:
            assert _opsrg(trainer, "sweep-monitor", "--wait", "--timeout-secs", "60", timeout=120).returncode == 0
        return r

    assert sweep().returncode == 0
    meta = json.loads((trainer / ".opsrg" / "pod" / "outputs" / "r1" / "meta.json").read_text())
    assert meta["project"] == {"commit": head, "branch": "main", "remote": "https://example.com/me/nanotrain.git",
                               "dirty": False, "diff_sha256": None}
    assert "s3cr3t" not in json.dumps(meta)
    r = sweep()  # the same code: reused
    assert r.returncode == 0 and json.loads(r.stdout)["reused"] == {"r1": meta["identity"]}

    (trainer / "train.py").write_text(TRAIN.replace("lr * 100", "lr * 200"))  # edited, not committed
    r = sweep()
    assert r.returncode == 2 and "r1:" in r.stderr and "the project's uncommitted changes differ" in r.stderr
    assert "--force" in r.stderr
    subprocess.run([*git, "commit", "-qam", "loss scale"], cwd=trainer, check=True)
    r = sweep()
    assert r.returncode == 2 and f"the project's code changed (commit {head[:10]} -> " in r.stderr
    r = sweep("--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((trainer / ".opsrg" / "pod" / "outputs" / "r1" / "metrics.json").read_text())["loss"] == \
        pytest.approx(0.06)


def test_runs_get_the_passed_variables_and_the_env_file_and_no_secret_lands_in_a_file(trainer):
    """RUN_ENV_PASS from this shell, RUN_ENV_FILE on the pod; a secret's value in no file opsrg writes."""
    secret = "sekrit-9f3a7c"
    (trainer / "envcheck.py").write_text(
        "import json, os\n"
        "seen = {k: os.environ.get(k) for k in ('MY_VAR', 'WANDB_PROJECT', 'OTHER', 'FROM_FILE')}\n"
        f"seen['key_ok'] = os.environ.get('WANDB_API_KEY') == {secret!r}\n"
        "out = os.environ.get('OPSRG_RUN_DIR') or '.'\n"
        "json.dump(seen, open(os.path.join(out, 'env.json'), 'w'))\n"
        "print('checked', sorted(seen))\n")
    (trainer / "env.toml").write_text('mode = "command"\ncommand = "python envcheck.py"\n')
    (trainer / "pod.env").write_text("FROM_FILE=from-the-pod\n")
    (trainer / "sweep.csv").write_text("run_id,config,seed,overrides,notes\ne1,env.toml,1,,\n")
    with (trainer / "workflow.env").open("a") as fh:
        fh.write("RUN_ENV_PASS=WANDB_*,MY_VAR\nRUN_ENV_FILE=pod.env\n")
    env = {"WANDB_API_KEY": secret, "WANDB_PROJECT": "nano", "MY_VAR": "mine", "OTHER": "not-passed"}
    base = {k: v for k, v in os.environ.items() if k not in ("OPSRG_ENV_FILE", "CUDA_VISIBLE_DEVICES")}

    def opsrg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "opsrg"), *args], cwd=trainer, capture_output=True, text=True,
                              timeout=120, env={**base, **env})

    r = opsrg("config-show", "--json")
    assert json.loads(r.stdout)["run_env"] == {"MY_VAR": "mine", "WANDB_API_KEY": "********", "WANDB_PROJECT": "nano"}
    assert secret not in r.stdout
    assert opsrg("fsm-reset", "CHECKED_OUT").returncode == 0
    assert opsrg("sweep-start").returncode == 0
    r = opsrg("sweep-monitor", "--wait", "--timeout-secs", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    # (OTHER too: on the local pod, runs see this shell's whole environment, the pod's own)
    want = {"MY_VAR": "mine", "WANDB_PROJECT": "nano", "OTHER": "not-passed", "FROM_FILE": "from-the-pod",
            "key_ok": True}
    out = trainer / ".opsrg" / "pod" / "outputs"
    assert json.loads((out / "e1" / "env.json").read_text()) == want
    # a tracked task gets the same, in the checkout
    assert opsrg("task-run", "--id", "envtask", "--cmd", "python envcheck.py").returncode == 0
    assert opsrg("task-wait", "--id", "envtask", "--timeout-secs", "30").returncode == 0
    assert json.loads((trainer / "env.json").read_text()) == want
    rec = json.loads((out / "_tasks" / "envtask" / "status.json").read_text())
    assert rec["env_names"] == ["MY_VAR", "WANDB_API_KEY", "WANDB_PROJECT"]
    leaked = [str(p) for p in (trainer / ".opsrg").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_pushed_working_tree_is_recorded_and_keys_the_identity(trainer):
    """checkout clones the committed code; push sends the edited working tree over it: meta.json
    says so, and the run's identity follows the code that ran (untracked new files included)."""
    env = (trainer / "workflow.env").read_text().replace(f"OPS_REMOTE_REPO={trainer}\n", "")
    (trainer / "workflow.env").write_text(env + f"REMOTE_PYTHON_BIN={sys.executable}\n")
    (trainer / "sweep.csv").write_text("run_id,config,seed,overrides,notes\np1,config/train_small.py,1,--lr=3e-4,\n")
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qam", "one row"], cwd=trainer,
                   check=True)
    for step in ("pod-up", "bootstrap", "checkout"):
        r = _opsrg(trainer, step)
        assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"
    repo = trainer / ".opsrg" / "pod" / "repo"
    (trainer / "helper.py").write_text("X = 1\n")  # new, not committed
    (trainer / "train.py").write_text(TRAIN.replace("lr * 100", "lr * 300"))  # edited, not committed
    r = _opsrg(trainer, "push")
    assert r.returncode == 0, r.stderr
    assert (repo / "helper.py").is_file()
    assert _opsrg(trainer, "sweep-start").returncode == 0
    assert _opsrg(trainer, "sweep-monitor", "--wait", "--timeout-secs", "60").returncode == 0
    meta = json.loads((trainer / ".opsrg" / "pod" / "outputs" / "p1" / "meta.json").read_text())
    project = meta["project"]
    assert project["dirty"] is True and len(project["diff_sha256"]) == 64
    assert project["pushed"]["from"].endswith(f":{trainer}") and project["pushed"]["source_commit"] == project["commit"]
    assert json.loads((trainer / ".opsrg" / "pod" / "outputs" / "p1" / "metrics.json").read_text())["loss"] == \
        pytest.approx(0.09)
    # a second push of a new untracked file: different code, so the completed run is not reused
    (trainer / "helper.py").write_text("X = 2\n")
    assert _opsrg(trainer, "push").returncode == 0
    r = _opsrg(trainer, "sweep-start")
    assert r.returncode == 2 and "the project's uncommitted changes differ" in r.stderr
