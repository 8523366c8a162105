"""Tests of the preprocessing contract `asidfe_phot._stamps`."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from asidfe_phot import _stamps


def naive_cutout(image, x, y, size, fill):
    """One stamp at a time, with explicit loops and rounding (the reference)."""
    ny, nx = image.shape
    stamps = np.full((len(x), size, size), fill, dtype=image.dtype)
    inside = np.zeros((len(x), size, size), dtype=bool)
    for k, (xi, yi) in enumerate(zip(x, y)):
        # Nearest pixel centre, halves rounded up (photutils' convention).
        cx = int(np.floor(xi + 0.5))
        cy = int(np.floor(yi + 0.5))
        for j in range(size):
            for i in range(size):
                r, c = cy - size // 2 + j, cx - size // 2 + i
                if 0 <= r < ny and 0 <= c < nx:
                    stamps[k, j, i] = image[r, c]
                    inside[k, j, i] = True
    return stamps, inside


@pytest.mark.parametrize("size", [32, 7, 8])
def test_cutout_matches_naive_loop(size):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 50)).astype(np.float32)
    # Interior, all four edges and corners, half-pixel ties, and fully outside.
    x = np.concatenate([rng.uniform(-3, 52, 30), [0.0, 49.0, -0.5, 49.5, 10.5, -40.0, 200.0]])
    y = np.concatenate([rng.uniform(-3, 42, 30), [0.0, 39.0, -0.5, 39.49, 20.5, 10.0, 20.0]])
    stamps, inside = _stamps.cutout_stamps(image, x, y, size, fill=-7.0)
    ref, ref_inside = naive_cutout(image, x, y, size, fill=-7.0)
    assert stamps.shape == (len(x), size, size)
    assert stamps.dtype == image.dtype
    assert_array_equal(inside, ref_inside)
    assert_array_equal(stamps, ref)
    assert not inside[-1].any()
    assert not inside[-2].any()


def test_cutout_bool_image_fill():
    mask = np.zeros((20, 20), bool)
    mask[5, 5] = True
    stamps, inside = _stamps.cutout_stamps(mask, np.array([5.0, 0.0]), np.array([5.0, 0.0]),
                                           8, fill=True)
    assert stamps.dtype == bool
    assert stamps[0, 4, 4]  # the reference pixel holds the position
    assert stamps[0].sum() == 1
    assert_array_equal(stamps[1], ~inside[1])  # outside the image: the fill value


def test_reference_pixel_convention():
    pos = np.array([10.49, 10.5, 10.51, 9.5, -0.5, -0.51, 0.0, -1.2])
    assert_array_equal(_stamps.reference_pixel(pos), [10, 11, 11, 10, 0, -1, 0, -1])
    assert _stamps.reference_pixel(10.49) == 10
    assert _stamps.reference_pixel(10.5) == 11
    assert_array_equal(_stamps.stamp_origin(np.array([10.49, 10.5]), 32), [-6, -5])


def test_reference_pixel_is_stamp_center():
    # A single bright pixel at (row 17, col 23) lands on stamp pixel (S//2, S//2).
    image = np.zeros((40, 40), np.float32)
    image[17, 23] = 1.0
    for dx, dy in [(-0.5, -0.5), (0.0, 0.0), (0.49, 0.49), (0.3, -0.2)]:
        stamps, _ = _stamps.cutout_stamps(image, np.array([23 + dx]), np.array([17 + dy]))
        j, i = np.unravel_index(np.argmax(stamps[0]), stamps[0].shape)
        assert (j, i) == (_stamps.STAMP_SIZE // 2, _stamps.STAMP_SIZE // 2)


def test_total_error():
    data = np.array([[-5.0, 0.0, 8.0]], np.float32)
    rms = np.full_like(data, 2.0)
    assert_allclose(_stamps.total_error(data, rms), [[2.0, 2.0, 2.0]])
    assert_allclose(_stamps.total_error(data, rms, gain=2.0), [[2.0, 2.0, np.sqrt(8.0)]])
    assert _stamps.total_error(data, rms, 2.0).dtype == np.float32


def test_noise_scale_uses_valid_pixels_only():
    err = np.ones((3, 4, 4))
    err[0, :2] = 100.0  # half the stamp, masked below
    valid = np.ones((3, 4, 4), bool)
    valid[0, :2] = False
    valid[2] = False  # no valid pixel: NaN, without a warning
    err[1] = np.arange(16).reshape(4, 4)
    scale = _stamps.noise_scale(err, valid)
    assert_allclose(scale[:2], [1.0, 7.5])
    assert np.isnan(scale[2])
    assert _stamps.noise_scale(np.zeros((0, 4, 4)), np.zeros((0, 4, 4), bool)).shape == (0,)


def test_encode_psf_is_normalised_like_a_bright_star():
    g = np.arange(32) - 16
    psf = np.exp(-0.5 * (g[None, :] ** 2 + g[:, None] ** 2) / 1.5**2)
    stamps = np.stack([psf, 7.0 * psf, np.zeros_like(psf)])
    channel = _stamps.encode_psf(stamps)
    # Any normalisation gives the same channel; all-zero stays zero (not known).
    assert_allclose(channel[0], channel[1], rtol=1e-5, atol=1e-6)
    assert not channel[2].any()
    core = psf[14:19, 14:19].sum()
    assert_allclose(channel[0], np.arcsinh(_stamps.INPUT_GAIN * psf / core), rtol=1e-5, atol=1e-6)
    # A bright star at the reference pixel's centre has that same data channel.
    error = np.full((1, 32, 32), 1.0)
    data_channel = _stamps.encode_inputs(1e7 * psf[None], error, np.ones((1, 32, 32), bool),
                                         psf_stamps=psf[None])[0]
    assert_allclose(data_channel[0, 0], data_channel[0, 2], atol=1e-4)


def test_encode_inputs():
    rng = np.random.default_rng(2)
    data = rng.normal(0, 3, (5, 32, 32))
    data[:3, 14:19, 14:19] += np.array([1e2, 1e4, -1e3])[:, None, None]
    error = rng.uniform(2, 4, (5, 32, 32))
    valid = rng.uniform(size=(5, 32, 32)) > 0.1
    inputs, unit = _stamps.encode_inputs(data, error, valid)
    assert inputs.shape == (5, 3, 32, 32)
    assert inputs.dtype == np.float32
    # No PSF given: the PSF channel is zero ("not known"); a contract-2 model gets 2 channels.
    assert not inputs[:, 2].any()
    two, _ = _stamps.encode_inputs(data, error, valid, n_channels=2)
    assert_allclose(two, inputs[:, :2])
    with pytest.raises(ValueError, match="no PSF channel"):
        _stamps.encode_inputs(data, error, valid, psf_stamps=np.ones((5, 32, 32)),
                              n_channels=2)
    scale = np.array([np.median(e[v]) for e, v in zip(error, valid)])
    core = np.where(valid, data, 0)[:, 14:19, 14:19].sum(axis=(1, 2))
    assert_allclose(unit, np.hypot(core, _stamps.CORE_FLOOR * scale))
    u = unit[:, None, None]
    g = _stamps.INPUT_GAIN
    assert_allclose(inputs[:, 0], np.where(valid, np.arcsinh(g * data / u), 0.0), rtol=1e-5,
                    atol=1e-6)
    # Masked pixels: the noise scale as their error.
    expected = np.log(np.where(valid, error, scale[:, None, None]) / u)
    assert_allclose(inputs[:, 1], expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(inputs))


def test_flux_unit_follows_bright_source_and_floors_at_noise():
    data = np.zeros((2, 32, 32))
    data[0, 16, 16] = 1e6  # a bright point source: unit = its core sum
    valid = np.ones(data.shape, bool)
    unit = _stamps.flux_unit(data, valid, np.array([2.0, 2.0]))
    assert_allclose(unit, [np.hypot(1e6, 60.0), 60.0])


@pytest.mark.parametrize("k", [1e-4, 0.37, 1.0, 3e4])
def test_encode_inputs_scale_invariant(k):
    rng = np.random.default_rng(3)
    data = rng.normal(0, 5, (4, 32, 32))
    data[:, 14:18, 14:18] += 500.0
    error = np.sqrt(25.0 + np.clip(data, 0, None) / 2.0)
    valid = np.ones(data.shape, bool)
    valid[1, :3] = False
    ref, ref_scale = _stamps.encode_inputs(data, error, valid)
    inputs, scale = _stamps.encode_inputs(data * k, error * k, valid)
    assert_allclose(scale, ref_scale * k, rtol=1e-12)
    assert_allclose(inputs, ref, rtol=1e-5, atol=1e-6)


def test_targets_roundtrip():
    rng = np.random.default_rng(4)
    n = 50
    dx, dy = rng.uniform(-0.5, 0.5, (2, n))
    unit = rng.uniform(0.1, 100.0, n)
    flux = np.concatenate([rng.uniform(-50, 50, 10), 10 ** rng.uniform(0, 7, n - 10)])
    targets = _stamps.encode_targets(dx, dy, flux, unit)
    assert targets.shape == (n, 3)
    assert targets.dtype == np.float32
    logvar = np.log(np.square(np.array([0.05, 0.07, 0.01])))
    outputs = np.concatenate([targets, np.broadcast_to(logvar, (n, 3))], axis=1)
    res = _stamps.decode_outputs(outputs, unit)
    assert_allclose(res["dx"], dx, atol=1e-7)
    assert_allclose(res["dy"], dy, atol=1e-7)
    assert_allclose(res["flux"], flux, rtol=1e-6)
    assert_allclose(res["dx_err"], 0.05, rtol=1e-6)
    assert_allclose(res["dy_err"], 0.07, rtol=1e-6)
    assert_allclose(res["flux_err"], 0.01 * unit, rtol=1e-6)


def test_decode_scales_with_flux_unit():
    outputs = np.array([[0.1, -0.2, 2.0, -3.0, -4.0, -5.0]])
    a = _stamps.decode_outputs(outputs, np.array([1.0]))
    b = _stamps.decode_outputs(outputs, np.array([7.5]))
    for key in ("dx", "dy", "dx_err", "dy_err"):
        assert b[key] == pytest.approx(a[key])
    for key in ("flux", "flux_err"):
        assert b[key] == pytest.approx(7.5 * a[key])


def test_sigma_calibration_interpolates_in_predicted_snr():
    # Predicted S/N 10, 100, 1000 (flux / flux_err before calibration); one unknown.
    outputs = np.array([[0.0, 0.0, 1.0, 0.0, 0.0, np.log(0.1**2)],
                        [0.0, 0.0, 1.0, 0.0, 0.0, np.log(0.01**2)],
                        [0.0, 0.0, 1.0, 0.0, 0.0, np.log(0.001**2)],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    calibration = {"log10_snr": [1.0, 3.0], "dx": [2.0, 4.0], "dy": [1.0, 1.0],
                   "flux": [0.5, 1.5]}
    raw = _stamps.decode_outputs(outputs, np.ones(4))
    cal = _stamps.decode_outputs(outputs, np.ones(4), calibration)
    assert_allclose(cal["dx_err"] / raw["dx_err"], [2.0, 3.0, 4.0, 2.0])
    assert_allclose(cal["dy_err"], raw["dy_err"])
    assert_allclose(cal["flux_err"] / raw["flux_err"], [0.5, 1.0, 1.5, 0.5])
    for key in ("dx", "dy", "flux"):
        assert_allclose(cal[key], raw[key])


def test_sigma_calibration_in_core_snr():
    outputs = np.zeros((3, 6))
    calibration = {"log10_core_snr": [1.0, 3.0], "dx": [2.0, 4.0], "dy": [1.0, 1.0],
                   "flux": [0.5, 1.5]}
    raw = _stamps.decode_outputs(outputs, np.ones(3))
    # Core S/N 10, 100 and a negative core sum (the lowest knot's factor).
    cal = _stamps.decode_outputs(outputs, np.ones(3), calibration,
                                 snr_core=np.array([10.0, 100.0, -3.0]))
    assert_allclose(cal["dx_err"] / raw["dx_err"], [2.0, 3.0, 2.0])
    assert_allclose(cal["flux_err"] / raw["flux_err"], [0.5, 1.0, 0.5])


def test_flux_bias_correction_scales_flux_and_error_by_core_snr():
    outputs = np.array([[0.0, 0.0, 2.0, 0.0, 0.0, np.log(0.1**2)]] * 3)
    correction = {"log10_core_snr": [0.0, 1.0], "factor": [0.6, 1.0]}
    raw = _stamps.decode_outputs(outputs, np.ones(3))
    fixed = _stamps.decode_outputs(outputs, np.ones(3), None, np.array([1.0, 10**0.5, 1e4]),
                                   correction)
    assert_allclose(fixed["flux"] / raw["flux"], [0.6, 0.8, 1.0])
    assert_allclose(fixed["flux_err"] / raw["flux_err"], [0.6, 0.8, 1.0])
    assert_allclose(fixed["dx_err"], raw["dx_err"])


def test_core_snr_is_the_core_sum_over_its_noise():
    data = np.zeros((2, 32, 32), np.float32)
    data[:, 14:19, 14:19] = 4.0            # the 5x5 core: sum 100
    data[:, 0, 0] = 1e6                    # outside the core: ignored
    error = np.full((2, 32, 32), 2.0, np.float32)   # core noise sqrt(25 * 4) = 10
    valid = np.ones(data.shape, bool)
    valid[1, 16, 16] = False               # one core pixel fewer: 96 / sqrt(96)
    assert_allclose(_stamps.core_snr(data, error, valid), [10.0, 96 / np.sqrt(96)])


def test_contract():
    c = _stamps.contract()
    assert c["stamp_size"] == _stamps.STAMP_SIZE == 32
    assert c["version"] == _stamps.CONTRACT_VERSION
    assert c["core_floor"] == _stamps.CORE_FLOOR
    assert len(c["outputs"]) == 2 * len(_stamps.TARGET_NAMES)
    assert len(c["input_channels"]) == _stamps.N_INPUT_CHANNELS


def test_noise_scale_is_np_median_of_full_stamps():
    """The sort-based median of stamps with every pixel valid is np.median's, NaN and all."""
    rng = np.random.default_rng(3)
    for size in (32, 5):  # even and odd pixel counts
        errors = rng.gamma(5.0, 1.0, (200, size, size)).astype(np.float32)
        errors[3, 1, 1] = np.nan
        scale = _stamps.noise_scale(errors, np.ones(errors.shape, bool))
        assert_array_equal(scale, np.median(errors.reshape(200, -1), axis=1))
        assert np.isnan(scale[3])


def test_stamps_cut_from_a_band_of_rows_equal_stamps_cut_one_by_one(monkeypatch):
    # Dense batches read their rows' background and rms whole (cheaper per pixel); the
    # numbers must be those of the per-stamp evaluation (masked pixels, edges and all).
    import warnings

    from astropy.table import Table

    from asidfe_phot import MLPhotometry, _network
    from asidfe_phot.datasets import make_star_field

    image, truth, _ = make_star_field((160, 140), 150, sky=100.0, gain=2.0, seed=5)
    mask = np.zeros(image.shape, bool)
    mask[40:43, 10:100] = True
    init = Table({"x": np.asarray(truth["x"]), "y": np.asarray(truth["y"])})
    tables = []
    for factor in (0, 10**6):
        monkeypatch.setattr(_network, "BAND_PIXELS_PER_STAMP_PIXEL", factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phot = MLPhotometry(psf_model=None, batch_size=64)
            tables.append(phot(image, init_params=init, gain=2.0, mask=mask))
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err", "x_err", "flags"):
        np.testing.assert_allclose(np.asarray(tables[1][name]), np.asarray(tables[0][name]),
                                   rtol=1e-6)
