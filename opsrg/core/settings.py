"""The one configuration model: ``workflow.env`` read with pydantic-settings.

Precedence, lowest to highest: field defaults < ``workflow.env`` (or the file named by
``OPSRG_ENV_FILE``) < environment variables. Every value remembers where it came from, so
``inv config-show`` can say so and every error names the file, line and key.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from opsrg.core.errors import ConfigError

ENV_FILE_VAR = "OPSRG_ENV_FILE"
DEFAULT_ENV_NAME = "workflow.env"


# Path-valued keys. Nothing expands ``$VAR`` in a value (neither the file nor the environment is
# run through a shell), so a ``$`` would make a folder literally named ``${HOME}``: refused. The
# first kind must be set (an empty path would mean the project folder); the second may be empty.
PATHS_REQUIRED = ("ops_remote_outputs_dir", "ops_remote_repo", "ops_local_pod_root", "remote_env_path",
                  "run_out_local_root", "local_artifacts_dir", "ops_known_hosts", "sweep_csv", "pod_tool_dir")
PATHS_OPTIONAL = ("wf_state_file", "data_dir", "bootstrap_script", "wandb_setup_script", "ops_ssh_key",
                  "run_env_file", "pod_wheelhouse", "sweep_python")


def _literal_path(v: str) -> str:
    if "$" in v:
        raise ValueError("'$' is not expanded in settings: write the path out (e.g. /home/me/out), or start it "
                         "with ~/ for the home folder")
    return v


class Settings(BaseSettings):
    """Every key of ``workflow.env``; docs/configuration.md describes each one."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, validate_default=True)

    # Pod
    pod_provider: Literal["local", "ssh", "lium"] = "local"
    lium_target: str = ""  # replaced by LIUM_GPU / LIUM_NODE: refused with a pointer to them
    lium_gpu: str = ""  # a GPU type to rent (`lium up --gpu H100`)
    lium_node: str = ""  # or one node: its id or its name in `lium ls` (never a row number)
    lium_gpu_count: int | None = Field(None, ge=1)
    lium_template: str = ""
    lium_image: str = ""
    lium_env: str = ""  # KEY=VALUE words for the pod's container (with LIUM_IMAGE)
    lium_volume: str = ""
    lium_verify_gpus: bool = False
    lium_ttl: str = "12h"  # the pod removes itself after this (lium's --ttl); "none" to keep it
    lium_budget_usd: float | None = Field(None, gt=0)  # ... or once it has cost this much
    ops_default_host: str = ""
    ops_ssh_key: str = ""
    ops_ssh_connect_timeout: float = Field(10.0, gt=0)
    ops_ssh_retry_secs: float = Field(30.0, ge=0)
    ops_ssh_command_timeout: float = Field(600.0, gt=0)
    ops_known_hosts: str = ".opsrg/known_hosts"
    ops_rsync_bwlimit_kbps: int = Field(0, ge=0)
    lium_pod_name: str = "opsrg"
    lium_up_timeout_secs: float = Field(900.0, gt=0)
    ops_local_pod_root: str = ".opsrg/pod"
    # Code on the pod
    repo_url: str = ""
    checkout_branch: str = "main"
    checkout_pr: int | None = None
    checkout_install_cmd: str = ""  # how the project installs into its venv (default: found from its files)
    checkout_check_cmd: str = ""  # must pass after checkout, e.g. python -c "import torch; assert torch.cuda.is_available()"
    ops_remote_repo: str = ".opsrg/pod/repo"
    ops_remote_outputs_dir: str = ".opsrg/pod/outputs"
    data_dir: str = ""
    remote_env_path: str = ".opsrg/pod/workflow.env"
    remote_python_bin: str = "python3"
    venv_recreate: bool = False
    # opsrg itself on a pod that is not this machine (it drives the sweeps there)
    pod_tool_dir: str = "~/.opsrg/tool"  # one venv per opsrg build under it, never in the checkout
    pod_tool_extras: str = ""  # extras of that install, e.g. rg (the RG engine, for RG rows on the pod)
    pod_wheelhouse: str = ""  # a folder of wheels here: sent along, installed with no package index
    auto_install_prereqs: bool = False
    bootstrap_script: str = ""
    wandb_setup_script: str = ""
    sweep_wandb: bool = False
    wandb_api_key: SecretStr | None = None
    # Workflow state
    wf_fsm_enforce: bool = True
    wf_state_file: str = ""
    wf_tmux_session: str = "opsrg"
    ops_tmux_socket: str = "opsrg"
    task_kill_grace_secs: float = Field(5.0, ge=0)
    task_heartbeat_stale_secs: float = Field(30.0, gt=0)
    # Sweeps
    sweep_tmux_session: str = "opsrg-sweep"
    sweep_csv: str = "sweeps/demo.csv"
    sweep_backend: Literal["tmux", "slurm"] = "tmux"
    sweep_metrics: str = ""  # metric names shown by sweep-status and ranked by sweep-report (val_loss,acc)
    sweep_metric_goal: Literal["min", "max"] = "min"  # the first metric's better direction
    sweep_max_parallel: int = Field(1, ge=1)  # tmux: rows running at once on the pod
    pod_gpus: str = ""  # the pod's GPUs (0,1,2,3), instead of asking nvidia-smi there
    sweep_python: str = ""  # the Python of the sweep driver and RG rows (default: the one running opsrg)
    run_command: str = ""  # the template of rows whose config is the user's own file
    run_env_pass: str = ""  # names and globs of this shell's variables that runs get (WANDB_*,HF_*)
    run_env_secrets: str = ""  # more names whose values are secrets (besides *_KEY, *_TOKEN, ...)
    run_env_file: str = ""  # a file on the pod, sourced (set -a) before each run's command
    run_timeout_secs: int = Field(0, ge=0)  # 0: no limit
    run_out_mode: Literal["direct", "local_sync"] = "direct"
    run_out_local_root: str = ".opsrg/pod/scratch"
    sync_interval_secs: int = Field(60, gt=0)
    local_artifacts_dir: str = "artifacts"
    # Slurm
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_time: str = "01:00:00"
    slurm_cpus_per_task: int = Field(1, gt=0)
    slurm_mem: str = "2G"
    slurm_gres: str = ""
    slurm_array_parallelism: int = Field(4, gt=0)
    slurm_max_requeue: int = Field(2, ge=0)

    @field_validator(*PATHS_REQUIRED)
    @classmethod
    def _required_path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a path, not empty (an empty path would silently mean the project folder)")
        return _literal_path(v)

    @field_validator(*PATHS_OPTIONAL)
    @classmethod
    def _optional_path(cls, v: str) -> str:
        return _literal_path(v)

    @field_validator("sweep_metrics")
    @classmethod
    def _metric_names(cls, v: str) -> str:
        names = [x.strip() for x in v.split(",") if x.strip()]
        bad = [x for x in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", x)]
        if bad:
            raise ValueError(f"not a metric name: {bad[0]!r} (names separated by commas, e.g. val_loss,acc)")
        return ",".join(names)

    @field_validator("pod_gpus")
    @classmethod
    def _gpu_ids(cls, v: str) -> str:
        from opsrg.core.gpus import parse_gpu_ids

        return ",".join(parse_gpu_ids(v))

    @field_validator("run_env_pass", "run_env_secrets")
    @classmethod
    def _env_patterns(cls, v: str) -> str:
        from opsrg.core.runenv import patterns

        patterns(v)
        return v

    @field_validator("lium_pod_name", "lium_node")
    @classmethod
    def _lium_name(cls, v: str) -> str:
        if not v:
            return v
        if v.isdigit():
            raise ValueError("a number is a row of the last `lium ls`/`lium ps` in some shell, not a name: "
                             "use the id or the name itself")
        if v.lower() == "all":
            raise ValueError("'all' means every pod to `lium rm`: choose another name")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]*", v):
            raise ValueError("use letters, digits and '._@-', not starting with '-' or '.' (no commas or spaces)")
        return v

    @field_validator("lium_gpu")
    @classmethod
    def _lium_gpu(cls, v: str) -> str:
        if v and re.fullmatch(r"[a-z]+-[a-z]+-[0-9a-f]{2}", v):
            raise ValueError(f"{v!r} is the name of a node (as `lium ls` shows it), not a GPU type: set LIUM_NODE")
        if v and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*", v):
            raise ValueError("a GPU type such as H100, A100 or RTX4090")
        return v

    @field_validator("lium_ttl")
    @classmethod
    def _lium_ttl(cls, v: str) -> str:
        if v.strip().lower() in ("none", ""):
            return "none"
        if not re.fullmatch(r"[1-9][0-9]*[mhd]", v.strip()):
            raise ValueError("a time like 45m, 12h or 2d (lium's --ttl), or none")
        return v.strip()

    @field_validator("lium_env")
    @classmethod
    def _lium_env(cls, v: str) -> str:
        import shlex

        try:
            words = shlex.split(v)
        except ValueError as e:
            raise ValueError(f"cannot split into words ({e})") from None
        bad = [w for w in words if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w, re.S)]
        if bad:
            raise ValueError(f"{bad[0]!r}: KEY=VALUE words separated by spaces")
        return v

    @field_validator("wf_tmux_session", "sweep_tmux_session", "ops_tmux_socket")
    @classmethod
    def _tmux_name(cls, v: str) -> str:
        if not v or any(c in v for c in ":. \t'\"$`\\"):
            raise ValueError("must be a non-empty name without ':', '.', quotes or spaces")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file is parsed by load_settings() (which needs its line numbers) and passed as
        # init values; init sits *below* the environment here, so env vars override the file.
        return (env_settings, init_settings)


