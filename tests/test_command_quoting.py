"""Hostile input through every command opsrg builds.

Paths and values with a space, ``$(touch PWNED)``, backticks, single and double quotes, a newline,
a leading ``-`` and a trailing ``;`` go through the tmux runner, the sweep driver, the sweep and
Slurm builders, local_sync's loop, SSH, the checkout scripts and lium's argv. Each either refuses
cleanly (InputError / ConfigError naming the value) or builds a command that real bash parses
(``bash -n``) and, where it is cheap to run, runs correctly without ever executing the injected text.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsrg.core.errors import ConfigError, InputError, TaskError
from opsrg.hosts.local import LocalHost
from opsrg.hosts.ssh import SSHTarget
from opsrg.pods import lifecycle as pod
from opsrg.pods import lium, localsync
from opsrg.sweeps.plan import Sweep, plan_slurm, row_command, shell_body
from opsrg.sweeps.rows import parse_text
from opsrg.sweeps.slurm.cli import DEFAULT_TEMPLATE, DIRECTIVE_UNSAFE, SlurmOptions, check_log_path, render
from opsrg.tracked.tmux import TmuxRunner

from support import REPO, inv, require, retry_until

HEAD = "run_id,config,seed,overrides,notes\n"


def hostile(o: Path) -> dict[str, str]:
    """Hostile path components / values; every injection would create ``o/PWNED``."""
    pw = f"{o}/PWNED"
    return {
        "space": "a b",
        "subst": f"x$(touch {pw})",
        "subst-no-space": f"x$(touch${{IFS}}{pw})",
        "backtick": f"x`touch {pw}`",
        "single-quote": "it's",
        "double-quote": 'say "hi"',
        "newline": f"new\nline; touch {pw}",
        "leading-dash": "-rf",
        "trailing-semicolon": "a;",
        "everything": f"-a b$(touch {pw})`touch {pw}`'\"\n;x;",
    }


def bash_n(script: str) -> None:
    p = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert p.returncode == 0, f"bash -n failed: {p.stderr}\n{script}"


def no_pwned(o: Path) -> None:
    assert not (o / "PWNED").exists(), "injected text was executed"


def _bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


# ------------------------------------------------------------------ tmux runner
@pytest.mark.tmux
def test_tmux_runner_passes_hostile_argv_and_env_verbatim(tmp_path, tmux_socket):
    require("tmux", "the runner starts windows")
    runner = TmuxRunner(LocalHost(), tmux_socket, "q")
    for i, (name, value) in enumerate(hostile(tmp_path).items()):
        out = tmp_path / f"out{i}"
        argv = ["bash", "-c", 'printf %s "$1" > "$2"; printf %s "$V" > "$2.env"; printf %s "$0" > "$2.0"; : > "$2.done"',
                "-lead", value, str(out)]
        runner.start(f"w{i}", argv, env={"V": value})
        retry_until(lambda o=out: Path(f"{o}.done").exists(), 10, what=f"window of {name}")
        assert out.read_text() == value, name
        assert Path(f"{out}.env").read_text() == value, name
        assert Path(f"{out}.0").read_text() == "-lead"
    no_pwned(tmp_path)
    with pytest.raises(InputError, match="invalid environment variable name"):
        runner.start("bad", ["true"], env={"A;touch x": "1"})


def test_tmux_arguments_ending_in_a_semicolon_are_escaped():
    from opsrg.tracked.tmux import tmux_arg

    runner = TmuxRunner(LocalHost(), "s", "t")
    assert runner._tmux("new-window", "-e", "V=a;", "x") == ["tmux", "-L", "s", "new-window", "-e", "V=a\\;", "x"]
    assert tmux_arg("plain") == "plain" and tmux_arg("a\\;") == "a\\\\;"
    from opsrg.tracked.tmux import TmuxTarget

    argv = runner.attach_argv(TmuxTarget("s", "t", "w", "@3"))
    assert argv == ["tmux", "-L", "s", "attach-session", "-t", "=t", ";", "select-window", "-t", "@3"]


# ------------------------------------------------------------------ sweep builders
def _sweep(outputs: str, backend: str = "tmux", scratch: str = "") -> Sweep:
    rows = parse_text(HEAD + "sh,sweeps/configs/shell.toml,1,\"command='echo made > made.txt'\",\n"
                             "a,sweeps/configs/fp_tiny.toml,5,\"steps=1 shards=2\",\n"
                             "e,sweeps/configs/exp_small.toml,6,\"fp_run=a steps=1 shards=2\",\n",
                      "s.csv", [REPO])
    return Sweep("c1", rows, outputs, sys.executable, backend, scratch=scratch)


def test_sweep_commands_parse_in_bash_for_hostile_outputs(tmp_path):
    for name, h in hostile(tmp_path).items():
        out = f"{tmp_path}/{h}/out"
        for backend, scratch in (("tmux", ""), ("tmux", f"{tmp_path}/{h}/scratch"),
                                 ("slurm", ""), ("slurm", f"{tmp_path}/{h}/scratch")):
            sw = _sweep(out, backend, scratch)
            for row in sw.rows:
                script = row_command(sw, row)
                bash_n(script)
                assert shlex.quote(sw.run_dir(row.run_id)) in script, name
            for job in plan_slurm(sw, max_array_size=1001):
                bash_n(job.body)


def test_command_row_words_reach_the_program_unevaluated(tmp_path):
    """A command row's template fields and arguments, hostile all, arrive as the words written."""
    from opsrg.sweeps.plan import GPUS_SH, command_words

    h = hostile(tmp_path)
    (tmp_path / "cfg.py").write_text("")
    args = [h["everything"], h["subst-no-space"], "--lr=3e-4", ""]  # a newline cannot be in a CSV: set here
    template = "printf '[%s]\\n' {config} {seed} {run_id} {run_dir} {overrides} lit{{x}} n={gpus}"
    (row,) = parse_text(HEAD + "r1,cfg.py,7,--lr=1,\n", "s.csv", [tmp_path], template)
    assert row.spec["args"] == ["--lr=1"]
    row.spec["args"] = args
    sw = Sweep("c1", [row], f"{tmp_path}/{h['everything']}/out", sys.executable, repo=str(tmp_path))
    r = subprocess.run(["bash", "-c", GPUS_SH + "\n" + " ".join(command_words(sw, row))], capture_output=True,
                       text=True, env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(f"[{w}]\n" for w in ["cfg.py", "7", "r1", sw.out_dir("r1"), *args, "lit{x}", "n=1"])
    assert not (tmp_path / "PWNED").exists()


def test_shell_row_runs_in_a_hostile_outputs_folder(tmp_path):
    h = hostile(tmp_path)["everything"]
    sw = _sweep(f"{tmp_path}/{h}/out")
    row = sw.row("sh")
    r = _bash(row_command(sw, row), tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = Path(sw.run_dir("sh"))
    assert (run_dir / "made.txt").read_text() == "made\n"
    assert json.loads((run_dir / "summary.json").read_text())["ok"] is True
    assert json.loads((run_dir / "meta.json").read_text())["run_id"] == "sh"
    no_pwned(tmp_path)


def test_packed_shell_array_keeps_a_multi_line_command_verbatim(tmp_path):
    """The rows of a packed array were indented, which changed text inside quotes spanning lines."""
    sw = _sweep(f"{tmp_path}/o u$(touch {tmp_path}/PWNED)/out", "slurm")
    sw.rows = [r for r in sw.rows if r.run_id == "sh"]
    sw.rows[0].spec["command"] = "printf '%s\\n' 'line one\nline two' > made.txt"
    twin = parse_text(HEAD + "sh2,sweeps/configs/shell.toml,2,,\n", "s.csv", [REPO])[0]
    sw.rows.append(twin)
    (job,) = plan_slurm(sw, max_array_size=1001)
    assert job.tasks == [0, 1]
    script = render(DEFAULT_TEMPLATE, key=job.key, campaign="c1", log=f"{tmp_path}/log-%a.log",
                    directives=[], body=job.body)
    bash_n(script)
    r = _bash(script, tmp_path, SLURM_ARRAY_TASK_ID="0", TMPDIR=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (Path(sw.run_dir("sh")) / "made.txt").read_text() == "line one\nline two\n"
    no_pwned(tmp_path)


# ------------------------------------------------------------------ Slurm scripts
def test_slurm_log_path_refused_unless_sbatch_reads_it_as_one_value(tmp_path):
    for name, h in hostile(tmp_path).items():
        log = f"{tmp_path}/{h}/_tasks/k/stdout-%a.log"
        ended = f"{tmp_path}/{h}/_tasks/k/ended"
        kw = dict(key="k", campaign="c1", log=log, directives=["#SBATCH --time=00:01:00"], body="echo body ran\n",
                  ended_dir=ended)
        if DIRECTIVE_UNSAFE.search(log):
            with pytest.raises(InputError) as e:
                render(DEFAULT_TEMPLATE, **kw)
            assert repr(log) in str(e.value) and "#SBATCH --output=" in str(e.value), name
            continue
        script = render(DEFAULT_TEMPLATE, **kw)
        bash_n(script)
        assert f"#SBATCH --output={log}\n" in script and f"#SBATCH --error={log}\n" in script
        # what sbatch reads: the directive up to the first whitespace is the whole path
        assert all(len(ln.split()) == 2 for ln in script.splitlines() if ln.startswith("#SBATCH"))
        r = _bash(script, tmp_path, TMPDIR=str(tmp_path), SLURM_ARRAY_TASK_ID="3")
        assert r.returncode == 0 and r.stdout == "body ran\n", r.stderr
        assert os.listdir(ended) == ["3.0"], name  # the end marker, at that very path (the EXIT trap)
    no_pwned(tmp_path)


def test_a_slurm_script_leaves_its_end_marker_however_it_ends(tmp_path):
    ended = tmp_path / "_tasks" / "k" / "ended"
    kw = dict(key="k", campaign="c1", log=f"{tmp_path}/_tasks/k/stdout-%a.log", directives=[],
              ended_dir=str(ended))
    r = _bash(render(DEFAULT_TEMPLATE, body="exit 3\n", **kw), tmp_path, TMPDIR=str(tmp_path),
              SLURM_ARRAY_TASK_ID="4", SLURM_RESTART_COUNT="1")
    assert r.returncode == 3 and sorted(os.listdir(ended)) == ["4.1"]  # its status kept
    script = tmp_path / "job.sh"
    script.write_text(render(DEFAULT_TEMPLATE, body="sleep 60\n", **kw))
    p = subprocess.Popen(["bash", str(script)], env={**os.environ, "TMPDIR": str(tmp_path)}, start_new_session=True)
    retry_until(lambda: any("sleep" in x for x in os.popen(f"pgrep -g {p.pid} -a").read().splitlines()), 10,
                what="the job's command")
    os.killpg(p.pid, signal.SIGTERM)  # as Slurm signals a job at its time limit or scancel
    p.wait(10)
    assert sorted(os.listdir(ended)) == ["0.0", "4.1"]
    # a template of the user's own without ${on_exit} still renders and runs; it leaves no marker
    r = _bash(render("#!/bin/bash\n${body}", body="true\n", **kw), tmp_path, SLURM_ARRAY_TASK_ID="5")
    assert r.returncode == 0 and sorted(os.listdir(ended)) == ["0.0", "4.1"]


def test_slurm_pattern_characters_only_in_the_file_name(tmp_path):
    assert check_log_path("/o/_tasks/k/stdout-%a.log")
    with pytest.raises(InputError, match="'%'"):
        check_log_path("/data/100%j/_tasks/k/stdout.log")
    for bad in ("/a\\b/x.log", "/a#b/x.log", "/a\tb/x.log", ""):
        with pytest.raises(InputError):
            check_log_path(bad)


def test_slurm_comment_and_directives_cannot_be_escaped():
    base = dict(key="k", log="/o/stdout.log", directives=[], body="true\n")
    with pytest.raises(InputError, match="campaign id"):
        render(DEFAULT_TEMPLATE, campaign="c1\ntouch PWNED", **base)
    with pytest.raises(InputError, match="job key"):
        render(DEFAULT_TEMPLATE, campaign="c1", **{**base, "key": "k\rx"})
    with pytest.raises(InputError, match="newline"):
        render(DEFAULT_TEMPLATE, campaign="c1", **{**base, "directives": ["#SBATCH --mem=1G\ntouch PWNED"]})
    for key, value in (("partition", "debug\ntouch PWNED"), ("account", "a b"), ("mem", '2G"'), ("gres", "gpu#1")):
        with pytest.raises(ConfigError, match=f"SLURM_{key.upper()}="):
            SlurmOptions(**{key: value}).directives("01:00:00")
    assert SlurmOptions(partition="debug", gres="gpu:1").directives("01:00:00", "0-3%2") == [
        "#SBATCH --partition=debug", "#SBATCH --time=01:00:00", "#SBATCH --cpus-per-task=1", "#SBATCH --gres=gpu:1",
        "#SBATCH --array=0-3%2"]


def test_slurm_dry_run_with_a_spaced_outputs_folder_is_refused_clearly(project):
    env = {"OPS_REMOTE_OUTPUTS_DIR": f"{project}/out dir"}
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    csv = project / "s.csv"
    csv.write_text(HEAD + "r1,sweeps/configs/shell.toml,1,,\n")
    r = inv("sweep-start", "--csv", str(csv), "--backend", "slurm", "--dry-run", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "#SBATCH --output=" in r.stderr and "a space" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ local_sync
class _Tasks:
    """Captures the command start_loop starts; its wait says the loop is gone (direct final pass)."""

    def __init__(self):
        self.cmd = ""

    def run(self, task_id, command, **kw):
        self.cmd = command

    def wait(self, task_id, **kw):
        raise TaskError("no such task")


def test_local_sync_loop_and_final_pass_with_hostile_folders(tmp_path):
    h = hostile(tmp_path)["everything"]
    src, dst = tmp_path / f"{h}scratch", tmp_path / f"{h}durable"
    stop = f"{tmp_path}/{h}ctl/run.stop"
    tasks = _Tasks()
    localsync.start_loop(LocalHost(), tasks, "r1", str(src), str(dst), stop, 1)
    bash_n(tasks.cmd)
    (src / "result.txt").write_text("x")
    Path(stop).write_text("stop\n")  # the loop makes its final pass at once
    r = _bash(tasks.cmd, tmp_path)
    assert r.returncode == 0 and "final sync done" in r.stdout, r.stdout + r.stderr
    assert (dst / "result.txt").read_text() == "x"
    (src / "more.txt").write_text("y")
    msg = localsync.finish_loop(LocalHost(), tasks, "r1", str(src), str(dst), stop, timeout=30)
    assert "done directly" in msg and (dst / "more.txt").read_text() == "y"
    no_pwned(tmp_path)


# ------------------------------------------------------------------ checkout
def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_checkout_scripts_with_hostile_paths(tmp_path):
    require("git", "the checkout clones with git")
    h = hostile(tmp_path)["everything"]
    src = tmp_path / f"src{h}"
    src.mkdir(parents=True)
    _git("init", "-q", "-b", "main", ".", cwd=src)
    (src / "f.txt").write_text("hi\n")
    _git("add", "f.txt", cwd=src)
    _git("commit", "-q", "-m", "one", cwd=src)
    repo = tmp_path / f"dest{h}" / "repo"
    q = shlex.quote
    script = pod.CLONE_SH.format(repo=q(str(repo)), url=q(str(src)), ref=q("main"))
    bash_n(script)
    r = _bash(script, tmp_path)
    assert r.returncode == 0 and "checked out" in r.stdout, r.stderr
    assert (repo / "f.txt").read_text() == "hi\n"
    bash_n(pod.VENV_SH.format(repo=q(str(repo)), python=q(f"/x/{h}/python"), recreate=0, deps=q(h)))
    no_pwned(tmp_path)


@pytest.mark.parametrize("ref", ["--upload-pack=touch PWNED", "-b", "a b", "a\nb", "main..x", "", "x~1"])
def test_checkout_refuses_a_branch_git_would_misread(ref):
    with pytest.raises(ConfigError, match="CHECKOUT_BRANCH"):
        pod.check_git_inputs(ref, "https://example.com/r.git")


def test_checkout_refuses_a_url_git_would_take_as_an_option():
    for url in ("--upload-pack=touch PWNED", "-u", "https://x/\nr"):
        with pytest.raises(ConfigError, match="REPO_URL"):
            pod.check_git_inputs("main", url)
    pod.check_git_inputs("feature/x-1", "/path with space/r$(x)")


def test_inv_checkout_with_an_option_as_branch_runs_nothing(project):
    assert inv("fsm-reset", "BOOTSTRAPPED").returncode == 0
    r = inv("checkout", env={"CHECKOUT_BRANCH": f"--upload-pack=touch {project}/PWNED"})
    assert r.returncode == 2 and "CHECKOUT_BRANCH" in r.stderr and "Traceback" not in r.stderr, r.stderr
    no_pwned(project)


# ------------------------------------------------------------------ SSH and lium
@pytest.mark.parametrize("host", ["-oProxyCommand=touch PWNED", "a b", "h\nx", ""])
def test_ssh_target_refuses_a_host_ssh_would_take_as_an_option(host):
    with pytest.raises(ConfigError, match="ssh host"):
        SSHTarget(host, "root")


def test_ssh_target_refuses_bad_users():
    for user in ("-oProxyCommand=x", "a b", "a:b"):
        with pytest.raises(ConfigError, match="ssh user"):
            SSHTarget("127.0.0.1", user)
    with pytest.raises(ConfigError):
        SSHTarget.parse("root@-oProxyCommand=touch:22")


def test_lium_argv_refuses_option_like_names():
    from pydantic import ValidationError

    from opsrg.core.errors import HostError
    from opsrg.core.settings import Settings

    for key, value in (("lium_node", "--help"), ("lium_gpu", "--help"), ("lium_pod_name", "a b"),
                       ("lium_pod_name", "-x"), ("lium_node", "a;b")):
        with pytest.raises(ValidationError, match=key):
            Settings(**{key: value})
    with pytest.raises(HostError, match="not a pod id"):
        lium.rm_argv("--all")

    with pytest.raises(HostError, match="port"):
        lium.parse_ssh_cmd("ssh root@1.2.3.4 -p x")


@pytest.mark.ssh
def test_ssh_commands_and_rsync_with_hostile_paths(sshd_server, tmp_path):
    from opsrg.hosts.ssh import SSHHost

    target = SSHTarget("127.0.0.1", sshd_server.user, sshd_server.port, str(sshd_server.clientkey))
    host = SSHHost(target, known_hosts=tmp_path / "kh", retry_secs=3, connect_timeout=3)
    try:
        h = hostile(tmp_path)["everything"]
        remote = f"{tmp_path}/pod{h}/dir"
        assert host.run(["printf", "%s", h]).stdout == h
        r = host.run('printf %s "$V"; pwd', env={"V": h}, cwd=str(tmp_path))
        assert r.stdout == f"{h}{tmp_path}\n"
        with pytest.raises(InputError, match="environment variable name"):
            host.run("true", env={"A;touch x": "1"})
        local = tmp_path / "local"
        local.mkdir()
        (local / "f.txt").write_text("up")
        host.sync(str(local), remote, to_host=True)
        assert Path(remote, "f.txt").read_text() == "up"
        Path(remote, "g.txt").write_text("down")
        back = tmp_path / f"back{h}"
        host.sync(remote, str(back), to_host=False)
        assert (back / "g.txt").read_text() == "down" and (back / "f.txt").read_text() == "up"
        no_pwned(tmp_path)
    finally:
        host.close()


# ------------------------------------------------------------------ end to end
@pytest.mark.tmux
def test_sweep_in_a_hostile_outputs_folder_end_to_end(project):
    """The reported bug: the driver's command took the outputs path unquoted (the touch ran; a space
    made every run fail with `sweep driver ended (exit code 2)`)."""
    # A '$' in a path setting is refused by the settings themselves ('$' is never expanded there):
    # nothing runs. Backticks are the same command substitution, and they reach the builders.
    r = inv("fsm-reset", "CHECKED_OUT", env={"OPS_REMOTE_OUTPUTS_DIR": f"{project}/o$(touch {project}/PWNED)"})
    assert r.returncode == 2 and "OPS_REMOTE_OUTPUTS_DIR" in r.stderr, r.stderr
    out = f"{project}/out put`touch {project}/PWNED`'q\";x"
    env = {"OPS_REMOTE_OUTPUTS_DIR": out}
    assert inv("fsm-reset", "CHECKED_OUT", env=env).returncode == 0
    csv = project / "s.csv"
    csv.write_text(HEAD + "r1,sweeps/configs/shell.toml,1,\"command='echo ran in $(pwd) > made.txt'\",\n")
    r = inv("sweep-start", "--csv", str(csv), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    r = inv("sweep-monitor", "--wait", "--timeout-secs", "90", env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.monotonic() - t0 < 90
    run_dir = Path(out) / "r1"
    assert (run_dir / "made.txt").read_text() == f"ran in {run_dir}\n"
    assert json.loads((run_dir / "summary.json").read_text())["ok"] is True
    st = json.loads(inv("sweep-status", "--json", env=env).stdout)
    assert [(x["run_id"], x["state"]) for x in st["runs"]] == [("r1", "completed")]
    no_pwned(project)


def test_shell_body_quotes_every_value(tmp_path):
    h = hostile(tmp_path)["everything"]
    sw = _sweep(f"/o/{h}")
    body = shell_body(sw, sw.row("sh"))
    bash_n(body)
    assert f"export OPSRG_RUN_DIR={shlex.quote(sw.run_dir('sh'))}" in body
