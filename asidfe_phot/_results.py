"""
The result table of `~asidfe_phot.MLPhotometry` (private): photutils' PSFPhotometry
columns in its order, the ``diagnostics`` columns, its ``meta``, the call's summary
warnings, and the model and residual images of a result.
"""

import warnings
from datetime import UTC, datetime

import numpy as np
from astropy.table import QTable

from asidfe_phot import _psf_fit
from asidfe_phot import flags as _flags
from asidfe_phot._validation import user_stacklevel
from asidfe_phot.exceptions import FlaggedSourcesWarning, NoSourceNoiseWarning

__all__ = []  # private module

#: Flags serious enough for a (single, summary) warning.
WARN_FLAGS = (_flags.NO_OVERLAP | _flags.CORE_MASKED | _flags.SATURATED | _flags.COMPACT
              | _flags.PSF_MISMATCH | _flags.NO_POSITION)
#: The network's and the PSF fit's own estimates in the PSF mode, as ``diagnostics``
#: columns (``<name>_network``, ``<name>_psf``).
NETWORK_COLUMNS = ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err")
ESTIMATES = (("network", "_network"), ("psf_estimates", "_psf"))


def diagnostic_columns(res, scale):
    """
    The ``diagnostics`` columns: ``snr_core``; in the PSF mode, the network's estimates
    (``<name>_network``) and the PSF fit's (``<name>_psf``), each with the errors the
    choice between them compared; fluxes back from the internal scale to the data's.
    """
    columns = {"snr_core": res["snr_core"]}
    for entry, suffix in ESTIMATES:
        estimates = res.get(entry)
        if estimates is None:
            continue
        for key in NETWORK_COLUMNS:
            values = estimates[key]
            if key.startswith("flux") and scale != 1:
                values = values * scale
            columns[f"{key}{suffix}"] = values
    return columns


def assemble(ids, x, y, res, unit, wcs, meta, extra=None):
    """The result table (fluxes in ``unit``), its ``meta``; warns once per call."""
    def in_unit(values):
        return values if unit is None else values * unit

    # photutils' PSFPhotometry columns, in its order (those we have).
    tbl = QTable()
    tbl["id"] = ids
    tbl["group_id"] = res["group_id"]
    tbl["group_size"] = res["group_size"]
    tbl["local_bkg"] = in_unit(res["local_bkg"])
    tbl["x_init"] = x
    tbl["y_init"] = y
    if "flux_init" in res:
        tbl["flux_init"] = in_unit(res["flux_init"])
    tbl["x_fit"] = res["x_fit"]
    tbl["y_fit"] = res["y_fit"]
    tbl["flux_fit"] = in_unit(res["flux_fit"])
    tbl["x_err"] = res["x_err"]
    tbl["y_err"] = res["y_err"]
    tbl["flux_err"] = in_unit(res["flux_err"])
    nan = np.full(len(tbl), np.nan)
    tbl["qfit"] = res.get("qfit", nan)
    tbl["cfit"] = res.get("cfit", nan)
    tbl["flags"] = res["flags"]
    if wcs is not None:
        tbl["sky_centroid"] = wcs.pixel_to_world(tbl["x_fit"], tbl["y_fit"])
    for name, values in (extra or {}).items():
        tbl[name] = values * unit if unit is not None and name.startswith("flux") else values
    tbl.meta.update(meta)
    nwarn = int(np.count_nonzero(tbl["flags"] & WARN_FLAGS))
    if nwarn:
        msg = (f"{nwarn} of {len(tbl)} sources are flagged (no usable pixels, masked core, "
               "saturated, sharper than a PSF, or a PSF unlike any trained on); see the "
               "'flags' column and MLPhotometry.decode_flags")
        warnings.warn(msg, FlaggedSourcesWarning, stacklevel=user_stacklevel())
    if len(tbl) and np.all(tbl["flags"] & _flags.NO_SOURCE_NOISE):
        msg = ("no error map, gain or sky level tells the network the sources' Poisson "
               "noise, so flux_err is too small for bright sources; pass error= or gain=")
        warnings.warn(msg, NoSourceNoiseWarning, stacklevel=user_stacklevel())
    return tbl


def model_image(shape, sampler, table, half, include_local_bkg=False):
    """`MLPhotometry.make_model_image` of ``table``'s sources rendered with ``sampler``."""
    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    flux = np.asarray(getattr(table["flux_fit"], "value", table["flux_fit"]), dtype=float)
    image = _psf_fit.model_image(tuple(shape), sampler, x, y, flux, half)
    if include_local_bkg:
        local = np.asarray(getattr(table["local_bkg"], "value", table["local_bkg"]),
                           dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
        image += _psf_fit.box_image(tuple(shape), x[ok], y[ok], np.nan_to_num(local[ok]),
                                    half)
    return image


def subtract(data, model):
    """``data`` minus ``model``, of the type of ``data`` (an NDData: a copy)."""
    import copy

    from astropy.nddata import NDData

    if isinstance(data, NDData):
        residual = copy.deepcopy(data)
        residual.data[:] = np.asarray(data.data) - model
        return residual
    unit = getattr(data, "unit", None)
    return data - (model if unit is None else model * unit)


def meta(phot, info):
    """The result table's ``meta``: the run's provenance, settings and ``info``."""
    import onnxruntime

    from asidfe_phot import __version__

    card = phot.model_card
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "asidfe_phot_version": __version__,
        "onnxruntime_version": onnxruntime.__version__,
        "numpy_version": np.__version__,
        "model_name": card["name"],
        "model_version": card["version"],
        "model_sha256": card["sha256"],
        "precision": phot.precision,
        "providers": phot.providers,
        "batch_size": phot.batch_size,
        "max_shift": phot.max_shift,
        "sigma_calibration": phot.sigma_calibration,
        "flux_bias_correction": phot.flux_bias_correction,
        **info,
    }
