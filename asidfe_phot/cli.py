"""
The ``asidfe-phot`` command: ML photometry of a FITS image from the shell.

Examples
--------
Run on the embedded demo image (ESO NTT R band) with its SourceExtractor
positions, and write a table and a figure::

    asidfe-phot --demo --output demo.ecsv --plot demo.png

Measure the sources of a catalogue, or find them with DAOStarFinder::

    asidfe-phot image.fits --catalog sources.ecsv --output phot.fits
    asidfe-phot image.fits --hdu 1 --find --fwhm 2.5 --gain 1.9

Exit status: 0 on success, 2 for a usage or input error (message on stderr).
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import QTable

from asidfe_phot import flags as _flags
from asidfe_phot._fitsio import FITSReadError, header_float, header_unit, header_wcs, read_image
from asidfe_phot._validation import X_ALIASES, Y_ALIASES, find_position_columns

__all__ = ["main"]

PROG = "asidfe-phot"
#: Above this many sources a progress bar is shown (unless --no-progress).
PROGRESS_THRESHOLD = 10_000
#: With --find the number of sources is unknown beforehand: show progress for images
#: larger than this many pixels.
PROGRESS_PIXELS = 4096 * 4096
_TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits",
                  ".fts": "fits"}
_OUTPUT_FORMATS = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits"}


class CLIError(Exception):
    """A problem with the command line or its inputs (printed without a traceback)."""



def _aperture_correction(text):
    """The ``--aperture-correction`` value: auto, on, off or a positive factor."""
    modes = {"auto": "auto", "on": True, "off": False}
    if text.lower() in modes:
        return modes[text.lower()]
    try:
        factor = float(text)
    except ValueError:
        factor = float("nan")
    if not 0 < factor < float("inf"):
        msg = f"expected auto, on, off or a positive factor, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return factor

def _build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=("Measure fluxes, sub-pixel positions and calibrated 1-sigma errors of point "
                     "sources in a FITS image with the asidfe_phot CNN (MLPhotometry)."),
        epilog=("Positions: --catalog (ECSV, FITS or CSV table whose x/y columns use any "
                "photutils alias: x_init, x, xcentroid, x_centroid, xcen, ...; 0-based pixels), "
                "or --find (DAOStarFinder). Exit status 2 on input errors."))
    parser.add_argument("image", nargs="?", help="FITS image (any HDU; see --hdu)")
    parser.add_argument("--hdu", type=int, default=None,
                        help="HDU index of the image (default: the first 2-D image HDU)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--catalog", metavar="CAT",
                       help="table of input positions (.ecsv, .fits, .csv)")
    where.add_argument("--find", action="store_true",
                       help="detect sources with photutils DAOStarFinder on the "
                            "background-subtracted image")
    parser.add_argument("--fwhm", type=float, default=3.0,
                        help="FWHM (px) of the DAOStarFinder kernel for --find (default 3)")
    parser.add_argument("--threshold", type=float, default=5.0,
                        help="--find detection threshold in units of the background rms "
                             "(default 5)")
    parser.add_argument("--output", "-o", metavar="OUT",
                        help="output table, .ecsv or .fits (default: IMAGE_asidfe.ecsv in the "
                             "current directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--plot", metavar="PNG", help="write a figure of image stamps with the "
                                                      "fitted centres and error ellipses")
    parser.add_argument("--gain", type=float, default=None,
                        help="electrons per data unit (default: the GAIN header keyword; "
                             "without either the gain is estimated from the sky level)")
    parser.add_argument("--saturation", type=float, default=None,
                        help="saturation level in data units, before background subtraction "
                             "(default: the SATURATE header keyword)")
    parser.add_argument("--batch-size", type=int, default=2048,
                        help="stamps per network call (default 2048)")
    parser.add_argument("--aperture-correction", metavar="MODE", default="auto",
                        type=_aperture_correction,
                        help="auto (default: applied where the image's bright stars show it), "
                             "on, off, or a factor to apply")
    parser.add_argument("--psf", metavar="auto|none|FILE", default=None,
                        help="the image's PSF: auto (an ePSF built from the image's own "
                             "stars), none (the network alone), or a PSFEx .psf file "
                             "(default: the library's default, psf_model of MLPhotometry)")
    parser.add_argument("--model", metavar="NAME_OR_DIR", default=None,
                        help="shipped model name or model directory (default: the default model)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help=f"never show one (default: shown above {PROGRESS_THRESHOLD} "
                               "sources)")
    parser.add_argument("--rows", type=int, default=10,
                        help="number of table rows to print (default 10)")
    parser.add_argument("--demo", action="store_true",
                        help="run on the embedded demo image (ESO NTT, R band) with its "
                             "SourceExtractor catalogue positions")
    return parser


def _read_catalog(path, wcs):
    path = Path(path)
    if not path.is_file():
        msg = f"catalogue file not found: {path}"
        raise CLIError(msg)
    suffixes = "".join(path.suffixes[-2:]).lower()
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if suffixes.endswith((".fits.gz", ".fit.gz")):
        fmt = "fits"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            table = QTable.read(path, format=fmt) if fmt else QTable.read(path)
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for unreadable tables
        msg = (f"cannot read catalogue {path} ({type(exc).__name__}: {exc}); use an .ecsv, "
               ".fits or .csv table")
        raise CLIError(msg) from exc
    if not len(table):
        msg = f"catalogue {path} has no rows: no positions to measure"
        raise CLIError(msg)
    xname, yname = find_position_columns(table)
    if xname is None or yname is None:
        # Case-insensitive second chance (X, XCENTROID, X_INIT, ...).
        lower = {name.lower(): name for name in table.colnames}
        xname = next((lower[a] for a in X_ALIASES if a in lower), None)
        yname = next((lower[a] for a in Y_ALIASES if a in lower), None)
        if xname is not None and yname is not None:
            table.rename_columns([xname, yname], ["x", "y"])
            xname, yname = "x", "y"
    if xname is None or yname is None:
        if "sky_centroid" in table.colnames and wcs is not None:
            return table, "sky_centroid (converted with the image WCS)"
        hint = ""
        if "X_IMAGE" in table.colnames:
            hint = (" SourceExtractor X_IMAGE/Y_IMAGE are 1-based: add columns "
                    "x = X_IMAGE - 1 and y = Y_IMAGE - 1.")
        elif "sky_centroid" in table.colnames:
            hint = " It has sky_centroid, but the image has no celestial WCS."
        msg = (f"catalogue {path} has no position columns: give x and y under one of "
               f"{', '.join(X_ALIASES)} (y alike), in 0-based pixels, or sky_centroid with an "
               f"image WCS. Its columns are {table.colnames}.{hint}")
        raise CLIError(msg)
    return table, f"columns {xname}, {yname}"


def _background_rms(image):
    from astropy.stats import sigma_clipped_stats

    finite = image[np.isfinite(image)]
    if not finite.size:
        msg = "the image has no finite pixel"
        raise CLIError(msg)
    _, _, std = sigma_clipped_stats(finite, sigma=3.0, maxiters=10)
    return float(std)


def _make_finder(image, fwhm, nsigma):
    from photutils.detection import DAOStarFinder

    if not fwhm > 0:
        msg = f"--fwhm must be positive, got {fwhm}"
        raise CLIError(msg)
    if not nsigma > 0:
        msg = f"--threshold must be positive, got {nsigma}"
        raise CLIError(msg)
    rms = _background_rms(image)
    threshold = nsigma * rms if rms > 0 else nsigma
    return DAOStarFinder(threshold=threshold, fwhm=fwhm), threshold


#: Image suffixes dropped from the default output name (the rest of the name is kept,
#: so field.r.fits and field.g.fits give different tables).
_IMAGE_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz",
                   ".fz", ".gz")


def default_output_name(image_name):
    """``IMAGE_asidfe.ecsv`` for ``IMAGE.fits`` (in the current directory)."""
    name = Path(image_name).name
    for suffix in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            break
    return f"{name}_asidfe.ecsv"


def _output_path(args, image_name, inputs):
    default = "demo_asidfe.ecsv" if args.demo else default_output_name(image_name)
    out = Path(args.output if args.output is not None else default)
    suffix = out.suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        msg = f"--output must end in .ecsv or .fits, got {out}"
        raise CLIError(msg)
    _check_writable(out, args.overwrite, "--output", inputs)
    return out, _OUTPUT_FORMATS[suffix]


def _same_file(a, b):
    try:
        return a.resolve() == Path(b).resolve() or (a.exists() and Path(b).exists()
                                                     and a.samefile(b))
    except OSError:
        return False


def _check_writable(path, overwrite, option, inputs=()):
    clash = next((p for p in inputs if p is not None and _same_file(path, p)), None)
    if clash is not None:
        msg = f"{option} {path} is an input file ({clash}); choose another name"
        raise CLIError(msg)
    if path.exists() and not overwrite:
        msg = f"{option} file {path} exists; pass --overwrite to replace it"
        raise CLIError(msg)
    if not path.parent.exists():
        msg = f"{option} directory {path.parent} does not exist"
        raise CLIError(msg)


def _write_atomically(path, overwrite, write):
    """
    ``write(tmp)`` to a temporary file next to ``path``, then move it into place.

    An interrupted write never leaves a partial file at ``path`` nor destroys the
    one there. Without ``overwrite`` the move fails if ``path`` appeared meanwhile
    (e.g. a parallel run that chose the same name): nothing is replaced.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)     # atomic, and refuses an existing path
            except OSError as exc:
                if isinstance(exc, FileExistsError) or path.exists():
                    msg = f"{path} was created while this run was working; pass --overwrite"
                    raise CLIError(msg) from exc
                os.replace(tmp, path)  # a file system without hard links
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_plot_name(path):
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        msg = (f"--plot {path}: unknown figure format {path.suffix!r}; use one of "
               f"{', '.join('.' + f for f in sorted(formats))}")
        raise CLIError(msg)


