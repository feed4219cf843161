import pytest

from opsrg.core.checkout import REPO_ROOT
from opsrg.core.errors import ConfigError
from opsrg.core.settings import load_settings


def write(tmp_path, text):
    p = tmp_path / "w.env"
    p.write_text(text)
    return p


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    from opsrg.core.settings import KNOWN_KEYS

    for k in KNOWN_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("OPSRG_ENV_FILE", raising=False)


def test_shipped_workflow_env_loads_with_local_defaults():
    ls = load_settings(REPO_ROOT / "workflow.env")
    assert ls.settings.pod_provider == "local"
    assert ls.settings.wf_fsm_enforce is True
    assert ls.sources["POD_PROVIDER"].kind == "file"


def test_env_overrides_file_and_sources_say_so(tmp_path, monkeypatch):
    p = write(tmp_path, "RUN_TIMEOUT_SECS=10\nSWEEP_BACKEND=tmux\n")
    monkeypatch.setenv("RUN_TIMEOUT_SECS", "20")
    ls = load_settings(p)
    assert ls.settings.run_timeout_secs == 20
    assert ls.sources["RUN_TIMEOUT_SECS"].kind == "env"
    assert str(ls.sources["SWEEP_BACKEND"]) == f"{p}:2"
    assert ls.sources["SLURM_MEM"].kind == "default"


def test_unknown_key_suggests_closest_and_names_line(tmp_path):
    p = write(tmp_path, "POD_PROVIDER=local\n# comment\nSWEEP_BACKNED=tmux\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p}:3: SWEEP_BACKNED: unknown key (did you mean SWEEP_BACKEND?)" in str(e.value)


def test_wrong_type_names_file_line_and_key(tmp_path):
    p = write(tmp_path, "\n\nRUN_TIMEOUT_SECS=soon\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p}:3: RUN_TIMEOUT_SECS" in str(e.value) and "'soon'" in str(e.value)


def test_bad_choice_and_bad_env_var(tmp_path, monkeypatch):
    p = write(tmp_path, "SWEEP_BACKEND=kubernetes\n")
    with pytest.raises(ConfigError, match=r":1: SWEEP_BACKEND"):
        load_settings(p)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "0")
    with pytest.raises(ConfigError, match="environment variable SLURM_CPUS_PER_TASK"):
        load_settings(write(tmp_path, ""))


def test_missing_key_for_provider(tmp_path):
    p = write(tmp_path, "POD_PROVIDER=ssh\n")
    with pytest.raises(ConfigError, match=r"OPS_DEFAULT_HOST: required when POD_PROVIDER=ssh"):
        load_settings(p)


def test_unparseable_line_duplicate_and_missing_value(tmp_path):
    p = write(tmp_path, "this is not a setting\nPOD_PROVIDER=local\nPOD_PROVIDER=ssh\nDATA_DIR\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    msg = str(e.value)
    assert f"{p}:1: cannot parse" in msg
    assert f"{p}:3: POD_PROVIDER: set twice (first on line 2)" in msg
    assert f"{p}:4: DATA_DIR: missing '='" in msg


def test_missing_and_non_utf8_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.env")
    p = tmp_path / "latin.env"
    p.write_bytes(b"DATA_DIR=caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(p)


def test_secret_is_masked(tmp_path):
    ls = load_settings(write(tmp_path, "WANDB_API_KEY=abc123\n"))
    assert ls.settings.wandb_api_key.get_secret_value() == "abc123"
    assert ls.masked()["WANDB_API_KEY"] == "********"
    assert "abc123" not in repr(ls.settings)


def test_relative_paths_are_under_the_env_files_folder(tmp_path):
    ls = load_settings(write(tmp_path, "OPS_REMOTE_OUTPUTS_DIR=out\n"))
    assert ls.local_path(ls.settings.ops_remote_outputs_dir) == tmp_path / "out"


@pytest.mark.parametrize("key", ["OPS_REMOTE_OUTPUTS_DIR", "OPS_REMOTE_REPO", "OPS_LOCAL_POD_ROOT", "REMOTE_ENV_PATH",
                                 "RUN_OUT_LOCAL_ROOT", "LOCAL_ARTIFACTS_DIR", "OPS_KNOWN_HOSTS", "SWEEP_CSV"])
def test_empty_path_is_an_error_naming_file_line_and_key(tmp_path, key):
    p = write(tmp_path, f"POD_PROVIDER=local\n{key}=\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    assert f"{p}:2: {key}: " in str(e.value) and "not empty" in str(e.value)


@pytest.mark.parametrize("value", ["${HOME}/out", "$HOME/out", "/data/$USER"])
@pytest.mark.parametrize("key", ["OPS_REMOTE_OUTPUTS_DIR", "LOCAL_ARTIFACTS_DIR", "WF_STATE_FILE", "DATA_DIR",
                                 "BOOTSTRAP_SCRIPT"])
def test_unexpanded_path_is_refused_with_a_hint(tmp_path, key, value):
    p = write(tmp_path, f"{key}={value}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(p)
    msg = str(e.value)
    assert f"{p}:1: {key}: " in msg and "'$' is not expanded" in msg and "~/" in msg and repr(value) in msg


def test_optional_paths_may_be_empty_and_home_paths_stay_allowed(tmp_path):
    ls = load_settings(write(tmp_path, "WF_STATE_FILE=\nDATA_DIR=\nBOOTSTRAP_SCRIPT=\n"
                                       "OPS_REMOTE_OUTPUTS_DIR=~/out\n"))
    assert ls.settings.data_dir == "" and ls.settings.ops_remote_outputs_dir == "~/out"


def test_empty_path_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPS_REMOTE_OUTPUTS_DIR", "")
    with pytest.raises(ConfigError, match="environment variable OPS_REMOTE_OUTPUTS_DIR: OPS_REMOTE_OUTPUTS_DIR: "):
        load_settings(write(tmp_path, ""))


def test_env_file_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r": not a file \(a folder"):
        load_settings(tmp_path)
    p = write(tmp_path, "POD_PROVIDER=local\n")
    real = type(p).read_text

    def denied(self, *a, **k):  # tests run as root, for whom chmod 000 changes nothing
        if self == p:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(type(p), "read_text", denied)
    with pytest.raises(ConfigError, match=r"w.env: cannot read the settings file \(permission denied\)"):
        load_settings(p)
