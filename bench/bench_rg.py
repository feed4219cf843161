#!/usr/bin/env python
"""Throughput and large-N benchmarks of the RG engine's backends (see bench/README.md).

Modes (any combination; default: --throughput):

  --throughput   samples/s of one full per-sample step (5 draws from a 50 000-bin table, 4 phases,
                 the map, z', histogram and sums) per backend and dtype; each (backend, dtype) runs
                 in a fresh process so its peak memory is its own. Reports the median wall time of
                 --repeats calls, samples per CPU-second, peak RSS and the first-call time.
  --compile      numba compile time of the cpu backend in a fresh process with an empty cache,
                 then the start-up time with the cache filled.
  --fp-large     FP loop through the pipeline (opsrg.rg.pipeline.run_loop): --fp-samples per step
                 x --fp-steps on --fp-backend; std(z) per step against RG_SPEC 3.2.
  --exp          EXP loop through the pipeline from the --fp-large run (or --fp FILE): shifts
                 -z0, 0, +z0 with common random numbers; slope_n, the log-linear nu and the
                 cumulative nu_n against RG_SPEC 3.3.

  python bench/bench_rg.py --json bench_rg.json
  python bench/bench_rg.py --backends cpu --dtypes float32 --n 1e8 --repeats 3
  python bench/bench_rg.py --no-throughput --fp-large --exp --json large.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# RG_SPEC 3.2: std(z) after step k from uniform G (N >= 2e8; +-3e-4)
SPEC_FP_STD = [2.0335, 2.1172, 2.1499, 2.1627, 2.1679, 2.1700, 2.1708, 2.1711, 2.1712, 2.1712]
# RG_SPEC 3.3: slope_n of <z> (z0 = +-0.01, N = 5e7, 3 seeds) and nu = 2.332 +- 0.003
SPEC_SLOPES = [1.3802, 1.864, 2.510, 3.377, 4.546, 6.118, 8.237, 11.09, 14.92, 20.09]
SPEC_NU = 2.332
DEFAULT_N = {"numpy": 1_000_000, "cpu": 20_000_000, "cupy": 500_000_000}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        pass
    info["numpy"] = np.__version__
    return info


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def fp_like_counts(nbins: int = 50000, zmax: float = 25.0) -> np.ndarray:
    """A deterministic FP-like input histogram: logistic density scaled to std 2.17 (no sampling)."""
    from opsrg.rg.histogram import Grid

    c = Grid(nbins, zmax).centers
    s = 2.17 * np.sqrt(3.0) / np.pi
    pdf = np.exp(-np.abs(c) / s) / (s * (1 + np.exp(-np.abs(c) / s)) ** 2)
    return np.round(pdf / pdf.sum() * 1e10).astype(np.int64)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- throughput
def worker(backend_name: str, dtype: str, n: int, repeats: int, sampler: str = "alias") -> dict[str, Any]:
    """Runs in a child process: time ``repeats`` calls of sample_step after one first call."""
    import tracemalloc

    from opsrg.core.errors import BackendUnavailableError
    from opsrg.rg.backends import get_backend
    from opsrg.rg.histogram import AliasTable, Grid, InverseCDF

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        b = get_backend(backend_name)
    except BackendUnavailableError as exc:
        return {"backend": backend_name, "dtype": dtype, "measured": False, "reason": str(exc)}
    grid = Grid()
    table = (InverseCDF if sampler == "icdf" else AliasTable).from_counts(fp_like_counts())
    t0 = time.perf_counter()
    first = b.sample_step(table, grid, min(n, 100_000), 1, dtype=dtype)
    first_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    tracemalloc.start()
    for rep in range(repeats):
        c0, w0 = cpu_seconds(), time.perf_counter()
        r = b.sample_step(table, grid, n, 1000 + rep, dtype=dtype)
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu_seconds() - c0)
        assert r.n == n and r.in_range + r.underflow + r.overflow + r.nonfinite == n
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    med = float(np.median(walls))
    k = r.counts.sum()
    return {"backend": backend_name, "dtype": dtype, "measured": True, "n": n, "repeats": repeats,
            "first_call_s": first_s, "first_call_n": first.n,
            "wall_s": walls, "cpu_s": cpus, "median_wall_s": med,
            "msamples_per_s": n / med / 1e6,
            "msamples_per_s_best": n / min(walls) / 1e6,
            "msamples_per_cpu_s": n / float(np.median(cpus)) / 1e6,
            "peak_rss_mib": rss2 / 1024, "rss_growth_after_first_call_mib": (rss2 - rss1) / 1024,
            "rss_before_backend_mib": rss0 / 1024, "tracemalloc_peak_mib": tm_peak / 2**20,
            "std_z": float(np.sqrt(r.sum_z2 / k - (r.sum_z / k) ** 2)),
            "sampler": type(table).__name__,
            "extra": {kk: v for kk, v in r.extra.items() if isinstance(v, (int, float, str, bool))}}


def run_worker(backend_name: str, dtype: str, n: int, repeats: int, sampler: str = "alias",
               env: dict[str, str] | None = None, timeout: float = 3600) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", backend_name, dtype, str(n), str(repeats),
           sampler]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if out.returncode != 0:
        return {"backend": backend_name, "dtype": dtype, "measured": False,
                "reason": f"worker failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in args.backends:
        for dtype in args.dtypes:
            n = int(args.n) if args.n else DEFAULT_N[name]
            if name == "numpy" and dtype == "float64" and not args.n:
                n = 500_000
            la0 = loadavg()
            env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads)) if args.threads else None
            row = run_worker(name, dtype, n, args.repeats, args.sampler, env=env)
            row["numba_threads_requested"] = args.threads
            row["loadavg_before"], row["loadavg_after"] = la0, loadavg()
            rows.append(row)
            if row["measured"]:
                print(f"{name:6s} {dtype:8s} {args.sampler:5s} n={n:.0e}: {row['msamples_per_s']:8.2f} M samples/s "
                      f"(best {row['msamples_per_s_best']:.2f}; {row['msamples_per_cpu_s']:.2f} M per CPU-s) "
                      f"first call {row['first_call_s']:.2f}s  peak RSS {row['peak_rss_mib']:.0f} MiB "
                      f"(+{row['rss_growth_after_first_call_mib']:.1f} after first call)  load {la0}", flush=True)
            else:
                print(f"{name:6s} {dtype:8s}: not measured: {row['reason']}", flush=True)
    return rows


def compile_time() -> dict[str, Any]:
    """Cold numba compile (empty cache dir) and warm start (same dir) of the cpu backend."""
    code = ("import time; t=time.perf_counter();"
            "from opsrg.rg.backends.cpu import CpuBackend; from opsrg.rg.histogram import Grid, AliasTable;"
            "import numpy as np; b=CpuBackend(); g=Grid();"
            "t1=time.perf_counter(); b.sample_step(None, g, 1000, 1, dtype='{dt}');"
            "t2=time.perf_counter(); b.sample_step(AliasTable.from_counts(np.ones(g.nbins)), g, 1000, 1, dtype='{dt}');"
            "t3=time.perf_counter(); print(t1-t, t2-t1, t3-t2)")
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(REPO))
        for dt in ("float32", "float64"):
            for phase in ("cold", "warm"):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", code.format(dt=dt)], capture_output=True, text=True,
                                     env=env, check=True)
                total = time.perf_counter() - t0
                imp, first, second = (float(x) for x in out.stdout.split())
                res[f"{dt}_{phase}"] = {"process_s": total, "import_s": imp, "first_step_call_s": first,
                                        "table_step_call_s": second}
                print(f"cpu {dt} {phase}: process {total:.1f}s, first call {first:.2f}s, "
                      f"first table call {second:.2f}s", flush=True)
    res["loadavg"] = loadavg()
    return res


# ------------------------------------------------------------------------------ pipeline runs
def fp_large(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from opsrg.rg.pipeline import RunConfig, RunPaths, done_ok, run_loop

    cfg = RunConfig(mode="fp", samples=int(args.fp_samples), seed=args.seed, dtype=args.fp_dtype)
    paths = RunPaths(root / "fp")
    la0 = loadavg()
    t0 = time.perf_counter()
    run_loop(cfg, paths, args.fp_steps, args.fp_backend, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    steps = []
    for k in range(1, args.fp_steps + 1):
        d = done_ok(paths, k, cfg)
        st = d["stats"][0]
        spec = SPEC_FP_STD[k - 1] if k <= len(SPEC_FP_STD) else SPEC_FP_STD[-1]
        steps.append({"step": k, "std_z": st["std_z"], "spec_std_z": spec, "diff": st["std_z"] - spec,
                      "se": 1.8 / np.sqrt(cfg.samples), "var_g": st["var_g"], "kurtosis_z": st["kurtosis_z"],
                      "mean_z": st["mean_z"], "seconds": d["seconds"]})
    total = cfg.samples * args.fp_steps
    return {"samples_per_step": cfg.samples, "steps": args.fp_steps, "backend": args.fp_backend,
            "dtype": cfg.dtype, "run_seconds": wall, "samples_per_s": total / wall,
            "per_step": steps, "fp_file": str(paths.sym(args.fp_steps)), "loadavg": [la0, loadavg()]}


def exp_run(args: argparse.Namespace, root: Path, fp_file: str) -> dict[str, Any]:
    from opsrg.rg.pipeline import RunConfig, RunPaths, fp_fingerprint, run_loop, signed_shifts

    sha, grid = fp_fingerprint(fp_file)
    cfg = RunConfig(mode="exp", samples=int(args.exp_samples), seed=args.seed + 1, nbins=grid.nbins,
                    zmax=grid.zmax, dtype=args.fp_dtype, shifts=signed_shifts([args.z0]), fp_sha256=sha)
    paths = RunPaths(root / "exp")
    la0 = loadavg()
    t0 = time.perf_counter()
    run_loop(cfg, paths, args.exp_steps, args.fp_backend, fp_file=fp_file, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    nu = json.loads(paths.nu_json.read_text())
    entry = nu["by_shift"][f"{args.z0:g}"]
    mean = entry["mean"]
    slopes = mean["slope_n"]
    return {"samples": cfg.samples, "steps": args.exp_steps, "z0": args.z0, "shifts": list(cfg.shifts),
            "backend": args.fp_backend, "dtype": cfg.dtype, "run_seconds": wall,
            "samples_per_s": cfg.samples * len(cfg.shifts) * args.exp_steps / wall,
            "slope_n": slopes, "spec_slope_n": SPEC_SLOPES[: len(slopes)],
            "slope_rel_diff": [s / p - 1 for s, p in zip(slopes, SPEC_SLOPES, strict=False)],
            "fit_nu": mean["fit_nu"], "fit_n": mean["fit_n"], "nu_err": entry.get("nu_err"),
            "cumulative_nu_n": mean["cumulative_nu_n"], "ratio_nu_n": mean["ratio_nu_n"], "spec_nu": SPEC_NU,
            "fp_file": fp_file, "loadavg": [la0, loadavg()]}


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="numpy,cpu,cupy", type=lambda s: s.split(","))
    p.add_argument("--dtypes", default="float32,float64", type=lambda s: s.split(","))
    p.add_argument("--n", type=float, default=None, help="samples per timed call (default per backend)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sampler", choices=("alias", "icdf"), default="alias",
                   help="input sampler: alias table (FP steps) or inverse CDF (EXP steps)")
    p.add_argument("--threads", type=int, default=None, help="NUMBA_NUM_THREADS for the cpu backend")
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--compile", action="store_true", help="measure cpu-backend compile and cached start")
    p.add_argument("--fp-large", action="store_true")
    p.add_argument("--fp-samples", type=float, default=1e8)
    p.add_argument("--fp-steps", type=int, default=10)
    p.add_argument("--fp-backend", default="cpu")
    p.add_argument("--fp-dtype", default="float32")
    p.add_argument("--exp", action="store_true")
    p.add_argument("--fp", default=None, help="converged FP histogram for --exp (default: the --fp-large run)")
    p.add_argument("--exp-samples", type=float, default=1e7)
    p.add_argument("--exp-steps", type=int, default=10)
    p.add_argument("--z0", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", default=None, help="directory for the pipeline runs (default: a temp dir)")
    p.add_argument("--json", default=None, help="write all results to this file ('-' for stdout)")
    p.add_argument("--_worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        name, dtype, n, reps, sampler = args._worker
        print(json.dumps(worker(name, dtype, int(float(n)), int(reps), sampler)))
        return 0

    result: dict[str, Any] = {"machine": machine(), "loadavg_start": loadavg()}
    print(f"machine: {result['machine']}", flush=True)
    if args.throughput:
        result["throughput"] = throughput(args)
    if args.compile:
        result["compile"] = compile_time()
    if args.fp_large or args.exp:
        tmp = None
        if args.out is None:
            tmp = tempfile.TemporaryDirectory(prefix="bench_rg_")
            root = Path(tmp.name)
        else:
            root = Path(args.out)
        try:
            fp_file = args.fp
            if args.fp_large:
                result["fp_large"] = fp_large(args, root)
                fp_file = fp_file or result["fp_large"]["fp_file"]
                for s in result["fp_large"]["per_step"]:
                    print(f"FP step {s['step']:2d}: std(z) {s['std_z']:.5f} spec {s['spec_std_z']:.4f} "
                          f"diff {s['diff']:+.5f} (SE {s['se']:.5f})  {s['seconds']:.1f}s", flush=True)
            if args.exp:
                if fp_file is None:
                    p.error("--exp needs --fp-large or --fp FILE")
                result["exp"] = exp_run(args, root, fp_file)
                e = result["exp"]
                print("EXP slope_n:", " ".join(f"{s:.4g}" for s in e["slope_n"]), flush=True)
                print(f"EXP fit nu {e['fit_nu']:.4f} (+- {e['nu_err']}) over n={e['fit_n']}; spec {SPEC_NU}; "
                      f"{e['run_seconds']:.1f}s", flush=True)
        finally:
            if tmp is not None:
                tmp.cleanup()
    result["loadavg_end"] = loadavg()
    if args.json:
        text = json.dumps(result, indent=2, default=float)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
