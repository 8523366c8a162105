"""Input validation and normalisation for MLPhotometry (one place, one message style)."""

import os
import sys
import warnings

import astropy.units as u
import numpy as np
from astropy.nddata import InverseVariance, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.table import Table
from astropy.utils.masked import Masked

from asidfe_phot.exceptions import AsidfePhotWarning

__all__ = []  # private module

#: Position column aliases, as photutils' PSFPhotometry accepts them (first match wins).
X_ALIASES = ("x_init", "xinit", "x", "x_0", "x0", "xcentroid", "x_centroid", "x_peak", "xcen",
             "x_cen", "xpos", "x_pos", "x_fit", "xfit")
Y_ALIASES = tuple(a.replace("x", "y", 1) for a in X_ALIASES)


#: Images whose typical pixel value is within 2**+-SAFE_EXPONENT are measured as given;
#: others are first scaled by a power of two (exact), so that float32 arithmetic neither
#: overflows (variances of 1e18 data) nor underflows (f_nu images near 1e-30).
SAFE_EXPONENT = 20
#: Pixels sampled to find an image's typical value.
_SCALE_SAMPLES = 1_000_000


def user_stacklevel():
    """
    The ``stacklevel`` for `warnings.warn`, called where it is, that names the first
    frame outside the package: the user's line, however deep the call path within.
    """
    package = os.path.dirname(__file__) + os.sep  # as the code objects name their files
    frame = sys._getframe(1)  # the function that warns
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def _real_array(array, name):
    arr = np.asarray(array)
    if arr.ndim != 2:
        msg = f"{name} must be a 2-D image, got an array of shape {arr.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == bool):
        msg = f"{name} must be numeric (real numbers), got dtype {arr.dtype}"
        raise TypeError(msg)
    return arr


def as_float_image(array, name, exponent=0):
    """
    Native-endian float32 2-D array (FITS gives big-endian; CNN input is float32),
    divided by ``2**exponent`` before the conversion (exact; no float32 overflow).
    """
    arr = _real_array(array, name)
    if exponent:
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        arr = np.ldexp(arr, -exponent)
    return arr.astype(np.float32, copy=False).astype(np.dtype("=f4"), copy=False)


def scale_exponent(array, mask=None):
    """
    ``e`` such that ``array / 2**e`` has typical values near 1, or 0 when they already
    lie within ``2**+-SAFE_EXPONENT``.

    The typical value is the median absolute deviation of a regular sample of the
    usable pixels (their mean absolute deviation where the MAD is 0, e.g. a noiseless
    image). A power of two keeps the scaling exact, so ``data * k`` gives ``flux * k``.
    """
    arr = _real_array(array, "data")
    step = max(1, int(np.sqrt(arr.size / _SCALE_SAMPLES)))
    sample = np.asarray(arr[::step, ::step], dtype=np.float64)
    usable = np.isfinite(sample)
    if mask is not None:
        usable &= ~np.asarray(mask, dtype=bool)[::step, ::step]
    sample = sample[usable]
    if not sample.size:
        return 0
    deviation = np.abs(sample - np.median(sample))
    level = np.median(deviation)
    if not level > 0:
        level = np.mean(deviation)
    if not (level > 0 and np.isfinite(level)):
        level = np.max(np.abs(sample))
    if not (level > 0 and np.isfinite(level)):
        return 0
    exponent = int(np.round(np.log2(level)))
    return exponent if abs(exponent) > SAFE_EXPONENT else 0


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


def split_mask(value):
    """
    ``(values, mask)`` of a numpy MaskedArray or an astropy ``Masked`` array or
    Quantity; ``(value, None)`` for anything else.
    """
    if isinstance(value, np.ma.MaskedArray):
        return np.ma.getdata(value), np.ma.getmaskarray(value)
    if isinstance(value, Masked):
        return value.unmasked, np.asarray(value.mask, dtype=bool)
    return value, None


def _merge_masks(*masks):
    given = [np.asarray(m, dtype=bool) for m in masks if m is not None]
    if not given:
        return None
    return np.logical_or.reduce(np.broadcast_arrays(*given)) if len(given) > 1 else given[0]


def check_flux_unit(unit, name="data"):
    """Refuse logarithmic units (mag, dex): fluxes must add, magnitudes do not."""
    if unit is None:
        return
    if isinstance(unit, u.FunctionUnitBase) or unit.is_equivalent(u.dex):
        msg = (f"{name} is in {unit}, a logarithmic unit: give linear fluxes (e.g. convert "
               "magnitudes with .physical or 10**(-0.4 * mag))")
        raise u.UnitsError(msg)


