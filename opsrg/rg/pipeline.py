"""FP and EXP loops as gen (one shard of one step) + merge (one step), with resume.

The local ``fp``/``exp`` commands run exactly the gen/merge code below in-process, so a Slurm
array running ``gen --task $SLURM_ARRAY_TASK_ID`` then ``merge`` produces identical histograms.
Every file a run writes is named by :class:`RunPaths`; every write is atomic. Resume works from
``DONE_RG{k}.json`` markers carrying the config hash; ``run.json`` pins the config of a DIR.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opsrg.core.atomic import atomic_save_npz, atomic_write_json, locked
from opsrg.core.errors import IllegalStateError, InputError
from opsrg.rg.backends import Backend, StepResult, get_backend
from opsrg.rg.histogram import AliasTable, Grid, InverseCDF, load_histogram, save_histogram, symmetrise
from opsrg.rg.run import RunConfig, RunPaths
from opsrg.rg.streams import stream_key

Sampler = AliasTable | InverseCDF | None

SCALARS = ("n", "underflow", "overflow", "nonfinite", "sum_z", "sum_z2", "sum_g", "sum_g2")


def signed_shifts(positive: list[float]) -> tuple[float, ...]:
    """{-z0, 0, +z0} for every z0 given: the z0 = 0 control is always included."""
    vals = {0.0}
    for s in positive:
        if not np.isfinite(s) or s <= 0:
            raise InputError(f"shifts must be positive numbers (got {s})")
        vals |= {float(s), -float(s)}
    return tuple(sorted(vals))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def init_run(cfg: RunConfig, paths: RunPaths, fp_file: str | None = None) -> None:
    """Pin ``cfg`` to the run directory, or refuse if the directory holds a different config."""
    with locked(paths.run_json):
        old = _read_json(paths.run_json)
        if old is not None:
            prev = old.get("config", {})
            new = cfg.to_dict()
            diff = sorted(k for k in set(prev) | set(new) if prev.get(k) != new.get(k))
            if diff:
                detail = ", ".join(f"{k}: {prev.get(k)!r} -> {new.get(k)!r}" for k in diff)
                raise IllegalStateError(
                    f"{paths.root} holds a run with a different configuration ({detail})",
                    hint="use a new --out directory, or repeat the original options")
            return
        paths.root.mkdir(parents=True, exist_ok=True)
        if cfg.mode == "exp":
            if fp_file is None:
                raise InputError("exp needs --fp FILE.npz")
            counts, grid = load_histogram(fp_file)
            save_histogram(str(paths.fp_input), counts, grid)
        atomic_write_json(paths.run_json, {"config": cfg.to_dict(), "config_hash": cfg.config_hash,
                                           "fp_source": fp_file, "created": time.time()})


def fp_fingerprint(fp_file: str) -> tuple[str, Grid]:
    counts, grid = load_histogram(fp_file)
    return hashlib.sha256(counts.tobytes()).hexdigest()[:16], grid


def _input_tables(cfg: RunConfig, paths: RunPaths, k: int) -> list[Sampler]:
    """One sampler per shift for step k: alias for FP (uniform G at step 1), inverse CDF for EXP."""
    if cfg.mode == "fp":
        if k == 1:
            return [None]
        counts, _ = load_histogram(str(_require(paths.sym(k - 1), paths, k, cfg)))
        return [AliasTable.from_counts(counts)]
    if k == 1:
        counts, _ = load_histogram(str(paths.fp_input))
        table = InverseCDF.from_counts(counts)
        return [table for _ in cfg.shifts]
    return [InverseCDF.from_counts(load_histogram(str(_require(paths.unsym(k - 1, s), paths, k, cfg)))[0])
            for s in cfg.shifts]


def _require(path: Path, paths: RunPaths, k: int, cfg: RunConfig) -> Path:
    if not path.exists() or done_ok(paths, k - 1, cfg) is None:
        raise IllegalStateError(f"step {k} needs step {k - 1} first: {path} or its DONE marker is missing",
                                hint=f"run merge --step {k - 1} (or the fp/exp loop) before gen --step {k}")
    return path


def gen_shard(cfg: RunConfig, paths: RunPaths, k: int, i: int, backend: Backend,
              batch_size: int | None = None, tables: list[Sampler] | None = None) -> Path:
    """Compute shard i of step k for every shift and write its part file and READY marker."""
    if not 0 <= i < cfg.shards:
        raise InputError(f"task {i} out of range for {cfg.shards} tasks")
    if tables is None:
        tables = _input_tables(cfg, paths, k)
    n = cfg.shard_sizes()[i]
    key = stream_key(cfg.seed, k, i, "sample")  # the same key for every shift: CRN
    kw: dict[str, Any] = {"dtype": cfg.dtype}
    if batch_size is not None:
        kw["batch_size"] = int(batch_size)
    t0 = time.perf_counter()
    results: list[StepResult] = []
    for table, shift in zip(tables, cfg.shifts, strict=True):
        results.append(backend.sample_step(table, cfg.grid, n, key, shift=shift if k == 1 else 0.0, **kw))
    seconds = time.perf_counter() - t0
    meta = {"config_hash": cfg.config_hash, "step": k, "task": i, "ntasks": cfg.shards, "key": key,
            "backend": backend.name, "seconds": seconds,
            "batch_size": batch_size or getattr(backend, "default_batch_size", "backend default")}
    arrays = {f"s_{name}": np.array([getattr(r, name) for r in results]) for name in SCALARS}
    atomic_save_npz(paths.part(k, i), counts=np.stack([r.counts for r in results]),
                    meta=np.array(json.dumps(meta)), **arrays)
    atomic_write_json(paths.ready(k, i), meta)
    return paths.part(k, i)


def read_part(cfg: RunConfig, paths: RunPaths, k: int, i: int) -> tuple[list[StepResult], dict[str, Any]]:
    """Load and validate one part file; raises InputError saying what is wrong."""
    p = paths.part(k, i)
    if not paths.ready(k, i).exists():
        raise InputError(f"{p.name}: no READY marker")
    try:
        with np.load(p) as f:
            meta = json.loads(str(f["meta"]))
            counts = np.asarray(f["counts"])
            sc = {name: np.asarray(f[f"s_{name}"]) for name in SCALARS}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{p.name}: unreadable ({exc.__class__.__name__}: {exc})") from exc
    if meta.get("config_hash") != cfg.config_hash or meta.get("step") != k or meta.get("task") != i:
        raise InputError(f"{p.name}: written for another run/step/task ({meta})")
    if counts.shape != (len(cfg.shifts), cfg.nbins) or counts.dtype != np.int64:
        raise InputError(f"{p.name}: counts have shape {counts.shape} {counts.dtype}")
    out = []
    for j in range(len(cfg.shifts)):
        kw = {name: (int(sc[name][j]) if name in ("n", "underflow", "overflow", "nonfinite")
                     else float(sc[name][j])) for name in SCALARS}
        r = StepResult(counts=counts[j].copy(), **kw)
        if r.n != cfg.shard_sizes()[i] or r.in_range + r.underflow + r.overflow + r.nonfinite != r.n:
            raise InputError(f"{p.name}: sample counts do not add up")
        out.append(r)
    return out, meta


def step_stats(r: StepResult, grid: Grid) -> dict[str, float | int]:
    """Mean/std of z and mean/var of G from the sums; kurtosis and median from the histogram."""
    m = r.in_range
    mean = r.sum_z / m
    var = r.sum_z2 / m - mean * mean
    c = grid.centers
    w = r.counts / m
    hm = float(np.dot(w, c))
    m2 = float(np.dot(w, (c - hm) ** 2))
    m4 = float(np.dot(w, (c - hm) ** 4))
    g_mean = r.sum_g / m
    cum = np.cumsum(r.counts)
    j = int(np.searchsorted(cum, 0.5 * m))
    below = cum[j - 1] if j > 0 else 0
    median = -grid.zmax + (j + (0.5 * m - below) / max(int(r.counts[j]), 1)) * grid.width
    return {"mean_z": mean, "std_z": float(np.sqrt(max(var, 0.0))), "kurtosis_z": m4 / (m2 * m2),
            "median_z": float(median), "mean_g": g_mean, "var_g": r.sum_g2 / m - g_mean * g_mean,
            "n": r.n, "in_range": m, "underflow": r.underflow, "overflow": r.overflow,
            "nonfinite": r.nonfinite}


def merge_step(cfg: RunConfig, paths: RunPaths, k: int, *, keep_shards: bool = False) -> dict[str, Any]:
    """Check and sum all parts of step k, write its histograms and DONE marker."""
    problems, parts, metas = [], [], []
    for i in range(cfg.shards):
        if not paths.part(k, i).exists():
            problems.append(f"part_{i:05d}: missing")
            continue
        try:
            res, meta = read_part(cfg, paths, k, i)
            parts.append(res)
            metas.append(meta)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError(f"cannot merge step {k} in {paths.shard_dir(k)}: {len(problems)} of "
                         f"{cfg.shards} shards bad or missing: " + "; ".join(problems[:20]),
                         hint=f"rerun gen --step {k} for those tasks")
    grid = cfg.grid
    totals = [sum((p[j] for p in parts[1:]), parts[0][j]) for j in range(len(cfg.shifts))]
    per_shift = []
    for j, s in enumerate(cfg.shifts):
        r = totals[j]
        st = step_stats(r, grid)
        if cfg.mode == "fp":
            save_histogram(str(paths.unsym(k)), r.counts, grid)
            sym = symmetrise(r.counts)
            save_histogram(str(paths.sym(k)), sym, grid)
            st["std_z_sym"] = float(np.sqrt(np.dot(sym, grid.centers ** 2) / sym.sum()))
        else:
            save_histogram(str(paths.unsym(k, s)), r.counts, grid)
        st["shift"] = s
        st["shard_sum_z"] = [p[j].sum_z for p in parts]
        st["shard_in_range"] = [p[j].in_range for p in parts]
        per_shift.append(st)
    done = {"step": k, "mode": cfg.mode, "samples": cfg.samples, "config_hash": cfg.config_hash,
            "seed": cfg.seed, "keys": [m["key"] for m in metas],
            "backend": sorted({m["backend"] for m in metas}),
            "batch_size": sorted({str(m["batch_size"]) for m in metas}),
            "seconds": float(sum(m["seconds"] for m in metas)), "created": time.time(),
            "stats": per_shift}
    atomic_write_json(paths.done(k), done)
    if not keep_shards:
        for i in range(cfg.shards):
            for p in (paths.ready(k, i), paths.part(k, i)):
                p.unlink(missing_ok=True)
    return done


def done_ok(paths: RunPaths, k: int, cfg: RunConfig | None) -> dict[str, Any] | None:
    """The DONE marker of step k if present and (when cfg is given) from the same config."""
    d = _read_json(paths.done(k))
    if d is None:
        return None
    if cfg is not None and d.get("config_hash") != cfg.config_hash:
        return None
    return d


def load_config(paths: RunPaths) -> RunConfig:
    d = _read_json(paths.run_json)
    if d is None:
        raise InputError(f"{paths.run_json} missing or unreadable: not a run directory")
    c = dict(d["config"])
    c["shifts"] = tuple(c["shifts"])
    return RunConfig(**c)


@dataclass
class LoopOutcome:
    ok: bool
    steps_done: list[int] = field(default_factory=list)
    steps_run: list[int] = field(default_factory=list)


def run_loop(cfg: RunConfig, paths: RunPaths, steps: int, backend_name: str = "auto", *,
             batch_size: int | None = None, from_step: int | None = None, fp_file: str | None = None,
             resume_cmd: str = "", log=None) -> LoopOutcome:
    """The local fp/exp loop: for each missing step, gen every shard in-process, then merge."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if steps < 1:
        raise InputError(f"--steps must be >= 1 (got {steps})")
    init_run(cfg, paths, fp_file)
    if from_step is not None:
        if from_step < 1:
            raise InputError(f"--from-step must be >= 1 (got {from_step})")
        for p in paths.root.glob("DONE_RG*.json"):
            if p.stem[len("DONE_RG"):].isdigit() and int(p.stem[len("DONE_RG"):]) >= from_step:
                p.unlink()
        paths.summary.unlink(missing_ok=True)
    start = 1
    while start <= steps and done_ok(paths, start, cfg) is not None:
        start += 1
    outcome = LoopOutcome(ok=True, steps_done=list(range(1, start)))
    if start > steps and _read_json(paths.summary) and _read_json(paths.summary).get("ok") \
            and _read_json(paths.summary).get("steps") == steps:
        log(f"[rg {cfg.mode}] {paths.root}: all {steps} steps already done; nothing to do")
        return outcome
    t_run = time.perf_counter()
    backend = None
    try:
        if start <= steps:
            backend = _make_backend(backend_name, cfg)
        for k in range(start, steps + 1):
            tables = _input_tables(cfg, paths, k)
            for i in range(cfg.shards):
                gen_shard(cfg, paths, k, i, backend, batch_size, tables)
            done = merge_step(cfg, paths, k)
            outcome.steps_run.append(k)
            outcome.steps_done.append(k)
            log(_progress_line(cfg, done))
    except Exception as exc:
        outcome.ok = False
        _write_summary(cfg, paths, steps, outcome, time.perf_counter() - t_run,
                       error=f"{exc.__class__.__name__}: {exc}", resume_cmd=resume_cmd)
        raise
    if cfg.mode == "exp":
        from opsrg.rg.analysis import write_nu

        write_nu(paths, cfg, steps)
    _write_summary(cfg, paths, steps, outcome, time.perf_counter() - t_run,
                   backend=backend.name if backend else None)
    return outcome


