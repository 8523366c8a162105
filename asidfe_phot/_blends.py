"""
Input sources that share a stamp's core, and what their sharing leaves uncertain.

The network measures the light in a stamp's core as one source's: two input
sources closer than the core radius each get (nearly) the pair's total. A PSF
fit splits them where the data allow; where nothing splits them, the flux
error covers the light that may be the neighbour's, and sources within a pixel
of each other (the same stamp for the network) share their reading equally, so
their light is counted once (also in a model image).
"""

import numpy as np

from asidfe_phot._thresholds import CORE_RADIUS, SAME_STAMP_SEPARATION, SHARED_LIGHT_FRACTION

__all__ = []  # private module


def core_pairs(x, y, radius=CORE_RADIUS):
    """Index pairs (n, 2) of input positions within ``radius`` px on both axes."""
    from scipy.spatial import cKDTree

    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if ok.size < 2:
        return np.zeros((0, 2), dtype=np.intp)
    tree = cKDTree(np.column_stack([x[ok], y[ok]]))
    pairs = tree.query_pairs(radius, p=np.inf, output_type="ndarray")
    return ok[pairs] if pairs.size else np.zeros((0, 2), dtype=np.intp)


def shared_light(x, y, flux, rows, pairs):
    """
    The flux and position uncertainty that unsplit core neighbours add.

    For each of ``rows`` (bool), half the summed measured flux of its core
    neighbours (``pairs``, from `core_pairs`; an equal pair measured as one:
    each reads twice its flux, and half the neighbour's reading is the excess)
    and half its distance to the furthest of them (the measured centre lies
    between the two).

    Returns
    -------
    flux_extra, position_extra : arrays, zero outside ``rows``
    """
    flux_extra = np.zeros(np.size(x))
    position_extra = np.zeros(np.size(x))
    if not pairs.size:
        return flux_extra, position_extra
    a, b = pairs[:, 0], pairs[:, 1]
    light = np.abs(np.nan_to_num(np.asarray(flux, dtype=float)))
    distance = np.hypot(x[a] - x[b], y[a] - y[b])
    np.add.at(flux_extra, a, SHARED_LIGHT_FRACTION * light[b])
    np.add.at(flux_extra, b, SHARED_LIGHT_FRACTION * light[a])
    np.maximum.at(position_extra, a, SHARED_LIGHT_FRACTION * distance)
    np.maximum.at(position_extra, b, SHARED_LIGHT_FRACTION * distance)
    rows = np.asarray(rows, dtype=bool)
    return np.where(rows, flux_extra, 0.0), np.where(rows, position_extra, 0.0)


def cover_shared_light(res, x, y, pairs):
    """
    Share the readings of core neighbours (``pairs``) that no PSF fit split,
    and widen their errors (`shared_light`), in place.

    Each unsplit source's reading is divided by one plus its number of unsplit
    neighbours within ``SAME_STAMP_SEPARATION`` px (which read the same light): an
    equal pair gets its true fluxes, an unequal one the mean, within the widened
    error (half the neighbours' readings).
    """
    unsplit = ~res.get("split", np.zeros(np.size(x), bool))
    flux_extra, position_extra = shared_light(x, y, res["flux_fit"], unsplit, pairs)
    sharing = np.ones(np.size(x))
    if pairs.size:
        a, b = pairs[:, 0], pairs[:, 1]
        same = np.hypot(x[a] - x[b], y[a] - y[b]) <= SAME_STAMP_SEPARATION
        both = unsplit[a] & unsplit[b] & same
        np.add.at(sharing, pairs[both].ravel(), 1.0)
    res["flux_fit"] = res["flux_fit"] / sharing
    res["flux_err"] = np.hypot(res["flux_err"] / sharing, flux_extra)
    res["x_err"] = np.hypot(res["x_err"], position_extra)
    res["y_err"] = np.hypot(res["y_err"], position_extra)
