"""``python -m validation reproduce [--quick | --full] [--run DIR] [--data-dir P --dataset NAME] [--seed S] --out OUT``;
``python -m validation controls [--replicates N] [--seed S] [--tiny] --out OUT``.

controls: every real-network claim's analysis on its positive and negative control (:mod:`validation.real.controls`);
exit status 0 when every control has its expected state, 1 when one does not (the rule is defective), 2 on bad
arguments.

Exit status 0 when every claim was evaluated (PASS, FAIL or NOT DECIDED; the report says which),
1 when a claim could not be evaluated (an error) or a file could not be written, 2 on bad arguments (checked
before any work: the real-network arguments, an unusable ``--out``; one line on stderr), 130 when
interrupted (Ctrl-C or SIGTERM: finished claims stay in ``OUT/parts``; re-run the same command to resume).
"""
from __future__ import annotations

import argparse
import sys

from sgdtraj.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, run_command
from sgdtraj.outputs import claim_output

from .reproduction import CLAIM_IDS, DATASETS, reproduce


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m validation",
                                 description="Verify the claims of Sandler et al. and write a report.")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reproduce", help="run every claim and write OUT/report.md, OUT/verdicts.json, figures")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="embedded digits data, 2-core CPU (default)")
    g.add_argument("--full", action="store_true", help="larger sizes (more chains, longer runs)")
    r.add_argument("--run", help="existing realnet run directory to validate (e.g. a GPU ImageNet run)")
    r.add_argument("--data-dir", help="train the realnet run on a local data set at this path (with --run: where "
                                      "the run's data set is now)")
    r.add_argument("--dataset", choices=DATASETS, help="data set name for --data-dir")
    r.add_argument("--out", required=True, help="output directory (created; re-running resumes)")
    r.add_argument("--only", nargs="+", metavar="ID", help=f"only these claims (ids: {', '.join(CLAIM_IDS)})")
    r.add_argument("--synthetic-only", action="store_true", help="skip the real-network claims")
    r.add_argument("--real-only", action="store_true", help="skip the synthetic claims")
    r.add_argument("--force", action="store_true", help="redo finished claims")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--seed", type=_nonnegative_int, default=None, metavar="S",
                   help="seed of the synthetic claims and of the real-network trajectory (default: the built-in ones)")
    r.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="side-trips computed at once in worker processes (default: up to 2 on CPU, 1 on GPU; the "
                        "verdicts do not depend on it)")
    c = sub.add_parser("controls", help="run every real-network claim on its positive and negative control; write "
                                        "OUT/controls.json and OUT/controls.md")
    c.add_argument("--out", required=True, help="output directory (created)")
    c.add_argument("--replicates", type=_positive_int, default=None, metavar="N",
                   help="replicates per control (>= 3; default 5)")
    c.add_argument("--seed", type=int, default=0, help="seed of the controls' replicates")
    c.add_argument("--tiny", action="store_true", help="small sizes (tests)")
    args = ap.parse_args(argv)
    if args.command == "controls":
        return _controls(args)
    if args.data_dir and not args.dataset and not args.run:  # with --run: where the run's data set lives now
        ap.error("--data-dir needs --dataset NAME (or --run DIR)")
    if args.synthetic_only and args.real_only:
        ap.error("--synthetic-only and --real-only exclude each other")
    from .report import counts_text, verdict_text

    verdicts: list = []

    def body() -> int:
        verdicts.extend(reproduce(args.out, mode="full" if args.full else "quick", run=args.run,
                                  data_dir=args.data_dir, dataset=args.dataset, only=args.only,
                                  synthetic=not args.real_only, real=not args.synthetic_only,
                                  progress=not args.no_progress, force=args.force, workers=args.workers,
                                  seed=args.seed))
        return EXIT_OK

    code = run_command(body, errors=[((ValueError, FileNotFoundError), EXIT_USAGE), (OSError, EXIT_FAILED)],
                       interrupted=f"interrupted; the claims finished so far are saved in {str(args.out)!r} "
                                   f"(parts/): re-run the same command to resume")
    if code != EXIT_OK:
        return code
    n_err = sum(v.error is not None for v in verdicts)
    print(f"{counts_text(verdicts)}; report: {args.out}/report.md")
    for v in verdicts:
        print(f"  {v.id}: {v.value:.4g} {v.comparison} {v.threshold:.4g}  {verdict_text(v, markdown=False)}"
              + (f"  ({v.error})" if v.error else ""))
    return 1 if n_err else 0


def _controls(args) -> int:
    from dataclasses import replace

    from .real.controls import CONTROLS_KIND, ControlSizes, run_controls

    if args.replicates is not None and args.replicates < 3:
        print(f"error: --replicates must be an integer >= 3, got {args.replicates}", file=sys.stderr)
        return EXIT_USAGE
    sizes = ControlSizes.tiny() if args.tiny else ControlSizes()
    sizes = replace(sizes, replicates=args.replicates or sizes.replicates, seed=args.seed)
    records: list = []

    def body() -> int:
        with claim_output(args.out, CONTROLS_KIND, {"controls": sizes.__dict__}, holder="validation controls") as claim:
            records.extend(run_controls(args.out, sizes))
            claim.keep()
        return EXIT_OK

    code = run_command(body, errors=[(ValueError, EXIT_USAGE), (OSError, EXIT_FAILED)],
                       interrupted=f"interrupted; re-run the same command to redo {str(args.out)!r}")
    if code != EXIT_OK:
        return code
    bad = [r for r in records if not r.as_expected()]
    print(f"{len(records) - len(bad)}/{len(records)} controls as expected; table: {args.out}/controls.md")
    for r in records:
        print(f"  {r.claim} {r.control}: {r.state} (expected {r.expected_state})")
    return EXIT_FAILED if bad else EXIT_OK


def _int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (the message names the allowed range)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return parse


_nonnegative_int, _positive_int = _int_at_least(0), _int_at_least(1)


if __name__ == "__main__":
    sys.exit(main())