class CoercedData:
    """The parts of the input image, scaled by ``2**-exponent`` (see `scale_exponent`)."""

    def __init__(self, image, unit, mask, error, wcs, exponent):
        self.image = image          # float32, divided by 2**exponent
        self.unit = unit            # the data's unit, or None
        self.mask = mask            # bool array or None
        self.error = error          # float32 array (divided by 2**exponent) or None
        self.wcs = wcs
        self.exponent = exponent

    @property
    def scale(self):
        """The factor that takes the internal values back to the data's."""
        return float(2.0 ** self.exponent)


def coerce_data(data, mask, error, wcs):
    """
    Split ``data`` (array, Quantity, MaskedArray, astropy Masked, NDData/CCDData) into
    parts; see `CoercedData`. Masks of the data, of ``mask`` and of a masked ``error``
    are merged; masked or non-positive error pixels are unusable.
    """
    unit = None
    if isinstance(data, NDData):
        for given, attr in ((mask, "mask"), (error, "uncertainty"), (wcs, "wcs")):
            if given is not None and getattr(data, attr) is not None:
                keyword = "error" if attr == "uncertainty" else attr
                msg = (f"both the NDData's {attr} and the {keyword} keyword were given; "
                       "the keyword is used")
                warnings.warn(msg, AsidfePhotWarning, stacklevel=user_stacklevel())
        if error is None and data.uncertainty is not None:
            error = _uncertainty_to_error(data.uncertainty)
            if data.unit is not None:
                error = error * data.unit
        mask = data.mask if mask is None else mask
        wcs = data.wcs if wcs is None else wcs
        unit = data.unit
        data = data.data
    data, data_mask = split_mask(data)
    mask, mask_mask = split_mask(mask)
    error, error_mask = split_mask(error)
    if isinstance(data, u.Quantity):
        unit = data.unit
        data = data.value
    check_flux_unit(unit)
    if wcs is not None and not (hasattr(wcs, "pixel_to_world") and hasattr(wcs, "world_to_pixel")):
        msg = f"wcs must be an astropy WCS (or APE 14 WCS object), got {type(wcs).__name__}"
        raise TypeError(msg)
    shape = _real_array(data, "data").shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool) | (False if mask_mask is None else mask_mask)
        if mask.shape != shape:
            msg = f"mask must have the shape of data {shape}, got {mask.shape}"
            raise ValueError(msg)
    mask = _merge_masks(mask, data_mask, error_mask)
    exponent = scale_exponent(data, mask)
    image = as_float_image(data, "data", exponent)
    if error is not None:
        if isinstance(error, u.Quantity):
            if unit is None:
                msg = "error has units but data has none; give both or neither units"
                raise u.UnitsError(msg)
            error = error.to_value(unit)
        elif unit is not None:
            msg = f"data has unit {unit} but error has none; give error as a Quantity in {unit}"
            raise u.UnitsError(msg)
        error = as_float_image(error, "error", exponent)
        if error.shape != image.shape:
            msg = f"error must have the shape of data {image.shape}, got {error.shape}"
            raise ValueError(msg)
        usable = np.isfinite(error) & (error > 0)
        if not usable.any():
            msg = ("error has no usable pixel: every value is zero, negative or non-finite "
                   "(give the 1-sigma error per pixel, in data units)")
            raise ValueError(msg)
    return CoercedData(image, unit, mask, error, wcs, exponent)


def value_in_unit(value, unit, name):
    """Strip ``value`` (scalar or array) to the data's unit; reject conflicting units."""
    if isinstance(value, u.Quantity):
        if unit is None:
            msg = f"{name} has units but data has none; give both or neither units"
            raise u.UnitsError(msg)
        try:
            return value.to_value(unit)
        except u.UnitConversionError as exc:
            msg = f"{name} is in {value.unit}, which does not convert to the data's unit {unit}"
            raise u.UnitsError(msg) from exc
    return value


def _scalar(value, name, what):
    arr = np.asarray(value)
    if arr.ndim != 0:
        msg = f"{name} must be a single number ({what}), got an array of shape {arr.shape}"
        raise ValueError(msg)
    try:
        number = float(arr)
    except (TypeError, ValueError) as exc:
        msg = f"{name} must be a number ({what}), got {value!r}"
        raise TypeError(msg) from exc
    if np.iscomplexobj(arr):
        msg = f"{name} must be a real number, got {value!r}"
        raise TypeError(msg)
    return number