def _write_table(tbl, path, fmt, overwrite=False):
    """Write ``tbl`` to ``path`` atomically (see `_write_atomically`)."""
    _write_atomically(path, overwrite, lambda tmp: _write_table_to(tbl, tmp, fmt))


def _write_table_to(tbl, path, fmt):
    if fmt == "fits":
        tbl = tbl.copy(copy_data=False)
        comments = list(tbl.meta.pop("comments", []))
        for key, value in list(tbl.meta.items()):
            if isinstance(value, (list, tuple)):
                value = tbl.meta[key] = ", ".join(str(v) for v in value)
            elif value is None:
                value = tbl.meta[key] = "none"
            elif isinstance(value, float) and not np.isfinite(value):
                value = tbl.meta[key] = str(value)     # FITS cards hold no NaN or inf
            # A long key with a long value overflows a HIERARCH card (astropy < 7 refuses
            # it): keep it whole as a COMMENT card instead.
            if len(key) > 8 and len(key) + len(str(value)) > 60:
                comments.append(f"{key} = {tbl.meta.pop(key)}")
        if comments:
            tbl.meta["comments"] = comments
        from astropy.io.fits.verify import VerifyWarning

        with warnings.catch_warnings():
            # Long meta keys become HIERARCH cards, which is fine.
            warnings.filterwarnings("ignore", message=".*HIERARCH.*", category=VerifyWarning)
            tbl.write(path, format="fits", overwrite=True)
    else:
        tbl.write(path, format=fmt, overwrite=True)


