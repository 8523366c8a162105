"""
photutils' `~photutils.psf.PSFPhotometry` API as `~asidfe_phot.MLPhotometry` takes it
(private): the validation of photutils' keywords, the parameters a PSF model holds fixed,
the source groups, and the ``init_params`` forms besides a table.

Each photutils keyword either means here what it means there, or a value we cannot give
that meaning raises a `ValueError` that says so: none is silently ignored.
"""

import os
import warnings

import numpy as np
from astropy.table import QTable, Table
from astropy.utils.exceptions import AstropyDeprecationWarning

from asidfe_phot import models as _models
from asidfe_phot._validation import split_mask, user_stacklevel, value_in_unit
from asidfe_phot.exceptions import AsidfePhotWarning

__all__ = []  # private module

#: photutils 3.0's defaults of the keywords we accept only at that value.
FITTER_MAXITERS = 100
GROUP_WARNING_THRESHOLD = 25
#: The PSF model's parameters that MLPhotometry measures, as photutils names its columns.
MAIN_PARAMETERS = {"x": "x_0", "y": "y_0", "flux": "flux"}


def is_model_reference(value):
    """
    Whether ``value`` names a network rather than a PSF: a shipped model name or a model
    directory (what ``MLPhotometry``'s first positional argument was before 0.1).
    """
    if isinstance(value, str) and value == "auto":
        return False
    if isinstance(value, str) and _models._is_shipped(value):
        return True
    # A PSFEx PSF is a file; a network is a directory (holding its card).
    return isinstance(value, (str, os.PathLike)) and os.path.isdir(os.fspath(value))


def split_model_and_psf(psf_model, model, default_psf):
    """
    ``(model, psf_model)`` from the constructor's first positional argument and ``model=``.

    A network name or directory given positionally (the pre-0.1 call
    ``MLPhotometry("asidfe_tsmve_v5")``) still works, with a deprecation warning.
    """
    if psf_model is default_psf or not is_model_reference(psf_model):
        return model, psf_model
    if model is not None:
        msg = (f"the first positional argument {psf_model!r} names a network and model= "
               f"{model!r} too: the first argument is psf_model (as photutils' PSFPhotometry); "
               "give the network as model= only")
        raise TypeError(msg)
    msg = (f"MLPhotometry({psf_model!r}): the first positional argument is now psf_model, as "
           f"in photutils' PSFPhotometry(psf_model, fit_shape, ...); give the network as "
           f"MLPhotometry(model={psf_model!r})")
    warnings.warn(msg, AstropyDeprecationWarning, stacklevel=user_stacklevel())
    return psf_model, default_psf


def fit_shape_pair(fit_shape, psf_model):
    """photutils' ``fit_shape`` as ``(ny, nx)`` odd ints >= 1, or None (our default box)."""
    if fit_shape is None:
        return None
    if psf_model is None:
        msg = ("fit_shape is the box of the PSF fit, and psf_model=None fits no PSF: give a "
               "psf_model (or 'auto'), or leave fit_shape=None")
        raise ValueError(msg)
    pair = np.atleast_1d(fit_shape)
    if pair.ndim != 1 or pair.size not in (1, 2) or pair.dtype.kind not in "iuf":
        msg = f"fit_shape must be an odd integer or a pair (ny, nx) of them, got {fit_shape!r}"
        raise ValueError(msg)
    pair = np.broadcast_to(pair, 2)
    if np.any(pair != np.round(pair)) or np.any(pair < 1) or np.any(pair % 2 != 1):
        msg = f"fit_shape must hold odd integers >= 1, got {fit_shape!r}"
        raise ValueError(msg)
    return int(pair[0]), int(pair[1])


def xy_bounds_pair(xy_bounds):
    """photutils' ``xy_bounds`` as ``(bx, by)`` (px, None: unbounded), or None."""
    if xy_bounds is None:
        return None
    values = list(xy_bounds) if np.ndim(xy_bounds) else [xy_bounds]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        msg = f"xy_bounds must be a number or a pair (x, y) of them, got {xy_bounds!r}"
        raise ValueError(msg)
    for bound in values:
        if bound is None:
            continue
        if not (np.isscalar(bound) and np.isfinite(bound) and bound > 0):
            msg = f"xy_bounds must be strictly positive and finite (px), got {xy_bounds!r}"
            raise ValueError(msg)
    if values == [None, None]:
        return None
    return tuple(None if b is None else float(b) for b in values)


