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

As after a SourceExtractor run: a weight map, its ASCII_HEAD catalogue, every image
extension, and a ds9 region file::

    asidfe-phot mef.fits --hdu all --weight mef.weight.fits --weight-type weight \
        --catalog mef.cat --output phot.csv --regions phot.reg

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

from asidfe_phot import _cli_inputs as _inputs
from asidfe_phot import _cli_outputs as _outputs
from asidfe_phot._cli_inputs import CLIError
from asidfe_phot._fitsio import FITSReadError, header_float, header_unit, header_wcs, read_image
from asidfe_phot._progress import Progress

__all__ = ["main"]

PROG = "asidfe-phot"
#: Above this many sources a progress bar is shown (unless --no-progress).
PROGRESS_THRESHOLD = 10_000
#: With --find the number of sources is unknown beforehand: show progress for images
#: larger than this many pixels.
PROGRESS_PIXELS = 4096 * 4096
_OUTPUT_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits"}
#: ``--format`` choices: (astropy format, suffix of the default output name).
_FORMAT_CHOICES = {"ecsv": ("ascii.ecsv", ".ecsv"), "csv": ("ascii.csv", ".csv"),
                   "fits": ("fits", ".fits")}


def _build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=("Measure fluxes, sub-pixel positions and calibrated 1-sigma errors of point "
                     "sources in a FITS image with the asidfe_phot CNN (MLPhotometry)."),
        epilog=("Positions: --catalog (ECSV, FITS or CSV table whose x/y columns use any "
                "photutils alias: x_init, x, xcentroid, x_centroid, xcen, ...; 0-based pixels; "
                "or a SourceExtractor ASCII_HEAD or FITS_LDAC catalogue, whose 1-based "
                "X_IMAGE/Y_IMAGE are converted), or --find (DAOStarFinder). Exit status 2 on "
                "input errors."))
    parser.add_argument("--version", action=_inputs.VersionAction, nargs=0,
                        help="print the versions of asidfe_phot, Python and onnxruntime")
    parser.add_argument("image", nargs="?", help="FITS image (any HDU; see --hdu)")
    parser.add_argument("--hdu", type=_inputs.hdu_option, default=None,
                        metavar="N|N,M,...|all",
                        help="HDU index of the image, a comma list, or all (every 2-D image "
                             "HDU); default: the first 2-D image HDU. Several HDUs give one "
                             "table with an hdu column (FITS: one table HDU per image HDU)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--catalog", metavar="CAT",
                       help="table of input positions (.ecsv, .fits, .csv, SourceExtractor "
                            "ASCII_HEAD or FITS_LDAC)")
    where.add_argument("--find", action="store_true",
                       help="detect sources with photutils DAOStarFinder on the "
                            "background-subtracted image")
    parser.add_argument("--fwhm", type=float, default=3.0,
                        help="FWHM (px) of the DAOStarFinder kernel for --find (default 3)")
    parser.add_argument("--threshold", type=float, default=5.0,
                        help="--find detection threshold in units of the background rms "
                             "(default 5)")
    noise = parser.add_argument_group(
        "noise and bad pixels", "FILE: a FITS image of the image's shape, read from the HDU "
        "of the image's index or from the file's only image HDU.")
    maps = noise.add_mutually_exclusive_group()
    maps.add_argument("--error", metavar="FILE",
                      help="total 1-sigma error per pixel in data units, source photon noise "
                           "included (photutils' error=), used as given")
    maps.add_argument("--weight", metavar="FILE",
                      help="SourceExtractor-style weight map of the background noise (the "
                           "sources' photon noise is added from the gain); zero weight = "
                           "masked")
    noise.add_argument("--weight-type", choices=_inputs.WEIGHT_TYPES, default="weight",
                       help="what --weight holds, as SourceExtractor's WEIGHT_TYPE: weight "
                            "(MAP_WEIGHT, inverse variance up to a scale: scaled to the "
                            "image's measured background rms; default), rms (MAP_RMS) or "
                            "variance (MAP_VAR), both in data units and used as given")
    noise.add_argument("--mask", metavar="FILE", help="bad-pixel mask: nonzero = bad")
    noise.add_argument("--gain", type=float, default=None,
                       help="electrons per data unit (default: the GAIN header keyword; "
                            "without either the gain is estimated from the sky level)")
    noise.add_argument("--saturation", type=float, default=None,
                       help="saturation level in data units, before background subtraction "
                            "(default: the SATURATE header keyword)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--output", "-o", metavar="OUT",
                     help="output table, .ecsv, .csv or .fits (default: IMAGE_asidfe.ecsv in "
                          "the current directory)")
    out.add_argument("--format", choices=sorted(_FORMAT_CHOICES), default=None,
                     help="table format, whatever the --output extension (default: from it)")
    out.add_argument("--regions", metavar="REG",
                     help="ds9 region file: circles at the fitted positions, flagged sources "
                          "red with their flag names (several HDUs: one file each, REG_hduN.reg)")
    out.add_argument("--plot", metavar="PNG", help="write a figure of image stamps with the "
                                                   "fitted centres and error ellipses")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    out.add_argument("--rows", type=int, default=10,
                     help="number of table rows to print (default 10)")
    net = parser.add_argument_group("measurement")
    net.add_argument("--batch-size", type=int, default=2048,
                     help="stamps per network call (default 2048)")
    net.add_argument("--aperture-correction", metavar="MODE", default="auto",
                     type=_inputs.aperture_correction_value,
                     help="auto (default: applied where the image's bright stars show it), "
                          "on, off, or a factor to apply")
    net.add_argument("--psf", metavar="auto|none|FILE", default=None,
                     help="the image's PSF: auto (an ePSF built from the image's own "
                          "stars), none (the network alone), or a PSFEx .psf file "
                          "(default: the library's default, psf_model of MLPhotometry)")
    net.add_argument("--model", metavar="NAME_OR_DIR", default=None,
                     help="shipped model name or model directory (default: the default model)")
    net.add_argument("--tile", type=int, default=None, metavar="PX",
                     help="read and measure the frame in tiles of PX x PX (plus a margin): "
                          "memory set by the tile, not the frame (asidfe_phot.tiles)")
    net.add_argument("--threads", type=int, default=None,
                     help="CPU threads of the network (default: all cores; use 1 when "
                          "running one process per image)")
    net.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                     help="network graph: int8 is the quantized one (faster on CPU), where "
                          "the model's card records that it passed its parity check")
    net.add_argument("--providers", type=_inputs.providers_value, default=None,
                     metavar="NAME[,NAME...]",
                     help="onnxruntime execution providers in order of preference, e.g. "
                          "CUDAExecutionProvider,CPUExecutionProvider (default: CUDA when "
                          "onnxruntime-gpu and a GPU are present, else CPU)")
    progress = net.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show a progress bar (with an ETA)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help=f"never show one (default: shown above {PROGRESS_THRESHOLD} "
                               "sources, and between HDUs)")
    parser.add_argument("--demo", action="store_true",
                        help="run on the embedded demo image (ESO NTT, R band) with its "
                             "SourceExtractor catalogue positions")
    return parser


