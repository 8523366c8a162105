"""
Fast 2-D background and background-noise maps (SourceExtractor-style mesh).

Used by inference (the default background) and by the simulator when it
prepares training stamps, so both see the same background errors.
"""

import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.ndimage import median_filter

__all__ = []  # private module


def _sorted_median(s, lo, count):
    """Median of the sorted rows' slices [lo, lo + count)."""
    rows = np.arange(s.shape[0])
    a = s[rows, np.clip(lo + (count - 1) // 2, 0, s.shape[1] - 1)]
    b = s[rows, np.clip(lo + count // 2, 0, s.shape[1] - 1)]
    return 0.5 * (a + b)


def _clipped_stats(samples, nsigma=3.0, maxiters=4):
    """
    Sigma-clipped mode estimate and std along axis 1; NaN entries are ignored.

    Iterative clipping at ``nsigma`` around the median (std with ddof=0). Each
    row is sorted once; a clipped set is then a contiguous slice, so the
    statistics of every iteration come from cumulative sums, not new medians.
    """
    s = np.sort(samples.astype(np.float64), axis=1)  # NaNs sort last
    # The cumulative sums below lose all precision next to an extreme value (one
    # -2**31 pixel makes every variance 0 or garbage): values beyond 1e6 interquartile
    # ranges of the median (no sky holds a star that bright; an int32 blank value is)
    # are dropped first, and the sums are taken about the median. Ordinary meshes are
    # left exactly as before (the training data were made with them).
    count = np.isfinite(s).sum(axis=1)
    rows = np.arange(s.shape[0])

    def quantile(q):
        return s[rows, np.clip(((count - 1) * q).astype(np.int64), 0, s.shape[1] - 1)]

    centre = quantile(0.5)
    reach = 1e6 * (quantile(0.75) - quantile(0.25))
    with np.errstate(invalid="ignore"):
        far = (np.abs(s - centre[:, None]) > reach[:, None]) & (reach[:, None] > 0)
    if far.any():
        s = np.sort(np.where(far, np.nan, s), axis=1)
    s = s - np.where(np.isfinite(centre), centre, 0.0)[:, None]
    zero = np.nan_to_num(s)
    pad = np.zeros((s.shape[0], 1))
    cs = np.concatenate([pad, np.cumsum(zero, axis=1)], axis=1)
    cs2 = np.concatenate([pad, np.cumsum(zero**2, axis=1)], axis=1)
    lo = np.zeros(s.shape[0], dtype=np.int64)
    hi = np.isfinite(s).sum(axis=1)

    def stats(lo, hi):
        count = np.maximum(hi - lo, 1)
        mean = (cs[rows, hi] - cs[rows, lo]) / count
        var = np.maximum((cs2[rows, hi] - cs2[rows, lo]) / count - mean**2, 0.0)
        return _sorted_median(s, lo, count), mean, np.sqrt(var)

    for _ in range(maxiters):
        med, _, std = stats(lo, hi)
        with np.errstate(invalid="ignore"):
            new_lo = (s < (med - nsigma * std)[:, None]).sum(axis=1)
            new_hi = (s <= (med + nsigma * std)[:, None]).sum(axis=1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, mean, std = stats(lo, hi)
    shift = np.where(np.isfinite(centre), centre, 0.0)
    med, mean = med + shift, mean + shift
    # SourceExtractor's mode estimate, falling back to the median in skewed meshes.
    mode = 2.5 * med - 1.5 * mean
    skewed = np.abs(mean - med) > 0.3 * std
    return np.where(skewed, med, mode), std


def estimate_background(data, mask=None, box_size=64, filter_size=3, subsample=2):
    """
    Background and background-rms maps from a sigma-clipped mesh.

    Parameters
    ----------
    data : 2-D float array
    mask : 2-D bool array, optional
        True for pixels to ignore (non-finite pixels are always ignored).
    box_size : int
        Mesh size in pixels.
    filter_size : int
        Median filter over the mesh, in meshes.
    subsample : int
        Use every ``subsample``-th pixel of each mesh in each direction (speed).

    Returns
    -------
    background, background_rms : 2-D float32 arrays, shape of ``data``
    """
    data = np.asarray(data, dtype=np.float32)
    ny, nx = data.shape
    box = int(min(box_size, ny, nx))
    nby, nbx = -(-ny // box), -(-nx // box)
    padded = np.full((nby * box, nbx * box), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data
    bad = ~np.isfinite(padded)
    if mask is not None:
        bad[:ny, :nx] |= np.asarray(mask, dtype=bool)
    padded[bad] = np.nan
    # Tiny images (under 16 px) are used whole: subsampling would leave too few pixels.
    step = max(1, int(subsample)) if box >= 16 else 1
    meshes = padded.reshape(nby, box, nbx, box)[:, ::step, :, ::step]
    meshes = meshes.transpose(0, 2, 1, 3).reshape(nby * nbx, -1)
    good = np.isfinite(meshes).sum(axis=1) >= max(10, meshes.shape[1] // 4)
    level = np.full(nby * nbx, np.nan)
    rms = np.full(nby * nbx, np.nan)
    if good.any():
        level[good], rms[good] = _clipped_stats(meshes[good])
    else:
        msg = "no usable pixels to estimate the background (all masked or non-finite)"
        raise ValueError(msg)
    # Meshes without enough pixels take the global value before filtering.
    level[~good] = np.nanmedian(level[good])
    rms[~good] = np.nanmedian(rms[good])
    level = level.reshape(nby, nbx)
    rms = rms.reshape(nby, nbx)
    if filter_size > 1 and min(nby, nbx) >= filter_size:
        level = median_filter(level, size=filter_size, mode="nearest")
        rms = median_filter(rms, size=filter_size, mode="nearest")
    return _interpolate_mesh(level, box, ny, nx), _interpolate_mesh(rms, box, ny, nx)


def _interpolate_mesh(mesh, box, ny, nx):
    nby, nbx = mesh.shape
    if nby == 1 and nbx == 1:
        return np.full((ny, nx), mesh[0, 0], dtype=np.float32)
    yc = (np.arange(nby) + 0.5) * box - 0.5
    xc = (np.arange(nbx) + 0.5) * box - 0.5
    if nby == 1 or nbx == 1:
        # 1-D mesh: interpolate along the long axis only.
        along = xc if nby == 1 else yc
        prof = np.interp(np.arange(nx if nby == 1 else ny), along, mesh.ravel())
        full = np.broadcast_to(prof[None, :] if nby == 1 else prof[:, None], (ny, nx))
        return np.ascontiguousarray(full, dtype=np.float32)
    spline = RectBivariateSpline(yc, xc, mesh, kx=min(3, nby - 1), ky=min(3, nbx - 1))
    yy = np.clip(np.arange(ny), yc[0], yc[-1])
    xx = np.clip(np.arange(nx), xc[0], xc[-1])
    return spline(yy, xx).astype(np.float32)
