"""Tests of the mesh background estimator `asidfe_phot._background`."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from asidfe_phot._background import estimate_background
from asidfe_phot.datasets import make_star_field


def sky_image(shape=(128, 128), level=500.0, slope=(0.25, -0.15), rms=10.0, seed=0):
    """Noisy sky: ``level`` plus a gradient (ADU/px; default ~6% and ~4% across 128 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    sky = level + slope[0] * xx + slope[1] * yy
    return (sky + rng.normal(0.0, rms, shape)).astype(np.float32), sky


def test_constant_plus_gradient():
    image, sky = sky_image()
    bkg, rms = estimate_background(image, box_size=32)
    assert bkg.shape == image.shape and rms.shape == image.shape
    assert bkg.dtype == np.float32 and rms.dtype == np.float32
    rel = np.abs(bkg - sky) / sky
    # The outer half-mesh is extrapolated flat and the 3x3 median filter biases edge meshes
    # of a gradient, so the worst pixels are off by ~2.5%; typical ones by ~0.3%.
    assert np.max(rel) < 0.03
    assert np.max(rel[16:-16, 16:-16]) < 0.015
    assert np.median(rel) < 0.005
    assert_allclose(np.median(rms), 10.0, rtol=0.03)
    assert np.all(np.abs(rms - 10.0) < 1.0)


def test_with_stars():
    image, truth, meta = make_star_field((128, 128), 25, flux_range=(500, 5e4), sky=300.0,
                                         sky_gradient=(0.1, -0.05), gain=1.0, read_noise=5.0,
                                         seed=5)
    bkg, rms = estimate_background(image, box_size=32)
    true_bkg = meta["background"]
    assert np.median(np.abs(bkg - true_bkg) / true_bkg) < 0.01
    assert np.max(np.abs(bkg - true_bkg)[16:-16, 16:-16] / true_bkg[16:-16, 16:-16]) < 0.02
    assert np.max(np.abs(bkg - true_bkg) / true_bkg) < 0.04
    assert_allclose(np.median(rms), np.sqrt(300.0 + 25.0), rtol=0.05)


def test_masked_pixels_ignored():
    image, sky = sky_image(seed=1)
    mask = np.zeros(image.shape, bool)
    mask[:64, :64] = True  # four whole meshes
    mask[100:110, 90:120] = True
    corrupted = image.copy()
    corrupted[mask] = 1e5
    corrupted[5, 5] = np.nan  # non-finite pixels are always ignored
    bkg, rms = estimate_background(corrupted, mask, box_size=32)
    assert np.all(np.isfinite(bkg)) and np.all(np.isfinite(rms))
    # Masked values do not matter at all ...
    clean_mask = mask.copy()
    clean_mask[5, 5] = True
    clean_bkg, clean_rms = estimate_background(image, clean_mask, box_size=32)
    np.testing.assert_array_equal(bkg, clean_bkg)
    np.testing.assert_array_equal(rms, clean_rms)
    # ... and the fully masked meshes take the global level (no gradient there).
    assert np.max(np.abs(bkg - sky) / sky) < 0.05
    assert np.all(np.abs(rms - 10.0) < 1.0)
    # Without the mask the corrupted block would dominate.
    bad_bkg, _ = estimate_background(np.nan_to_num(corrupted), box_size=32)
    assert np.max(np.abs(bad_bkg - sky) / sky) > 0.5


def test_fully_masked_mesh_takes_global_value():
    image, sky = sky_image(slope=(0.0, 0.0), seed=2)
    mask = np.zeros(image.shape, bool)
    mask[:32, :32] = True
    bkg, _ = estimate_background(image, mask, box_size=32)
    assert_allclose(bkg, 500.0, rtol=0.01)


def test_all_masked():
    image, _ = sky_image()
    with pytest.raises(ValueError, match="no usable pixels"):
        estimate_background(image, np.ones(image.shape, bool), box_size=32)
    with pytest.raises(ValueError, match="no usable pixels"):
        estimate_background(np.full((64, 64), np.nan), box_size=32)


@pytest.mark.parametrize("shape", [(64, 64), (40, 130), (130, 40), (100, 70)])
def test_shapes(shape):
    image, sky = sky_image(shape=shape, seed=3)
    bkg, rms = estimate_background(image, box_size=32)
    assert bkg.shape == shape and rms.shape == shape
    rel = np.abs(bkg - sky) / sky
    assert np.max(rel) < 0.04
    assert np.median(rel) < 0.01
    assert_allclose(np.median(rms), 10.0, rtol=0.06)