def check_unsupported(fitter, fitter_maxiters):
    """Refuse photutils' fitter options we cannot honour (our fit is not an astropy fitter)."""
    if fitter is not None:
        msg = (f"fitter={fitter!r} cannot be used: MLPhotometry's PSF fit is its own "
               "Gauss-Newton fit started at the network's estimates, not an astropy fitter; "
               "leave fitter=None")
        raise ValueError(msg)
    if fitter_maxiters != FITTER_MAXITERS:
        msg = (f"fitter_maxiters={fitter_maxiters!r} cannot be honoured: the PSF fit takes a "
               f"fixed number of steps from the network's estimates; leave it at "
               f"{FITTER_MAXITERS}")
        raise ValueError(msg)


def aperture_radius_value(radius):
    """photutils' ``aperture_radius`` (a strictly positive finite number) or None."""
    if radius is None:
        return None
    if not (np.isscalar(radius) and not isinstance(radius, (bool, str))
            and np.isfinite(radius) and radius > 0):
        msg = f"aperture_radius must be a strictly positive number (px), got {radius!r}"
        raise ValueError(msg)
    return float(radius)


def group_threshold_value(threshold):
    """photutils' ``group_warning_threshold``: a positive integer."""
    if (isinstance(threshold, bool) or not np.isscalar(threshold)
            or int(threshold) != threshold or threshold < 1):
        msg = f"group_warning_threshold must be a positive integer, got {threshold!r}"
        raise ValueError(msg)
    return int(threshold)


def local_bkg_estimator_value(estimator):
    """photutils' ``local_bkg_estimator``: a callable ``(data, x, y, mask=)`` or None."""
    if estimator is not None and not callable(estimator):
        msg = ("local_bkg_estimator must be callable, e.g. "
               "photutils.background.LocalBackground(inner_radius, outer_radius)")
        raise TypeError(msg)
    return estimator


def callable_value(value, name, example):
    """``value`` when None or callable, else a TypeError naming ``name``."""
    if value is not None and not callable(value):
        msg = f"{name} must be callable, e.g. {example}"
        raise TypeError(msg)
    return value


def fixed_parameters(psf_model):
    """
    Which of x, y, flux the PSF model holds fixed (photutils' ``model.x_0.fixed``).

    ``"auto"`` and None have no parameters: nothing is fixed.
    """
    fixed = getattr(psf_model, "fixed", None)
    if psf_model is None or isinstance(psf_model, str) or fixed is None:
        return {"x": False, "y": False, "flux": False}
    free_extra = [name for name, held in fixed.items()
                  if not held and name not in MAIN_PARAMETERS.values()]
    if free_extra:
        msg = (f"psf_model has free parameters {free_extra} besides x_0, y_0 and flux: "
               "MLPhotometry fits only those three (the PSF's shape is given); fix them "
               f"(e.g. psf_model.{free_extra[0]}.fixed = True)")
        raise ValueError(msg)
    return {alias: bool(fixed.get(name, False)) for alias, name in MAIN_PARAMETERS.items()}


def parameter_bounds(psf_model):
    """
    The bounds a PSF model puts on x, y, flux (photutils' ``model.flux.bounds``; absolute
    values, None where open); ``"auto"`` and None have none.
    """
    bounds = getattr(psf_model, "bounds", None)
    if psf_model is None or isinstance(psf_model, str) or bounds is None:
        return {}
    return {alias: tuple(bounds[name]) for alias, name in MAIN_PARAMETERS.items()
            if name in bounds and any(b is not None for b in bounds[name])}


# --- init_params in every form photutils users have positions in ---------------------------

#: Flux column aliases of photutils' PSFPhotometry (first match wins).
FLUX_ALIASES = ("flux_init", "fluxinit", "flux", "flux_0", "flux0", "flux_fit", "fluxfit",
                "source_sum", "segment_flux", "kron_flux")