def _summary(tbl, elapsed):
    n = len(tbl)
    lines = [f"measured {n} source(s) in {elapsed:.2f} s"]
    flags = np.asarray(tbl["flags"])
    clean = int(np.count_nonzero(flags == 0))
    lines.append(f"  unflagged: {clean} / {n}")
    counts = [(name, int(np.count_nonzero(flags & bit))) for bit, name, _ in
              _flags.FLAG_DEFINITIONS]
    counts = [f"{name} {c}" for name, c in counts if c]
    if counts:
        lines.append(f"  flags set: {', '.join(counts)} (see asidfe_phot.flags)")
    flux = u.Quantity(tbl["flux_fit"]).value
    err = u.Quantity(tbl["flux_err"]).value
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
    ok = np.isfinite(snr)
    if ok.any():
        lines.append(f"  S/N (flux_fit / flux_err): median {np.median(snr[ok]):.3g}, "
                     f"range {np.min(snr[ok]):.3g} to {np.max(snr[ok]):.3g}")
    return "\n".join(lines)


def _display(tbl):
    """A copy of ``tbl`` with print formats (the written table keeps full precision)."""
    tbl = tbl.copy()
    formats = {"x_init": ".3f", "y_init": ".3f", "x_fit": ".3f", "y_fit": ".3f", "x_err": ".3f",
               "y_err": ".3f", "flux_fit": ".6g", "flux_err": ".4g"}
    for name, fmt in formats.items():
        if name in tbl.colnames:
            tbl[name].info.format = fmt
    return tbl


