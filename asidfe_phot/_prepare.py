"""
Image preparation for `~asidfe_phot.MLPhotometry` (private): the background-subtracted
image, its bad pixels and its noise model, computed once per call, that stamps are cut
from.

The 2-D background and its rms are evaluated where they are used, not at every pixel: in
the stamps (`PreparedImage.stamp_view`), at the sources (`PreparedImage.background_at`),
on a regular sample of pixels (the image's typical noise, its sky level and rms for the
gain) and at the pixels that may lie far below the sky. The whole maps
(`PreparedImage.subtracted`, ``background``, ``rms``) are made, tile by tile, only for
what reads them whole (an automatic ePSF, a finder, a local-background estimator). A
float32 image is not copied.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from asidfe_phot import _validation
from asidfe_phot._background import _cores, mesh_maps
from asidfe_phot._stamps import LazyImage, gather
from asidfe_phot._thresholds import LOW_BAD_SIGMA
from asidfe_phot._validation import gain_value, saturation_value, value_in_unit

__all__ = []  # private module

#: Pixels (about) of the regular sample whose median sky level and rms give the gain when
#: none is known: every pixel of an image of up to 2**20 (1024 x 1024), every n-th row and
#: column of a larger one.
GAIN_SAMPLE = 2**20
#: Image rows per tile when a whole map is made or the image scanned (a mesh's height).
TILE_ROWS = 64


class ArrayMap:
    """A given map (a 2-D array, or a number broadcast to one), read as a `MeshMap` is."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape

    def block(self, start, stop):
        """Rows ``start:stop``, every column."""
        return self.array[start:stop]

    def grid(self, rows, cols):
        """Values at ``rows`` x ``cols`` (1-D pixel indices)."""
        return np.asarray(self.array[np.ix_(rows, cols)])

    def stamps(self, rows, cols):
        """Values at ``rows[:, :, None], cols[:, None, :]``."""
        return np.asarray(self.array[rows[:, :, None], cols[:, None, :]])

    def at(self, rows, cols):
        """Values at the pixels ``(rows, cols)``."""
        return np.asarray(self.array[rows, cols])

    def full(self):
        """The whole map (the array itself)."""
        return self.array


