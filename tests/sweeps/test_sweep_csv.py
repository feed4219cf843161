"""Sweep CSV validation: every problem as file:line:column: field, nothing accepted when one row is bad."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsrg.sweeps.rows import SweepCSVError, order, parse_file, parse_text, split_line

REPO = Path(__file__).resolve().parents[2]
HEAD = "run_id,config,seed,overrides,notes\n"
FP = "sweeps/configs/fp_tiny.toml"


def parse(text: str):
    return parse_text(text, "s.csv", [REPO])


def problems(text: str) -> list[str]:
    with pytest.raises(SweepCSVError) as e:
        parse(text)
    return e.value.problems


def test_demo_csv_is_valid_and_ordered():
    rows = parse_file(REPO / "sweeps" / "demo.csv", [REPO])
    assert [r.run_id for r in rows] == ["fp-s1", "fp-s2", "fp-s3", "exp-s1"]
    exp = rows[-1]
    assert exp.deps == ["fp-s1"] and exp.spec["bins"] == rows[0].spec["bins"]


def test_overrides_apply_and_are_typed():
    (r,) = parse(HEAD + f'a,{FP},7,"samples=2e4 steps=3 zmax=20 backend=numpy",note, with comma?\n'
                 .replace("note, with comma?", '"note, with comma"'))
    assert r.spec["samples"] == 20000 and r.spec["steps"] == 3 and r.spec["zmax"] == 20.0
    assert r.seed == 7 and r.notes == "note, with comma" and r.overrides == {
        "samples": 20000, "steps": 3, "zmax": 20.0, "backend": "numpy"}


@pytest.mark.parametrize("text, expected", [
    ("run_id,config,seed,notes\n", "s.csv:1:25: overrides: missing column"),
    ("run_id,config,seed,overrides,notes,extra\n", "s.csv:1:36: extra: unknown column"),
    (HEAD + f"a,{FP},1,,\na,{FP},2,,\n", "s.csv:3:1: run_id: duplicate run id 'a' (first on line 2)"),
    (HEAD + f"../x,{FP},1,,\n", "s.csv:2:1: run_id: '../x' is not a safe run id"),
    (HEAD + f"a;rm -rf,{FP},1,,\n", "s.csv:2:1: run_id: 'a;rm -rf' is not a safe run id"),
    (HEAD + f"a,{FP},1.5,,\n", "s.csv:2:31: seed: not a non-negative integer: '1.5'"),
    (HEAD + f"a,{FP},-3,,\n", "s.csv:2:31: seed: not a non-negative integer: '-3'"),
    (HEAD + "a,sweeps/configs/nope.toml,1,,\n", "s.csv:2:3: config: config file not found: sweeps/configs/nope.toml"),
    (HEAD + f"a,{FP},1,colour=red,\n", "s.csv:2:33: overrides: unknown key 'colour'"),
    (HEAD + f"a,{FP},1,steps=two,\n", "s.csv:2:33: overrides: steps: expected an integer, got 'two'"),
    (HEAD + f"a,{FP},1,steps,\n", "s.csv:2:33: overrides: 'steps' is not key=value"),
    (HEAD + f"a,{FP},1,\"command='x'\",\n", "s.csv:2:33: overrides: command applies to shell rows only"),
    (HEAD + "e,sweeps/configs/exp_small.toml,1,fp_run=zz,\n", "s.csv:2:1: dependency: e depends on 'zz', which is not in this sweep"),
    (HEAD + f"a,{FP},1,\"after=b\",\nb,{FP},1,\"after=a\",\n", "dependency: dependency cycle: a -> b -> a"),
    (HEAD + f"a,{FP},1,\"samples=1 shards=2\",\n", "shards (2) > samples (1)"),
    (HEAD + f"a,{FP},1,,x,y\n", "s.csv:2:36: row: 6 fields, the header has 5"),
    (HEAD + f'a,{FP},1,"unterminated\n', "s.csv:2:33: line: unterminated quoted field"),
    (HEAD + f"a,{FP},1,\"x='a b\",\n", "s.csv:2:33: overrides: cannot split (No closing quotation)"),
    (HEAD + f"a,{FP},1,,{'n' * 5000}\n", "s.csv:2:34: notes: field of 5000 characters (limit 4096)"),
    (HEAD + f"a,{FP},1,,bell\x07\n", "s.csv:2:38: line: control character"),
    (HEAD, "s.csv:1:1: rows: no runs in the sweep"),
    ("", "s.csv:1:1: header: empty file"),
])
def test_malformed_rows_are_reported_with_file_line_column(text, expected):
    got = problems(text)
    assert any(expected in p for p in got), got


def test_every_problem_is_reported_at_once():
    got = problems(HEAD + f"a,{FP},x,,\nb,{FP},1,bogus=1,\nc,missing.toml,1,,\n")
    assert [p.split(": ")[0] for p in got] == ["s.csv:2:31", "s.csv:3:33", "s.csv:4:3"]
    assert "nothing was started" in str(SweepCSVError(got))


def test_exp_must_point_at_an_fp_run():
    got = problems(HEAD + "s,sweeps/configs/shell.toml,1,,\ne,sweeps/configs/exp_small.toml,1,fp_run=s,\n")
    assert any("fp_run: s is a shell run, not fp" in p for p in got)


def test_encoding_and_bom(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(HEAD.encode() + b"a,x,1,,caf\xe9\n")
    with pytest.raises(SweepCSVError) as e:
        parse_file(bad, [REPO])
    assert e.value.problems == [f"{bad}:2:11: encoding: not UTF-8 (byte 0xe9); save the CSV as UTF-8"]
    ok = tmp_path / "bom.csv"
    ok.write_bytes(b"\xef\xbb\xbf" + (HEAD + f"a,{FP},1,,caf\u00e9\n").encode())
    assert parse_file(ok, [REPO])[0].notes == "caf\u00e9"


def test_shell_metacharacters_stay_data():
    (r,) = parse(HEAD + "s,sweeps/configs/shell.toml,3,\"command='echo $(whoami); rm -rf /nope'\",\"; ls `x`\"\n")
    assert r.spec["command"] == "echo $(whoami); rm -rf /nope" and r.notes == "; ls `x`"


def test_order_respects_dependencies_and_csv_order():
    rows = parse(HEAD + "e,sweeps/configs/exp_small.toml,1,fp_run=f,\nx,sweeps/configs/shell.toml,1,,\n"
                 f"f,{FP},1,,\n")
    assert [r.run_id for r in order(rows)] == ["f", "e", "x"]


def test_split_line_columns():
    assert split_line('a,"b,""c""",,d') == [("a", 1), ('b,"c"', 3), ("", 13), ("d", 14)]
    assert split_line("a,") == [("a", 1), ("", 3)]
