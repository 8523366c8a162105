"""Tests of the star-field simulator `asidfe_phot.datasets`."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from asidfe_phot.datasets import (
    PSF_FAMILIES,
    fisher_bounds,
    make_star_field,
    make_test_image,
    render_psf_stamps,
)

SHAPES = [{}, {"ellipticity": 0.25, "angle": 0.7},
          {"asym_fraction": 0.2, "asym_distance": 1.0, "asym_angle": 1.1}]
POSITIONS = (np.array([20.3, 20.71, 19.5]), np.array([20.49, 19.52, 20.0]))


def first_moment(stamps, x0, y0):
    h = stamps.shape[1] // 2
    grid = np.arange(-h, h + 1)
    total = stamps.sum(axis=(1, 2))
    cx = (stamps * grid[None, None, :]).sum(axis=(1, 2)) / total + x0
    cy = (stamps * grid[None, :, None]).sum(axis=(1, 2)) / total + y0
    return cx, cy


@pytest.mark.parametrize("family", PSF_FAMILIES)
@pytest.mark.parametrize("fwhm", [1.5, 3.0, 5.0])
@pytest.mark.parametrize("shape", SHAPES, ids=["round", "elliptical", "asymmetric"])
def test_psf_normalised(family, fwhm, shape):
    stamps, x0, y0 = render_psf_stamps({"family": family, "fwhm": fwhm, **shape}, *POSITIONS)
    assert stamps.shape == (3, 2 * int(np.ceil(5 * fwhm)) + 1, 2 * int(np.ceil(5 * fwhm)) + 1)
    assert_allclose(stamps.sum(axis=(1, 2)), 1.0, rtol=1e-12)
    assert np.all(stamps >= 0)
    assert_array_equal(x0, [20, 21, 20])  # nearest pixel, ties up
    assert_array_equal(y0, [20, 20, 20])
    # The peak is near the star, and the light is concentrated (not a flat stamp).
    h = stamps.shape[1] // 2
    j, i = np.unravel_index(np.argmax(stamps[0]), stamps[0].shape)
    assert abs(i - h) <= 1 and abs(j - h) <= 1
    r = np.hypot(*np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1)))
    assert stamps[0][r <= 1.5 * fwhm].sum() > 0.5


@pytest.mark.parametrize("family", PSF_FAMILIES)
@pytest.mark.parametrize(("fwhm", "shape"), [(1.5, SHAPES[0]), (3.0, SHAPES[0]),
                                             (1.5, SHAPES[1]), (3.0, SHAPES[1]),
                                             (3.0, SHAPES[2]), (5.0, SHAPES[2])])
def test_first_moment_is_truth(family, fwhm, shape):
    x, y = np.array([30.3, 31.71, 29.5, 30.02]), np.array([30.49, 29.52, 30.0, 30.77])
    image, truth, _ = make_star_field((64, 64), positions=(x, y), fluxes=np.full(4, 1.0),
                                      psf={"family": family, "fwhm": fwhm, **shape},
                                      sky=0.0, noise=False, seed=1)
    # One star per image so the moments do not mix.
    for k in range(4):
        img, _, _ = make_star_field((64, 64), positions=(x[k:k + 1], y[k:k + 1]),
                                    fluxes=[1.0], psf={"family": family, "fwhm": fwhm, **shape},
                                    sky=0.0, noise=False)
        yy, xx = np.mgrid[0:64, 0:64]
        total = img.sum(dtype=np.float64)
        cx = (img * xx).sum(dtype=np.float64) / total
        cy = (img * yy).sum(dtype=np.float64) / total
        assert abs(cx - x[k]) < 2e-3, (cx, x[k])
        assert abs(cy - y[k]) < 2e-3, (cy, y[k])
    assert_array_equal(truth["x"], x)


def test_asymmetry_moves_the_peak_not_the_centroid():
    x, y = np.array([20.0]), np.array([20.0])
    sym, x0, y0 = render_psf_stamps({"family": "moffat", "fwhm": 3.0}, x, y)
    asym, _, _ = render_psf_stamps({"family": "moffat", "fwhm": 3.0, "asym_fraction": 0.3,
                                    "asym_distance": 2.0, "asym_angle": 0.0}, x, y)
    assert not np.allclose(sym, asym, atol=1e-3)
    cs, ca = first_moment(sym, x0, y0), first_moment(asym, x0, y0)
    assert_allclose(ca, cs, atol=2e-3)
    # The brighter part (the core) sits on the side opposite to the faint companion.
    h = asym.shape[1] // 2
    assert asym[0, h, h - 1] > asym[0, h, h + 1]


@pytest.mark.parametrize("family", PSF_FAMILIES)
def test_flux_conservation(family):
    fluxes = np.array([1e3, 2e4, 3e5])
    x, y = np.array([20.2, 60.7, 40.5]), np.array([20.9, 30.3, 60.1])
    image, truth, meta = make_star_field((80, 80), positions=(x, y), fluxes=fluxes,
                                         psf={"family": family, "fwhm": 2.5}, sky=150.0,
                                         gain=2.5, noise=False)
    assert_allclose(truth["flux"], fluxes / 2.5)
    assert_allclose(truth["flux_e"], fluxes)
    sub = image.astype(np.float64) - meta["background"]
    assert_allclose(sub.sum(), fluxes.sum() / 2.5, rtol=1e-5)
    # Each star on its own (apertures of radius 12.5 px = the truncation radius).
    yy, xx = np.mgrid[0:80, 0:80]
    for xi, yi, f in zip(x, y, fluxes):
        r = np.hypot(xx - np.floor(xi + 0.5), yy - np.floor(yi + 0.5))
        assert_allclose(sub[r <= 12.6].sum(), f / 2.5, rtol=1e-4)


def test_flux_conservation_with_noise():
    flux, sky, rn, gain = 5e4, 100.0, 5.0, 2.0
    image, _, meta = make_star_field((64, 64), positions=([31.3], [32.6]), fluxes=[flux],
                                     sky=sky, read_noise=rn, gain=gain, seed=3)
    sub = image.astype(np.float64) - meta["background"]
    sigma = np.sqrt(flux + image.size * (sky + rn**2)) / gain
    assert abs(sub.sum() - flux / gain) < 4 * sigma


def test_noise_statistics():
    sky, gain, rn = 300.0, 2.0, 6.0
    image, truth, meta = make_star_field((128, 128), 0, sky=sky, gain=gain, read_noise=rn,
                                         seed=4)
    assert len(truth) == 0
    expected_var = (sky / gain) / gain + rn**2 / gain**2  # sky in ADU over gain + read noise
    assert_allclose(np.var(image, dtype=np.float64), expected_var, rtol=0.04)
    assert_allclose(np.mean(image, dtype=np.float64), sky / gain, rtol=2e-3)
    assert_allclose(meta["noise"], np.sqrt(expected_var), rtol=1e-6)
    assert_allclose(meta["background"], sky / gain)
    # Electrons (gain 1): variance = sky + read_noise**2.
    image, _, _ = make_star_field((128, 128), 0, sky=sky, gain=1.0, read_noise=rn, seed=5)
    assert_allclose(np.var(image, dtype=np.float64), sky + rn**2, rtol=0.04)


def test_noise_is_poisson_on_sources():
    # Many noisy realisations of a bright star: pixel variance = (model + sky)/gain**2 + ...
    kw = {"positions": ([15.2], [15.7]), "fluxes": [2e5], "sky": 50.0, "gain": 4.0,
          "read_noise": 3.0}
    clean, _, meta = make_star_field((32, 32), noise=False, **kw)
    stack = np.stack([make_star_field((32, 32), seed=s, **kw)[0] for s in range(200)])
    var = stack.var(axis=0, dtype=np.float64)
    peak = np.unravel_index(np.argmax(clean), clean.shape)
    assert_allclose(var[peak], meta["noise"][peak] ** 2, rtol=0.25)
    assert_allclose(meta["noise"][peak] ** 2, (clean[peak] * 4.0 + 9.0) / 16.0, rtol=1e-5)


def test_sky_gradient():
    _, _, meta = make_star_field((64, 128), 0, sky=100.0, sky_gradient=(0.2, -0.1),
                                 noise=False)
    bkg = meta["background"]
    assert_allclose(bkg[32, 64], 100.0, rtol=1e-3)
    assert_allclose(bkg[32, -1] - bkg[32, 0], 100.0 * 0.2 * 127 / 128, rtol=1e-4)
    assert_allclose(bkg[-1, 64] - bkg[0, 64], -100.0 * 0.1 * 63 / 64, rtol=1e-4)


def test_seed_reproducibility():
    a, ta = make_test_image((64, 64), 8, seed=12)
    b, tb = make_test_image((64, 64), 8, seed=12)
    c, tc = make_test_image((64, 64), 8, seed=13)
    assert_array_equal(a, b)
    assert_array_equal(ta["x"], tb["x"])
    assert_array_equal(ta["flux"], tb["flux"])
    assert not np.array_equal(a, c)
    assert not np.array_equal(ta["x"], tc["x"])


def test_make_test_image():
    image, truth = make_test_image((96, 80), 15, seed=2)
    assert image.shape == (96, 80)
    assert image.dtype == np.float32
    assert truth.colnames == ["id", "x", "y", "flux"]
    assert_array_equal(truth["id"], np.arange(1, 16))
    assert np.all((truth["x"] >= 7.5) & (truth["x"] <= 80 - 8.5))
    assert np.all((truth["y"] >= 7.5) & (truth["y"] <= 96 - 8.5))
    assert np.all((truth["flux"] >= 1e3) & (truth["flux"] <= 1e5))  # 2e3..2e5 e- at gain 2


def test_flux_power_law():
    _, truth, _ = make_star_field((64, 64), 4000, flux_range=(100, 1e5), flux_slope=0.8,
                                  noise=False, psf={"fwhm": 1.0}, seed=6)
    f = np.asarray(truth["flux_e"])
    assert f.min() >= 100 and f.max() <= 1e5
    # N(>F) ~ F**-0.8: the fraction above 1000 is (10**-0.8 - 1e-2.4) / (1 - 1e-2.4).
    expected = (10**-0.8 - 10**-2.4) / (1 - 10**-2.4)
    assert_allclose(np.mean(f > 1000), expected, atol=0.02)


def test_image_psf_model():
    from photutils.psf import ImagePSF

    # An oversampled (x4), normalised Gaussian ePSF-like model.
    stamps, _, _ = render_psf_stamps({"family": "gaussian", "fwhm": 3.0 * 4}, [0.0], [0.0],
                                     half_size=40)
    model = ImagePSF(stamps[0] * 16, oversampling=4)
    image, truth, _ = make_star_field((60, 60), positions=([28.3], [29.6]), fluxes=[1e4],
                                      psf=model, sky=0.0, noise=False)
    assert_allclose(truth["flux"], 1e4)
    assert_allclose(image.sum(dtype=np.float64), 1e4, rtol=2e-3)
    yy, xx = np.mgrid[0:60, 0:60]
    assert_allclose((image * xx).sum(dtype=np.float64) / image.sum(dtype=np.float64), 28.3,
                    atol=0.01)
    assert_allclose((image * yy).sum(dtype=np.float64) / image.sum(dtype=np.float64), 29.6,
                    atol=0.01)


def test_fisher_bounds_sky_free():
    flux = np.array([1e3, 1e4, 1e5, 1e6])
    n = flux.size
    b = fisher_bounds({"fwhm": 3.0}, np.full(n, 10.2), np.full(n, 10.3), flux, np.zeros(n),
                      np.zeros(n))
    for key in ("snr", "crlb_flux", "crlb_x", "crlb_y"):
        assert np.all(np.isfinite(b[key])), key
    # Pure photon noise: S/N = sqrt(flux); crlb_flux ~ sqrt(flux), positions ~ fwhm/sqrt(flux).
    assert_allclose(b["snr"], np.sqrt(flux), rtol=1e-9)
    ratio = b["crlb_flux"] / np.sqrt(flux)
    assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert 1.0 <= ratio[0] < 1.1
    assert_allclose(b["crlb_x"] * np.sqrt(flux), b["crlb_x"][0] * np.sqrt(flux[0]), rtol=1e-6)
    assert np.all(np.diff(b["crlb_x"]) < 0)


def test_fisher_bounds_with_sky():
    flux = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
    n = flux.size
    b = fisher_bounds({"family": "gaussian", "fwhm": 2.5}, np.full(n, 10.0), np.full(n, 10.0),
                      flux, np.full(n, 100.0), np.full(n, 5.0))
    assert np.all(np.diff(b["snr"]) > 0)
    assert np.all(np.diff(b["crlb_flux"]) > 0)
    assert np.all(np.diff(b["crlb_flux"] / flux) < 0)
    assert np.all(b["crlb_flux"] >= np.sqrt(flux))
    assert np.all(b["crlb_flux"] >= flux / b["snr"] * (1 - 1e-9))  # free background costs S/N
    # Faint stars are sky limited, bright ones photon limited.
    assert b["crlb_flux"][0] / np.sqrt(flux[0]) > 3
    assert b["crlb_flux"][-1] / np.sqrt(flux[-1]) < 1.05
    # Sky-limited S/N of a pixel-integrated Gaussian: flux / sqrt(4 pi s^2 (sky + rn^2)),
    # with s^2 = sigma^2 + 1/12 (the pixel's own variance).
    faint = fisher_bounds({"family": "gaussian", "fwhm": 2.5}, [10.0], [10.0], [1.0], [100.0],
                          [5.0])
    s2 = (2.5 / (2 * np.sqrt(2 * np.log(2)))) ** 2 + 1 / 12
    assert_allclose(faint["snr"], 1.0 / np.sqrt(4 * np.pi * s2 * 125.0), rtol=0.02)
    assert_allclose(b["crlb_x"], b["crlb_y"], rtol=1e-3)


def test_fisher_bounds_empty():
    b = fisher_bounds({}, [], [], [], [], [])
    assert all(v.shape == (0,) for v in b.values())


@pytest.mark.parametrize("family", ["moffat", "double_gaussian"])
def test_a_centred_taper_keeps_heavy_wings_centred(family):
    """Beta 1.5 wings cut by a circle around the central pixel would move the centroid."""
    psf = {"family": family, "fwhm": 2.0, "beta": 1.5, "halo_fraction": 0.3, "halo_scale": 3.5,
           "centred_truncation": True}
    for x in (30.3, 31.71, 29.55):
        img, _, _ = make_star_field((64, 64), positions=([x], [30.4]), fluxes=[1.0], psf=psf,
                                    sky=0.0, noise=False)
        total = img.sum(dtype=np.float64)
        cx = (img * np.arange(64)[None, :]).sum(dtype=np.float64) / total
        assert abs(cx - x) < 2e-3, (cx, x)
