"""Resume, config pinning, --from-step, shard/merge equivalence and merge errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opsrg.core.errors import IllegalStateError, InputError
from opsrg.rg.cli import main
from opsrg.rg.pipeline import RunConfig, RunPaths, run_loop

SMALL = ["--samples", "20000", "--seed", "5", "--bins", "2000", "--backend", "numpy"]


def _fp(out: Path, steps: int, *extra: str) -> int:
    return main(["fp", "--steps", str(steps), "--out", str(out), *SMALL, *extra])


def _hist(out: Path, k: int, sym: bool = True) -> np.ndarray:
    name = f"sym_z_hist_RG{k}.npz" if sym else f"z_hist_unsym_RG{k}.npz"
    with np.load(out / name) as f:
        assert set(f.files) == {"histval", "binedges", "bincenters"}
        assert f["histval"].dtype == np.int64
        return f["histval"].copy()


def test_fp_outputs_and_summary(tmp_path):
    assert _fp(tmp_path, 2) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["ok"] is True and s["steps"] == 2 and len(s["per_step"]) == 2 and s["backend"] == "numpy"
    d = json.loads((tmp_path / "DONE_RG2.json").read_text())
    for key in ("step", "samples", "seconds", "backend", "keys", "config_hash", "stats"):
        assert key in d
    st = d["stats"][0]
    for key in ("mean_z", "std_z", "kurtosis_z", "mean_g", "var_g", "underflow", "overflow"):
        assert key in st
    sym, unsym = _hist(tmp_path, 2), _hist(tmp_path, 2, sym=False)
    assert sym.sum() == 2 * unsym.sum() == 2 * 20000 - 2 * (st["underflow"] + st["overflow"])
    np.testing.assert_array_equal(sym, sym[::-1])


def test_resume_continues_and_matches_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _fp(a, 2) == 0
    done2 = (a / "DONE_RG2.json").read_text()
    assert _fp(a, 4) == 0
    assert (a / "DONE_RG2.json").read_text() == done2  # not recomputed
    s = json.loads((a / "summary.json").read_text())
    assert s["steps_run"] == [3, 4]
    assert _fp(b, 4) == 0
    for k in range(1, 5):
        np.testing.assert_array_equal(_hist(a, k), _hist(b, k))


def test_complete_rerun_does_nothing(tmp_path, capsys):
    assert _fp(tmp_path, 2) == 0
    stamp = (tmp_path / "summary.json").stat().st_mtime_ns
    assert _fp(tmp_path, 2) == 0
    assert (tmp_path / "summary.json").stat().st_mtime_ns == stamp
    assert "nothing to do" in capsys.readouterr().err


def test_changed_config_refused(tmp_path, capsys):
    assert _fp(tmp_path, 1) == 0
    rc = main(["fp", "--steps", "2", "--out", str(tmp_path), "--samples", "30000", "--seed", "6",
               "--bins", "2000", "--backend", "numpy"])
    err = capsys.readouterr().err
    assert rc == IllegalStateError.exit_code and "samples" in err and "seed" in err
    assert not (tmp_path / "DONE_RG2.json").exists()


def test_from_step_recomputes_identically(tmp_path):
    assert _fp(tmp_path, 3) == 0
    before = [_hist(tmp_path, k) for k in (1, 2, 3)]
    t1 = (tmp_path / "DONE_RG1.json").read_text()
    assert _fp(tmp_path, 3, "--from-step", "2") == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps_run"] == [2, 3]
    assert (tmp_path / "DONE_RG1.json").read_text() == t1
    for k, h in zip((1, 2, 3), before, strict=True):
        np.testing.assert_array_equal(_hist(tmp_path, k), h)


def test_shard_merge_equals_one_process(tmp_path):
    one, farm = tmp_path / "one", tmp_path / "farm"
    assert _fp(one, 2, "--shards", "3") == 0
    for k in (1, 2):
        for i in range(3):
            assert main(["gen", "--mode", "fp", "--step", str(k), "--task", str(i), "--ntasks", "3",
                         "--out", str(farm), *SMALL]) == 0
        assert (farm / "shards" / f"RG{k}" / f"part_{i:05d}.READY").exists()
        assert main(["merge", "--step", str(k), "--ntasks", "3", "--out", str(farm)]) == 0
    for k in (1, 2):
        np.testing.assert_array_equal(_hist(one, k), _hist(farm, k))
        np.testing.assert_array_equal(_hist(one, k, sym=False), _hist(farm, k, sym=False))
    keys = json.loads((one / "DONE_RG1.json").read_text())["keys"]
    assert len(set(keys)) == 3


def test_samples_not_divisible_by_shards(tmp_path):
    cfg = RunConfig(mode="fp", samples=10_007, seed=1, nbins=200, shards=3)
    assert sum(cfg.shard_sizes()) == 10_007
    run_loop(cfg, RunPaths(tmp_path), 1, "numpy", log=lambda m: None)
    d = json.loads((tmp_path / "DONE_RG1.json").read_text())
    assert d["stats"][0]["n"] == 10_007


def test_merge_missing_and_corrupt_shards(tmp_path, capsys):
    for i in (0, 2, 3):
        assert main(["gen", "--mode", "fp", "--step", "1", "--task", str(i), "--ntasks", "4",
                     "--out", str(tmp_path), *SMALL]) == 0
    (tmp_path / "shards" / "RG1" / "part_00003.npz").write_bytes(b"not an npz")
    rc = main(["merge", "--step", "1", "--ntasks", "4", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == InputError.exit_code
    assert "part_00001: missing" in err and "part_00003.npz: unreadable" in err
    assert not (tmp_path / "DONE_RG1.json").exists()


def test_gen_needs_previous_step(tmp_path, capsys):
    rc = main(["gen", "--mode", "fp", "--step", "2", "--task", "0", "--ntasks", "1",
               "--out", str(tmp_path), *SMALL])
    assert rc != 0 and "needs step 1" in capsys.readouterr().err


def test_failure_writes_resume_summary(tmp_path, monkeypatch):
    import opsrg.rg.pipeline as pl

    real = pl.merge_step

    def boom(cfg, paths, k, **kw):
        if k == 2:
            raise RuntimeError("disk full")
        return real(cfg, paths, k, **kw)

    monkeypatch.setattr(pl, "merge_step", boom)
    with pytest.raises(RuntimeError):
        _fp(tmp_path, 3)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["ok"] is False and "disk full" in s["error"] and "fp --steps 3" in s["resume"]
    monkeypatch.setattr(pl, "merge_step", real)
    assert _fp(tmp_path, 3) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps_run"] == [2, 3]


def test_exp_needs_an_icdf_backend():
    from opsrg.rg.backends import get_backend, supports

    class AliasOnly:
        name = "aliasonly"

    assert not supports(AliasOnly(), "icdf")
    assert supports(get_backend("numpy"), "icdf")
    assert supports(get_backend("auto", sampler="icdf"), "icdf")


def test_exp_shard_merge_equals_loop(tmp_path):
    fp_dir = tmp_path / "fp"
    assert _fp(fp_dir, 2) == 0
    fp = str(fp_dir / "sym_z_hist_RG2.npz")
    opts = ["--fp", fp, "--shifts", "0.02", "--samples", "20000", "--seed", "8", "--backend", "numpy"]
    loop, farm = tmp_path / "loop", tmp_path / "farm"
    assert main(["exp", "--steps", "2", "--out", str(loop), "--shards", "2", *opts]) == 0
    for k in (1, 2):
        for i in (0, 1):
            assert main(["gen", "--mode", "exp", "--step", str(k), "--task", str(i), "--ntasks", "2",
                         "--out", str(farm), *opts]) == 0
        assert main(["merge", "--step", str(k), "--ntasks", "2", "--out", str(farm)]) == 0
    for s in ("-0.020000", "+0.000000", "+0.020000"):
        for k in (1, 2):
            a = np.load(loop / f"shift_{s}" / f"z_hist_unsym_RG{k}.npz")["histval"]
            b = np.load(farm / f"shift_{s}" / f"z_hist_unsym_RG{k}.npz")["histval"]
            np.testing.assert_array_equal(a, b)
    nu = json.loads((loop / "nu.json").read_text())
    assert set(nu["by_shift"]) == {"0.02"}
    assert json.loads((farm / "nu.json").read_text())["by_shift"] == nu["by_shift"]