def saturation_value(saturation, unit):
    """The saturation level as a finite float in the data's unit."""
    value = _scalar(value_in_unit(saturation, unit, "saturation"), "saturation",
                    "the saturation level in data units")
    if not np.isfinite(value):
        msg = f"saturation must be finite, got {value}"
        raise ValueError(msg)
    return value


#: Units a gain counts in: electrons, photons, counts, or none (``gain`` per data unit).
_GAIN_COUNT_UNITS = (u.electron, u.photon, u.count, u.dimensionless_unscaled)


def gain_value(gain, unit):
    """
    The gain as a positive finite float, electrons per data unit.

    Accepts a plain number, or a Quantity such as ``2 * u.electron / u.adu`` for
    data in adu (electron, photon, count or dimensionless per data unit).
    """
    if isinstance(gain, u.Quantity):
        if unit is None:
            msg = (f"gain has units ({gain.unit}) but data has none; give the data a unit "
                   "or the gain as a plain number (electrons per data unit)")
            raise u.UnitsError(msg)
        for count in _GAIN_COUNT_UNITS:
            try:
                gain = gain.to_value(count / unit)
                break
            except u.UnitConversionError:
                continue
        else:
            msg = (f"gain is in {gain.unit}: expected electrons per data unit, "
                   f"e.g. u.electron / ({unit})")
            raise u.UnitsError(msg)
    value = _scalar(gain, "gain", "electrons per data unit")
    if not (value > 0 and np.isfinite(value)):
        msg = f"gain must be positive and finite (electrons per data unit), got {value}"
        raise ValueError(msg)
    return value


def find_position_columns(table):
    """Names of the x and y columns of ``table`` following photutils' aliases."""
    xname = next((n for n in X_ALIASES if n in table.colnames), None)
    yname = next((n for n in Y_ALIASES if n in table.colnames), None)
    return xname, yname


def _position_values(column, name):
    """Float values of a position column, NaN where masked (blank cells)."""
    values, mask = split_mask(column)
    unit = getattr(column, "unit", None)
    if unit not in (None, u.dimensionless_unscaled, u.pix):
        msg = f"init_params column {name!r} must be in pixels, got unit {unit}"
        raise u.UnitsError(msg)
    values = np.asarray(getattr(values, "value", values))
    if values.dtype.kind not in "iufb":
        if mask is not None:
            values = np.where(mask, "nan", values.astype(str))
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError) as exc:
            msg = (f"init_params column {name!r} must hold numbers (pixel positions), "
                   f"got dtype {values.dtype}: {exc}")
            raise TypeError(msg) from exc
    values = np.array(values, dtype=np.float64)
    if mask is not None:
        values[np.asarray(mask, dtype=bool)] = np.nan
    return values


def parse_positions(init_params, wcs):
    """
    Input positions and ids from a table.

    Masked (blank) and non-finite positions are kept, as NaN: the caller flags
    their rows, so every input row comes back.

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
        x = _position_values(init_params[xname], xname)
        y = _position_values(init_params[yname], yname)
    elif "sky_centroid" in init_params.colnames:
        if wcs is None:
            msg = "init_params has only sky_centroid positions: give wcs= to convert them"
            raise ValueError(msg)
        x, y = wcs.world_to_pixel(init_params["sky_centroid"])
        x, y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
        masked = getattr(init_params["sky_centroid"], "mask", None)
        if masked is not None and np.any(masked):
            x[np.asarray(masked, dtype=bool)] = np.nan
            y[np.asarray(masked, dtype=bool)] = np.nan
    else:
        msg = ("init_params has no usable position columns: give x and y under one of "
               f"{X_ALIASES} / {Y_ALIASES}, or sky_centroid with a wcs")
        raise ValueError(msg)
    if "id" in init_params.colnames:
        ids = init_params["id"]
        if getattr(ids, "mask", None) is not None and np.any(ids.mask):
            msg = "init_params 'id' column has blank (masked) values; ids must be given for all"
            raise ValueError(msg)
        ids = np.asarray(ids)
        if np.unique(ids).size != ids.size:
            msg = "init_params 'id' column has duplicate values; ids must be unique"
            raise ValueError(msg)
    else:
        ids = np.arange(1, len(init_params) + 1)
    return x, y, ids
