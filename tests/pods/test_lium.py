"""POD_PROVIDER=lium against the real ``lium`` CLI (PyPI lium-io, a test dependency) talking to a
local stand-in of the Lium API (tests/pods/lium_api.py, on 127.0.0.1): no account, no network.
The rented "pod" is a real sshd on loopback, reached as opsrg reaches any pod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lium_api import LiumAPI, huid

from opsrg.core.errors import HostError
from opsrg.core.settings import Settings
from opsrg.pods import lium

from sshd import write_ssh_env
from support import inv

BIN = Path(sys.executable).parent


def settings(**kw) -> Settings:
    base = {"pod_provider": "lium", "lium_gpu": "H100"}
    return Settings(**{**base, **kw})


# ------------------------------------------------------------------ command lines, parsed by lium itself
def _parse(argv: list[str]):
    """Parse ``argv`` with the real click command (options and types checked; nothing is run)."""
    import click
    from lium.cli.cli import cli

    assert argv[0] == "lium"
    group_ctx = cli.make_context("lium", [], resilient_parsing=True)
    cmd = cli.get_command(group_ctx, argv[1])
    assert cmd is not None, argv
    try:
        return cmd.make_context(argv[1], argv[2:], parent=group_ctx).params
    except click.UsageError as e:  # pragma: no cover - the assertion names the argv
        raise AssertionError(f"lium rejects {argv}: {e}") from None


def test_every_command_line_parses_with_the_real_cli():
    p = _parse(lium.up_argv(settings(), 840))
    assert (p["gpu"], p["name"], p["yes"], p["json_output"], p["timeout"], p["ttl"]) == (
        "H100", "opsrg", True, True, 840, "12h")
    full = settings(lium_gpu="", lium_node="noble-hawk-81", lium_gpu_count=2, lium_budget_usd=3.5,
                    lium_image="pytorch/pytorch:2.4", lium_env="A=1 'B=two words'", lium_volume="new:name=data",
                    lium_verify_gpus=True, lium_ttl="2d")
    p = _parse(lium.up_argv(full, 900))
    assert p["executor_id"] == "noble-hawk-81"
    assert (p["count"], p["budget_usd"], p["image"], p["env"], p["volume"], p["verify_gpus"], p["ttl"]) == (
        2, 3.5, "pytorch/pytorch:2.4", ("A=1", "B=two words"), "new:name=data", True, "2d")
    p = _parse(lium.up_argv(settings(lium_template="7de5849e-72b1-460a-8689-0b8d046e2ff4", lium_ttl="none"), 60))
    assert p["template_id"] == "7de5849e-72b1-460a-8689-0b8d046e2ff4" and p["ttl"] is None
    assert _parse(lium.ps_argv())["output_format"] == "json"
    p = _parse(lium.rm_argv("649b8c8e-3bc6-4ec2-ab70-ee08fb34fd1c"))
    assert (p["targets"], p["yes"], p["remove_all"]) == ("649b8c8e-3bc6-4ec2-ab70-ee08fb34fd1c", True, False)


@pytest.mark.parametrize("bad", ["all", "ALL", "3", "a,b", "--all", ""])
def test_removal_only_ever_names_one_pod_id(bad):
    with pytest.raises(HostError, match="not a pod id"):
        lium.rm_argv(bad)


def test_parse_ssh_cmd():
    assert lium.parse_ssh_cmd("ssh root@203.0.113.7 -p 40022") == ("root", "203.0.113.7", 40022)
    assert lium.parse_ssh_cmd("ssh -p 22 -i ~/.ssh/k ubuntu@host") == ("ubuntu", "host", 22)
    with pytest.raises(HostError):
        lium.parse_ssh_cmd("")


def test_statuses_are_classified_as_lium_does():
    assert lium.classify({"status": "RUNNING", "ssh_cmd": "ssh root@h -p 1"}) == "ready"
    assert lium.classify({"status": "RUNNING", "ssh_cmd": None}) == "starting"
    assert lium.classify({"status": "PENDING"}) == "starting"
    for dead in ("FAILED", "stopped", "CREATION_FAILED", "DELETING", "REBOOT_FAILED"):
        assert lium.classify({"status": dead}) == "dead"


# ------------------------------------------------------------------ settings that cannot be misread
def _settings_error(tmp_path, text: str) -> str:
    env = tmp_path / "workflow.env"
    env.write_text(text)
    r = inv("fsm-status", env={"OPSRG_ENV_FILE": str(env)})
    assert r.returncode != 0
    return r.stderr


@pytest.mark.parametrize(("line", "says"), [
    ("LIUM_TARGET=H100", "workflow.env:2: LIUM_TARGET: replaced: set LIUM_GPU"),
    ("LIUM_NODE=3", "a number is a row of the last `lium ls`"),
    ("LIUM_GPU=cosmic-hawk-f2", "is the name of a node"),
    ("LIUM_GPU=H100\nLIUM_POD_NAME=all", "'all' means every pod"),
    ("LIUM_GPU=H100\nLIUM_POD_NAME=12", "a number is a row"),
    ("LIUM_GPU=H100\nLIUM_POD_NAME=a,b", "no commas"),
    ("LIUM_GPU=H100\nLIUM_NODE=noble-hawk-81", "not both"),
    ("LIUM_GPU=H100\nLIUM_TTL=forever", "LIUM_TTL: Value error, a time like 45m"),
    ("LIUM_GPU=H100\nLIUM_ENV=A=1", "LIUM_ENV: needs LIUM_IMAGE"),
])
def test_a_target_or_name_that_lium_would_misread_is_refused(tmp_path, line, says):
    err = _settings_error(tmp_path, f"POD_PROVIDER=lium\n{line}\n")
    assert says in err, err
    assert "workflow.env:" in err  # file and line


# ------------------------------------------------------------------ the real CLI, end to end
@pytest.fixture
def lium_project(tmp_path, monkeypatch, tmux_socket):
    """A project renting from the stand-in: lium's HOME, key and API under tmp_path."""
    home = tmp_path / "home"
    home.mkdir()

    def make(server, api: LiumAPI, **extra: str) -> Path:
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("LIUM_BASE_URL", api.url)
        monkeypatch.setenv("LIUM_API_KEY", api.api_key)
        monkeypatch.setenv("LIUM_SSH_KEY_PATH", str(server.clientkey))  # the key lium registers; opsrg uses it
        monkeypatch.setenv("LIUM_SELF_UPDATE_DISABLE", "1")
        monkeypatch.setenv("LIUM_TELEMETRY", "0")
        api.ssh_port, api.ssh_user = server.port, server.user
        values = {"OPS_SSH_KEY": "", "LIUM_POD_NAME": "opsrg-test", "LIUM_NODE": huid(api.executors[0]["id"]),
                  "LIUM_UP_TIMEOUT_SECS": "60", "OPS_KNOWN_HOSTS": str(tmp_path / "known_hosts"), **extra}
        env = write_ssh_env(tmp_path, server, tmux_socket, **values)
        env.write_text(env.read_text().replace("POD_PROVIDER=ssh", "POD_PROVIDER=lium"))
        monkeypatch.setenv("OPSRG_ENV_FILE", str(env))
        return tmp_path / ".opsrg" / "lium_pod.json"

    return make