def init_params_table(init_params, x=None, y=None):
    """
    ``init_params`` (or the ``x=``, ``y=`` keywords) as a Table, or None.

    Accepted: an astropy Table; a pair ``(x, y)`` (a tuple) of numbers or arrays that
    broadcast together; an array of shape (N, 2) or (2,) holding (x, y) rows, as
    photutils apertures take positions; a photutils aperture (its ``positions``; a sky
    aperture gives ``sky_centroid``, converted with the call's wcs); a pandas-like
    data frame (anything with ``columns``), read column by column.
    """
    if x is not None or y is not None:
        if init_params is not None:
            msg = "give the positions either as init_params or as x= and y=, not both"
            raise TypeError(msg)
        if x is None or y is None:
            msg = "x= and y= go together: give both (pixel positions), or init_params"
            raise TypeError(msg)
        return _pair_table(x, y, "x, y")
    if init_params is None or isinstance(init_params, Table):
        return init_params
    positions = getattr(init_params, "positions", None)
    if positions is not None and type(init_params).__module__.startswith("photutils."):
        if hasattr(positions, "frame"):      # a sky aperture: SkyCoord positions
            return QTable({"sky_centroid": positions.reshape(-1)})
        return _rows_table(positions, "the aperture's positions")
    columns = getattr(init_params, "columns", None)
    if columns is not None and not isinstance(init_params, np.ndarray):
        return QTable({str(name): np.asarray(init_params[name]) for name in columns})
    if isinstance(init_params, tuple):
        if len(init_params) != 2:
            msg = (f"init_params as a tuple must be (x, y), got a tuple of {len(init_params)} "
                   "items")
            raise ValueError(msg)
        return _pair_table(*init_params, "init_params (x, y)")
    if isinstance(init_params, (list, np.ndarray)):
        return _rows_table(init_params, "init_params")
    msg = ("init_params must be an astropy Table, a pair (x, y) of arrays, an (N, 2) array "
           "of positions, a photutils aperture or a data frame, got "
           f"{type(init_params).__name__}")
    raise TypeError(msg)


def _numbers(values, what):
    arr = np.asarray(getattr(values, "value", values))
    if arr.dtype.kind not in "iufb":
        msg = f"{what} must hold numbers (pixel positions), got dtype {arr.dtype}"
        raise TypeError(msg)
    return arr.astype(np.float64)


def _pair_table(x, y, what):
    x, y = _numbers(x, what), _numbers(y, what)
    try:
        x, y = np.broadcast_arrays(np.atleast_1d(x), np.atleast_1d(y))
    except ValueError as exc:
        msg = f"{what}: x of shape {x.shape} and y of shape {y.shape} do not broadcast"
        raise ValueError(msg) from exc
    if x.ndim != 1:
        msg = f"{what} must be 1-D (one value per source), got shape {x.shape}"
        raise ValueError(msg)
    return QTable({"x": x.copy(), "y": y.copy()})


def _rows_table(rows, what):
    arr = _numbers(rows, what)
    if arr.ndim == 1 and arr.size == 2:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        msg = (f"{what} must hold (x, y) rows, shape (N, 2), got shape {arr.shape}; for "
               "separate x and y arrays pass a tuple (x, y)")
        raise ValueError(msg)
    return QTable({"x": arr[:, 0].copy(), "y": arr[:, 1].copy()})


def find_flux_column(table):
    """The name of ``table``'s initial-flux column (photutils' aliases), or None."""
    return next((n for n in FLUX_ALIASES if n in table.colnames), None)


def column_in_unit(table, name, unit, scale):
    """
    A flux-like column of ``table`` as float64 internal values (data units / ``scale``;
    plain numbers are taken as in the data's unit); NaN where blank.
    """
    values, mask = split_mask(table[name])
    values = value_in_unit(values, unit, f"init_params {name!r}")
    values = np.array(getattr(values, "value", values), dtype=np.float64)
    if mask is not None:
        values[np.asarray(mask, dtype=bool)] = np.nan
    return values / scale


# --- groups ----------------------------------------------------------------------------------

