"""
``asidfe-phot ast``: the artificial-star test of a FITS image from the shell (private).

Example::

    asidfe-phot ast image.fits --n-stars 500 --plot ast.png
    asidfe-phot ast image.fits --catalog sources.ecsv --n-stars 500 --gain 1.9

Stars rendered with the image's PSF are injected, found (DAOStarFinder, as
``asidfe-phot --find``) and measured (MLPhotometry) in rounds; per S/N bin the
command prints and writes the completeness, the flux bias and scatter, the
position scatter and the z-score std of the errors
(`asidfe_phot.artificial_stars.artificial_star_test`). Exit status: 0 on
success, 2 for a usage or input error.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from asidfe_phot import cli as _cli
from asidfe_phot._fitsio import header_float, header_unit, header_wcs, read_image

__all__ = []  # private module

PROG = f"{_cli.PROG} ast"
#: The per-bin columns printed, with their formats.
_PRINTED = (("snr_bin", None), ("mag_bright", ".2f"), ("mag_faint", ".2f"),
            ("n_injected", None), ("completeness", ".3f"), ("flux_bias", "+.4f"),
            ("flux_scatter", ".4f"), ("position_scatter", ".4f"), ("zstd_flux", ".2f"),
            ("zstd_x", ".2f"), ("zstd_y", ".2f"), ("zstd_flux_robust", ".2f"),
            ("flagged_fraction", ".2f"))


def _build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=("Artificial-star test: inject stars rendered with the image's PSF at "
                     "the image's noise, detect and measure them as 'asidfe-phot --find' "
                     "does, and report per S/N bin the completeness, flux bias and scatter, "
                     "position scatter and the z-score std of the reported errors."),
        epilog=("The stars' optimal S/N is drawn log-uniform in 3-3000; each round holds "
                "10%% of the frame's sources (at least 10), 2 FWHM from each other and from "
                "the frame's sources. Exit status 2 on input errors."))
    parser.add_argument("image", help="FITS image (any HDU; see --hdu)")
    parser.add_argument("--hdu", type=int, default=None,
                        help="HDU index of the image (default: the first 2-D image HDU)")
    parser.add_argument("--catalog", metavar="CAT",
                        help="the frame's sources, as given to 'asidfe-phot --catalog' "
                             "(default: found with DAOStarFinder)")
    parser.add_argument("--n-stars", type=int, required=True, metavar="N",
                        help="stars to inject, all rounds together")
    parser.add_argument("--rounds", type=int, default=None,
                        help="number of rounds (default: 10%% of the frame's sources per round)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--fwhm", type=float, default=3.0,
                        help="FWHM (px) of the DAOStarFinder kernel, as --find (default 3)")
    parser.add_argument("--threshold", type=float, default=5.0,
                        help="detection threshold in units of the background rms, as --find "
                             "(default 5)")
    parser.add_argument("--gain", type=float, default=None,
                        help="electrons per data unit (default: the GAIN keyword, else "
                             "estimated from the sky level)")
    parser.add_argument("--saturation", type=float, default=None,
                        help="saturation level in data units (default: the SATURATE keyword)")
    parser.add_argument("--psf", metavar="auto|FILE", default="auto",
                        help="the PSF the stars are rendered with and measured with: auto (an "
                             "ePSF of the image's stars; default) or a PSFEx .psf file")
    parser.add_argument("--model", metavar="NAME_OR_DIR", default=None,
                        help="shipped model name or model directory (default: the default model)")
    parser.add_argument("--out", metavar="TABLE",
                        help="per-bin table, .ecsv, .fits or .csv (default: IMAGE_ast.ecsv in "
                             "the current directory)")
    parser.add_argument("--stars", metavar="TABLE",
                        help="also write the per-star table (.ecsv, .fits or .csv)")
    parser.add_argument("--plot", metavar="PNG",
                        help="figure of completeness, flux bias and scatter, position scatter "
                             "and z-score std against S/N")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def _table_path(name, option, overwrite, inputs):
    path = Path(name)
    fmt = _cli._OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        msg = f"{option} must end in one of {', '.join(_cli._OUTPUT_FORMATS)}, got {path}"
        raise _cli.CLIError(msg)
    _cli._check_writable(path, overwrite, option, inputs)
    return path, fmt


def _printable(bins):
    tbl = bins[[name for name, _ in _PRINTED]]
    for name, fmt in _PRINTED:
        if fmt is not None:
            tbl[name].info.format = fmt
    return "\n".join(tbl.pformat(max_width=-1, max_lines=-1))


def _run(args, stdout):
    from asidfe_phot import MLPhotometry
    from asidfe_phot.artificial_stars import artificial_star_test

    for option in ("gain", "saturation"):
        value = getattr(args, option)
        if value is not None and not 0 < value < float("inf"):
            msg = f"--{option} must be a positive number, got {value}"
            raise _cli.CLIError(msg)
    if args.n_stars < 1:
        msg = f"--n-stars must be a positive integer, got {args.n_stars}"
        raise _cli.CLIError(msg)
    if args.rounds is not None and args.rounds < 1:
        msg = f"--rounds must be a positive integer, got {args.rounds}"
        raise _cli.CLIError(msg)
    image, header, hdu = read_image(args.image, args.hdu)
    inputs = [args.image, args.catalog, args.psf if args.psf != "auto" else None]
    default = _cli.default_output_name(args.image).replace("_asidfe.ecsv", "_ast.ecsv")
    out_path, out_fmt = _table_path(args.out or default, "--out", args.overwrite, inputs)
    outputs = [out_path]
    stars_path = None
    if args.stars is not None:
        stars_path, stars_fmt = _table_path(args.stars, "--stars", args.overwrite,
                                            [*inputs, out_path])
        outputs.append(stars_path)
    if args.plot is not None:
        _cli._outputs.check_plot_name(Path(args.plot))
        _cli._check_writable(Path(args.plot), args.overwrite, "--plot", [*inputs, *outputs])

    unit, wcs = header_unit(header), header_wcs(header)
    gain = args.gain if args.gain is not None else header_float(header, "GAIN")
    saturation = (args.saturation if args.saturation is not None
                  else header_float(header, "SATURATE"))
    finder, threshold = _cli._make_finder(image, args.fwhm, args.threshold)
    catalog, positions = None, "DAOStarFinder detections"
    if args.catalog is not None:
        catalog, columns = _cli._read_catalog(args.catalog, wcs)
        positions = f"catalogue {args.catalog} ({columns})"
    print(f"{PROG}: {args.image} [HDU {hdu}] {image.shape[1]}x{image.shape[0]} px, "
          f"unit {unit if unit is not None else 'none (no BUNIT)'}", file=stdout)
    print(f"  sources: {positions}; injected stars found by DAOStarFinder (fwhm "
          f"{args.fwhm:g} px, threshold {threshold:.4g} = {args.threshold:g} x rms)",
          file=stdout)
    phot = MLPhotometry(model=args.model, psf_model=args.psf)
    data = image * unit if unit is not None else image
    start = time.perf_counter()
    stars, bins = artificial_star_test(
        data, n_stars=args.n_stars, psf_model=args.psf, phot=phot, finder=finder,
        catalog=catalog, gain=gain, saturation=saturation, wcs=wcs, seed=args.seed,
        rounds=args.rounds, progress=lambda line: print(f"  {line}", file=stdout))
    elapsed = time.perf_counter() - start
    meta = stars.meta
    print(f"  PSF: {meta.get('psf_model')}, FWHM {meta.get('psf_fwhm', np.nan):.2f} px; "
          f"noise of the stars: {meta['noise']}", file=stdout)
    print(f"  {meta['n_stars']} stars in {meta['rounds']} rounds among {meta['sources']}; "
          f"area left out (within {meta['min_separation_px']:.1f} px of a source): "
          f"{100 * meta['blocked_fraction']:.1f} %", file=stdout)
    for line in meta["warnings"]:
        print(f"  measurement warning: {line}", file=stdout)
    print(file=stdout)
    print(_printable(bins), file=stdout)
    print(f"\ncompleteness: found / injected; flux bias: median f/f_true - 1; scatter: "
          f"1.4826 MAD; zstd: std of (value - truth) / err over found unflagged stars "
          f"(robust: 1.4826 MAD)\n{meta['n_stars']} stars in {elapsed:.1f} s", file=stdout)
    for tbl, key in ((bins, "image"), (stars, "image")):
        tbl.meta[key] = str(args.image)
        tbl.meta["hdu"] = int(hdu)
    _cli._write_table(bins, out_path, out_fmt, args.overwrite)
    print(f"wrote {out_path} ({len(bins)} bins)", file=stdout)
    if stars_path is not None:
        _cli._write_table(stars, stars_path, stars_fmt, args.overwrite)
        print(f"wrote {stars_path} ({len(stars)} stars)", file=stdout)
    if args.plot is not None:
        from matplotlib.figure import Figure

        from asidfe_phot.visualization import plot_artificial_stars

        title = f"{Path(args.image).name}: {meta['n_stars']} artificial stars"
        fig = plot_artificial_stars(bins, title=title, fig=Figure(figsize=(10, 7.5)))
        suffix = Path(args.plot).suffix[1:]
        _cli._write_atomically(Path(args.plot), args.overwrite,
                               lambda tmp: fig.savefig(tmp, dpi=90, format=suffix))
        print(f"wrote {args.plot}", file=stdout)
    return 0


def main(argv):
    """Run ``asidfe-phot ast`` with ``argv`` (the arguments after ``ast``); the exit status."""
    return _cli.run_command(_build_parser(), argv, lambda args: _run(args, sys.stdout), PROG)
