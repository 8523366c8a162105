"""
The preprocessing contract shared by training and inference.

Everything that turns an image into network inputs, and network outputs back
into physical quantities, lives here, so the two sides cannot drift apart.
``training/`` imports this module; the model card records the constants.

Pixel convention (photutils'): 0-based, integer coordinates at pixel
centres. A stamp of ``size`` pixels around position ``x`` starts at
``reference_pixel(x) - size // 2``, so the input position lies in the
stamp's pixel ``size // 2`` (the *reference pixel*) and the network
predicts offsets from that pixel's centre.

Scale: each stamp is divided by its noise scale, the median of its
per-pixel error. The image in units of its own noise reads directly as
signal-to-noise, so the network is independent of the camera's units, and
multiplying ``data`` and ``error`` by ``k`` multiplies ``flux`` and
``flux_err`` by ``k`` and leaves positions unchanged (exactly, up to float
rounding). The second input channel, the error map in the same units, tells
the network how much of the noise comes from the source itself (the
gain / sky-level information one stamp cannot reveal).
"""

import numpy as np

__all__ = []  # private module

STAMP_SIZE = 32
STORED_STAMP_SIZE = 34
N_INPUT_CHANNELS = 2
#: asinh softening of the flux target, in units of the stamp's noise scale.
FLUX_SOFTENING = 20.0
#: The targets, in the order of the network's outputs (means, then log-variances).
TARGET_NAMES = ("x", "y", "flux")
#: Smallest error (in units of the noise scale) given to the network; guards log(0).
_MIN_RELATIVE_ERROR = 1e-3


def reference_pixel(position):
    """Integer pixel whose centre is nearest to ``position`` (ties round up)."""
    return np.floor(np.asarray(position, dtype=np.float64) + 0.5).astype(np.int64)


def stamp_origin(position, size=STAMP_SIZE):
    """First pixel index of a ``size`` stamp around ``position``."""
    return reference_pixel(position) - size // 2


def cutout_stamps(image, x, y, size=STAMP_SIZE, fill=0.0):
    """
    Cut ``size`` x ``size`` stamps around many positions at once.

    Parameters
    ----------
    image : 2-D array
    x, y : 1-D arrays
        Positions (0-based pixel centres).
    size : int
    fill : float
        Value for pixels outside the image.

    Returns
    -------
    stamps : (n, size, size) array, dtype of ``image``
    inside : (n, size, size) bool array
        True where the stamp pixel lies inside the image.
    """
    ny, nx = image.shape
    cols = stamp_origin(x, size)[:, None] + np.arange(size)
    rows = stamp_origin(y, size)[:, None] + np.arange(size)
    col_ok = (cols >= 0) & (cols < nx)
    row_ok = (rows >= 0) & (rows < ny)
    inside = row_ok[:, :, None] & col_ok[:, None, :]
    stamps = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    if not inside.all():
        stamps = np.where(inside, stamps, np.asarray(fill, dtype=stamps.dtype))
    return stamps, inside


def total_error(data, background_rms, gain=None):
    """
    Per-pixel 1-sigma error: background noise plus the source's Poisson noise.

    Same formula as `photutils.utils.calc_total_error`:
    ``sqrt(background_rms**2 + max(data, 0) / gain)``, with ``data``
    background-subtracted and ``gain`` the effective gain (electrons per data
    unit). ``gain=None`` gives the background noise alone.
    """
    variance = np.square(background_rms, dtype=np.float32)
    if gain is not None:
        variance = variance + np.clip(data, 0, None) / np.asarray(gain, dtype=np.float32)
    return np.sqrt(variance, dtype=np.float32)


