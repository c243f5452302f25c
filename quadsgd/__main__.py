"""Command line of quadsgd: ``python -m quadsgd <command> ...``.

Commands (each registered by an ``_add_<name>(subparsers)`` function in :data:`COMMANDS`, which adds its
sub-parser and sets ``func`` to a handler ``handler(args) -> exit status``):

    sweep SPEC.toml --out DIR [--scheduler local | serial | tcp://HOST:PORT] [--workers N]
          [--skip-unstable] [--batch-size N] [--no-progress] [--no-figures]

Exit status: 0 success, 2 invalid input (spec errors, an unusable ``--out``: printed without a traceback),
1 a point failed (or a file could not be written), 130 interrupted (finished points stay saved: re-run the
same command to resume).
"""
from __future__ import annotations

import argparse
import sys

from sgdtraj.commands import EXIT_FAILED, EXIT_USAGE, run_command


def _cmd_sweep(args) -> int:
    from .sweeps import load_spec, run_spec

    spec = load_spec(args.spec)
    df = run_spec(spec, args.out, scheduler=args.scheduler, workers=args.workers,
                  threads_per_worker=args.threads_per_worker, skip_unstable=args.skip_unstable or None,
                  batch_size=args.batch_size, progress=not args.no_progress, figures=not args.no_figures)
    n_points = df["point_id"].nunique() if len(df) else 0
    n_skipped = df.loc[df["status"] == "skipped", "point_id"].nunique() if len(df) else 0
    print(f"{spec.name}: {n_points} points ({n_skipped} skipped), {len(df)} rows -> {args.out}/results.parquet")
    for f in ([] if args.no_figures else spec.figures):
        print(f"  figure: {args.out}/{f['file']}")
    return 0


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run a parameter sweep spec (TOML) into a results directory",
        description="Run the sweep described by SPEC.toml: compute every point (theory and/or simulation) "
                    "on a local process pool or a Dask cluster, write DIR/results.parquet, DIR/spec.toml, "
                    "DIR/run.json and the spec's figures. Re-running skips the points already computed.")
    p.add_argument("spec", help="sweep spec (TOML), e.g. examples/fig9_fig11_eq20.toml")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory (created; resumed if it exists)")
    p.add_argument("--scheduler", default="local", metavar="local|serial|tcp://HOST:PORT",
                   help="'local' process pool (default), 'serial' (this process), or a Dask scheduler address")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="local pool size (default: all cores)")
    p.add_argument("--threads-per-worker", type=int, default=None, metavar="N",
                   help="Numba threads per local worker (default: cores // workers)")
    p.add_argument("--skip-unstable", action="store_true",
                   help="record points with an unstable lr as skipped instead of stopping (spec: on_unstable)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="points per task")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figures", action="store_true", help="do not draw the spec's figures")
    p.set_defaults(func=_cmd_sweep)


#: sub-command registrars, in the order they are listed by --help
COMMANDS = [_add_sweep]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quadsgd",
                                     description="quadsgd: averaged SGD in the linear model (Sandler et al.)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from .sweeps import SpecError, SweepError

    # invalid input (the message names the key and the point) -> 2; a failed point, or a file that could not be
    # read or written -> 1
    return run_command(lambda: args.func(args), prefix=f"python -m quadsgd {args.command}: error: ",
                       errors=[((SpecError, ValueError), EXIT_USAGE), ((SweepError, OSError), EXIT_FAILED)],
                       interrupted=f"python -m quadsgd {args.command}: interrupted; finished points are saved, "
                                   f"re-run the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