SECRET_KEYS = {name for name, f in Settings.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}
KNOWN_KEYS = {name.upper() for name in Settings.model_fields}


@dataclass(frozen=True)
class Source:
    """Where one value came from: ``default``, ``env``, or ``file`` with its line."""

    kind: str
    path: Path | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.kind == "file":
            return f"{self.path}:{self.line}"
        return self.kind


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    env_file: Path | None
    sources: dict[str, Source]

    @property
    def root(self) -> Path:
        """Folder that relative paths in the settings are taken against."""
        return self.env_file.parent if self.env_file else Path.cwd()

    def local_path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.root / p)

    def masked(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in Settings.model_fields:
            v = getattr(self.settings, name)
            if name in SECRET_KEYS:
                v = None if v is None else "********"
            out[name.upper()] = v
        return out


def env_file_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The env file in force: the explicit argument, ``$OPSRG_ENV_FILE``, else the nearest
    ``workflow.env`` at or above the working directory (as git finds its repository); None when
    there is none."""
    if explicit:
        return Path(explicit).resolve()
    if os.environ.get(ENV_FILE_VAR):
        return Path(os.environ[ENV_FILE_VAR]).resolve()
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        if (base / DEFAULT_ENV_NAME).is_file():
            return (base / DEFAULT_ENV_NAME).resolve()
    return None


def parse_env_file(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """KEY=VALUE lines with their line numbers; unknown keys and bad lines raise ConfigError."""
    from dotenv.parser import parse_stream

    if path.is_dir():  # e.g. OPSRG_ENV_FILE naming a folder
        raise ConfigError(f"{path}: not a file (a folder; {ENV_FILE_VAR} must name a settings file)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: settings file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: not a file (a folder)") from e
    except PermissionError as e:
        raise ConfigError(f"{path}: cannot read the settings file (permission denied)") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the settings file ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    problems: list[str] = []
    for b in parse_stream(io.StringIO(text)):
        raw = b.original.string
        # The parser folds blank lines into the next binding; count them to get the key's line.
        line = b.original.line + raw[: len(raw) - len(raw.lstrip())].count("\n")
        if b.error:
            problems.append(f"{path}:{line}: cannot parse {b.original.string.strip()!r} (expected KEY=VALUE)")
            continue
        if b.key is None:
            continue
        key = b.key.strip()
        if key.upper() not in KNOWN_KEYS:
            close = difflib.get_close_matches(key.upper(), sorted(KNOWN_KEYS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{path}:{line}: {key}: unknown key{hint}")
            continue
        if b.value is None:
            problems.append(f"{path}:{line}: {key}: missing '=' and value")
            continue
        if key.upper() in lines:
            problems.append(f"{path}:{line}: {key}: set twice (first on line {lines[key.upper()]})")
            continue
        values[key.lower()] = b.value
        lines[key.upper()] = line
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return values, lines


def _provider_requirements(s: Settings) -> list[tuple[str, str]]:
    missing: list[tuple[str, str]] = []
    if s.pod_provider == "ssh" and not s.ops_default_host:
        missing.append(("OPS_DEFAULT_HOST", "required when POD_PROVIDER=ssh"))
    if s.lium_target:
        missing.append(("LIUM_TARGET", "replaced: set LIUM_GPU to a GPU type (e.g. H100), or LIUM_NODE to a "
                                       "node's id or name from `lium ls`"))
    if s.pod_provider == "lium":
        if not s.lium_pod_name:
            missing.append(("LIUM_POD_NAME", "required when POD_PROVIDER=lium (the name of the rented pod)"))
        if not s.lium_gpu and not s.lium_node:
            missing.append(("LIUM_GPU", "LIUM_GPU (a GPU type) or LIUM_NODE (one node) is required when POD_PROVIDER=lium"))
        elif s.lium_gpu and s.lium_node:
            missing.append(("LIUM_NODE", "set LIUM_GPU or LIUM_NODE, not both (a node has its GPU type)"))
        if s.lium_env and not s.lium_image:
            missing.append(("LIUM_ENV", "needs LIUM_IMAGE (lium passes -e only to a container of your image)"))
        if s.lium_image and s.lium_template:
            missing.append(("LIUM_TEMPLATE", "set LIUM_TEMPLATE or LIUM_IMAGE, not both"))
    return missing


def load_settings(env_file: str | os.PathLike[str] | None = None) -> LoadedSettings:
    """Read, validate and attribute every setting; raise ConfigError naming file, line, key."""
    path = env_file_path(env_file)
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    if path is not None:
        values, lines = parse_env_file(path)

    def where(key: str) -> str:
        if key in os.environ:
            return f"environment variable {key}"
        if key in lines:
            return f"{path}:{lines[key]}"
        return "default"

    try:
        settings = Settings(**values)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            key = str(err["loc"][0]).upper() if err["loc"] else "?"
            got = err.get("input")
            msgs.append(f"{where(key)}: {key}: {err['msg']} (got {got!r})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(msgs)) from None
    missing = _provider_requirements(settings)
    if missing:
        # A key that is set points at its own line; an absent one at the line that made it required.
        raise ConfigError(
            "invalid settings:\n  "
            + "\n  ".join(f"{where(k if k in lines or k in os.environ else 'POD_PROVIDER')}: {k}: {why}"
                           for k, why in missing)
        )
    sources: dict[str, Source] = {}
    for name in Settings.model_fields:
        key = name.upper()
        if key in os.environ or name in os.environ:
            sources[key] = Source("env")
        elif key in lines:
            sources[key] = Source("file", path, lines[key])
        else:
            sources[key] = Source("default")
    return LoadedSettings(settings, path, sources)
