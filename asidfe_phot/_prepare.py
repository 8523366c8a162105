"""
Image preparation for `~asidfe_phot.MLPhotometry` (private): the background-subtracted
image, its bad pixels and its noise model, computed once per call, that stamps are cut
from.
"""

import numpy as np

from asidfe_phot import _validation
from asidfe_phot._background import estimate_background
from asidfe_phot._thresholds import LOW_BAD_SIGMA
from asidfe_phot._validation import gain_value, saturation_value, value_in_unit

__all__ = []  # private module


class PreparedImage:
    """Everything per image that stamps are cut from (computed once per call)."""

    def __init__(self, subtracted, bad, error, rms, gain, raw, saturation):
        self.subtracted = subtracted    # data - background
        self.bad = bad                  # masked or non-finite pixels (or None)
        self.error = error              # user's total error map, or None
        self.rms = rms                  # background rms map (used when error is None)
        self.gain = gain                # effective gain for the source Poisson term, or None
        self.raw = raw                  # data before background subtraction
        self.saturation = saturation


def prepare(coerced, background, gain, saturation, box_size):
    """
    The image as stamps are cut from it: background subtracted, bad pixels found, the
    noise model chosen (`PreparedImage`), in internal units; and what to report in meta.

    ``box_size``: mesh size (px) of the 2-D background estimated when none is given.
    """
    image, unit, error = coerced.image, coerced.unit, coerced.error
    internal = 1.0 / coerced.scale
    bad = ~np.isfinite(image)
    if coerced.mask is not None:
        bad |= coerced.mask
    if error is not None:
        bad |= ~np.isfinite(error) | (error <= 0)
    if bad.all():
        msg = "data has no usable pixel (all masked or non-finite)"
        raise ValueError(msg)
    info = {}
    if background is None:
        bkg, rms = estimate_background(image, bad, box_size)
        info["background"] = f"mesh {box_size} px"
    else:
        if hasattr(background, "background") and hasattr(background, "background_rms"):
            bkg = background_map(background.background, unit, image.shape,
                                 coerced.exponent)
            rms = background_map(background.background_rms, unit, image.shape,
                                 coerced.exponent, "background_rms")
            info["background"] = type(background).__name__
        else:
            bkg = background_map(background, unit, image.shape, coerced.exponent)
            rms = None
            info["background"] = "user"
        # Pixels without a background value cannot be used (as masked ones).
        bad |= ~np.isfinite(bkg)
        if rms is None and error is None:
            _, rms = estimate_background(image - bkg, bad, box_size)
        if bad.all():
            msg = "no pixel has both a usable value and a finite background"
            raise ValueError(msg)
    with np.errstate(invalid="ignore", over="ignore"):
        subtracted = np.where(bad, np.float32(0), image - bkg).astype(np.float32, copy=False)
        # DAOPHOT's "low good datum": far below the sky is a dead pixel or a blank
        # value (-2**31 in integer images), not light; it would swamp any flux. The
        # image's typical noise, not the map's: an interpolated rms map can dip to
        # zero or below between meshes.
        noise = error if error is not None else rms
        sample = np.asarray(noise[::4, ::4])[~bad[::4, ::4]]
        sample = sample[np.isfinite(sample) & (sample > 0)]
        typical = float(np.median(sample)) if sample.size else np.inf
        low = subtracted < -LOW_BAD_SIGMA * typical
    if low.any():
        bad |= low
        subtracted[low] = 0
        info["low_bad_pixels"] = int(np.count_nonzero(low))
    if gain is not None:
        gain = gain_value(gain, unit)
        info["gain"] = gain
        gain = gain * coerced.scale        # electrons per internal unit
    elif error is None:
        level = float(np.median(bkg[~bad]))
        noise = float(np.median(rms[~bad]))
        # A sky that was not subtracted reveals the effective gain: sky / rms^2.
        if noise > 0 and level > 3 * noise:
            gain = level / noise**2
            info["gain"] = f"{gain / coerced.scale:.6g} (sky / rms^2)"
        else:
            info["gain"] = None
    if saturation is not None:
        saturation = saturation_value(saturation, unit) * internal
    prepared = PreparedImage(subtracted, bad if bad.any() else None, error, rms, gain,
                             image, saturation)
    prepared.background = bkg   # the 2-D background subtracted (MLPhotometry's local_bkg)
    return prepared, info


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
