"""The command line: help for every subcommand, clear errors and non-zero exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsrg.rg.cli import main

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = ("fp", "exp", "gen", "merge", "plot")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "opsrg.rg", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


def test_module_help():
    p = _run("--help")
    assert p.returncode == 0
    for cmd in SUBCOMMANDS:
        assert cmd in p.stdout


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["fp", "--steps", "0", "--samples", "10", "--seed", "1", "--out", "x"], "positive integer"),
    (["fp", "--steps", "2", "--samples", "ten", "--seed", "1", "--out", "x"], "not an integer"),
    (["fp", "--steps", "2", "--seed", "1", "--out", "x"], "--samples"),
    (["fp", "--steps", "2", "--samples", "10", "--seed", "1", "--out", "x", "--dtype", "float16"], "invalid choice"),
    (["exp", "--steps", "2", "--samples", "10", "--seed", "1", "--out", "x", "--fp", "a.npz",
      "--shifts", "-0.01"], "positive"),
    (["nosuch"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_errors_are_clear(tmp_path, capsys):
    assert main(["merge", "--step", "1", "--ntasks", "2", "--out", str(tmp_path / "none")]) == 2
    assert "run.json missing" in capsys.readouterr().err
    rc = main(["exp", "--fp", str(tmp_path / "missing.npz"), "--shifts", "0.01", "--steps", "1",
               "--samples", "100", "--seed", "1", "--out", str(tmp_path / "e")])
    assert rc == 2 and "histogram file not found" in capsys.readouterr().err
    rc = main(["fp", "--steps", "1", "--samples", "100", "--seed", "1", "--out", str(tmp_path / "f"),
               "--backend", "cupy"])
    err = capsys.readouterr().err
    if rc != 0:  # no GPU here: a clear refusal, not a traceback
        assert rc == 2 and "cupy" in err
    rc = main(["fp", "--steps", "1", "--samples", "100", "--seed", "1", "--out", str(tmp_path / "g"),
               "--method", "numerical", "--backend", "cpu"])
    assert rc == 2 and "numpy backend only" in capsys.readouterr().err


def test_package_import_is_light():
    code = "import sys, opsrg.rg; print('numpy' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_plot_fp_and_exp(fp_run, tmp_path, capsys):
    assert main(["plot", str(fp_run)]) == 0
    printed = capsys.readouterr().out.split()
    assert any(p.endswith("fp_Q_z.png") for p in printed) and any(p.endswith("fp_P_G.png") for p in printed)
    for p in printed:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
    fp = str(fp_run / "sym_z_hist_RG6.npz")
    assert main(["exp", "--fp", fp, "--shifts", "0.02", "--steps", "2", "--samples", "20000", "--seed", "1",
                 "--out", str(tmp_path), "--shards", "2", "--backend", "numpy"]) == 0
    assert main(["plot", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("exp_slopes_z0_0.02.png")
