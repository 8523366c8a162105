"""
Fast 2-D background and background-noise maps (SourceExtractor-style mesh).

Used by inference (the default background) and by the simulator when it
prepares training stamps, so both see the same background errors.
"""

import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.ndimage import median_filter

__all__ = []  # private module


def _clipped_stats(samples, nsigma=3.0, maxiters=4):
    """Sigma-clipped mode estimate and std along axis 1; NaN entries are ignored."""
    values = samples
    for _ in range(maxiters):
        med = np.nanmedian(values, axis=1, keepdims=True)
        std = np.nanstd(values, axis=1, keepdims=True)
        clipped = np.where(np.abs(values - med) > nsigma * std, np.nan, values)
        if np.array_equal(np.isnan(clipped), np.isnan(values)):
            break
        values = clipped
    med = np.nanmedian(values, axis=1)
    mean = np.nanmean(values, axis=1)
    std = np.nanstd(values, axis=1)
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
    step = max(1, int(subsample))
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
