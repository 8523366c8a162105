"""
Outputs of the ``asidfe-phot`` command (private): the printed summary, tables made
ready for CSV and FITS, several HDUs' tables in one, per-HDU file names.
"""

import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.table import vstack

from asidfe_phot import flags as _flags

__all__ = []  # private module


def check_plot_name(path):
    """A ``--plot`` name must end in a figure format matplotlib writes."""
    from matplotlib.backend_bases import FigureCanvasBase

    from asidfe_phot._cli_inputs import CLIError

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        msg = (f"--plot {path}: unknown figure format {path.suffix!r}; use one of "
               f"{', '.join('.' + f for f in sorted(formats))}")
        raise CLIError(msg)


def per_hdu_name(path, hdu, several):
    """``REG_hduN.reg`` for ``REG.reg`` when several HDUs are measured, else ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_hdu{hdu}{path.suffix}") if several else path


def csv_ready(tbl):
    """Plain CSV cells: a SkyCoord column becomes two columns in degrees (``..._ra``, ...)."""
    tbl = tbl.copy(copy_data=False)
    for name in [n for n in tbl.colnames if hasattr(tbl[n], "frame")]:
        coords = tbl[name]
        index = tbl.colnames.index(name)
        tbl.remove_column(name)
        lon, lat = list(coords.representation_component_names)[:2]
        tbl.add_column(coords.spherical.lat.deg, name=f"{name}_{lat}", index=index)
        tbl.add_column(coords.spherical.lon.deg, name=f"{name}_{lon}", index=index)
    return tbl


def fits_tables(tables):
    """One BinTable HDU per image HDU (EXTNAME ``HDU<n>``), as SourceExtractor's FITS_LDAC."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    hdus = [fits.PrimaryHDU()]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HIERARCH.*", category=VerifyWarning)
        for tbl in tables:
            hdu = fits.table_to_hdu(fits_ready(tbl))
            hdu.name = f"HDU{tbl.meta['hdu']}"
            hdus.append(hdu)
    return fits.HDUList(hdus)


def fits_ready(tbl):
    """A copy of ``tbl`` whose meta fits in FITS header cards."""
    tbl = tbl.copy(copy_data=False)
    comments = list(tbl.meta.pop("comments", []))
    for key, value in list(tbl.meta.items()):
        if isinstance(value, (list, tuple)):
            value = tbl.meta[key] = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = tbl.meta[key] = str(value)
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
    return tbl


def summary(tbl, elapsed):
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


def display(tbl):
    """A copy of ``tbl`` with print formats (the written table keeps full precision)."""
    tbl = tbl.copy()
    formats = {"x_init": ".3f", "y_init": ".3f", "x_fit": ".3f", "y_fit": ".3f", "x_err": ".3f",
               "y_err": ".3f", "flux_fit": ".6g", "flux_err": ".4g"}
    for name, fmt in formats.items():
        if name in tbl.colnames:
            tbl[name].info.format = fmt
    return tbl


def combine(tables):
    """
    One table of several HDUs' (an ``hdu`` column tells them apart): meta entries that
    differ between HDUs go to ``meta["per_hdu"][hdu]``; columns missing from an HDU's
    table (``sky_centroid`` without a WCS) are left out.
    """
    common = [c for c in tables[0].colnames if all(c in t.colnames for t in tables)]
    combined = vstack([t[common] for t in tables], metadata_conflicts="silent")
    meta, per_hdu = {}, {}
    for key in dict.fromkeys(k for t in tables for k in t.meta):
        values = [t.meta.get(key) for t in tables]
        if key == "hdu" or any(repr(v) != repr(values[0]) for v in values):
            for tbl, value in zip(tables, values):
                if key != "hdu":
                    per_hdu.setdefault(tbl.meta["hdu"], {})[key] = value
        else:
            meta[key] = values[0]
    meta["hdu"] = [t.meta["hdu"] for t in tables]
    meta["per_hdu"] = per_hdu
    combined.meta = meta
    return combined
