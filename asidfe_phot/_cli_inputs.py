"""
Inputs of the ``asidfe-phot`` command (private): the HDUs to measure, the positions
catalogue (photutils-style tables, SourceExtractor ASCII_HEAD and FITS_LDAC
catalogues) and the noise images (``--error``, ``--weight``, ``--mask``).
"""

import argparse
import sys
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.table import QTable, vstack

from asidfe_phot._background import estimate_background
from asidfe_phot._fitsio import image_hdus, quiet_header_warnings, read_image
from asidfe_phot._validation import X_ALIASES, Y_ALIASES, find_position_columns

__all__ = []  # private module


class CLIError(Exception):
    """A problem with the command line or its inputs (printed without a traceback)."""


# --- HDUs -----------------------------------------------------------------------------------

def hdu_option(text):
    """The ``--hdu`` value: ``"all"`` or a list of HDU indices (``1`` or ``1,2,3``)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        msg = f"expected an HDU index, a comma list of indices (1,2,3) or 'all', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return indices


def select_hdus(path, option):
    """
    The HDU indices to measure (``--hdu``: None for the first 2-D image, ``"all"`` or a
    list), checked against the file's headers before any work.
    """
    entries, description, n_hdus = image_hdus(path)
    naxes = dict(entries)
    images = [i for i, naxis in entries if naxis == 2]
    if option is None or option == "all":
        if not images:
            msg = f"{path} has no 2-D image HDU (HDUs: {description})"
            raise CLIError(msg)
        return images if option == "all" else images[:1]
    chosen = []
    for hdu in option:
        if not -n_hdus <= hdu < n_hdus:
            msg = (f"HDU {hdu} does not exist in {path}, which has {n_hdus} HDU(s) "
                   f"({description})")
            raise CLIError(msg)
        index = hdu % n_hdus
        if index not in images:
            what = f"a {naxes[index]}-D array" if index in naxes else "no image data"
            msg = (f"HDU {index} of {path} holds {what}, not a 2-D image; choose another with "
                   f"--hdu (HDUs: {description})")
            raise CLIError(msg)
        if index not in chosen:
            chosen.append(index)
    return chosen


def sextractor_ext_numbers(path):
    """
    ``{hdu index: EXT_NUMBER}``: SourceExtractor numbers the image extensions it
    measures 1, 2, ... in file order (every image HDU with NAXIS >= 2).
    """
    entries, _, _ = image_hdus(path)
    return {index: k for k, (index, _) in enumerate(
        (e for e in entries if e[1] >= 2), start=1)}


# --- Catalogues -----------------------------------------------------------------------------

_TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits",
                  ".fts": "fits", ".ldac": "fits"}
#: SourceExtractor position columns, best first (all 1-based pixels).
_SEXTRACTOR_POSITIONS = (("XPSF_IMAGE", "YPSF_IMAGE"), ("XWIN_IMAGE", "YWIN_IMAGE"),
                         ("XMODEL_IMAGE", "YMODEL_IMAGE"), ("X_IMAGE", "Y_IMAGE"),
                         ("X_IMAGE_DBL", "Y_IMAGE_DBL"), ("XPEAK_IMAGE", "YPEAK_IMAGE"))
#: Internal column: the SourceExtractor extension ordinal of a row (EXT_NUMBER or the
#: position of its LDAC_OBJECTS table in the file).
EXT_COLUMN = "_ext_number"


class Catalog:
    """An input catalogue with its positions resolved (see `read_catalog`)."""

    def __init__(self, path, table, description, hdu_column=None, sky=False):
        self.path = path
        self.table = table                  # positions in photutils aliases (0-based)
        self.description = description      # how the positions were read
        self.hdu_column = hdu_column        # "hdu" (HDU index), EXT_COLUMN or None
        self.sky = sky                      # positions are sky_centroid only

    def rows_for(self, hdu, ext_numbers):
        """The rows of HDU ``hdu`` (all rows when the catalogue says nothing of HDUs)."""
        if self.hdu_column is None:
            return self.table
        wanted = hdu if self.hdu_column != EXT_COLUMN else ext_numbers.get(hdu, -1)
        values = np.asarray(self.table[self.hdu_column])
        return self.table[values == wanted]


def _is_sextractor_ascii(path):
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            first = f.readline().split()
    except OSError:
        return False
    return len(first) >= 3 and first[0] == "#" and first[1].isdigit() and first[2].isupper()


def _read_fits_catalog(path):
    """A FITS table; a FITS_LDAC file's LDAC_OBJECTS tables stacked, numbered by extension."""
    with quiet_header_warnings(), fits.open(path) as hdul:
        ldac = [i for i, h in enumerate(hdul) if h.name == "LDAC_OBJECTS"]
    if not ldac:
        return QTable.read(path, format="fits"), False
    tables = []
    for k, index in enumerate(ldac, start=1):
        table = QTable.read(path, format="fits", hdu=index)
        table[EXT_COLUMN] = np.full(len(table), k)
        tables.append(table)
    return vstack(tables, metadata_conflicts="silent"), True