class PreparedImage:
    """
    Everything per image that stamps are cut from (computed once per call).

    The background and its rms are maps evaluated where asked (``background_map``,
    ``rms_map``: `asidfe_phot._background.MeshMap`, or `ArrayMap` when given);
    ``subtracted``, ``background`` and ``rms`` are whole images, made when read.
    """

    def __init__(self, raw, bad, error, gain, saturation, background_map, rms_map):
        self.raw = raw  # data before background subtraction (not a copy)
        self.bad = bad  # masked, non-finite or far below the sky (or None)
        self.error = error  # user's total error map, or None
        self.gain = gain  # effective gain for the source Poisson term, or None
        self.saturation = saturation
        self.background_map = background_map
        self.rms_map = rms_map  # background rms (used when error is None), or None
        self._subtracted = None

    @property
    def shape(self):
        return self.raw.shape

    @property
    def subtracted(self):
        """``raw`` less the background, 0 at bad pixels: float32, made once, when read."""
        if self._subtracted is None:
            out = np.empty(self.shape, dtype=np.float32)
            for start in range(0, self.shape[0], TILE_ROWS):
                stop = min(start + TILE_ROWS, self.shape[0])
                self.subtracted_rows(start, stop, out=out[start:stop])
            self._subtracted = out
        return self._subtracted

    def subtracted_rows(self, start, stop, out=None):
        """`subtracted`'s rows ``start:stop`` (float32), without the whole image."""
        if self._subtracted is not None and out is None:
            return self._subtracted[start:stop]
        if out is None:
            out = np.empty((stop - start, self.shape[1]), dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            np.subtract(self.raw[start:stop], self.background_map.block(start, stop), out=out)
        if self.bad is not None:
            out[self.bad[start:stop]] = 0
        return out

    @property
    def background(self):
        """The 2-D background subtracted (MLPhotometry's ``local_bkg``), a whole map."""
        return self.background_map.full()

    @property
    def rms(self):
        """The background rms (a whole map), or None."""
        return None if self.rms_map is None else self.rms_map.full()

    def background_at(self, x, y):
        """The 2-D background at the pixels nearest ``x, y`` (float64; NaN off the image)."""
        ny, nx = self.shape
        out = np.full(np.size(x), np.nan)
        with np.errstate(invalid="ignore"):
            ix, iy = np.round(x), np.round(y)
        on = np.isfinite(ix) & np.isfinite(iy) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        out[on] = self.background_map.at(iy[on].astype(np.intp), ix[on].astype(np.intp))
        return out

    def subtracted_stamps(self, rows, cols):
        """`subtracted` at ``rows[:, :, None], cols[:, None, :]``, without the whole image."""
        if self._subtracted is not None:
            return self._subtracted[rows[:, :, None], cols[:, None, :]]
        with np.errstate(invalid="ignore", over="ignore"):
            out = gather(self.raw, rows, cols) - self.background_map.stamps(rows, cols)
        if self.bad is not None:
            out[gather(self.bad, rows, cols)] = 0
        return out

    def stamp_view(self):
        """This image as the network and the PSF fit read it (`StampView`)."""
        return StampView(self)


class StampView:
    """
    A `PreparedImage` as the network and the PSF fit read it: the same attributes, with
    ``subtracted`` and ``rms`` cut into stamps where asked
    (`~asidfe_phot._stamps.LazyImage`), never made whole.
    """

    def __init__(self, prepared):
        self.bad, self.error, self.gain = prepared.bad, prepared.error, prepared.gain
        self.raw, self.saturation = prepared.raw, prepared.saturation
        self.subtracted = LazyImage(prepared.shape, prepared.subtracted_stamps)
        rms = prepared.rms_map
        self.rms = None if rms is None else LazyImage(prepared.shape, rms.stamps)
        self.shape = prepared.shape
        self._prepared = prepared

    def rows(self, start, stop):
        """
        Image rows ``start:stop`` as whole arrays (`RowBand`): where many stamps share
        those rows, the maps evaluated row by row cost a fraction of evaluating them at
        each stamp's pixels (~1.5 against ~10 ns per pixel), with the same values.
        """
        return RowBand(self._prepared, start, stop)


class RowBand:
    """
    Rows ``start:stop`` of a `PreparedImage`: the images stamps are cut from
    (``subtracted``, ``rms``, ``bad``, ``error``, ``raw``), as arrays.
    """

    def __init__(self, prepared, start, stop):
        band = slice(start, stop)
        self.raw = prepared.raw[band]
        self.bad = None if prepared.bad is None else prepared.bad[band]
        self.error = None if prepared.error is None else prepared.error[band]
        self.subtracted = prepared.subtracted_rows(start, stop)
        rms = prepared.rms_map
        self.rms = None if rms is None else rms.block(start, stop)


def prepare(coerced, background, gain, saturation, box_size, threads=1):
    """
    The image as stamps are cut from it: background subtracted, bad pixels found, the
    noise model chosen (`PreparedImage`), in internal units; and what to report in meta.

    ``box_size``: mesh size (px) of the 2-D background estimated when none is given;
    ``threads``: its threads (None: one per core; the numbers do not depend on it).
    """
    image, unit, error = coerced.image, coerced.unit, coerced.error
    internal = 1.0 / coerced.scale
    # The bad pixels; None while there are none (no whole-image mask is made then).
    bad = _nonfinite(image, threads)
    if coerced.mask is not None:
        bad = _merge(bad, coerced.mask)
    if error is not None:
        bad = _merge(bad, ~np.isfinite(error) | (error <= 0))
    if bad is not None and bad.all():
        msg = "data has no usable pixel (all masked or non-finite)"
        raise ValueError(msg)
    info = {}
    if background is None:
        bkg, rms = mesh_maps(image, bad, box_size, threads=threads)
        info["background"] = f"mesh {box_size} px"
    else:
        if hasattr(background, "background") and hasattr(background, "background_rms"):
            bkg = ArrayMap(
                background_map(background.background, unit, image.shape, coerced.exponent)
            )
            rms = ArrayMap(
                background_map(
                    background.background_rms, unit, image.shape, coerced.exponent, "background_rms"
                )
            )
            info["background"] = type(background).__name__
        else:
            bkg = ArrayMap(background_map(background, unit, image.shape, coerced.exponent))
            rms = None
            info["background"] = "user"
        # Pixels without a background value cannot be used (as masked ones).
        missing = _nonfinite(bkg.array)  # tile by tile: a number given is a broadcast map
        if missing is not None:
            bad = _merge(bad, missing)
        if rms is None and error is None:
            _, rms = mesh_maps(image, bad, box_size, offset=bkg.array, threads=threads)
        if bad is not None and bad.all():
            msg = "no pixel has both a usable value and a finite background"
            raise ValueError(msg)
    # DAOPHOT's "low good datum": far below the sky is a dead pixel or a blank value
    # (-2**31 in integer images), not light; it would swamp any flux. The image's typical
    # noise, not the map's: an interpolated rms map can dip to zero or below between
    # meshes.
    sample = _sample(error if error is not None else rms, 4, _usable(bad, 4))
    # Finite and positive values only (two reductions spare the filtering when all are).
    if not (sample.size and sample.min() > 0 and sample.max() < np.inf):
        with np.errstate(invalid="ignore"):
            sample = sample[np.isfinite(sample) & (sample > 0)]
    typical = float(np.median(sample, overwrite_input=True)) if sample.size else np.inf
    low_rows, low_cols = _low_pixels(image, bkg, bad, -LOW_BAD_SIGMA * typical, threads)
    if low_rows.size:
        if bad is None:
            bad = np.zeros(image.shape, dtype=bool)
        bad[low_rows, low_cols] = True
        info["low_bad_pixels"] = int(low_rows.size)
    if gain is not None:
        gain = gain_value(gain, unit)
        info["gain"] = gain
        gain = gain * coerced.scale  # electrons per internal unit
    elif error is None:
        # The median sky and rms of a regular sample of the usable pixels (all of them in
        # an image of up to GAIN_SAMPLE pixels).
        step = max(1, int(np.ceil(np.sqrt(image.size / GAIN_SAMPLE))))
        good = _usable(bad, step)
        level = float(np.median(_sample(bkg, step, good), overwrite_input=True))
        noise = float(np.median(_sample(rms, step, good), overwrite_input=True))
        # A sky that was not subtracted reveals the effective gain: sky / rms^2.
        if noise > 0 and level > 3 * noise:
            gain = level / noise**2
            info["gain"] = f"{gain / coerced.scale:.6g} (sky / rms^2)"
        else:
            info["gain"] = None
    if saturation is not None:
        saturation = saturation_value(saturation, unit) * internal
    if bad is not None and not bad.any():
        bad = None
    prepared = PreparedImage(image, bad, error, gain, saturation, bkg, rms)
    return prepared, info


def _nonfinite(image, threads=1):
    """
    The non-finite pixels of ``image`` (a bool image), or None when there are none (tiles of
    rows checked on ``threads``, see `_tiles`).
    """
    def finite(start):
        return bool(np.isfinite(image[start : start + TILE_ROWS]).all())

    bad = None
    for start, ok in zip(range(0, image.shape[0], TILE_ROWS),
                         _tiles(finite, image.shape[0], threads), strict=True):
        if not ok:
            if bad is None:
                bad = np.zeros(image.shape, dtype=bool)
            np.logical_not(np.isfinite(image[start : start + TILE_ROWS]),
                           out=bad[start : start + TILE_ROWS])
    return bad


def _merge(bad, more):
    """``bad | more`` (``bad`` may be None; updated in place otherwise)."""
    if bad is None:
        return np.array(more, dtype=bool)
    bad |= more
    return bad


def _usable(bad, step):
    """``~bad[::step, ::step]``, or None (every pixel) when ``bad`` is None."""
    return None if bad is None else ~bad[::step, ::step]


def _sample(values, step, keep):
    """
    ``values[::step, ::step][keep]`` (all of them where ``keep`` is None) of an array or of
    a map (evaluated there only, a tile of rows at a time).
    """
    if isinstance(values, np.ndarray):
        picked = values[::step, ::step]
        return picked.flatten() if keep is None else picked[keep]  # a copy either way
    ny, nx = values.shape
    rows, cols = np.arange(0, ny, step), np.arange(0, nx, step)
    size = rows.size * cols.size if keep is None else np.count_nonzero(keep)
    out = np.empty(size, dtype=np.float32)
    done = 0
    for start in range(0, rows.size, 4 * TILE_ROWS):
        part = values.grid(rows[start : start + 4 * TILE_ROWS], cols)
        part = part.ravel() if keep is None else part[keep[start : start + 4 * TILE_ROWS]]
        out[done : done + part.size] = part
        done += part.size
    return out


def _low_pixels(image, bkg, bad, threshold, threads=1):
    """
    The pixels (rows, cols), not bad, where ``image`` less the background ``bkg`` (float32,
    as the subtracted image) lies below ``threshold``. A mesh background is evaluated only
    where the image lies below its bound there (`MeshMap.upper_bound`): a handful of
    pixels, not the image. Tiles of rows are scanned on ``threads`` (see `_tiles`).
    """
    none = np.zeros(0, dtype=np.intp)
    if not threshold > -np.inf:
        return none, none

    def scan(start):
        stop = min(start + TILE_ROWS, image.shape[0])
        tile = image[start:stop]
        with np.errstate(invalid="ignore", over="ignore"):
            if isinstance(bkg, ArrayMap):
                low = (tile - bkg.block(start, stop)) < threshold
            else:
                bound = bkg.upper_bound(start, stop)
                # A margin for the rounding of the map's values and of the comparison.
                low = tile < bound + threshold + 1e-5 * (np.abs(bound) + abs(threshold))
        if not low.any():
            return None
        if bad is not None:
            low &= ~bad[start:stop]
        rows, cols = np.nonzero(low)
        if rows.size and not isinstance(bkg, ArrayMap):
            with np.errstate(invalid="ignore", over="ignore"):
                keep = (tile[rows, cols] - bkg.at(rows + start, cols)) < threshold
            rows, cols = rows[keep], cols[keep]
        return rows + start, cols

    found = [part for part in _tiles(scan, image.shape[0], threads) if part is not None]
    if not found:
        return none, none
    return np.concatenate([r for r, _ in found]), np.concatenate([c for _, c in found])


def _tiles(work, rows, threads):
    """
    ``[work(start) for start in range(0, rows, TILE_ROWS)]``, on ``threads`` threads (None:
    one per core) where there is more than one tile: numpy's passes over a tile release
    the GIL, and the results do not depend on the order.
    """
    starts = range(0, rows, TILE_ROWS)
    workers = max(1, min(_cores() if threads is None else int(threads), len(starts)))
    if workers == 1:
        return [work(start) for start in starts]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, starts))


def background_map(value, unit, shape, exponent, name="background"):
    """A background (or its rms) as a float32 map in internal units."""
    value, mask = _validation.split_mask(value_in_unit(value, unit, name))
    arr = np.asarray(value)
    if arr.dtype.kind not in "iufb":
        msg = f"{name} must be a number or a 2-D array of numbers, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.ndim == 0 and not np.isfinite(arr):
        msg = f"{name} must be finite, got {arr}"
        raise ValueError(msg)
    if arr.ndim not in (0, 2) or (arr.ndim == 2 and arr.shape != shape):
        msg = f"{name} must be a number or an array of the data's shape {shape}, got shape "
        raise ValueError(msg + f"{arr.shape}")
    arr = np.ldexp(np.asarray(arr, dtype=np.float64), -exponent).astype(np.float32)
    if mask is not None:
        arr = np.where(mask, np.float32(np.nan), arr)
    return np.broadcast_to(arr, shape)