def _read_catalog(path, wcs):
    """``(table, how its positions were read)`` of a one-image catalogue (`read_catalog`)."""
    catalog = _inputs.read_catalog(path)
    _check_sky(catalog, wcs)
    return catalog.table, catalog.description


def _check_sky(catalog, wcs):
    if catalog.sky and wcs is None:
        msg = (f"catalogue {catalog.path} has no position columns but sky_centroid, and the "
               "image has no celestial WCS; give x and y in pixels")
        raise CLIError(msg)


def _make_finder(image, fwhm, nsigma):
    """``--find``'s DAOStarFinder and threshold (shared with ``asidfe-phot ast``)."""
    from asidfe_phot._detection import make_finder

    try:
        return make_finder(image, fwhm, nsigma, names=("--fwhm", "--threshold"))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


#: Image suffixes dropped from the default output name (the rest of the name is kept,
#: so field.r.fits and field.g.fits give different tables).
_IMAGE_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz",
                   ".fz", ".gz")


def default_output_name(image_name, suffix=".ecsv"):
    """``IMAGE_asidfe.ecsv`` for ``IMAGE.fits`` (in the current directory)."""
    name = Path(image_name).name
    for image_suffix in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(image_suffix) and len(name) > len(image_suffix):
            name = name[:-len(image_suffix)]
            break
    return f"{name}_asidfe{suffix}"