def _make_backend(name: str, cfg: RunConfig) -> Backend:
    if cfg.method == "numerical":
        if name not in ("numpy", "auto"):
            raise InputError("--method numerical runs on the numpy backend only (use --backend numpy)")
        from opsrg.rg.backends.numpy_backend import NumpyBackend

        return NumpyBackend(method="numerical")
    return get_backend(name, sampler="icdf" if cfg.mode == "exp" else "alias")


def _progress_line(cfg: RunConfig, done: dict[str, Any]) -> str:
    st = done["stats"]
    if cfg.mode == "fp":
        s = st[0]
        return (f"[rg fp] step {done['step']}: N={done['samples']} std(z)={s['std_z']:.5f} "
                f"mean(z)={s['mean_z']:+.5f} var(G)={s['var_g']:.5f} "
                f"{done['seconds']:.1f}s ({','.join(done['backend'])})")
    means = " ".join(f"{s['shift']:+g}:{s['mean_z']:+.5f}" for s in st)
    return f"[rg exp] step {done['step']}: <z> {means} {done['seconds']:.1f}s ({','.join(done['backend'])})"


def _write_summary(cfg: RunConfig, paths: RunPaths, steps: int, outcome: LoopOutcome, seconds: float,
                   error: str | None = None, resume_cmd: str = "", backend: str | None = None) -> None:
    table = []
    for k in range(1, steps + 1):
        d = done_ok(paths, k, cfg)
        if d is None:
            continue
        row = {"step": k, "seconds": d["seconds"], "backend": d["backend"]}
        for s in d["stats"]:
            label = "" if cfg.mode == "fp" else f"[{s['shift']:+g}]"
            for key in ("mean_z", "std_z", "kurtosis_z", "var_g"):
                row[key + label] = s[key]
        table.append(row)
    summary: dict[str, Any] = {"ok": outcome.ok and error is None, "mode": cfg.mode, "steps": steps,
                               "config": cfg.to_dict(), "config_hash": cfg.config_hash,
                               "steps_run": outcome.steps_run, "run_seconds": seconds,
                               "backend": backend, "per_step": table}
    if error is not None:
        summary["error"] = error
        summary["resume"] = resume_cmd
    atomic_write_json(paths.summary, summary)
