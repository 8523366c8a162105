"""Input validation and normalisation for MLPhotometry (one place, one message style)."""

import warnings

import astropy.units as u
import numpy as np
from astropy.nddata import InverseVariance, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.table import Table

from asidfe_phot.exceptions import AsidfePhotWarning

__all__ = []  # private module

#: Position column aliases, as photutils' PSFPhotometry accepts them (first match wins).
X_ALIASES = ("x_init", "xinit", "x", "x_0", "x0", "xcentroid", "x_centroid", "x_peak", "xcen",
             "x_cen", "xpos", "x_pos", "x_fit", "xfit")
Y_ALIASES = tuple(a.replace("x", "y", 1) for a in X_ALIASES)


def as_float_image(array, name):
    """Native-endian float32 2-D array (FITS gives big-endian; CNN input is float32)."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        msg = f"{name} must be a 2-D image, got an array of shape {arr.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        msg = f"{name} must be numeric, got dtype {arr.dtype}"
        raise TypeError(msg)
    return arr.astype(np.float32, copy=False).astype(np.dtype("=f4"), copy=False)


def _uncertainty_to_error(uncertainty):
    if isinstance(uncertainty, StdDevUncertainty):
        return np.asarray(uncertainty.array)
    if isinstance(uncertainty, VarianceUncertainty):
        return np.sqrt(uncertainty.array)
    if isinstance(uncertainty, InverseVariance):
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(uncertainty.array)
    msg = (f"NDData uncertainty of type {type(uncertainty).__name__} is not supported; use "
           "StdDevUncertainty, VarianceUncertainty or InverseVariance")
    raise TypeError(msg)


def coerce_data(data, mask, error, wcs, stacklevel=4):
    """
    Split ``data`` (array, Quantity, MaskedArray, NDData/CCDData) into parts.

    Returns
    -------
    image : float32 array
    unit : `~astropy.units.Unit` or None
    mask : bool array or None
    error : float32 array or None
    wcs : WCS or None
    """
    unit = None
    if isinstance(data, NDData):
        for given, attr in ((mask, "mask"), (error, "uncertainty"), (wcs, "wcs")):
            if given is not None and getattr(data, attr) is not None:
                keyword = "error" if attr == "uncertainty" else attr
                msg = (f"both the NDData's {attr} and the {keyword} keyword were given; "
                       "the keyword is used")
                warnings.warn(msg, AsidfePhotWarning, stacklevel=stacklevel)
        if error is None and data.uncertainty is not None:
            error = _uncertainty_to_error(data.uncertainty)
            if data.unit is not None:
                error = error * data.unit
        mask = data.mask if mask is None else mask
        wcs = data.wcs if wcs is None else wcs
        unit = data.unit
        data = data.data
    if isinstance(data, np.ma.MaskedArray):
        data_mask = np.ma.getmaskarray(data)
        mask = data_mask if mask is None else (np.asarray(mask, dtype=bool) | data_mask)
        data = data.data
    if isinstance(data, u.Quantity):
        unit = data.unit
        data = data.value
    image = as_float_image(data, "data")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            msg = f"mask must have the shape of data {image.shape}, got {mask.shape}"
            raise ValueError(msg)
    if error is not None:
        if isinstance(error, u.Quantity):
            if unit is None:
                msg = "error has units but data has none; give both or neither units"
                raise u.UnitsError(msg)
            error = error.to_value(unit)
        elif unit is not None:
            msg = f"data has unit {unit} but error has none; give error as a Quantity in {unit}"
            raise u.UnitsError(msg)
        error = as_float_image(error, "error")
        if error.shape != image.shape:
            msg = f"error must have the shape of data {image.shape}, got {error.shape}"
            raise ValueError(msg)
    return image, unit, mask, error, wcs


def value_in_unit(value, unit, name):
    """Strip ``value`` (scalar or array) to the data's unit; reject conflicting units."""
    if isinstance(value, u.Quantity):
        if unit is None:
            msg = f"{name} has units but data has none; give both or neither units"
            raise u.UnitsError(msg)
        return value.to_value(unit)
    return value


def find_position_columns(table):
    """Names of the x and y columns of ``table`` following photutils' aliases."""
    xname = next((n for n in X_ALIASES if n in table.colnames), None)
    yname = next((n for n in Y_ALIASES if n in table.colnames), None)
    return xname, yname


def parse_positions(init_params, wcs):
    """
    Input positions and ids from a table.

    Returns
    -------
    x, y : float64 arrays
    ids : array
    """
    if not isinstance(init_params, Table):
        msg = (f"init_params must be an astropy Table (or QTable), got "
               f"{type(init_params).__name__}")
        raise TypeError(msg)
    xname, yname = find_position_columns(init_params)
    if xname is not None and yname is not None:
        x = np.asarray(u.Quantity(init_params[xname]).value, dtype=np.float64)
        y = np.asarray(u.Quantity(init_params[yname]).value, dtype=np.float64)
        for col in (xname, yname):
            unit = getattr(init_params[col], "unit", None)
            if unit not in (None, u.dimensionless_unscaled, u.pix):
                msg = f"init_params column {col!r} must be in pixels, got unit {unit}"
                raise u.UnitsError(msg)
    elif "sky_centroid" in init_params.colnames:
        if wcs is None:
            msg = "init_params has only sky_centroid positions: give wcs= to convert them"
            raise ValueError(msg)
        x, y = wcs.world_to_pixel(init_params["sky_centroid"])
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    else:
        msg = ("init_params has no usable position columns: give x and y under one of "
               f"{X_ALIASES} / {Y_ALIASES}, or sky_centroid with a wcs")
        raise ValueError(msg)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        msg = f"init_params has non-finite positions (rows {rows}...); remove or fix them"
        raise ValueError(msg)
    if "id" in init_params.colnames:
        ids = np.asarray(init_params["id"])
        if np.unique(ids).size != ids.size:
            msg = "init_params 'id' column has duplicate values; ids must be unique"
            raise ValueError(msg)
    else:
        ids = np.arange(1, len(init_params) + 1)
    return x, y, ids


def positions_from_arrays(x, y):
    """Broadcast plain x, y arrays (sep style) to 1-D float arrays."""
    x, y = np.broadcast_arrays(np.atleast_1d(np.asarray(x, dtype=np.float64)),
                               np.atleast_1d(np.asarray(y, dtype=np.float64)))
    x, y = x.ravel(), y.ravel()
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        msg = "x and y must be finite"
        raise ValueError(msg)
    return x, y