def group_ids(table, grouper, x, y, ids):
    """
    photutils' ``group_id`` of each source: ``init_params``' own column, else the
    ``grouper``'s groups of the input positions, else each source its own group (its
    ``id`` where ids are positive integers, as photutils, else its row number).
    """
    if table is not None and "group_id" in table.colnames:
        group = np.asarray(np.ma.filled(np.ma.asarray(table["group_id"]), -1))
        if group.dtype.kind not in "iu":
            msg = f"init_params 'group_id' must hold integers, got dtype {group.dtype}"
            raise TypeError(msg)
        if np.any(group <= 0):
            msg = "init_params 'group_id' must hold positive (> 0) integers for every row"
            raise ValueError(msg)
        return group.astype(np.int64)
    n = np.size(x)
    if grouper is not None:
        group = np.zeros(n, dtype=np.int64)
        located = np.isfinite(x) & np.isfinite(y)
        if np.count_nonzero(located):
            group[located] = np.asarray(grouper(x[located], y[located]), dtype=np.int64)
        # Sources without a position group with nobody.
        start = group.max(initial=0) + 1
        group[~located] = start + np.arange(np.count_nonzero(~located))
        return group
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu" and np.all(ids > 0):
        return ids.astype(np.int64)
    return np.arange(1, n + 1, dtype=np.int64)


def group_sizes(group):
    """The number of sources in each source's group."""
    _, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    return counts[inverse].astype(np.int64)


# --- results back to init_params ------------------------------------------------------------

def results_to_init_params(results, *, remove_invalid=True, reset_ids=True):
    """
    photutils' ``results_to_init_params`` of a result table: ``id`` and the fitted
    ``x_fit, y_fit, flux_fit`` as ``x_init, y_init, flux_init``.
    """
    if results is None:
        return None
    table = QTable()
    for name in ("id", "x_fit", "y_fit", "flux_fit"):
        table[name.replace("_fit", "_init")] = results[name]
    if remove_invalid:
        keep = np.ones(len(table), bool)
        for name in ("x_init", "y_init", "flux_init"):
            keep &= np.isfinite(np.asarray(getattr(table[name], "value", table[name])))
        table = table[keep]
        if reset_ids:
            table["id"] = np.arange(1, len(table) + 1)
    return table


# --- per-source inputs: initial flux, local background, groups -----------------------------

class SourceInputs:
    """What ``init_params`` and photutils' options give each source (internal units)."""

    def __init__(self, flux_init, local_extra, local_total, group_id, group_size):
        self.flux_init = flux_init      # initial fluxes, or None when not known
        self.local_extra = local_extra  # subtracted from each stamp after the 2-D background
        self.local_total = local_total  # the whole background per pixel at each source
        self.group_id = group_id
        self.group_size = group_size


def _aperture_fluxes(prepared, x, y, radius, local_extra):
    """photutils' initial fluxes: circular-aperture sums less the local background."""
    from photutils.aperture import CircularAperture, aperture_photometry

    flux = np.full(np.size(x), np.nan)
    located = np.isfinite(x) & np.isfinite(y)
    if located.any():
        aperture = CircularAperture(np.column_stack([x[located], y[located]]), radius)
        sums = aperture_photometry(prepared.subtracted, aperture, mask=prepared.bad)
        flux[located] = (np.asarray(sums["aperture_sum"], dtype=np.float64)
                         - local_extra[located] * aperture.area)
    return flux


