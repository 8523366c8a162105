"""
``asidfe-phot batch``: many frames on Dask from the shell (private).

Examples::

    asidfe-phot batch night/*.fits --out phot --catalogs 'cats/{stem}.cat'
    asidfe-phot batch night/*.fits --out phot --find --fwhm 2.5 --workers 8
    asidfe-phot batch /data/night/*.fits --out /data/phot --find --scheduler tcp://head:8786

Each frame is measured as ``asidfe-phot FRAME --catalog CAT [options] --threads 1``
measures it (`asidfe_phot.batch.measure_many`), on a local Dask cluster of one
single-threaded worker process per core by default. Exit status: 0 when every
frame succeeded, 1 when some failed (after the others completed; the failures
are listed on stderr), 2 for a usage or input error found before any work.
"""

import argparse
import sys

from asidfe_phot import cli as _cli

__all__ = []  # private module

PROG = f"{_cli.PROG} batch"


def _build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=("Measure many FITS frames on Dask, each as 'asidfe-phot FRAME' does: "
                     "OUT/<stem>.ecsv per frame (and its manifest <stem>.json), and every "
                     "frame's rows in OUT/asidfe_batch.fits with an image column."),
        epilog=("A rerun skips the frames finished with the same inputs (content hash of "
                "frame, catalogue, options and model); a frame that fails is reported and "
                "the others complete. Exit status 0 when every frame succeeded, 1 when some "
                "failed, 2 on input errors (nothing measured)."))
    parser.add_argument("frames", nargs="+", metavar="FRAME", help="FITS frames")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if missing)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--catalogs", metavar="PATTERN",
                       help="each frame's catalogue: a pattern with {stem} (the frame's name "
                            "without its FITS suffix), {name} (its file name) and {parent} "
                            "(its folder), e.g. 'cats/{stem}.ecsv'")
    where.add_argument("--find", action="store_true",
                       help="detect each frame's sources with DAOStarFinder")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="worker processes of the local Dask cluster, one thread each "
                              "(default: one per core)")
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run on an existing Dask distributed cluster, e.g. "
                              "tcp://head:8786 (frames and DIR on a file system its "
                              "workers share)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress report (default: on stderr, with sources/s)")
    single = parser.add_argument_group(
        "measurement", "as in 'asidfe-phot FRAME' (see asidfe-phot --help); the same for "
        "every frame")
    for name, metavar in (("hdu", "N|N,M,...|all"), ("fwhm", "PX"), ("threshold", "NSIGMA"),
                          ("gain", "E_PER_ADU"), ("saturation", "LEVEL"),
                          ("aperture_correction", "MODE"), ("psf", "auto|none|FILE"),
                          ("model", "NAME_OR_DIR"), ("batch_size", "N"),
                          ("providers", "NAME[,NAME...]"), ("precision", "fp32|int8"),
                          ("tile", "PX")):
        single.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=metavar)
    return parser


def _run(args, stdout, stderr):
    from asidfe_phot._cli_inputs import CLIError
    from asidfe_phot.batch import OPTIONS, measure_many

    if args.workers is not None and args.workers < 1:
        msg = f"--workers must be a positive integer, got {args.workers}"
        raise CLIError(msg)
    options = {name: getattr(args, name) for name in OPTIONS}
    client = None
    if args.scheduler is not None:
        from asidfe_phot.batch import _require_dask

        _require_dask()
        from distributed import Client

        client = Client(args.scheduler, timeout="20s")
    try:
        result = measure_many(
            args.frames, args.out, catalogs=args.catalogs, find=args.find, options=options,
            client=client, workers=args.workers, progress=args.progress, stream=stderr,
            log=lambda line: print(line, file=stdout, flush=True))
    finally:
        if client is not None:
            client.close()
    print(f"{PROG}: {result}", file=stdout)
    if result.combined is not None:
        print(f"{PROG}: combined table {result.combined}", file=stdout)
    if result.failed:
        print(f"{PROG}: {len(result.failed)} of {len(result.frames)} frame(s) failed:",
              file=stderr)
        for frame in result.failed:
            print(f"  {frame.frame}: {frame.error}", file=stderr)
    if result.combined_error is not None:
        print(f"{PROG}: the combined table was not written: {result.combined_error}",
              file=stderr)
    return 0 if result.ok else 1


def main(argv=None):
    """Run ``asidfe-phot batch``; the exit status (0, 1 some frames failed, 2 input error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return _cli.run_command(_build_parser(), argv, _run_or_explain, PROG)


def _run_or_explain(args):
    try:
        return _run(args, sys.stdout, sys.stderr)
    except ImportError as exc:      # no Dask: the message says what to install
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