def _output_path(args, image_name, inputs):
    """The output table's path and astropy format (``--output``, ``--format``), checked."""
    fmt, default_suffix = _FORMAT_CHOICES[args.format or "ecsv"]
    default = (f"demo_asidfe{default_suffix}" if args.demo
               else default_output_name(image_name, default_suffix))
    out = Path(args.output if args.output is not None else default)
    if args.format is None:
        fmt = _OUTPUT_FORMATS.get(out.suffix.lower())
        if fmt is None:
            msg = f"--output must end in .ecsv, .csv or .fits (or give --format), got {out}"
            raise CLIError(msg)
    _check_writable(out, args.overwrite, "--output", inputs)
    return out, fmt


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
        # mkstemp makes the file private (0600); a catalogue gets the mode any new file gets.
        os.chmod(tmp, 0o666 & ~_umask())
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


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_table(tbl, path, fmt, overwrite=False):
    """Write ``tbl`` to ``path`` atomically (see `_write_atomically`)."""
    _write_atomically(path, overwrite, lambda tmp: _write_table_to(tbl, tmp, fmt))


def _write_table_to(tbl, path, fmt):
    """Write ``tbl``; a list of tables goes to FITS as one table HDU each (`_fits_tables`)."""
    if isinstance(tbl, list):
        _outputs.fits_tables(tbl).writeto(path, overwrite=True)
        return
    if fmt == "ascii.csv":
        tbl = _outputs.csv_ready(tbl)
    if fmt == "fits":
        tbl = _outputs.fits_ready(tbl)
        from astropy.io.fits.verify import VerifyWarning

        with warnings.catch_warnings():
            # Long meta keys become HIERARCH cards, which is fine.
            warnings.filterwarnings("ignore", message=".*HIERARCH.*", category=VerifyWarning)
            tbl.write(path, format="fits", overwrite=True)
    else:
        tbl.write(path, format=fmt, overwrite=True)