def _run(args, stdout, stderr):
    from asidfe_phot.photometry import MLPhotometry

    if args.demo:
        if args.image is not None or args.catalog is not None:
            msg = "--demo uses the embedded image and catalogue: give no IMAGE and no --catalog"
            raise CLIError(msg)
        from asidfe_phot.datasets import load_demo_image

        image, header, demo_catalog = load_demo_image()
        image_name, hdu = "demo:sep_image.fits", 0
    else:
        if args.image is None:
            msg = "give an IMAGE (FITS file), or --demo"
            raise CLIError(msg)
        if args.catalog is None and not args.find:
            msg = ("no positions: give --catalog CAT (a table of x, y positions) or --find to "
                   "detect sources")
            raise CLIError(msg)
        image, header, hdu = read_image(args.image, args.hdu)
        image_name, demo_catalog = args.image, None
    inputs = [] if args.demo else [args.image, args.catalog]
    out_path, out_format = _output_path(args, image_name, inputs)
    if args.plot is not None:
        _check_plot_name(Path(args.plot))
        _check_writable(Path(args.plot), args.overwrite, "--plot", [*inputs, out_path])
    for option in ("gain", "saturation"):
        value = getattr(args, option)
        if value is not None and not 0 < value < float("inf"):
            msg = f"--{option} must be a positive number, got {value}"
            raise CLIError(msg)

    unit = header_unit(header)
    wcs = header_wcs(header)
    gain = args.gain if args.gain is not None else header_float(header, "GAIN")
    saturation = (args.saturation if args.saturation is not None
                  else header_float(header, "SATURATE"))
    gain_from = "--gain" if args.gain is not None else ("GAIN keyword" if gain else None)
    sat_from = ("--saturation" if args.saturation is not None
                else ("SATURATE keyword" if saturation else None))
    print(f"{PROG}: {image_name} [HDU {hdu}] {image.shape[1]}x{image.shape[0]} px, "
          f"unit {unit if unit is not None else 'none (no BUNIT)'}, "
          f"WCS {'yes' if wcs is not None else 'none'}", file=stdout)
    print(f"  gain: {gain} ({gain_from})" if gain else
          "  gain: estimated from the sky level (no --gain, no GAIN keyword)", file=stdout)
    print(f"  saturation: {saturation} ({sat_from})" if saturation else
          "  saturation: not set (no --saturation, no SATURATE keyword)", file=stdout)

    finder, init_params, n_expected = None, None, None
    if args.find:
        finder, threshold = _make_finder(image, args.fwhm, args.threshold)
        positions_from = (f"DAOStarFinder (fwhm {args.fwhm:g} px, threshold {threshold:.4g} = "
                          f"{args.threshold:g} x background rms)")
    elif demo_catalog is not None:
        init_params = demo_catalog
        positions_from = "the demo SourceExtractor catalogue (xcentroid, ycentroid, 0-based)"
        n_expected = len(init_params)
    else:
        init_params, columns = _read_catalog(args.catalog, wcs)
        positions_from = f"catalogue {args.catalog} ({columns})"
        n_expected = len(init_params)
    print(f"  positions: {positions_from}", file=stdout)

    progress = args.progress
    if progress is None:
        progress = (n_expected > PROGRESS_THRESHOLD if n_expected is not None
                    else image.size > PROGRESS_PIXELS)
    psf_kw = {}
    if args.psf is not None:
        psf_kw["psf_model"] = None if args.psf == "none" else args.psf
    phot = MLPhotometry(args.model, batch_size=args.batch_size, progress_bar=progress,
                        finder=finder, aperture_correction=args.aperture_correction, **psf_kw)
    print(f"  model: {phot.model_card['name']}_v{phot.model_card['version']} on "
          f"{', '.join(phot.providers)}", file=stdout)

    data = image * unit if unit is not None else image
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tbl = phot(data, init_params=init_params, gain=gain, saturation=saturation, wcs=wcs)
    elapsed = time.perf_counter() - start
    for w in caught:
        if w.category.__name__ == "NoDetectionsWarning":
            continue
        print(f"{PROG}: warning: {w.category.__name__}: {w.message}", file=stderr)
    if not len(tbl):
        msg = (f"no sources found by --find (threshold {args.threshold:g} x rms, fwhm "
               f"{args.fwhm:g} px); lower --threshold or give --catalog")
        raise CLIError(msg)

    tbl.meta["image"] = str(image_name)
    tbl.meta["hdu"] = int(hdu)
    tbl.meta["positions"] = positions_from
    tbl.meta["gain_source"] = gain_from or "sky / rms^2"
    if saturation:
        tbl.meta["saturation"] = saturation

    if tbl.meta.get("psf_used"):
        used = tbl.meta["psf_model"]
        if used == "auto":
            used = (f"auto, ePSF of {tbl.meta.get('psf_nstars', 0)} stars, "
                    f"{tbl.meta.get('psf_time_s', 0):.2f} s")
        print(f"  PSF: {used}; FWHM {tbl.meta.get('psf_fwhm', float('nan')):.2f} px, model "
              f"error {tbl.meta.get('psf_profile_error', float('nan')):.3f}", file=stdout)
    print(f"  aperture correction: {tbl.meta['aperture_correction']:.4g} "
          f"({tbl.meta['aperture_correction_note']})", file=stdout)
    print(_summary(tbl, elapsed), file=stdout)
    if args.rows > 0:
        print(file=stdout)
        print("\n".join(_display(tbl[:args.rows]).pformat(max_width=-1, max_lines=-1)),
              file=stdout)
        if len(tbl) > args.rows:
            print(f"... {len(tbl) - args.rows} more row(s)", file=stdout)
    _write_table(tbl, out_path, out_format, args.overwrite)
    print(f"\nwrote {out_path} ({len(tbl)} rows)", file=stdout)
    if args.plot is not None:
        from matplotlib.figure import Figure

        from asidfe_phot.visualization import plot_stamps

        fig = plot_stamps(data, tbl, n=16, fig=Figure(figsize=(9, 10)))
        _write_atomically(Path(args.plot), args.overwrite,
                          lambda tmp: fig.savefig(tmp, dpi=110, format=Path(args.plot).suffix[1:]))
        print(f"wrote {args.plot}", file=stdout)
    return 0


def main(argv=None):
    """
    Run the ``asidfe-phot`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments, without the program name. Default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on a usage or input error (the
        message goes to stderr, without a traceback).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args, sys.stdout, sys.stderr)
    except (CLIError, FITSReadError, ValueError, TypeError, u.UnitsError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
