"""
Input sources that share a stamp's core, and what their sharing leaves uncertain.

The network measures the light in a stamp's core as one source's: two input
sources closer than the core radius each get (nearly) the pair's total. A PSF
fit splits them where the data allow; where nothing splits them, the flux
error must cover the light that may be the neighbour's.
"""

import numpy as np

__all__ = []  # private module

#: Half-size (px) of the stamp core a neighbour must not enter (Chebyshev distance).
CORE_RADIUS = 3


def core_pairs(x, y, radius=CORE_RADIUS):
    """Index pairs (n, 2) of input positions within ``radius`` px on both axes."""
    from scipy.spatial import cKDTree

    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if ok.size < 2:
        return np.zeros((0, 2), dtype=np.intp)
    tree = cKDTree(np.column_stack([x[ok], y[ok]]))
    pairs = tree.query_pairs(radius, p=np.inf, output_type="ndarray")
    return ok[pairs] if pairs.size else np.zeros((0, 2), dtype=np.intp)


def core_neighbours(x, y, radius=CORE_RADIUS):
    """Rows with another input position within ``radius`` px on both axes."""
    out = np.zeros(np.size(x), bool)
    out[core_pairs(x, y, radius).ravel()] = True
    return out


def shared_light(x, y, flux, rows, radius=CORE_RADIUS):
    """
    The flux and position uncertainty that unsplit core neighbours add.

    For each of ``rows`` (bool), half the summed measured flux of its core
    neighbours (an equal pair measured as one: each reads twice its flux, and
    half the neighbour's reading is the excess) and half its distance to the
    furthest of them (the measured centre lies between the two).

    Returns
    -------
    flux_extra, position_extra : arrays, zero outside ``rows``
    """
    flux_extra = np.zeros(np.size(x))
    position_extra = np.zeros(np.size(x))
    pairs = core_pairs(x, y, radius)
    if not pairs.size:
        return flux_extra, position_extra
    a, b = pairs[:, 0], pairs[:, 1]
    light = np.abs(np.nan_to_num(np.asarray(flux, dtype=float)))
    distance = np.hypot(x[a] - x[b], y[a] - y[b])
    np.add.at(flux_extra, a, 0.5 * light[b])
    np.add.at(flux_extra, b, 0.5 * light[a])
    np.maximum.at(position_extra, a, 0.5 * distance)
    np.maximum.at(position_extra, b, 0.5 * distance)
    rows = np.asarray(rows, dtype=bool)
    return np.where(rows, flux_extra, 0.0), np.where(rows, position_extra, 0.0)
