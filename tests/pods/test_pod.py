"""The pod lifecycle through `inv`, over a real sshd: INIT -> POD_READY -> BOOTSTRAPPED ->
CHECKED_OUT with a local bare git repository, status, secrets, failures that say how to resume."""

from __future__ import annotations

import json
import subprocess

import pytest

from opsrg.context import Context

from sshd import free_port, write_ssh_env
from support import REPO, inv

pytestmark = [pytest.mark.ssh, pytest.mark.tmux]


@pytest.fixture(scope="session")
def bare_repo(tmp_path_factory):
    """A bare clone of this project's committed tree: the REPO_URL of the walk."""
    dst = tmp_path_factory.mktemp("git") / "opsrg.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(dst)], check=True)
    return dst


def add_env(project, **values):
    env = project / "workflow.env"
    kept = [ln for ln in env.read_text().splitlines() if ln.split("=", 1)[0] not in values]
    env.write_text("\n".join(kept) + "\n" + "".join(f"{k}={v}\n" for k, v in values.items()))


def fsm_state() -> str:
    return Context.load().store.read().state.value


def test_fsm_walk_to_checked_out_over_ssh(ssh_project, bare_repo):
    add_env(ssh_project, REPO_URL=str(bare_repo), CHECKOUT_BRANCH="HEAD")
    r = inv("bootstrap")
    assert r.returncode == 2 and "inv pod-up" in r.stderr  # the FSM refuses out of order
    r = inv("pod-up")
    assert r.returncode == 0 and "pod ready: ssh" in r.stdout, r.stderr
    assert fsm_state() == "POD_READY"
    r = inv("bootstrap")
    assert r.returncode == 0, r.stderr
    remote_env = ssh_project / "pod" / "workflow.env"
    assert remote_env.read_text() == (ssh_project / "workflow.env").read_text()
    assert oct(remote_env.stat().st_mode & 0o777) == "0o600"
    r = inv("checkout", timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "checked out" in r.stdout and "installed with --no-deps" in r.stdout and "CuPy" in r.stdout
    assert fsm_state() == "CHECKED_OUT"
    repo = ssh_project / "pod" / "repo"
    head = subprocess.run(["git", "-C", str(bare_repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    got = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert got.stdout == head.stdout
    py = repo / ".venv" / "bin" / "python"
    out = subprocess.run([str(py), "-c", "import opsrg, fabric; print(opsrg.__file__)"],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and str(repo) in out.stdout, out.stderr
    # Idempotent: again fetches and resets, keeps the venv.
    (repo / "README.md").write_text("local change on the pod")
    r = inv("checkout", timeout=180)
    assert r.returncode == 0 and "venv created" not in r.stdout, r.stderr
    assert (repo / "README.md").read_text() != "local change on the pod"
    status = json.loads(inv("pod-status", "--json").stdout)
    assert status["reachable"] and status["fsm_state"] == "CHECKED_OUT" and "t" in status["tmux_sessions"]
    assert status["disk_free_gib"] > 0 and isinstance(status["gpus"], list)
    assert Context.load().host.python == str(py)  # the pod's python is the venv's now
    assert inv("pod-down").returncode == 0 and fsm_state() == "INIT"


def test_checkout_without_repo_url_ships_a_bundle_to_a_remote_pod(ssh_project):
    # a real remote pod cannot read this machine's repository: the committed HEAD travels as a bundle
    add_env(ssh_project, REPO_URL="", CHECKOUT_BRANCH="HEAD", WF_FSM_ENFORCE="0")
    r = inv("checkout", timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "from a bundle of" in r.stdout
    repo = ssh_project / "pod" / "repo"
    git = ["git", "-C", str(repo)]
    origin = subprocess.run([*git, "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    assert origin == str(ssh_project / "pod" / ".repo.bundle")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout == head
    # a branch that is not in this repository is a configuration error, before anything runs
    add_env(ssh_project, CHECKOUT_BRANCH="no-such-branch-here")
    r = inv("checkout", timeout=60)
    assert r.returncode == 2 and "git bundle create" in r.stderr and "CHECKOUT_BRANCH" in r.stderr, r.stderr


def test_checkout_failure_names_the_resume_command(ssh_project, tmp_path):
    add_env(ssh_project, REPO_URL=str(tmp_path / "no-such-repo.git"), WF_FSM_ENFORCE="0")
    r = inv("checkout", timeout=60)
    assert r.returncode == 1 and "checkout-clone" in r.stderr and r.stderr.rstrip().endswith("inv checkout")
    assert fsm_state() == "INIT"


def test_bootstrap_missing_python_and_data_dir(ssh_project):
    add_env(ssh_project, REMOTE_PYTHON_BIN="/nonexistent/python3", DATA_DIR="/nonexistent/data",
            WF_FSM_ENFORCE="0")
    r = inv("bootstrap")
    assert r.returncode == 1 and "python3>=3.10" in r.stderr and "inv bootstrap" in r.stderr
    r = inv("checkout")
    assert r.returncode == 2 and "DATA_DIR" in r.stderr and "inv checkout" in r.stderr


def test_secret_stays_out_of_task_files(ssh_project, tmp_path):
    script = tmp_path / "wandb.sh"
    script.write_text('test -n "$WANDB_API_KEY" && echo "wandb configured (${#WANDB_API_KEY} chars)"\n')
    add_env(ssh_project, SWEEP_WANDB="1", WANDB_SETUP_SCRIPT=str(script), WANDB_API_KEY="s3cr3t-value-42",
            WF_FSM_ENFORCE="0")
    r = inv("bootstrap")
    assert r.returncode == 0, r.stderr
    task = ssh_project / "pod" / "outputs" / "_tasks" / "wandb-setup"
    assert "wandb configured (15 chars)" in (task / "stdout.log").read_text()
    for name in ("command.sh", "status.json", "stdout.log"):
        assert "s3cr3t-value-42" not in (task / name).read_text()


def test_unreachable_pod_status_is_not_failure(tmp_path, monkeypatch, tmux_socket, sshd_server):
    class Dead:
        user, port, clientkey = sshd_server.user, free_port(), sshd_server.clientkey
        spec = f"{sshd_server.user}@127.0.0.1:{port}"

    env = write_ssh_env(tmp_path, Dead, tmux_socket, OPS_SSH_RETRY_SECS="1", OPS_SSH_CONNECT_TIMEOUT="1")
    monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
    r = inv("pod-status", "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["state"] == "unreachable" and not info["reachable"]
    assert info["fsm_state"] == "INIT"
    r = inv("pod-up")
    assert r.returncode == 3 and "unreachable" in r.stderr and r.stderr.rstrip().endswith("inv pod-up")
