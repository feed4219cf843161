"""Command line of the RG engine: ``python -m opsrg.rg {fp,exp,gen,merge,plot} ...``.

Every subcommand is a few lines calling into :mod:`opsrg.rg.pipeline`; errors derive from
:class:`opsrg.errors.OpsError` and map to their exit codes here.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from opsrg.core.errors import InputError, OpsError


def _pos_int(text: str) -> int:
    try:
        v = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1 or ("e" in text.lower() and float(text) != v):
        raise argparse.ArgumentTypeError(f"need a positive integer, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"need a non-negative integer, got {text!r}")
    return v


def _shifts(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"shifts must be comma-separated numbers: {text!r}") from None
    if not vals or any(not (v > 0) for v in vals):
        raise argparse.ArgumentTypeError(f"shifts must be positive numbers: {text!r}")
    return vals


def _run_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--samples", type=_pos_int, required=required, help="samples per step (any N; 1e6 ok)")
    p.add_argument("--seed", type=_nonneg_int, required=required, help="run seed (stream keys derive from it)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--bins", type=_pos_int, default=None, help="z bins (default 50000; exp: from --fp)")
    p.add_argument("--zmax", type=float, default=None, help="z range is [-zmax, zmax) (default 25)")
    p.add_argument("--backend", default="auto", choices=["auto", "cupy", "cpu", "numpy"],
                   help="compute backend (auto: cupy, else cpu, else numpy)")
    p.add_argument("--method", default="analytic", choices=["analytic", "numerical"],
                   help="closed-form map or linear solve of the cell (numpy only)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="kernel arithmetic")
    p.add_argument("--batch-size", type=_pos_int, default=None, help="samples per batch (backend default)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m opsrg.rg", description="Chalker-Coddington real-space RG.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("fp", help="fixed-point iteration from uniform G (symmetrised each step)")
    p.add_argument("--steps", type=_pos_int, required=True, help="number of RG steps")
    _run_options(p)
    p.add_argument("--shards", type=_pos_int, default=1, help="shards per step (default 1)")
    p.add_argument("--from-step", type=_pos_int, default=None, help="recompute from this step on")

    p = sub.add_parser("exp", help="shifted runs +-z0 (and 0) on common random numbers; writes nu.json")
    p.add_argument("--fp", required=True, help="fixed-point histogram, e.g. RUN/sym_z_hist_RG9.npz")
    p.add_argument("--shifts", type=_shifts, required=True, help="positive z0 values, e.g. 0.005,0.01")
    p.add_argument("--steps", type=_pos_int, required=True, help="number of RG steps")
    _run_options(p)
    p.add_argument("--shards", type=_pos_int, default=8, help="shards per step (default 8: bootstrap error)")
    p.add_argument("--from-step", type=_pos_int, default=None, help="recompute from this step on")

    p = sub.add_parser("gen", help="one shard of one step (for Slurm arrays); writes a part and READY")
    p.add_argument("--mode", choices=["fp", "exp"], default=None, help="fp or exp (needed on first use)")
    p.add_argument("--step", type=_pos_int, required=True)
    p.add_argument("--task", type=_nonneg_int, required=True, help="shard index 0..ntasks-1")
    p.add_argument("--ntasks", type=_pos_int, required=True, help="shards per step")
    p.add_argument("--fp", default=None, help="exp only: fixed-point histogram")
    p.add_argument("--shifts", type=_shifts, default=None, help="exp only: positive z0 values")
    _run_options(p, required=False)

    p = sub.add_parser("merge", help="check and sum all shards of a step; write its histograms")
    p.add_argument("--step", type=_pos_int, required=True)
    p.add_argument("--ntasks", type=_pos_int, required=True)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--keep-shards", action="store_true", help="keep part files after merging")

    p = sub.add_parser("plot", help="PNG figures of a run directory")
    p.add_argument("dir", help="run directory")
    return ap


def _config(args: argparse.Namespace, mode: str, shards: int):
    from opsrg.rg.pipeline import RunConfig, fp_fingerprint, signed_shifts

    nbins, zmax, fp_hash = args.bins or 50000, args.zmax or 25.0, None
    shifts: tuple[float, ...] = (0.0,)
    if mode == "exp":
        if not args.fp:
            raise InputError("exp needs --fp FILE.npz")
        if not args.shifts:
            raise InputError("exp needs --shifts")
        fp_hash, grid = fp_fingerprint(args.fp)
        if (args.bins and args.bins != grid.nbins) or (args.zmax and args.zmax != grid.zmax):
            raise InputError(f"--bins/--zmax differ from the grid of {args.fp} ({grid.nbins} bins, zmax {grid.zmax})")
        nbins, zmax = grid.nbins, grid.zmax
        shifts = signed_shifts(args.shifts)
    return RunConfig(mode=mode, samples=args.samples, seed=args.seed, nbins=nbins, zmax=zmax,
                     method=args.method, dtype=args.dtype, shards=shards, shifts=shifts, fp_sha256=fp_hash)


def _cmd_loop(args: argparse.Namespace, argv: list[str]) -> int:
    from opsrg.rg.pipeline import RunPaths, run_loop

    cfg = _config(args, args.cmd, args.shards)
    run_loop(cfg, RunPaths(Path(args.out)), args.steps, args.backend, batch_size=args.batch_size,
             from_step=args.from_step, fp_file=args.fp if args.cmd == "exp" else None,
             resume_cmd="python -m opsrg.rg " + shlex.join(argv))
    return 0


def _cmd_gen(args: argparse.Namespace) -> int:
    from opsrg.rg.pipeline import RunPaths, _make_backend, gen_shard, init_run, load_config

    paths = RunPaths(Path(args.out))
    if args.samples is None:
        cfg = load_config(paths)
    else:
        if args.mode is None or args.seed is None:
            raise InputError("gen needs --mode and --seed with --samples (or neither, to reuse run.json)")
        cfg = _config(args, args.mode, args.ntasks)
        init_run(cfg, paths, args.fp)
    if cfg.shards != args.ntasks:
        raise InputError(f"--ntasks {args.ntasks} but the run has {cfg.shards} shards")
    part = gen_shard(cfg, paths, args.step, args.task, _make_backend(args.backend, cfg), args.batch_size)
    print(part)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from opsrg.rg.pipeline import RunPaths, _progress_line, done_ok, load_config, merge_step

    paths = RunPaths(Path(args.out))
    cfg = load_config(paths)
    if cfg.shards != args.ntasks:
        raise InputError(f"--ntasks {args.ntasks} but the run has {cfg.shards} shards")
    done = merge_step(cfg, paths, args.step, keep_shards=args.keep_shards)
    print(_progress_line(cfg, done), file=sys.stderr)
    if cfg.mode == "exp" and all(done_ok(paths, k, cfg) for k in range(1, args.step + 1)):
        from opsrg.rg.analysis import write_nu

        write_nu(paths, cfg, args.step)  # estimators over steps 1..k, as the local loop writes
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from opsrg.rg.plot import plot_run

    for p in plot_run(Path(args.dir)):
        print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in ("fp", "exp"):
            return _cmd_loop(args, argv)
        if args.cmd == "gen":
            return _cmd_gen(args)
        if args.cmd == "merge":
            return _cmd_merge(args)
        return _cmd_plot(args)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
