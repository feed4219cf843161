"""Everything a command needs, built once from the settings: host, folders, state, tasks.

Objects are made lazily, so a quick command (``fsm-status``) pays only for what it reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from opsrg.core import layout
from opsrg.core.settings import LoadedSettings, load_settings


@dataclass
class Context:
    loaded: LoadedSettings

    @classmethod
    def load(cls, env_file: str | None = None) -> Context:
        return cls(load_settings(env_file))

    @property
    def s(self):
        return self.loaded.settings

    # -------------------------------------------------------- paths (on the pod)
    def pod_path(self, value: str) -> str:
        """A pod-side path: for the local provider, relative paths are under the project root."""
        if self.s.pod_provider == "local":
            return str(self.loaded.local_path(value))
        if value.startswith("/"):
            return value
        # Relative pod paths are under the login user's home, as ssh and rsync take them.
        rel = value[2:] if value.startswith("~/") else value
        return f"{self.host.home}/{rel}" if rel not in ("~", "") else self.host.home

    @property
    def outputs_dir(self) -> str:
        return self.pod_path(self.s.ops_remote_outputs_dir)

    # -------------------------------------------------------- what runs get
    def run_env(self) -> dict[str, str]:
        """The variables of this shell that RUN_ENV_PASS names: handed to runs, never written down."""
        from opsrg.core import runenv

        return runenv.select(os.environ, runenv.patterns(self.s.run_env_pass))

    def run_secrets(self) -> dict[str, str]:
        """Secrets of the settings that runs get (the W&B key with SWEEP_WANDB=1): in their
        environment only, never written down."""
        key = self.s.wandb_api_key
        return {"WANDB_API_KEY": key.get_secret_value()} if self.s.sweep_wandb and key is not None else {}

    @property
    def run_env_file(self) -> str:
        """RUN_ENV_FILE as a path on the pod ("" when unset)."""
        return self.pod_path(self.s.run_env_file) if self.s.run_env_file else ""

    @property
    def control_dir(self) -> str:
        return f"{self.outputs_dir}/{layout.CONTROL}"

    @property
    def state_file(self) -> Path:
        """The FSM file. It is read on this machine, so the local provider keeps it with the outputs."""
        if self.s.wf_state_file:
            return self.loaded.local_path(self.s.wf_state_file)
        if self.s.pod_provider == "local":
            return Path(self.control_dir) / "workflow_state.json"
        return self.loaded.local_path(".opsrg/control") / "workflow_state.json"

    @property
    def artifacts_dir(self) -> Path:
        return self.loaded.local_path(self.s.local_artifacts_dir)

    # -------------------------------------------------------- objects
    @cached_property
    def host(self):
        from opsrg.hosts.local import LocalHost

        if self.s.pod_provider == "local":
            return LocalHost()
        return self._pod_host()

    def _pod_host(self):
        """The pod of POD_PROVIDER=ssh (OPS_DEFAULT_HOST) or lium (the pod recorded by `inv pod-up`)."""
        from opsrg.hosts.ssh import SSHHost, SSHTarget

        s = self.s
        known_hosts = self.loaded.local_path(s.ops_known_hosts)
        if s.pod_provider == "lium":
            from opsrg.pods import lium

            target, known_hosts = lium.recorded_host(self)
        else:
            target = SSHTarget.parse(s.ops_default_host, key=s.ops_ssh_key)
        return SSHHost(
            target, known_hosts=known_hosts, python=s.remote_python_bin,
            venv_python=f"{s.ops_remote_repo}/.venv/bin/python", connect_timeout=s.ops_ssh_connect_timeout,
            retry_secs=s.ops_ssh_retry_secs, command_timeout=s.ops_ssh_command_timeout,
            rsync_bwlimit_kbps=s.ops_rsync_bwlimit_kbps,
        )

    @cached_property
    def store(self):
        from opsrg.core.workflow_state import StateStore

        return StateStore(self.state_file)

    @cached_property
    def tasks(self):
        from opsrg.tracked.manager import TaskManager

        return TaskManager(
            self.host, self.outputs_dir, tmux_socket=self.s.ops_tmux_socket,
            tmux_session=self.s.wf_tmux_session, kill_grace=self.s.task_kill_grace_secs,
            stale_secs=self.s.task_heartbeat_stale_secs,
        )

    def transition(self, command: str):
        """The FSM guard for ``command`` (enforced unless WF_FSM_ENFORCE=0)."""
        return self.store.transition(command, enforce=self.s.wf_fsm_enforce)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
