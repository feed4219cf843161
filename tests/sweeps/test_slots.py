"""The pure GPU bookkeeping of rows side by side, and a run's W&B variables."""

from __future__ import annotations

import pytest

from opsrg.core.gpus import parse_gpu_ids
from opsrg.sweeps.slots import Slots, gpu_env, wandb_env, wanted


def test_a_rows_gpu_count_defaults_to_all_alone_and_one_side_by_side():
    assert wanted(None, 8, 1) == 8 and wanted(None, 8, 4) == 1 and wanted(None, 0, 4) == 0
    assert wanted(3, 8, 1) == 3 and wanted(0, 8, 4) == 0


def test_slots_hand_out_disjoint_sets_lowest_first_and_wait_when_short():
    s = Slots(["0", "1", "2", "3"])
    assert s.take("a", 2) == ["0", "1"] and s.take("b", 1) == ["2"]
    assert s.take("c", 2) is None and s.free() == ["3"]  # c waits; nothing is taken for it
    s.release("a")
    assert s.take("c", 2) == ["0", "1"]
    s.hold("old", ["3", "7"])  # what an earlier driver gave; 7 is not this pod's any more
    assert s.held["old"] == ["3"] and s.free() == []


def test_gpu_env_is_set_only_where_gpus_are_shared_out():
    assert gpu_env(["1", "3"], True) == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert gpu_env([], True) == {"CUDA_VISIBLE_DEVICES": ""}  # a row with no GPU sees none
    assert gpu_env([], False) == {}


def test_wandb_env_is_stable_per_campaign_and_run_and_safe_as_an_id():
    env = wandb_env("20261201-120000-ab12", "lr=3e-4/s1", "/out/r", "baseline; small ,")
    assert env["WANDB_RUN_ID"] == "20261201-120000-ab12-lr-3e-4-s1"
    assert env == wandb_env("20261201-120000-ab12", "lr=3e-4/s1", "/out/r", "baseline; small ,")
    assert env["WANDB_TAGS"] == "baseline,small" and env["WANDB_RESUME"] == "allow" and env["WANDB_DIR"] == "/out/r"
    assert "WANDB_TAGS" not in wandb_env("c", "r", "/o", "")


def test_gpu_ids_are_indices_or_uuids_named_once():
    assert parse_gpu_ids("0, 1,2\n3") == ["0", "1", "2", "3"]
    assert parse_gpu_ids("GPU-5f3c-11aa,MIG-1") == ["GPU-5f3c-11aa", "MIG-1"]
    for bad in ("0;1", "0,0", "$(x)"):
        with pytest.raises(ValueError):
            parse_gpu_ids(bad)