def _read_table(path):
    suffixes = "".join(path.suffixes[-2:]).lower()
    fmt = _TABLE_FORMATS.get(path.suffix.lower())
    if suffixes.endswith((".fits.gz", ".fit.gz")):
        fmt = "fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        if fmt == "fits":
            return _read_fits_catalog(path)
        if fmt is None and _is_sextractor_ascii(path):
            return QTable.read(path, format="ascii.sextractor"), False
        return (QTable.read(path, format=fmt) if fmt else QTable.read(path)), False


def read_catalog(path):
    """
    The positions catalogue: photutils column aliases (0-based; case-insensitive), else
    SourceExtractor's ``X*_IMAGE``/``Y*_IMAGE`` (1-based, converted; ``NUMBER`` becomes
    ``id``), else ``sky_centroid`` (converted with each image's WCS).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"catalogue file not found: {path}"
        raise CLIError(msg)
    try:
        table, ldac = _read_table(path)
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for unreadable tables
        msg = (f"cannot read catalogue {path} ({type(exc).__name__}: {exc}); use an .ecsv, "
               ".fits or .csv table or a SourceExtractor ASCII_HEAD or FITS_LDAC catalogue")
        raise CLIError(msg) from exc
    if not len(table):
        msg = f"catalogue {path} has no rows: no positions to measure"
        raise CLIError(msg)
    hdu_column = None
    lower = {name.lower(): name for name in table.colnames}
    if "hdu" in lower:
        hdu_column = lower["hdu"]
    elif "ext_number" in lower:
        table[EXT_COLUMN] = np.asarray(table[lower["ext_number"]], dtype=int)
        hdu_column = EXT_COLUMN
    elif ldac:
        hdu_column = EXT_COLUMN
    xname, yname = find_position_columns(table)
    if xname is None or yname is None:
        # Case-insensitive second chance (X, XCENTROID, X_INIT, ...).
        xname = next((lower[a] for a in X_ALIASES if a in lower), None)
        yname = next((lower[a] for a in Y_ALIASES if a in lower), None)
        if xname is not None and yname is not None:
            table.rename_columns([xname, yname], ["x", "y"])
            xname, yname = "x", "y"
    if xname is not None and yname is not None:
        return Catalog(path, table, f"columns {xname}, {yname}", hdu_column)
    sextractor = next(((a, b) for a, b in _SEXTRACTOR_POSITIONS
                       if a in table.colnames and b in table.colnames), None)
    if sextractor is not None:
        for name, axis in zip(sextractor, ("x", "y")):
            values = table[name]
            table[axis] = np.asarray(getattr(values, "value", values), dtype=float) - 1.0
        if "id" not in table.colnames and "NUMBER" in table.colnames:
            table["id"] = table["NUMBER"]
        where = "FITS_LDAC " if ldac else ""
        return Catalog(path, table, f"SourceExtractor {where}{sextractor[0]}, {sextractor[1]} "
                       "minus 1 (1-based to 0-based)", hdu_column)
    if "sky_centroid" in table.colnames:
        return Catalog(path, table, "sky_centroid (converted with the image WCS)",
                       hdu_column, sky=True)
    msg = (f"catalogue {path} has no position columns: give x and y under one of "
           f"{', '.join(X_ALIASES)} (y alike), in 0-based pixels, SourceExtractor's X_IMAGE/"
           f"Y_IMAGE (XWIN_IMAGE, ...; 1-based), or sky_centroid with an image WCS. Its "
           f"columns are {table.colnames}.")
    raise CLIError(msg)


# --- Noise images ---------------------------------------------------------------------------

#: The mesh of the background estimate (MLPhotometry's background_box_size default).
BACKGROUND_BOX = 64
WEIGHT_TYPES = ("weight", "rms", "variance")


class MapBackground:
    """A background with its rms map, as photutils' Background2D hands them to MLPhotometry."""

    def __init__(self, background, background_rms):
        self.background = background
        self.background_rms = background_rms


def read_map(path, hdu, shape, option, lazy=False):
    """
    A 2-D float32 map matching an image of ``shape`` read from HDU ``hdu``: the map
    file's HDU of the same index, or its only 2-D image HDU (``lazy``: a
    `~asidfe_phot._fitsio.FrameSection`).
    """
    entries, description, _ = image_hdus(path)
    images = [i for i, naxis in entries if naxis == 2]
    if hdu in images:
        index = hdu
    elif len(images) == 1:
        index = images[0]
    else:
        what = "no 2-D image HDU" if not images else f"no 2-D image in HDU {hdu}"
        msg = (f"{option} {path} has {what} to match the image's HDU {hdu} "
               f"(HDUs: {description})")
        raise CLIError(msg)
    data, _, _ = read_image(path, index, lazy=lazy)
    if data.shape != shape:
        msg = (f"{option} {path} [HDU {index}] is {data.shape[1]}x{data.shape[0]} px but the "
               f"image [HDU {hdu}] is {shape[1]}x{shape[0]} px: they must match pixel for "
               "pixel")
        raise CLIError(msg)
    return data, index


