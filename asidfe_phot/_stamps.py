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

Scale: two per-stamp constants make the network independent of the camera's
units. The *noise scale* ``s`` is the median per-pixel error. The *flux
unit* ``u = hypot(core sum, CORE_FLOOR * s)`` is, for a bright source, a
fixed fraction of its flux (the sum of the central 5x5 pixels) and, for a
faint one, a multiple of the noise. The data enter as ``asinh(INPUT_GAIN *
data / u)`` (the normalised profile, linear over the source, compressed only
for much brighter neighbours), the error map as ``log(error / u)`` (the
noise relative to the source: its S/N, and how much of the noise comes from
the source itself), and the network predicts ``flux / u``, an aperture
correction near 1-3 for bright sources, so its relative precision does not
depend on the S/N. Multiplying ``data`` and ``error`` by ``k`` multiplies
``u``, ``flux`` and ``flux_err`` by ``k`` and leaves positions unchanged
(exactly, up to float rounding).

Contract version 3 adds a third channel, the image's PSF: rendered with its
centre at the centre of the reference pixel (the local PSF where it varies
across the frame), normalised like the data of a bright star (divided by its
own central 5x5 sum) and compressed by the same asinh, so the network compares
the star with the profile it should have. An all-zero channel means "PSF not
known": one network serves both modes. Version 2 models (two channels) remain
usable without a PSF.

Contract version 1 (asidfe_tsmve_v1) used ``asinh(data / s)``,
``log(error / s)`` and an ``asinh(flux / 20 s)`` target; its compressed
bright profiles limited the flux precision to ~5 % at any S/N.
"""

import numpy as np

__all__ = []  # private module

#: Version of this contract; a model card must carry the same.
CONTRACT_VERSION = 3
#: Contract versions this package can run: 2 (no PSF channel) and 3.
SUPPORTED_CONTRACT_VERSIONS = (2, 3)
STAMP_SIZE = 32
STORED_STAMP_SIZE = 34
#: Side of the stored PSF stamps (odd, centred: flips and transposes keep the centre).
STORED_PSF_SIZE = 33
N_INPUT_CHANNELS = 3
#: Side of the central box whose sum sets the flux unit (px, odd).
CORE_SIZE = 5
#: Floor of the flux unit, in units of the noise scale (the core S/N where it takes over).
CORE_FLOOR = 30.0
#: Gain of the data channel before the asinh: linear up to ~1/INPUT_GAIN of the unit.
INPUT_GAIN = 10.0
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


class LazyImage:
    """
    A 2-D image that is never made whole: `cutout_stamps` computes its stamps when they are
    cut, as ``stamps(rows, cols)`` (the values at ``rows[:, :, None], cols[:, None, :]``,
    for (n, ny) and (n, nx) pixel indices inside the image).
    """

    def __init__(self, shape, stamps):
        self.shape = tuple(shape)
        self.ndim = 2
        self.stamps = stamps


def gather(image, rows, cols):
    """
    ``image[rows[:, :, None], cols[:, None, :]]`` for (n, sy) and (n, sx) pixel indices
    inside ``image``: blocks of consecutive rows and columns (every stamp not clipped at
    an edge) are copied whole from a window view, a row of pixels at a time, not pixel by
    pixel.
    """
    image = np.asarray(image)
    n, sy, sx = rows.shape[0], rows.shape[1], cols.shape[1]
    if n == 0 or image.ndim != 2:
        return image[rows[:, :, None], cols[:, None, :]]
    block = ((rows[:, -1] - rows[:, 0] == sy - 1) & (cols[:, -1] - cols[:, 0] == sx - 1)
             & np.all(np.diff(rows, axis=1) == 1, axis=1)
             & np.all(np.diff(cols, axis=1) == 1, axis=1))
    if not block.any():
        return image[rows[:, :, None], cols[:, None, :]]
    windows = np.lib.stride_tricks.sliding_window_view(image, (sy, sx))
    if block.all():
        return windows[rows[:, 0], cols[:, 0]]
    out = np.empty((n, sy, sx), dtype=image.dtype)
    out[block] = windows[rows[block, 0], cols[block, 0]]
    if not block.all():
        rest = ~block
        out[rest] = image[rows[rest][:, :, None], cols[rest][:, None, :]]
    return out


def cutout_stamps(image, x, y, size=STAMP_SIZE, fill=0.0):
    """
    Cut ``size`` x ``size`` stamps around many positions at once.

    Parameters
    ----------
    image : 2-D array or `LazyImage`
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
    rows, cols = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    if isinstance(image, LazyImage):
        stamps = image.stamps(rows, cols)
    else:
        stamps = gather(image, rows, cols)
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
    if gain is None:
        return np.sqrt(variance, dtype=np.float32)
    gain = np.asarray(gain, dtype=np.float32)
    if (getattr(data, "dtype", None) == np.float32 and variance.shape == data.shape
            and gain.ndim == 0):
        # The network's stamps: the same float32 operations, in one work array.
        source = np.maximum(data, np.float32(0))
        np.divide(source, gain, out=source)
        np.add(variance, source, out=variance)
        return np.sqrt(variance, out=variance)
    variance = variance + np.clip(data, 0, None) / gain
    return np.sqrt(variance, dtype=np.float32)