def noise_scale(error_stamps, valid):
    """Median per-pixel error of each stamp over its valid pixels, shape (n,); NaN if none."""
    n = error_stamps.shape[0]
    npix = int(np.prod(error_stamps.shape[1:]))
    flat = error_stamps.reshape(n, npix)
    ok = valid.reshape(n, npix)
    scale = np.full(n, np.nan)
    full = ok.all(axis=1)
    if full.any():  # the common case: a plain (fast) median
        scale[full] = np.median(flat[full], axis=1)
    part = np.flatnonzero(~full & ok.any(axis=1))
    if part.size:
        # Sort with invalid pixels last, then take the middle of the valid ones.
        s = np.sort(np.where(ok[part], flat[part], np.inf), axis=1)
        k = ok[part].sum(axis=1)
        rows = np.arange(part.size)
        scale[part] = 0.5 * (s[rows, (k - 1) // 2] + s[rows, k // 2])
    return scale


def encode_inputs(data_stamps, error_stamps, valid, scale=None):
    """
    Network inputs from background-subtracted data and error stamps.

    Parameters
    ----------
    data_stamps, error_stamps : (n, S, S) arrays
        Background-subtracted data and its 1-sigma error, same units.
    valid : (n, S, S) bool array
        Usable pixels; the rest are set to the background (0) with unit
        relative error, so they carry no signal.
    scale : (n,) array, optional
        Noise scale; by default `noise_scale` of the error stamps.

    Returns
    -------
    inputs : (n, 2, S, S) float32
        Channel 0: ``asinh(data / scale)``; channel 1: ``log(error / scale)``.
    scale : (n,) float64
    """
    if scale is None:
        scale = noise_scale(error_stamps, valid)
    # float32 throughout: the network's precision, and 2x faster than float64 here.
    s = np.asarray(scale, dtype=np.float32)[:, None, None]
    inputs = np.empty((data_stamps.shape[0], N_INPUT_CHANNELS) + data_stamps.shape[1:],
                      dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(data_stamps, s, out=inputs[:, 0], casting="unsafe")
        np.divide(error_stamps, s, out=inputs[:, 1], casting="unsafe")
    if not valid.all():
        inputs[:, 0][~valid] = 0.0
        inputs[:, 1][~valid] = 1.0
    np.arcsinh(inputs[:, 0], out=inputs[:, 0])
    np.clip(inputs[:, 1], _MIN_RELATIVE_ERROR, None, out=inputs[:, 1])
    np.log(inputs[:, 1], out=inputs[:, 1])
    return inputs, scale


def encode_targets(dx, dy, flux, scale):
    """Training targets: offsets from the reference pixel (px) and asinh-scaled flux."""
    t_flux = np.arcsinh(np.asarray(flux) / (np.asarray(scale) * FLUX_SOFTENING))
    return np.stack([dx, dy, t_flux], axis=-1).astype(np.float32)


def decode_outputs(outputs, scale):
    """
    Physical quantities from the network's outputs.

    Parameters
    ----------
    outputs : (n, 6) array
        Means of (dx, dy, asinh flux) then their log-variances.
    scale : (n,) array
        The noise scale used by `encode_inputs`.

    Returns
    -------
    dict of (n,) float64 arrays
        ``dx, dy, flux, dx_err, dy_err, flux_err``. Offsets are relative to
        the reference pixel. The flux error propagates the asinh-space sigma
        through the derivative (delta method).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    sigma = np.sqrt(np.exp(outputs[:, 3:6]))
    t_flux = outputs[:, 2]
    unit = scale * FLUX_SOFTENING
    return {
        "dx": outputs[:, 0],
        "dy": outputs[:, 1],
        "flux": unit * np.sinh(t_flux),
        "dx_err": sigma[:, 0],
        "dy_err": sigma[:, 1],
        "flux_err": unit * np.cosh(t_flux) * sigma[:, 2],
    }


def contract():
    """The constants a model file must have been trained with (stored in its card)."""
    return {
        "stamp_size": STAMP_SIZE,
        "stored_stamp_size": STORED_STAMP_SIZE,
        "input_channels": ["asinh(data/scale)", "log(error/scale)"],
        "scale": "median per-pixel error of the stamp",
        "flux_target": f"asinh(flux / (scale * {FLUX_SOFTENING}))",
        "flux_softening": FLUX_SOFTENING,
        "position_target": "offset (px) from the centre of stamp pixel size//2",
        "outputs": ["dx", "dy", "asinh_flux", "logvar_dx", "logvar_dy", "logvar_asinh_flux"],
        "pixel_convention": "0-based, integer = pixel centre (photutils)",
    }