class _Transformed:
    """A map read a block at a time (``map[rows, cols]``), each block transformed."""

    def __init__(self, source, transform):
        self.source, self.transform, self.shape = source, transform, source.shape

    def __getitem__(self, region):
        return self.transform(self.source[region])


def _as_mask(values):
    return (values != 0) | ~np.isfinite(values)


def noise_inputs(args, hdu, image, unit, lazy=False):
    """
    ``(keywords for MLPhotometry.__call__, notes)`` from ``--mask``, ``--error`` and
    ``--weight``/``--weight-type``, for the image of HDU ``hdu``. ``lazy`` (``--tile``):
    the maps are read a tile at a time, as the image is (no ``--weight``, whose scale
    needs the whole image).

    The weight map is SourceExtractor's: the background noise, to which the
    sources' photon noise is added from the gain. ``weight`` maps are relative
    (inverse variance up to a scale): the scale is set by the image's own
    sigma-clipped background rms, as SourceExtractor does for MAP_WEIGHT.
    """
    keywords, notes = {}, []
    mask = None
    if args.mask is not None:
        values, index = read_map(args.mask, hdu, image.shape, "--mask", lazy)
        if lazy:
            mask = _Transformed(values, _as_mask)
            notes.append(f"mask: {args.mask} [HDU {index}], read a tile at a time")
        else:
            mask = _as_mask(values)
            notes.append(f"mask: {args.mask} [HDU {index}], {np.count_nonzero(mask)} bad "
                         "pixel(s)")
    if args.error is not None:
        error, index = read_map(args.error, hdu, image.shape, "--error", lazy)
        if lazy and unit is not None:
            error = _Transformed(error, lambda values: values * unit)
        elif unit is not None:
            error = error * unit
        keywords["error"] = error
        notes.append(f"error: {args.error} [HDU {index}], total 1-sigma error, used as given")
    elif args.weight is not None:
        values, index = read_map(args.weight, hdu, image.shape, "--weight")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values <= 0)
        if bad.all():
            msg = (f"--weight {args.weight} [HDU {index}] has no usable pixel: every value is "
                   "zero, negative or non-finite")
            raise CLIError(msg)
        values = np.where(bad, np.median(values[~bad]), values)
        rms = {"weight": lambda w: 1.0 / np.sqrt(w), "rms": lambda w: w,
               "variance": np.sqrt}[args.weight_type](values.astype(np.float64))
        mask = bad if mask is None else mask | bad
        unusable = mask | ~np.isfinite(image)
        background, measured = estimate_background(image, unusable, BACKGROUND_BOX)
        note = f"weight: {args.weight} [HDU {index}] as {args.weight_type.upper()} map"
        if args.weight_type == "weight":
            good = ~unusable
            scale = float(np.median(measured[good] / rms[good]))
            if not (np.isfinite(scale) and scale > 0):
                msg = (f"--weight {args.weight}: cannot scale the weight map to the image's "
                       "background rms (no usable sky); give an rms or variance map")
                raise CLIError(msg)
            rms = rms * scale
            note += f", scaled to the image's background rms (rms = {scale:.4g} / sqrt(weight))"
        notes.append(f"{note}, {np.count_nonzero(bad)} zero-weight pixel(s) masked")
        rms = rms.astype(np.float32)
        if unit is not None:
            background, rms = background * unit, rms * unit
        keywords["background"] = MapBackground(background, rms)
    if mask is not None:
        keywords["mask"] = mask
    return keywords, notes


def version_text(prog):
    """``--version``: the package's, Python's and onnxruntime's versions."""
    from importlib.metadata import PackageNotFoundError, version

    from asidfe_phot import __version__

    runtime = "onnxruntime not installed"
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            runtime = f"onnxruntime {version(dist)}"
            break
        except PackageNotFoundError:
            continue
    return f"{prog} {__version__} (Python {sys.version.split()[0]}, {runtime})"


class VersionAction(argparse.Action):
    """``--version`` on one line: argparse's own action wraps it at the terminal width."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text(parser.prog))
        parser.exit()


def providers_value(text):
    """The ``--providers`` value: a comma list of onnxruntime provider names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        msg = ("expected a comma list of onnxruntime providers, e.g. "
               f"CUDAExecutionProvider,CPUExecutionProvider; got {text!r}")
        raise argparse.ArgumentTypeError(msg)
    return names


def aperture_correction_value(text):
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


def check_tile_options(args):
    """``--tile``: what needs the whole frame at once is refused before any work."""
    if args.tile < 64:
        msg = f"--tile must be at least 64 px, got {args.tile}"
        raise CLIError(msg)
    clash = [name for name, given in (("--demo", args.demo), ("--weight", args.weight),
                                      ("--plot", args.plot)) if given]
    if clash:
        msg = (f"--tile reads the frame a tile at a time; {', '.join(clash)} needs the "
               "whole frame (give --error instead of --weight, or drop --tile)")
        raise CLIError(msg)