def source_inputs(table, x, y, ids, prepared, coerced, phot):
    """
    The `SourceInputs` of a call of ``phot`` (an `~asidfe_phot.MLPhotometry`).

    The local background of a source is, as in photutils, ``init_params``' own
    ``local_bkg`` (the whole background per pixel at the source, in data units: it
    replaces the 2-D estimate there), else the ``local_bkg_estimator``'s annulus level
    on the 2-D-subtracted image, added to the 2-D background.
    """
    unit, scale = coerced.unit, coerced.scale
    n = np.size(x)
    background = prepared.background_at(x, y)  # at the sources only, not a whole map
    if table is not None and "local_bkg" in table.colnames:
        given = column_in_unit(table, "local_bkg", unit, scale)
        located = np.isfinite(x) & np.isfinite(y)
        if not np.all(np.isfinite(given[located])):
            msg = ("init_params 'local_bkg' must be finite for every source with a position "
                   "(the background per pixel at the source, data units; 0 for none)")
            raise ValueError(msg)
        local_extra = np.nan_to_num(given - background)
    elif phot.local_bkg_estimator is not None and n:
        local_extra = np.nan_to_num(np.asarray(phot.local_bkg_estimator(
            prepared.subtracted, x, y, mask=prepared.bad), dtype=np.float64))
    else:
        local_extra = None
    extra = np.zeros(n) if local_extra is None else local_extra
    local_total = background + extra
    flux_name = None if table is None else find_flux_column(table)
    if flux_name is not None:
        flux_init = column_in_unit(table, flux_name, unit, scale)
    elif phot.aperture_radius is not None:
        flux_init = _aperture_fluxes(prepared, x, y, phot.aperture_radius, extra)
    else:
        flux_init = None
    if fixed_parameters(phot.psf_model)["flux"] and flux_init is None:
        msg = ("psf_model.flux is fixed: give the fluxes in init_params (a flux_init, flux, "
               "... column) or an aperture_radius to measure them, as photutils needs")
        raise ValueError(msg)
    group = group_ids(table, phot.grouper, x, y, ids)
    size = group_sizes(group)
    if size.size and size.max() > phot.group_warning_threshold:
        msg = (f"some groups have more than {phot.group_warning_threshold} sources "
               "(group_warning_threshold): their light overlaps, so their fluxes are "
               "uncertain (see the BLENDED flag); consider a smaller SourceGrouper "
               "min_separation or init_params' group_id")
        warnings.warn(msg, AsidfePhotWarning, stacklevel=user_stacklevel())
    return SourceInputs(flux_init, local_extra, local_total, group, size)


def hold_fixed(res, fixed, flux_init, xy_bounds, bounds=None):
    """
    photutils' fixed parameters, ``xy_bounds`` and parameter bounds on the final values,
    in place: a fixed position is the input's, a fixed flux ``flux_init``, each with a
    NaN error (photutils' convention for parameters not fitted); a position stays within
    ``xy_bounds`` of the input; a value stays within its parameter's ``bounds``
    (`parameter_bounds`), as photutils' bounded fit keeps it.
    """
    for axis in ("x", "y"):
        if fixed[axis]:
            res[f"{axis}_fit"] = np.array(res[f"{axis}_init"], dtype=np.float64)
            res[f"{axis}_err"] = np.full(np.size(res[f"{axis}_fit"]), np.nan)
    if fixed["flux"]:
        res["flux_fit"] = np.array(flux_init, dtype=np.float64)
        res["flux_err"] = np.full(np.size(flux_init), np.nan)
    if xy_bounds is not None:
        for axis, bound in zip(("x", "y"), xy_bounds, strict=True):
            if bound is not None:
                start = res[f"{axis}_init"]
                res[f"{axis}_fit"] = np.clip(res[f"{axis}_fit"], start - bound, start + bound)
    for name, (low, high) in (bounds or {}).items():
        key = f"{name}_fit"
        res[key] = np.clip(res[key], -np.inf if low is None else low,
                           np.inf if high is None else high)


def half_shape(psf_shape, default):
    """Half-sizes ``(hy, hx)`` of photutils' ``psf_shape`` (int or pair; None: ``default``)."""
    if psf_shape is None:
        return (default, default)
    pair = np.broadcast_to(np.atleast_1d(psf_shape), 2) if np.size(psf_shape) in (1, 2) \
        else None
    if pair is None or pair.dtype.kind not in "iuf" or np.any(pair < 1) \
            or np.any(pair != np.round(pair)):
        msg = f"psf_shape must be a positive integer or a pair (ny, nx) of them, got {psf_shape!r}"
        raise ValueError(msg)
    return int(pair[0]) // 2, int(pair[1]) // 2


def settings_meta(phot, fixed):
    """photutils' settings of ``phot`` for the result's ``meta`` (how each was honoured)."""
    def described(value):
        return None if value is None else repr(value)

    return {"fit_shape": phot.fit_shape, "xy_bounds": phot.xy_bounds,
            "aperture_radius": phot.aperture_radius,
            "aperture_radius_use": "flux_init where init_params has no flux column",
            "fixed_parameters": [name for name, held in fixed.items() if held],
            "grouper": described(phot.grouper),
            "local_bkg_estimator": described(phot.local_bkg_estimator),
            "group_warning_threshold": phot.group_warning_threshold}
