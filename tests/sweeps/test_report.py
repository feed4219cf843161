"""sweep-report's ranking: the parameters rows vary, best runs first, runs without the metric last."""

from __future__ import annotations

from opsrg.sweeps.report import params_of, rank, swept


def _row(rid, seed, args=(), overrides=None):
    return {"run_id": rid, "seed": seed, "overrides": overrides or {}, "spec": {"args": list(args)}}


def test_parameters_come_from_arguments_and_overrides_as_numbers():
    assert params_of(_row("a", 1, ["--lr=1e-3", "--name=x", "--flag"])) == {"lr": 0.001, "name": "x", "seed": 1}
    assert params_of(_row("b", 2, overrides={"samples": 100, "after": ["a"]})) == {"samples": 100, "seed": 2}
    assert swept([{"lr": 1, "seed": 1}, {"lr": 2, "seed": 1}, {"seed": 1}]) == ["lr"]


def test_rank_puts_the_best_first_for_either_goal_and_the_unmeasured_last():
    rows = [_row("a", 1, ["--lr=1"]), _row("b", 1, ["--lr=2"]), _row("c", 1, ["--lr=3"])]
    status = [{"run_id": "a", "state": "completed", "metrics": {"loss": 0.5}},
              {"run_id": "b", "state": "failed", "metrics": {"loss": None}},
              {"run_id": "c", "state": "completed", "metrics": {"loss": 0.1}}]
    assert [x["run_id"] for x in rank(rows, status, "loss", "min")] == ["c", "a", "b"]
    assert [x["run_id"] for x in rank(rows, status, "loss", "max")] == ["a", "c", "b"]
    assert rank(rows, status, "loss")[0]["params"] == {"lr": 3}