class _Job:
    """What a run measures and writes, checked before any work (see `_plan`)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _plan(args):
    """Inputs read and checked, output names checked: nothing is measured yet."""
    demo = None
    if args.demo:
        if args.image is not None or args.catalog is not None or args.hdu is not None:
            msg = ("--demo uses the embedded image and catalogue: give no IMAGE, no --catalog "
                   "and no --hdu")
            raise CLIError(msg)
        from asidfe_phot.datasets import load_demo_image

        demo = load_demo_image()
        image_name, hdus = "demo:sep_image.fits", [0]
    else:
        if args.image is None:
            msg = "give an IMAGE (FITS file), or --demo"
            raise CLIError(msg)
        if args.catalog is None and not args.find:
            msg = ("no positions: give --catalog CAT (a table of x, y positions) or --find to "
                   "detect sources")
            raise CLIError(msg)
        hdus = _inputs.select_hdus(args.image, args.hdu)
        image_name = args.image
    if args.tile is not None:
        _inputs.check_tile_options(args)
    several = args.hdu == "all" or (isinstance(args.hdu, list) and len(args.hdu) > 1)
    catalog, ext_numbers, counts = None, {}, [len(demo[2])] if demo else []
    if args.catalog is not None:
        catalog = _inputs.read_catalog(args.catalog)
        if len(hdus) > 1 and catalog.hdu_column is None:
            msg = (f"catalogue {args.catalog} does not say which HDU each row belongs to: with "
                   "several HDUs give it an hdu column (HDU index) or SourceExtractor's "
                   "EXT_NUMBER, or run one --hdu at a time")
            raise CLIError(msg)
        if catalog.hdu_column == _inputs.EXT_COLUMN:
            ext_numbers = _inputs.sextractor_ext_numbers(args.image)
        counts = [len(catalog.rows_for(hdu, ext_numbers)) for hdu in hdus]
        if not any(counts):
            which = f"HDU {hdus[0]}" if len(hdus) == 1 else f"any of HDUs {hdus}"
            msg = f"catalogue {args.catalog} has no rows for {which}"
            raise CLIError(msg)
    psf_file = args.psf if args.psf not in (None, "auto", "none") else None
    inputs = [p for p in (args.image, args.catalog, args.error, args.weight, args.mask,
                          psf_file) if p is not None]
    out_path, out_format = _output_path(args, image_name, inputs)
    written = [out_path]
    side = {}
    for option in ("regions", "plot"):
        side[option] = {}
        if getattr(args, option) is None:
            continue
        if option == "plot":
            _outputs.check_plot_name(Path(args.plot))
        for hdu in hdus:
            path = _outputs.per_hdu_name(getattr(args, option), hdu, several)
            clash = next((p for p in written if _same_file(path, p)), None)
            if clash is not None:
                msg = f"--{option} {path} is another output of this run ({clash})"
                raise CLIError(msg)
            _check_writable(path, args.overwrite, f"--{option}", inputs)
            side[option][hdu] = path
            written.append(path)
    for option in ("gain", "saturation", "threads"):
        value = getattr(args, option)
        if value is not None and not 0 < value < float("inf"):
            msg = f"--{option} must be a positive number, got {value}"
            raise CLIError(msg)
    return _Job(demo=demo, image_name=image_name, hdus=hdus, several=several, catalog=catalog,
                ext_numbers=ext_numbers, counts=counts, out_path=out_path,
                out_format=out_format, regions=side["regions"], plots=side["plot"])


def _photometry(args, progress, finder=None):
    from asidfe_phot.photometry import MLPhotometry

    # Keywords only: MLPhotometry's leading parameters follow photutils' order.
    kw = {"model": args.model, "batch_size": args.batch_size, "progress_bar": progress,
          "finder": finder, "aperture_correction": args.aperture_correction,
          "threads": args.threads, "providers": args.providers,
          "precision": args.precision}
    if args.psf is not None:
        kw["psf_model"] = None if args.psf == "none" else args.psf
    return MLPhotometry(**kw)


def _run(args, stdout, stderr):
    job, results = _measure(args, stdout, stderr)
    _write_outputs(args, job, results, stdout)
    return 0


def _measure(args, stdout, stderr):
    """
    Plan and measure one image, writing nothing: ``(job, results)``, the per-HDU
    ``(table, data for --plot)`` that `_write_outputs` writes (also each frame of
    ``asidfe-phot batch``, `asidfe_phot.batch`).
    """
    job = _plan(args)
    shared = None
    if not args.find:
        progress = args.progress
        if progress is None:
            progress = max(job.counts) > PROGRESS_THRESHOLD
        shared = _photometry(args, progress)
    results = []
    with Progress(len(job.hdus), PROG, unit="HDUs", stream=stderr,
                  enabled=len(job.hdus) > 1 and args.progress is not False) as hdus_done:
        for hdu in job.hdus:
            results.append(_measure_hdu(args, job, hdu, shared, stdout, stderr))
            hdus_done.update()
    tables = [tbl for tbl, _ in results]
    if not any(len(tbl) for tbl in tables):
        msg = (f"no sources found by --find in any HDU (threshold {args.threshold:g} x rms, "
               f"fwhm {args.fwhm:g} px); lower --threshold or give --catalog")
        raise CLIError(msg)
    return job, results


def _measure_hdu(args, job, hdu, phot, stdout, stderr):
    """Measure one image HDU: ``(table, data for --plot or None)``."""
    if job.demo is not None:
        image, header, _ = job.demo
    else:
        image, header, hdu = read_image(args.image, hdu, lazy=args.tile is not None)
    unit = header_unit(header)
    wcs = header_wcs(header)
    gain = args.gain if args.gain is not None else header_float(header, "GAIN")
    saturation = (args.saturation if args.saturation is not None
                  else header_float(header, "SATURATE"))
    gain_from = "--gain" if args.gain is not None else ("GAIN keyword" if gain else None)
    sat_from = ("--saturation" if args.saturation is not None
                else ("SATURATE keyword" if saturation else None))
    print(f"{PROG}: {job.image_name} [HDU {hdu}] {image.shape[1]}x{image.shape[0]} px, "
          f"unit {unit if unit is not None else 'none (no BUNIT)'}, "
          f"WCS {'yes' if wcs is not None else 'none'}", file=stdout)
    print(f"  gain: {gain} ({gain_from})" if gain else
          "  gain: estimated from the sky level (no --gain, no GAIN keyword)", file=stdout)
    print(f"  saturation: {saturation} ({sat_from})" if saturation else
          "  saturation: not set (no --saturation, no SATURATE keyword)", file=stdout)
    noise_kw, notes = _inputs.noise_inputs(args, hdu, image, unit, lazy=args.tile is not None)
    for note in notes:
        print(f"  {note}", file=stdout)

    init_params = None
    if args.find:
        # Tiled: the threshold from the central tile's pixels (the frame is never whole).
        if args.tile is not None:
            from asidfe_phot.tiles import central_region

            image_for_threshold = image[central_region(image.shape, args.tile)]
        else:
            image_for_threshold = image
        finder, threshold = _make_finder(image_for_threshold, args.fwhm, args.threshold)
        positions_from = (f"DAOStarFinder (fwhm {args.fwhm:g} px, threshold {threshold:.4g} = "
                          f"{args.threshold:g} x background rms)")
        progress = args.progress
        if progress is None:
            progress = image.size > PROGRESS_PIXELS
        phot = _photometry(args, progress, finder)
    elif job.demo is not None:
        init_params = job.demo[2]
        positions_from = "the demo SourceExtractor catalogue (xcentroid, ycentroid, 0-based)"
    else:
        _check_sky(job.catalog, wcs)
        init_params = job.catalog.rows_for(hdu, job.ext_numbers)
        positions_from = f"catalogue {args.catalog} ({job.catalog.description})"
        if not len(init_params):
            print(f"  catalogue {args.catalog} has no rows for HDU {hdu}", file=stdout)
    print(f"  positions: {positions_from}", file=stdout)
    print(f"  model: {phot.model_card['name']}_v{phot.model_card['version']} on "
          f"{', '.join(phot.providers)}", file=stdout)

    data = image * unit if unit is not None and args.tile is None else image
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.tile is None:
            tbl = phot(data, init_params=init_params, gain=gain, saturation=saturation,
                       wcs=wcs, **noise_kw)
        else:
            from asidfe_phot.tiles import measure_tiled

            tbl = measure_tiled(phot, image, init_params, tile=args.tile, unit=unit,
                                gain=gain, saturation=saturation, wcs=wcs, **noise_kw)
            print(f"  tiles: {len(tbl.meta['tiles'])} of {args.tile} px "
                  f"(margin {tbl.meta['tile_margin']} px)", file=stdout)
    elapsed = time.perf_counter() - start
    for w in caught:
        if w.category.__name__ == "NoDetectionsWarning":
            continue
        print(f"{PROG}: warning: {w.category.__name__}: {w.message}", file=stderr)
    if not len(tbl) and args.find:
        msg = (f"no sources found by --find (threshold {args.threshold:g} x rms, fwhm "
               f"{args.fwhm:g} px); lower --threshold or give --catalog")
        if len(job.hdus) == 1:
            raise CLIError(msg)
        print(f"  {msg}", file=stdout)

    tbl.meta["image"] = str(job.image_name)
    tbl.meta["hdu"] = int(hdu)
    tbl.meta["positions"] = positions_from
    tbl.meta["gain_source"] = gain_from or "sky / rms^2"
    if saturation:
        tbl.meta["saturation"] = saturation
    if notes:
        tbl.meta["noise_inputs"] = notes
    if "background" in noise_kw:
        tbl.meta["background"] = (f"mesh {_inputs.BACKGROUND_BOX} px, rms from --weight "
                                  f"({args.weight_type})")
    if job.several:
        tbl.add_column(np.full(len(tbl), int(hdu)), name="hdu", index=1)
    _report(args, tbl, elapsed, stdout)
    return tbl, (data if args.plot is not None else None)


def _report(args, tbl, elapsed, stdout):
    if tbl.meta.get("psf_used"):
        used = tbl.meta["psf_model"]
        if used == "auto":
            used = (f"auto, ePSF of {tbl.meta.get('psf_nstars', 0)} stars, "
                    f"{tbl.meta.get('psf_time_s', 0):.2f} s")
        print(f"  PSF: {used}; FWHM {tbl.meta.get('psf_fwhm', float('nan')):.2f} px, model "
              f"error {tbl.meta.get('psf_profile_error', float('nan')):.3f}", file=stdout)
    if "aperture_correction" in tbl.meta:
        print(f"  aperture correction: {tbl.meta['aperture_correction']:.4g} "
              f"({tbl.meta['aperture_correction_note']})", file=stdout)
    print(_outputs.summary(tbl, elapsed), file=stdout)
    if args.rows > 0 and len(tbl):
        print(file=stdout)
        print("\n".join(_outputs.display(tbl[:args.rows]).pformat(max_width=-1, max_lines=-1)),
              file=stdout)
        if len(tbl) > args.rows:
            print(f"... {len(tbl) - args.rows} more row(s)", file=stdout)
        print(file=stdout)


def _write_outputs(args, job, results, stdout):
    """The table (one for all HDUs; FITS: one table HDU each), regions and figures."""
    from asidfe_phot._regions import ds9_regions

    tables = [tbl for tbl, _ in results]
    if not job.several:
        payload = tables[0]
    elif job.out_format == "fits":
        payload = tables
    else:
        payload = _outputs.combine(tables)
    _write_table(payload, job.out_path, job.out_format, args.overwrite)
    hdus = f" from {len(tables)} HDUs" if job.several else ""
    print(f"wrote {job.out_path} ({sum(len(t) for t in tables)} rows{hdus})", file=stdout)
    for tbl in tables:
        hdu = tbl.meta["hdu"]
        if hdu in job.regions:
            text = ds9_regions(tbl, title=f"{PROG}: {job.image_name} [HDU {hdu}]")
            _write_atomically(job.regions[hdu], args.overwrite,
                              lambda tmp, text=text: Path(tmp).write_text(text))
            print(f"wrote {job.regions[hdu]}", file=stdout)
    for tbl, data in results:
        hdu = tbl.meta["hdu"]
        if hdu in job.plots and len(tbl):
            from matplotlib.figure import Figure

            from asidfe_phot.visualization import plot_stamps

            path = job.plots[hdu]
            fig = plot_stamps(data, tbl, n=16, fig=Figure(figsize=(9, 10)))
            _write_atomically(path, args.overwrite,
                              lambda tmp, fig=fig, path=path: fig.savefig(
                                  tmp, dpi=110, format=path.suffix[1:]))
            print(f"wrote {path}", file=stdout)


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
        message goes to stderr, without a traceback). ``asidfe-phot ast ...``
        runs the artificial-star test (`asidfe_phot._cli_ast`), ``asidfe-phot
        tailor ...`` the tailored training (`asidfe_phot.tailor`), ``asidfe-phot
        batch ...`` many frames on Dask (`asidfe_phot.batch`; exit status 1 when
        some frames failed).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "ast":
        from asidfe_phot._cli_ast import main as ast_main

        return ast_main(argv[1:])
    if argv and argv[0] == "tailor":
        from asidfe_phot.tailor import _main as tailor_main

        return tailor_main(argv[1:], prog=f"{PROG} tailor")
    if argv and argv[0] == "batch":
        from asidfe_phot._cli_batch import main as batch_main

        return batch_main(argv[1:])
    return run_command(_build_parser(), argv,
                       lambda args: _run(args, sys.stdout, sys.stderr), PROG)


def run_command(parser, argv, run, prog):
    """
    Parse ``argv`` and ``run(args)``; the exit status: ``run``'s, 2 on a usage or input
    error (the message on stderr, no traceback), 130 when interrupted.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run(args)
    except (CLIError, FITSReadError, ValueError, TypeError, u.UnitsError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