def noise_scale(error_stamps, valid):
    """Median per-pixel error of each stamp over its valid pixels, shape (n,); NaN if none."""
    n = error_stamps.shape[0]
    npix = int(np.prod(error_stamps.shape[1:]))
    flat = error_stamps.reshape(n, npix)
    ok = valid.reshape(n, npix)
    scale = np.full(n, np.nan)
    full = ok.all(axis=1)
    if full.any():  # the common case: every pixel valid
        # np.median's values (NaN where a row holds one), from a sort: numpy's vectorised
        # sort beats the partition np.median uses several times over.
        s = np.sort(flat[full], axis=1)
        middle = 0.5 * (s[:, (npix - 1) // 2] + s[:, npix // 2])
        scale[full] = np.where(np.isnan(s[:, -1]), np.nan, middle)
    part = np.flatnonzero(~full & ok.any(axis=1))
    if part.size:
        # Sort with invalid pixels last, then take the middle of the valid ones.
        s = np.sort(np.where(ok[part], flat[part], np.inf), axis=1)
        k = ok[part].sum(axis=1)
        rows = np.arange(part.size)
        scale[part] = 0.5 * (s[rows, (k - 1) // 2] + s[rows, k // 2])
    return scale


def flux_unit(data_stamps, valid, scale):
    """
    Per-stamp flux unit: the core sum softened by the noise, shape (n,).

    ``hypot(core_sum, CORE_FLOOR * scale)`` with ``core_sum`` the sum of the
    valid pixels in the central ``CORE_SIZE`` box: for a bright source it is
    (a fixed fraction of) its flux, so the network sees the normalised
    profile and predicts an aperture correction, precise at any S/N; for a
    faint one it is a multiple of the noise, as before.
    """
    core_sum = _core(data_stamps, valid).sum(axis=(1, 2), dtype=np.float64)
    return np.hypot(core_sum, CORE_FLOOR * np.asarray(scale, dtype=np.float64))


def _core(stamps, valid):
    """The central ``CORE_SIZE`` box of each stamp, invalid pixels set to 0."""
    c = stamps.shape[-1] // 2
    h = CORE_SIZE // 2
    box = (slice(None), slice(c - h, c + h + 1), slice(c - h, c + h + 1))
    return np.where(valid[box], stamps[box], 0)


def core_snr(data_stamps, error_stamps, valid):
    """
    S/N of the central ``CORE_SIZE`` box's sum, shape (n,).

    Measured on the data, not predicted, so it follows a source's true S/N
    from the faintest to the brightest (the network's predicted flux S/N
    levels off near 30, where its flux error is systematic); the variable of
    the sigma calibration.
    """
    total = _core(data_stamps, valid).sum(axis=(1, 2), dtype=np.float64)
    variance = np.square(_core(error_stamps, valid), dtype=np.float64).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / np.sqrt(variance)


def input_channels(contract_version):
    """Input channels of a model of the given contract version."""
    return 3 if int(contract_version) >= 3 else 2


def encode_psf(psf_stamps, out=None):
    """
    The PSF channel: ``asinh(INPUT_GAIN * psf / core sum of psf)``.

    ``psf_stamps`` (n, S, S), each centred on the centre of pixel ``S // 2``
    (any normalisation; it cancels). A row that is all zero (or has no
    positive core) stays all zero: "PSF not known".
    """
    psf = np.asarray(psf_stamps, dtype=np.float32)
    c = psf.shape[-1] // 2
    h = CORE_SIZE // 2
    core = psf[:, c - h:c + h + 1, c - h:c + h + 1].sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(core > 0, INPUT_GAIN / core, 0.0).astype(np.float32)
    if out is None:
        out = np.empty(psf.shape, dtype=np.float32)
    np.multiply(psf, gain[:, None, None], out=out)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.arcsinh(out, out=out)
    return out


def encode_inputs(data_stamps, error_stamps, valid, scale=None, psf_stamps=None,
                  n_channels=N_INPUT_CHANNELS):
    """
    Network inputs from background-subtracted data and error stamps.

    Parameters
    ----------
    data_stamps, error_stamps : (n, S, S) arrays
        Background-subtracted data and its 1-sigma error, same units.
    valid : (n, S, S) bool array
        Usable pixels; the rest are set to the background (0) with the
        noise scale as error, so they carry no signal.
    scale : (n,) array, optional
        Noise scale; by default `noise_scale` of the error stamps.
    psf_stamps : (n, S, S) array, optional
        The PSF at each stamp's reference pixel (see `encode_psf`); None: not known.
    n_channels : {2, 3}
        The model's input channels (`input_channels` of its contract).

    Returns
    -------
    inputs : (n, n_channels, S, S) float32
        Channel 0: ``asinh(INPUT_GAIN * data / unit)``; channel 1:
        ``log(error / unit)``, with ``unit`` from `flux_unit`; channel 2: the
        PSF (`encode_psf`), zero where not known.
    unit : (n,) float64
        The flux unit (NaN where the stamp has no valid pixel).
    """
    if scale is None:
        scale = noise_scale(error_stamps, valid)
    unit = flux_unit(data_stamps, valid, scale)
    # float32 throughout: the network's precision, and 2x faster than float64 here.
    u = np.asarray(unit, dtype=np.float32)[:, None, None]
    s = np.asarray(scale, dtype=np.float32)[:, None, None]
    if n_channels not in (2, 3):
        msg = f"n_channels must be 2 or 3, got {n_channels!r}"
        raise ValueError(msg)
    if psf_stamps is not None and n_channels < 3:
        msg = "this model has no PSF channel (contract version 2): it cannot use a PSF"
        raise ValueError(msg)
    inputs = np.empty((data_stamps.shape[0], n_channels) + data_stamps.shape[1:],
                      dtype=np.float32)
    if n_channels == 3:
        if psf_stamps is None:
            inputs[:, 2] = 0.0
        else:
            encode_psf(psf_stamps, out=inputs[:, 2])
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(data_stamps, u / INPUT_GAIN, out=inputs[:, 0], casting="unsafe")
        np.maximum(error_stamps, s * _MIN_RELATIVE_ERROR, out=inputs[:, 1], casting="unsafe")
        if not valid.all():
            invalid = ~valid
            np.copyto(inputs[:, 0], 0.0, where=invalid)
            np.copyto(inputs[:, 1], np.broadcast_to(s, invalid.shape), where=invalid)
        np.divide(inputs[:, 1], u, out=inputs[:, 1])
    np.arcsinh(inputs[:, 0], out=inputs[:, 0])
    np.log(inputs[:, 1], out=inputs[:, 1])
    return inputs, unit


def encode_targets(dx, dy, flux, unit):
    """Training targets: offsets from the reference pixel (px) and flux / unit."""
    return np.stack([dx, dy, np.asarray(flux) / np.asarray(unit)], axis=-1).astype(np.float32)


def decode_outputs(outputs, unit, sigma_calibration=None, snr_core=None, flux_bias=None):
    """
    Physical quantities from the network's outputs.

    Parameters
    ----------
    outputs : (n, 6) array
        Means of (dx, dy, flux / unit) then their log-variances.
    unit : (n,) array
        The flux unit returned by `encode_inputs`.
    sigma_calibration : dict, optional
        The model card's ``sigma_calibration`` (see `calibrate_sigmas`).
    snr_core : (n,) array, optional
        `core_snr` of the stamps (needed by calibrations in core S/N).
    flux_bias : dict, optional
        The model card's ``flux_bias_correction`` (see `correct_flux_bias`),
        applied before the sigma calibration.

    Returns
    -------
    dict of (n,) float64 arrays
        ``dx, dy, flux, dx_err, dy_err, flux_err``. Offsets are relative to
        the reference pixel.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    unit = np.asarray(unit, dtype=np.float64)
    sigma = np.sqrt(np.exp(outputs[:, 3:6]))
    res = {
        "dx": outputs[:, 0],
        "dy": outputs[:, 1],
        "flux": unit * outputs[:, 2],
        "dx_err": sigma[:, 0],
        "dy_err": sigma[:, 1],
        "flux_err": unit * sigma[:, 2],
    }
    if flux_bias is not None:
        correct_flux_bias(res, flux_bias, snr_core)
    if sigma_calibration is not None:
        calibrate_sigmas(res, sigma_calibration, snr_core)
    return res


def correct_flux_bias(res, correction, snr_core):
    """
    Multiply flux and flux_err in place by factors interpolated in log10 core S/N.

    A network trained on a population of stars pulls the flux of a faint one
    (whose stamp says little) toward that population's typical flux: +20 to
    +50 % at core S/N 1-5. The factors, fitted on simulated stars at known
    positions (no detection selection) as the median true / predicted flux
    per core-S/N bin, undo that pull on average, so fluxes are unbiased at
    a given S/N as a PSF fit's are. Clamped to the knots' range.
    """
    factor = _interpolate(_log10(snr_core), correction["log10_core_snr"], correction["factor"])
    res["flux"] = res["flux"] * factor
    res["flux_err"] = res["flux_err"] * factor
    return res


def predicted_log_snr(res):
    """``log10(|flux| / flux_err)`` of decoded outputs: the calibration variable of older cards."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.abs(res["flux"]) / res["flux_err"])


def calibration_variable(res, calibration, snr_core=None):
    """
    ``log10`` S/N in which ``calibration`` interpolates its factors.

    Its knots say which: ``log10_core_snr`` (`core_snr`, measured on the
    stamp; from asidfe_tsmve_v4 on) or ``log10_snr`` (the network's predicted
    flux S/N, ``flux / flux_err`` before calibration; older cards).
    """
    if "log10_core_snr" in calibration:
        if snr_core is None:
            msg = "this sigma calibration needs the stamps' core S/N"
            raise ValueError(msg)
        return _log10(snr_core)
    return predicted_log_snr(res)


def _log10(values):
    """``log10``, NaN or -inf (not a warning) for non-positive values."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.asarray(values, dtype=np.float64))


def _interpolate(log_snr, knots, values):
    """Linear in ``log_snr``, clamped to the knots; NaN / -inf take the first knot's value."""
    knots = np.asarray(knots, dtype=np.float64)
    log_snr = np.nan_to_num(log_snr, nan=knots[0], neginf=knots[0], posinf=knots[-1])
    return np.interp(log_snr, knots, np.asarray(values, dtype=np.float64))


def calibrate_sigmas(res, calibration, snr_core=None):
    """
    Rescale predicted sigmas in place by factors fitted on validation frames.

    The network's variance branch is trained to be calibrated on average;
    what remains (sigmas a few tens of per cent too wide or narrow in some
    S/N ranges) is removed by one factor per target, interpolated linearly
    in ``log10`` S/N (see `calibration_variable`; clamped to the knots'
    range, non-positive S/N take the first knot's factor), so it needs no
    truth at inference.

    Parameters
    ----------
    res : dict
        As returned by `decode_outputs`; ``dx_err, dy_err, flux_err`` are
        multiplied.
    calibration : dict
        ``{"log10_core_snr" or "log10_snr": knots, "dx": factors, "dy":
        factors, "flux": factors}``.
    snr_core : (n,) array, optional
        `core_snr` of the stamps, for calibrations in core S/N.
    """
    knots = calibration["log10_core_snr" if "log10_core_snr" in calibration else "log10_snr"]
    variable = calibration_variable(res, calibration, snr_core)
    for target in ("dx", "dy", "flux"):
        res[f"{target}_err"] = res[f"{target}_err"] * _interpolate(variable, knots,
                                                                   calibration[target])
    return res


def contract(n_channels=N_INPUT_CHANNELS):
    """The constants a model file must have been trained with (stored in its card).

    ``n_channels=2``: contract version 2 (no PSF channel), which this package also runs.
    """
    channels = [f"asinh({INPUT_GAIN} * data / flux_unit)", "log(error / flux_unit)",
                f"asinh({INPUT_GAIN} * psf / central {CORE_SIZE}x{CORE_SIZE} sum of psf), psf "
                "centred on the reference pixel; 0 = PSF not known"][:n_channels]
    return {
        "version": CONTRACT_VERSION if n_channels == 3 else 2,
        "stamp_size": STAMP_SIZE,
        "stored_stamp_size": STORED_STAMP_SIZE,
        "input_channels": channels,
        "scale": "median per-pixel error of the stamp",
        "flux_unit": f"hypot(sum of the central {CORE_SIZE}x{CORE_SIZE} pixels, "
                     f"{CORE_FLOOR} * scale)",
        "core_size": CORE_SIZE,
        "core_floor": CORE_FLOOR,
        "input_gain": INPUT_GAIN,
        "flux_target": "flux / flux_unit",
        "position_target": "offset (px) from the centre of stamp pixel size//2",
        "outputs": ["dx", "dy", "flux_over_unit", "logvar_dx", "logvar_dy",
                    "logvar_flux_over_unit"],
        "pixel_convention": "0-based, integer = pixel centre (photutils)",
    }
