"""
Fast 2-D background and background-noise maps (SourceExtractor-style mesh).

Used by inference (the default background) and by the simulator when it
prepares training stamps, so both see the same background errors.

The mesh statistics are computed a few mesh rows at a time, so no copy of the
whole image is made. The interpolated maps (`MeshMap`) are evaluated only
where they are asked for: in stamps, at pixels, on a grid of rows and columns,
or, for `estimate_background`, tile by tile over the whole image; each pixel
gets the same value whichever way it is asked for.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.interpolate import RectBivariateSpline
from scipy.ndimage import median_filter

__all__ = []  # private module

#: Meshes per batch of the sigma clipping (bounds its memory; rows are independent).
_BATCH_MESHES = 1024
#: Image rows per tile when a whole map is evaluated.
_TILE_ROWS = 256


def _sorted_median(s, lo, count):
    """Median of the sorted rows' slices [lo, lo + count)."""
    rows = np.arange(s.shape[0])
    a = s[rows, np.clip(lo + (count - 1) // 2, 0, s.shape[1] - 1)]
    b = s[rows, np.clip(lo + count // 2, 0, s.shape[1] - 1)]
    return 0.5 * (a + b)


def _count_leading(s, threshold, inclusive=False):
    """
    ``(s < threshold[:, None]).sum(axis=1)`` (``<=`` if ``inclusive``) for rows sorted
    ascending with NaNs last, by bisection instead of comparing every entry.
    """
    n, width = s.shape
    rows = np.arange(n)
    lo = np.zeros(n, dtype=np.int64)  # the count lies in [lo, hi]
    hi = np.full(n, width, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = (lo + hi) // 2
            value = s[rows, np.minimum(mid, width - 1)]
            below = (value <= threshold) if inclusive else (value < threshold)
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)


class _ClipBuffers:
    """
    The work arrays of `_clipped_rows` for batches of up to ``rows`` rows of ``width``,
    made once and reused by every batch (a fresh large array costs its page faults again).
    """

    def __init__(self, rows, width):
        self.sorted32 = np.empty((rows, width), dtype=np.float32)
        self.sorted64 = np.empty((rows, width))
        self.squares = np.empty((rows, width))
        # The cumulative sums (and of squares), each row with a leading 0.
        self.sums = np.empty((2, rows, width + 1))
        self.sums[:, :, 0] = 0.0


def _finite_count(s):
    """``np.isfinite(s).sum(axis=1)`` for rows sorted ascending with NaNs last."""
    n = s.shape[0]
    return (_count_leading(s, np.full(n, np.inf))
            - _count_leading(s, np.full(n, -np.inf), inclusive=True))


def _clipped_stats(samples, nsigma=3.0, maxiters=4, buffers=None):
    """
    Sigma-clipped mode estimate and std along axis 1; NaN entries are ignored.

    Iterative clipping at ``nsigma`` around the median (std with ddof=0). Each
    row is sorted once; a clipped set is then a contiguous slice, so the
    statistics of every iteration come from cumulative sums, not new medians.
    Rows are independent: they are done in batches (`_BATCH_MESHES`), in
    ``buffers`` (`_ClipBuffers`) when given.
    """
    n, width = samples.shape
    mode, std = np.empty(n), np.empty(n)
    if buffers is None or buffers.sorted64.shape[1] != width:
        buffers = _ClipBuffers(min(n, _BATCH_MESHES), width)
    step = buffers.sorted64.shape[0]
    for start in range(0, n, step):
        batch = slice(start, start + step)
        mode[batch], std[batch] = _clipped_rows(samples[batch], nsigma, maxiters, buffers)
    return mode, std


def _clipped_rows(samples, nsigma, maxiters, buffers):
    """`_clipped_stats` of one batch of rows, in ``buffers`` (`_ClipBuffers`)."""
    m = samples.shape[0]
    # Sorting float32 samples, then widening them, gives the float64 sort (the widening
    # keeps the order) in half the time.
    s = buffers.sorted64[:m]
    if samples.dtype == np.float32:
        sorted32 = buffers.sorted32[:m]
        np.copyto(sorted32, samples)
        sorted32.sort(axis=1)
        np.copyto(s, sorted32)
    else:
        np.copyto(s, samples, casting="unsafe")
        s.sort(axis=1)
    # The cumulative sums below lose all precision next to an extreme value (one
    # -2**31 pixel makes every variance 0 or garbage): values beyond 1e6 interquartile
    # ranges of the median (no sky holds a star that bright; an int32 blank value is)
    # are dropped first, and the sums are taken about the median. Ordinary meshes are
    # left exactly as before (the training data were made with them).
    count = _finite_count(s)
    rows = np.arange(s.shape[0])

    def quantile(q):
        return s[rows, np.clip(((count - 1) * q).astype(np.int64), 0, s.shape[1] - 1)]

    centre = quantile(0.5)
    reach = 1e6 * (quantile(0.75) - quantile(0.25))
    # In a sorted row the values farthest from the centre are the first and the last
    # that is not NaN: only rows where one of them is far are looked at in full.
    last = np.maximum(_count_leading(s, np.full(s.shape[0], np.inf), inclusive=True) - 1, 0)
    with np.errstate(invalid="ignore"):
        ends = np.abs(np.stack([s[:, 0], s[rows, last]], axis=1) - centre[:, None])
        odd = (ends > reach[:, None]).any(axis=1) & (reach > 0)
        if odd.any():
            far = np.abs(s[odd] - centre[odd, None]) > reach[odd, None]
            s[odd] = np.sort(np.where(far, np.nan, s[odd]), axis=1)
    s -= np.where(np.isfinite(centre), centre, 0.0)[:, None]
    hi = _finite_count(s)
    # Cumulative sums (and of squares) with a leading 0, NaNs counted as 0 (and any
    # infinity as the largest float, as nan_to_num).
    cs, cs2 = buffers.sums[0, :m], buffers.sums[1, :m]
    zero = buffers.squares[:m]
    if np.all(hi == s.shape[1]):  # no NaN nor infinity: the values themselves
        np.cumsum(s, axis=1, out=cs[:, 1:])
        np.square(s, out=zero)
    else:
        if np.array_equal(hi, _count_leading(s, np.full(m, np.inf), inclusive=True)):
            np.copyto(zero, s)  # no infinities: only NaNs to zero
            zero[np.isnan(zero)] = 0.0
        else:
            zero[...] = np.nan_to_num(s)
        np.cumsum(zero, axis=1, out=cs[:, 1:])
        np.square(zero, out=zero)
    np.cumsum(zero, axis=1, out=cs2[:, 1:])
    lo = np.zeros(s.shape[0], dtype=np.int64)

    def stats(lo, hi):
        count = np.maximum(hi - lo, 1)
        mean = (cs[rows, hi] - cs[rows, lo]) / count
        var = np.maximum((cs2[rows, hi] - cs2[rows, lo]) / count - mean**2, 0.0)
        return _sorted_median(s, lo, count), mean, np.sqrt(var)

    for _ in range(maxiters):
        med, _, std = stats(lo, hi)
        with np.errstate(invalid="ignore"):
            new_lo = _count_leading(s, med - nsigma * std)
            new_hi = _count_leading(s, med + nsigma * std, inclusive=True)
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


def _cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _as_index(idx):
    """``idx`` (increasing) as a slice when it is an arithmetic progression (a view)."""
    if idx.size > 1:
        step = int(idx[1] - idx[0])
        if step > 0 and np.all(np.diff(idx) == step):
            return slice(int(idx[0]), int(idx[-1]) + 1, step)
    elif idx.size == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    return idx


def _take(array, rows, cols):
    """``array[rows][:, cols]`` for increasing index arrays (slices where possible)."""
    r, c = _as_index(rows), _as_index(cols)
    if isinstance(r, slice) and isinstance(c, slice):
        return array[r, c]
    return array[np.ix_(rows, cols)]


def mesh_statistics(data, mask=None, box_size=64, filter_size=3, subsample=2, offset=None,
                    threads=1):
    """
    The sigma-clipped level and rms of each mesh, median filtered.

    Parameters as `estimate_background`; ``offset`` (a 2-D array or a broadcast
    one) is subtracted from ``data`` first, as if ``data - offset`` were given,
    without making that image. ``threads``: strips of meshes measured at once
    (None: one per core); the numbers do not depend on it.

    Returns
    -------
    level, rms : 2-D float64 arrays, one value per mesh
    box : int
        The mesh size used (px).
    """
    data = np.asarray(data)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    ny, nx = data.shape
    box = int(min(box_size, ny, nx))
    nby, nbx = -(-ny // box), -(-nx // box)
    # Tiny images (under 16 px) are used whole: subsampling would leave too few pixels.
    step = max(1, int(subsample)) if box >= 16 else 1
    offsets = np.arange(0, box, step)  # the pixels sampled in a mesh, per axis
    per = offsets.size
    cols = (np.arange(nbx)[:, None] * box + offsets).ravel()
    cols = cols[cols < nx]  # the rest is padding (NaN)
    level = np.full(nby * nbx, np.nan)
    rms = np.full(nby * nbx, np.nan)
    good = np.zeros(nby * nbx, dtype=bool)
    strip = max(1, _BATCH_MESHES // nbx)  # mesh rows at a time

    def measure(starts):
        """The strips of mesh rows from ``starts`` (each worker its own work arrays)."""
        # Work arrays made once, reused by every strip (fresh large ones cost page faults).
        block = np.empty((min(strip, nby) * per, nbx * per), dtype=np.float32)
        meshes_buffer = np.empty((min(strip, nby) * nbx, per * per), dtype=np.float32)
        buffers = _ClipBuffers(min(strip * nbx, _BATCH_MESHES, nby * nbx), per * per)
        for i0 in starts:
            i1 = min(i0 + strip, nby)
            rows = (np.arange(i0, i1)[:, None] * box + offsets).ravel()
            rows = rows[rows < ny]
            strip_block = block[: (i1 - i0) * per]
            if rows.size < strip_block.shape[0] or cols.size < nbx * per:
                strip_block.fill(np.nan)  # the padding beyond the image
            values = strip_block[: rows.size, : cols.size]
            np.copyto(values, _take(data, rows, cols), casting="unsafe")
            if offset is not None:
                np.subtract(values, _take(offset, rows, cols), out=values, casting="unsafe")
            bad = ~np.isfinite(values)
            if mask is not None:
                bad |= _take(mask, rows, cols)
            values[bad] = np.nan
            meshes = meshes_buffer[: (i1 - i0) * nbx]
            np.copyto(meshes.reshape(i1 - i0, nbx, per, per),
                      strip_block.reshape(i1 - i0, per, nbx, per).transpose(0, 2, 1, 3))
            usable = np.isfinite(meshes).sum(axis=1) >= max(10, meshes.shape[1] // 4)
            done = slice(i0 * nbx, i1 * nbx)
            good[done] = usable
            if usable.all():
                level[done], rms[done] = _clipped_stats(meshes, buffers=buffers)
            elif usable.any():
                level[done][usable], rms[done][usable] = _clipped_stats(meshes[usable],
                                                                        buffers=buffers)

    starts = list(range(0, nby, strip))
    workers = max(1, min(_cores() if threads is None else int(threads), len(starts)))
    if workers == 1:
        measure(starts)
    else:
        # numpy's sorts and sums release the GIL: the strips run side by side, each
        # writing its own meshes.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(measure, [starts[k::workers] for k in range(workers)]))
    if not good.any():
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
    return level, rms, box


def mesh_maps(data, mask=None, box_size=64, filter_size=3, subsample=2, offset=None,
              threads=1):
    """The background and background-rms `MeshMap` of ``data`` (see `mesh_statistics`)."""
    level, rms, box = mesh_statistics(data, mask, box_size, filter_size, subsample, offset,
                                      threads)
    shape = np.shape(data)
    return MeshMap(level, box, shape), MeshMap(rms, box, shape)


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
    background, rms = mesh_maps(data, mask, box_size, filter_size, subsample)
    return background.full(), rms.full()


def _basis(knots, k, u):
    """
    The B-spline basis of degree ``k`` at ``u`` (sorted or not), as FITPACK's fpbspl: the
    first coefficient each point uses, and the ``k + 1`` weights.
    """
    n = knots.size
    interval = np.clip(np.searchsorted(knots, u, side="right"), k + 1, n - k - 1) - 1
    h = np.zeros((u.size, k + 1))
    h[:, 0] = 1.0
    for j in range(1, k + 1):
        hh = h[:, :j].copy()
        h[:, 0] = 0.0
        for i in range(1, j + 1):
            right = knots[interval + i]
            left = knots[interval + i - j]
            f = hh[:, i - 1] / (right - left)
            h[:, i - 1] = h[:, i - 1] + f * (right - u)
            h[:, i] = f * (u - left)
    return interval - k, h


def _window_weights(first, weights):
    """
    For (n, m) pixels whose spline terms start at coefficient ``first`` with ``weights``
    (n, m, k + 1): each row's first coefficient and the (n, m, width) weights of its pixels
    on the ``width`` coefficients from there (zero outside each pixel's own k + 1).
    """
    n, m, terms = weights.shape
    start = first.min(axis=1)
    at = first - start[:, None]
    out = np.zeros((n, m, int(at.max()) + terms))
    stack, line = np.arange(n)[:, None], np.arange(m)[None, :]
    for term in range(terms):
        out[stack, line, at + term] = weights[:, :, term]
    return start, out


class MeshMap:
    """
    A mesh of values interpolated to the pixels of a ``shape`` image, as a bicubic
    spline through the mesh centres (flat beyond the outer centres; linear along a
    mesh one mesh wide; constant for a single mesh), evaluated where asked, in float32.

    The value at pixel (r, c) is ``sum_b cw[c, b] * sum_a rw[r, a] * coef[rl[r] + a,
    cl[c] + b]``, the separable form of the spline (FITPACK's knots, coefficients and
    basis), in float64 then rounded to float32: the same as the whole map's (and
    FITPACK's) to float32 rounding, whichever way a pixel is asked for.
    """

    def __init__(self, mesh, box, shape):
        self.shape = tuple(int(n) for n in shape)
        self.ndim = 2
        self.dtype = np.dtype(np.float32)
        ny, nx = self.shape
        mesh = np.asarray(mesh, dtype=np.float64)
        nby, nbx = mesh.shape
        yc = (np.arange(nby) + 0.5) * box - 0.5
        xc = (np.arange(nbx) + 0.5) * box - 0.5
        one = np.ones((1, 1))
        if nby == 1 and nbx == 1:
            self._coef = mesh
            self._rl, self._rw = np.zeros(ny, dtype=np.int64), np.broadcast_to(one, (ny, 1))
            self._cl, self._cw = np.zeros(nx, dtype=np.int64), np.broadcast_to(one, (nx, 1))
        elif nby == 1:  # one mesh row: linear along x
            self._coef = np.interp(np.arange(nx), xc, mesh.ravel())[None, :]
            self._rl, self._rw = np.zeros(ny, dtype=np.int64), np.broadcast_to(one, (ny, 1))
            self._cl, self._cw = np.arange(nx), np.broadcast_to(one, (nx, 1))
        elif nbx == 1:  # one mesh column: linear along y
            self._coef = np.interp(np.arange(ny), yc, mesh.ravel())[:, None]
            self._rl, self._rw = np.arange(ny), np.broadcast_to(one, (ny, 1))
            self._cl, self._cw = np.zeros(nx, dtype=np.int64), np.broadcast_to(one, (nx, 1))
        else:
            kx, ky = min(3, nby - 1), min(3, nbx - 1)
            spline = RectBivariateSpline(yc, xc, mesh, kx=kx, ky=ky)
            tx, ty, coef = spline.tck
            self._coef = coef.reshape(tx.size - kx - 1, ty.size - ky - 1)
            self._rl, self._rw = _basis(tx, kx, np.clip(np.arange(ny), yc[0], yc[-1]))
            self._cl, self._cw = _basis(ty, ky, np.clip(np.arange(nx), xc[0], xc[-1]))

    def _rows(self, rows, cols):
        """``sum_a rw[rows, a] * coef[rl[rows] + a, cols]``, ``rows`` and ``cols`` broadcast."""
        rl, rw = self._rl[rows], self._rw[rows]
        out = rw[..., 0] * self._coef[rl, cols]
        for a in range(1, rw.shape[-1]):
            out = out + rw[..., a] * self._coef[rl + a, cols]
        return out

    def grid(self, rows, cols):
        """Values at ``rows`` x ``cols`` (1-D pixel indices), shape (rows, cols)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        partial = self._rows(rows[:, None], np.arange(self._coef.shape[1])[None, :])
        cl, cw = self._cl[cols], self._cw[cols]
        if cw.shape[1] == 1:
            return (partial[:, cl] * cw[:, 0]).astype(np.float32)
        out = np.empty((rows.size, cols.size), dtype=np.float32)
        # Columns that share their coefficients, a knot interval at a time.
        starts = np.flatnonzero(np.diff(cl)) + 1
        for a, b in zip(np.r_[0, starts], np.r_[starts, cl.size], strict=True):
            out[:, a:b] = partial[:, cl[a] : cl[a] + cw.shape[1]] @ cw[a:b].T
        return out

    def stamps(self, rows, cols):
        """Values at ``rows[:, :, None], cols[:, None, :]`` ((n, ny) and (n, nx) indices)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        n, sy, sx = rows.shape[0], rows.shape[1], cols.shape[1]
        if n == 0:
            return np.zeros((0, sy, sx), dtype=np.float32)
        # Per stamp, the small window of coefficients it needs and the weights of its rows
        # and of its columns on that window: the stamp is row_weights @ window @ col_weights
        # (a few small products, not a gather per pixel).
        row_start, row_weights = _window_weights(self._rl[rows], self._rw[rows])
        col_start, col_weights = _window_weights(self._cl[cols], self._cw[cols])
        height, width = row_weights.shape[2], col_weights.shape[2]
        coef_rows = np.minimum(row_start[:, None] + np.arange(height), self._coef.shape[0] - 1)
        coef_cols = np.minimum(col_start[:, None] + np.arange(width), self._coef.shape[1] - 1)
        window = self._coef[coef_rows[:, :, None], coef_cols[:, None, :]]  # (n, height, width)
        partial = np.matmul(row_weights, window)  # (n, sy, width)
        return np.matmul(partial, col_weights.transpose(0, 2, 1)).astype(np.float32)

    def at(self, rows, cols):
        """Values at the pixels ``(rows, cols)`` (1-D, same length)."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        cl, cw = self._cl[cols], self._cw[cols]
        out = cw[:, 0] * self._rows(rows, cl)
        for b in range(1, cw.shape[1]):
            out = out + cw[:, b] * self._rows(rows, cl + b)
        return out.astype(np.float32)

    def upper_bound(self, start, stop):
        """
        Per column, a bound of the values in image rows ``start:stop``: the largest of the
        coefficients the spline weighs there (its weights are positive and sum to 1).
        """
        rl = self._rl[start:stop]
        rows = self._coef[rl.min() : rl.max() + self._rw.shape[1]].max(axis=0)
        windows = np.lib.stride_tricks.sliding_window_view(rows, self._cw.shape[1])
        return windows.max(axis=1)[self._cl]

    def block(self, start, stop):
        """Rows ``start:stop``, every column."""
        return self.grid(np.arange(start, stop), np.arange(self.shape[1]))

    def full(self):
        """The whole map, (ny, nx) float32, made tile by tile."""
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, self.shape[0], _TILE_ROWS):
            stop = min(start + _TILE_ROWS, self.shape[0])
            out[start:stop] = self.block(start, stop)
        return out
