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