@pytest.mark.ssh
def test_pod_up_rents_with_cost_guards_reaches_the_pod_and_pod_down_removes_it_by_id(lium_project, sshd_server):
    with LiumAPI(polls_to_running=2) as api:
        record = lium_project(sshd_server, api, LIUM_BUDGET_USD="5")
        r = inv("pod-up", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "lium pod opsrg-test" in r.stdout
        rec = json.loads(record.read_text())
        (pod_id,) = api.pods
        assert (rec["id"], rec["name"], rec["status"]) == (pod_id, "opsrg-test", "RUNNING")
        assert (rec["host"], rec["port"]) == ("127.0.0.1", sshd_server.port)
        rent = api.calls("POST", f"/executors/{api.executors[0]['id']}/rent")
        assert len(rent) == 1 and rent[0]["json"]["pod_name"] == "opsrg-test"
        assert api.calls("POST", f"/pods/{pod_id}/schedule-removal")  # the TTL (and the budget) guard it
        assert api.calls("POST", "/ssh-keys")[0]["json"]["public_key"].split()[:2] == \
            Path(f"{sshd_server.clientkey}.pub").read_text().split()[:2]
        assert (Path(os.environ["OPSRG_ENV_FILE"]).parent / ".opsrg" / "lium_known_hosts" / pod_id).is_file()

        r = inv("pod-status", "--json")  # over SSH, with lium's key and this pod's own host key
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["reachable"] is True

        assert inv("pod-up", timeout=120).returncode == 0  # the recorded pod is reused, not rented twice
        assert len(api.calls("POST", f"/executors/{api.executors[0]['id']}/rent")) == 1

        r = inv("pod-down", timeout=120)
        assert r.returncode == 0, r.stderr
        assert api.calls("DELETE", f"/pods/{pod_id}") and not api.pods
        assert not record.exists()
        assert not (Path(os.environ["OPSRG_ENV_FILE"]).parent / ".opsrg" / "lium_known_hosts" / pod_id).exists()


@pytest.mark.ssh
def test_a_pod_that_fails_to_start_is_recorded_reported_and_removable(lium_project, sshd_server):
    with LiumAPI(polls_to_running=1, final_status="FAILED", failure_cause="image pull failed") as api:
        record = lium_project(sshd_server, api, LIUM_TTL="none")
        r = inv("pod-up", timeout=120)
        assert r.returncode != 0
        (pod_id,) = api.pods
        assert "did not come up" in r.stderr and pod_id in r.stderr and "pod_start_failed" in r.stderr
        assert "inv pod-down" in r.stderr
        rec = json.loads(record.read_text())
        assert (rec["id"], rec["status"]) == (pod_id, "FAILED")
        assert not api.calls("POST", f"/pods/{pod_id}/schedule-removal")  # LIUM_TTL=none
        r = inv("pod-up", timeout=120)  # not waited on: a FAILED pod never starts
        assert r.returncode != 0 and "it will not start" in r.stderr, r.stderr
        assert len(api.calls("POST", f"/executors/{api.executors[0]['id']}/rent")) == 1
        r = inv("pod-down", timeout=120)
        assert r.returncode == 0, r.stderr
        assert api.calls("DELETE", f"/pods/{pod_id}") and not record.exists()
        # a pod removed elsewhere (lium rm, its TTL): pod-down says so and forgets it
        record.write_text(json.dumps({"id": pod_id, "name": "opsrg-test"}))
        r = inv("pod-down", timeout=120)
        assert r.returncode == 0 and "already gone" in r.stdout, r.stdout + r.stderr
        assert not record.exists()


@pytest.mark.ssh
def test_no_api_key_says_how_to_set_one_and_records_nothing(lium_project, sshd_server, monkeypatch):
    with LiumAPI() as api:
        record = lium_project(sshd_server, api)
        monkeypatch.delenv("LIUM_API_KEY")
        r = inv("pod-up", timeout=120)
        assert r.returncode != 0
        assert "set LIUM_API_KEY or run `lium init`" in r.stderr, r.stderr
        assert not record.exists() and not api.pods
        monkeypatch.setenv("LIUM_API_KEY", "sk-wrong")
        r = inv("pod-up", timeout=120)
        assert r.returncode != 0 and "invalid_api_key" in r.stderr, r.stderr


@pytest.mark.ssh
def test_a_new_pod_on_a_reused_host_and_port_with_a_new_host_key_is_reached(lium_project, sshd_private):
    with LiumAPI(polls_to_running=0) as api:
        lium_project(sshd_private, api)
        assert inv("pod-up", timeout=120).returncode == 0
        assert inv("pod-status", "--json").returncode == 0
        assert inv("pod-down", timeout=120).returncode == 0
        # the provider gives the same host:port to the next pod, which has a key of its own
        sshd_private.stop()
        for f in sshd_private.dir.glob("hostkey*"):
            f.unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshd_private.hostkey)], check=True)
        sshd_private.start()
        r = inv("pod-up", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        r = inv("pod-status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["reachable"] is True, r.stdout + r.stderr
        assert len(api.calls("DELETE")) == 1 and len(api.pods) == 1
        assert inv("pod-down", timeout=120).returncode == 0


def test_missing_lium_cli_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    from opsrg.core.errors import ConfigError

    with pytest.raises(ConfigError, match="lium-io"):
        lium.list_pods()


def test_a_rent_that_outlived_opsrgs_bound_finds_its_own_pod():
    """lium hung past its own --timeout: the pod it rented is the one named so and created since."""
    pods = [{"id": "old", "name": "opsrg", "created_at": "2026-12-01T10:00:00+00:00"},
            {"id": "new", "name": "opsrg", "created_at": "2026-12-01T12:00:30+00:00"},
            {"id": "other", "name": "theirs", "created_at": "2026-12-01T12:00:31+00:00"},
            {"id": "odd", "name": "opsrg", "created_at": None}]
    from opsrg.core.clock import parse_iso

    since = parse_iso("2026-12-01T12:00:00+00:00")
    assert [p["id"] for p in lium._rented_since(pods, "opsrg", since)] == ["new"]


def test_a_pod_id_never_names_a_file_outside_its_folder(tmp_path):
    class Ctx:
        class loaded:  # noqa: N801 - the shape of ctx.loaded
            @staticmethod
            def local_path(p):
                return tmp_path / p

    folder = tmp_path / lium.KNOWN_HOSTS_DIR
    assert lium.known_hosts_path(Ctx, "649b8c8e-3bc6") == folder / "649b8c8e-3bc6"
    for evil in ("../../etc/passwd", "/abs", ".hidden", "a/b"):
        p = lium.known_hosts_path(Ctx, evil)
        assert p.parent == folder and p.name.startswith("id-"), evil
