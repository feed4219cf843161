from opsrg.sweeps import provenance


def test_identity_depends_on_config_and_seed_only():
    a = provenance.identity({"steps": 4, "samples": 10}, 1)
    assert a == provenance.identity({"samples": 10, "steps": 4}, 1)
    assert a != provenance.identity({"steps": 4, "samples": 10}, 2)
    assert a != provenance.identity({"steps": 5, "samples": 10}, 1)


def test_collect_and_finish(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("mode = 'fp'\n")
    meta = provenance.collect(run_id="r1", seed=3, resolved={"mode": "fp"}, config_file=str(cfg),
                              overrides={"steps": 2}, backend="numpy")
    assert meta["git"]["commit"] and isinstance(meta["git"]["dirty"], bool)
    assert meta["packages"]["numpy"] and meta["device"].startswith(("cpu:", "gpu:"))
    assert len(meta["config_sha256"]) == 64
    provenance.write_meta(tmp_path, meta)
    done = provenance.finish_meta(tmp_path, ok=True)
    assert done["ended_at"] and done["ok"] is True and done["identity"] == meta["identity"]


def test_code_state_parsing_and_credentials():
    out = "abc123\nmain\nhttps://u:tok@example.com/x.git\n1\n" + "f" * 64 + "\n"
    assert provenance.parse_code_state(out, 0) == {"commit": "abc123", "branch": "main",
                                                   "remote": "https://example.com/x.git", "dirty": True,
                                                   "diff_sha256": "f" * 64}
    clean = provenance.parse_code_state("abc\nmain\n\n0\n" + "e" * 64 + "\n", 0)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and clean["remote"] is None
    assert provenance.parse_code_state("", 3)["commit"] is None
    assert provenance.without_credentials("ssh://git@host:22/x") == "ssh://host:22/x"
    assert provenance.without_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"


def test_why_not_reused_names_what_changed():
    old = {"config": {"mode": "command", "args": ["--lr=1"], "code": {"commit": "a" * 40, "diff_sha256": None}},
           "seed": 1}
    assert provenance.why_not_reused(old, old) == "its identity differs"
    new = {"config": {"mode": "command", "args": ["--lr=2"], "code": {"commit": "b" * 40, "diff_sha256": None}},
           "seed": 2}
    assert provenance.why_not_reused(old, new) == (f"the project's code changed (commit {'a' * 10} -> {'b' * 10}); "
                                                   "its configuration differs in args; the seed differs (1 -> 2)")
    dirty = {"config": {**old["config"], "code": {"commit": "a" * 40, "diff_sha256": "d" * 64}}, "seed": 1}
    assert provenance.why_not_reused(old, dirty) == "the project's uncommitted changes differ"
