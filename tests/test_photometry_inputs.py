"""Tests of `asidfe_phot.MLPhotometry`'s inputs: data types, units, NDData, masks, flags."""

import astropy.units as u
import numpy as np
import pytest
from _photometry_helpers import (  # noqa: F401 (fixture_ref is a fixture)
    EXPECTED_COLUMNS,
    RESULT_COLUMNS,
    assert_same_results,
    fixture_ref,
    values,
)
from astropy.nddata import CCDData, NDData, StdDevUncertainty, VarianceUncertainty
from astropy.table import QTable

from asidfe_phot import flags as F
from asidfe_phot.datasets import make_test_image
from asidfe_phot.exceptions import (
    AsidfePhotWarning,
    FlaggedSourcesWarning,
    NoSourceNoiseWarning,
)

# --------------------------------------------------------------------------- data inputs


@pytest.mark.parametrize("shape", [(64,), (2, 32, 32), ()])
def test_data_not_2d(phot, init, shape):
    with pytest.raises(ValueError, match="data must be a 2-D image"):
        phot(np.zeros(shape), init_params=init)


def test_data_not_numeric(phot, init):
    with pytest.raises(TypeError, match="data must be numeric"):
        phot(np.full((32, 32), "a"), init_params=init)


def test_error_wrong_shape(phot, image, init):
    with pytest.raises(ValueError, match="error must have the shape of data"):
        phot(image, error=np.ones((10, 10)), init_params=init)


def test_mask_wrong_shape(phot, image, init):
    with pytest.raises(ValueError, match="mask must have the shape of data"):
        phot(image, mask=np.zeros((10, 10), bool), init_params=init)


def test_all_masked(phot, image, init):
    with pytest.raises(ValueError, match="no usable pixel"):
        phot(image, mask=np.ones(image.shape, bool), init_params=init)


def test_negative_gain(phot, image, init):
    with pytest.raises(ValueError, match="gain must be positive"):
        phot(image, gain=-1.0, init_params=init)


def test_big_endian(phot, image, error, init, ref):
    tbl = phot(image.astype(">f4"), error=error.astype(">f8"), init_params=init)
    assert_same_results(tbl, ref)
    tbl = phot(image.astype(">f8"), error=error, init_params=init)
    assert_same_results(tbl, ref)


def test_integer_data(phot, init):
    image, _ = make_test_image((96, 96), 5, seed=3)
    rounded = np.round(image)
    ref = phot(rounded, gain=2.0, init_params=init)
    assert_same_results(phot(rounded.astype(np.int32), gain=2.0, init_params=init), ref)


# --------------------------------------------------------------------------- units


def test_quantity_units_in_units_out(phot, image, error, init, ref):
    tbl = phot(image * u.adu, error=error * u.adu, init_params=init)
    assert tbl["flux_fit"].unit == u.adu
    assert tbl["flux_err"].unit == u.adu
    assert not hasattr(tbl["x_fit"], "unit") or tbl["x_fit"].unit in (None, u.one)
    assert_same_results(tbl, ref)


def test_quantity_error_converted(phot, image, error, init):
    ref = phot(image * u.Jy, error=error * u.Jy, init_params=init)
    tbl = phot(image * u.Jy, error=(error * 1000) * u.mJy, init_params=init)
    assert_same_results(tbl, ref, rtol=1e-5, atol=1e-6)
    assert tbl["flux_fit"].unit == u.Jy


def test_error_incompatible_unit(phot, image, error, init):
    with pytest.raises(u.UnitsError):
        phot(image * u.adu, error=error * u.m, init_params=init)


def test_error_units_without_data_units(phot, image, error, init):
    with pytest.raises(u.UnitsError, match="error has units but data has none"):
        phot(image, error=error * u.adu, init_params=init)


def test_data_units_without_error_units(phot, image, error, init):
    with pytest.raises(u.UnitsError, match="data has unit adu but error has none"):
        phot(image * u.adu, error=error, init_params=init)


def test_background_units_without_data_units(phot, image, error, init):
    with pytest.raises(u.UnitsError, match="background has units but data has none"):
        phot(image, error=error, background=100 * u.adu, init_params=init)


def test_quantity_background_and_gain(phot, image, error, init, field):
    bkg = field[2]["background"]
    ref = phot(image, error=error, background=bkg, init_params=init)
    tbl = phot(image * u.adu, error=error * u.adu, background=bkg * u.adu, init_params=init)
    assert_same_results(tbl, ref)
    ref = phot(image, gain=2.0, init_params=init)
    tbl = phot(image * u.adu, gain=2.0 * u.electron / u.adu / u.electron, init_params=init)
    assert_same_results(tbl, ref)


# --------------------------------------------------------------------------- NDData, masks


def test_ccddata(phot, image, error, init, wcs):
    mask = np.zeros(image.shape, bool)
    mask[40:43, 60:62] = True
    ccd = CCDData(np.array(image), unit="adu", mask=mask, uncertainty=StdDevUncertainty(error),
                  wcs=wcs)
    tbl = phot(ccd, init_params=init)
    ref = phot(image * u.adu, mask=mask, error=error * u.adu, init_params=init, wcs=wcs)
    assert tbl.colnames == EXPECTED_COLUMNS + ["sky_centroid"]
    assert tbl["flux_fit"].unit == u.adu
    assert_same_results(tbl, ref)
    # The mask is used: results differ from an unmasked run for stars near the masked block.
    unmasked = phot(image * u.adu, error=error * u.adu, init_params=init)
    assert not np.array_equal(values(tbl["flux_fit"]), values(unmasked["flux_fit"]))


def test_nddata_variance_uncertainty(phot, image, error, init, ref):
    nd = NDData(np.array(image), uncertainty=VarianceUncertainty(np.square(error)))
    assert_same_results(phot(nd, init_params=init), ref, rtol=1e-5, atol=1e-6)


def test_nddata_keyword_conflict_warns(phot, image, init):
    mask = np.zeros(image.shape, bool)
    nd = NDData(np.array(image), mask=mask)
    with pytest.warns(AsidfePhotWarning, match="both the NDData's mask and the mask keyword"):
        phot(nd, mask=mask, gain=2.0, init_params=init)


def test_masked_array_mask_honoured(phot, image, error, init):
    mask = np.zeros(image.shape, bool)
    mask[45:48, 30:33] = True
    ref = phot(image, mask=mask, error=error, init_params=init)
    # Masked pixel values must not matter, whatever carries the mask.
    garbage = np.array(image)
    garbage[mask] = 1e6
    tbl = phot(np.ma.MaskedArray(garbage, mask=mask), error=error, init_params=init)
    assert_same_results(tbl, ref)
    tbl = phot(garbage, mask=mask, error=error, init_params=init)
    assert_same_results(tbl, ref)
    # ... and the unmasked garbage does change results.
    tbl = phot(garbage, error=error, init_params=init)
    assert not np.array_equal(tbl["flux_fit"], ref["flux_fit"], equal_nan=True)


def test_masked_array_and_mask_merged(phot, image, error, init):
    m1 = np.zeros(image.shape, bool)
    m2 = np.zeros(image.shape, bool)
    m1[45:48, 30:33] = True
    m2[20:22, 70:75] = True
    ref = phot(image, mask=m1 | m2, error=error, init_params=init)
    tbl = phot(np.ma.MaskedArray(image, mask=m1), mask=m2, error=error, init_params=init)
    assert_same_results(tbl, ref)


def _star_near_center(truth, shape):
    ny, nx = shape
    d = np.hypot(np.array(truth["x"]) - nx / 2, np.array(truth["y"]) - ny / 2)
    return int(np.argmin(d))


def test_masked_pixels_flags_and_no_nan(phot, image, error, field):
    truth = field[1]
    i = _star_near_center(truth, image.shape)
    x, y = float(truth["x"][i]), float(truth["y"][i])
    # A target on the star, one whose stamp holds the star (5-8 px away), one far away.
    init = QTable({"x": [x, x + 8.0, 5.0 if x > 48 else 90.0], "y": [y, y + 5.0, 5.0]})
    data = np.array(image)
    data[int(round(y)), int(round(x))] = np.nan  # a bad pixel on the star's core
    with pytest.warns(FlaggedSourcesWarning, match="1 of 3 sources are flagged"):
        tbl = phot(data, error=error, init_params=init)
    assert tbl["flags"][0] & F.CORE_MASKED
    assert tbl["flags"][0] & F.MASKED
    assert tbl["flags"][1] & F.MASKED
    assert not tbl["flags"][1] & F.CORE_MASKED
    assert not tbl["flags"][2] & (F.MASKED | F.CORE_MASKED)
    for name in RESULT_COLUMNS:
        assert np.all(np.isfinite(tbl[name])), name
    # NaN in the error map counts as masked too.
    err = np.array(error)
    err[int(round(y)), int(round(x))] = np.nan
    with pytest.warns(FlaggedSourcesWarning, match="1 of 3 sources"):
        tbl2 = phot(image, error=err, init_params=init)
    assert_same_results(tbl2, tbl)


def test_edge_and_no_overlap(phot, image, error):
    init = QTable({"x": [2.0, 50.0, -100.0, 95.3], "y": [50.0, 50.0, 40.0, 94.9]})
    with pytest.warns(FlaggedSourcesWarning, match="1 of 4 sources") as record:
        tbl = phot(image, error=error, init_params=init)
    assert sum(issubclass(w.category, FlaggedSourcesWarning) for w in record) == 1
    assert tbl["flags"][0] & F.EDGE
    assert not tbl["flags"][1] & F.EDGE
    assert tbl["flags"][2] & F.NO_OVERLAP
    assert tbl["flags"][2] & F.EDGE
    assert tbl["flags"][3] & F.EDGE
    assert not tbl["flags"][3] & F.NO_OVERLAP
    for name in RESULT_COLUMNS:
        assert np.isnan(tbl[name][2]), name
        assert np.all(np.isfinite(tbl[name][[0, 1, 3]])), name


def test_edge_masked_pixels_are_not_core_masked(phot, image, error):
    # Pixels outside the image are EDGE, not CORE_MASKED, even with a mask present.
    mask = np.zeros(image.shape, bool)
    mask[80:82, 80:82] = True
    init = QTable({"x": [0.0], "y": [50.0]})
    tbl = phot(image, error=error, mask=mask, init_params=init)
    assert tbl["flags"][0] & F.EDGE
    assert not tbl["flags"][0] & F.CORE_MASKED


def test_saturation_flag(phot, image, error, init, field):
    truth = field[1]
    brightest = int(np.argmax(truth["flux"]))
    xb, yb = (int(round(float(v[brightest]))) for v in (truth["x"], truth["y"]))
    peak = float(image[yb - 1:yb + 2, xb - 1:xb + 2].max())
    with pytest.warns(FlaggedSourcesWarning, match="sources are flagged"):
        tbl = phot(image, error=error, init_params=init, saturation=0.99 * peak)
    sat = (tbl["flags"] & F.SATURATED) != 0
    assert sat[brightest]
    assert sat.sum() < len(tbl)  # a faint star is not flagged
    tbl = phot(image, error=error, init_params=init, saturation=2 * float(image.max()))
    assert not np.any(tbl["flags"] & F.SATURATED)


def test_compact_flag_on_a_hot_pixel(phot, image, error, init, ref):
    # No star is that sharp; a single hot pixel (the stars keep 16 px from the edges) is.
    data = np.array(image)
    data[5, 48] += 1000 * float(np.median(error))
    hot = QTable({"x": [48.0], "y": [5.0]})
    with pytest.warns(FlaggedSourcesWarning, match="1 of 1 sources"):
        tbl = phot(data, error=error, init_params=hot)
    assert tbl["flags"][0] & F.COMPACT
    assert not np.any(ref["flags"] & F.COMPACT)


def test_no_source_noise_warning(phot, image, init, field):
    sub = np.asarray(image) - field[2]["background"]
    with pytest.warns(NoSourceNoiseWarning, match="pass error= or gain="):
        tbl = phot(sub, background=0, init_params=init)
    assert np.all(tbl["flags"] & F.NO_SOURCE_NOISE)
    assert tbl.meta["gain"] is None
    # gain (or an error map) tells the network the Poisson noise: no warning, no flag.
    tbl = phot(sub, background=0, gain=2.0, init_params=init)
    assert not np.any(tbl["flags"] & F.NO_SOURCE_NOISE)


def test_gain_from_sky(phot, image, init):
    tbl = phot(image, init_params=init)
    assert "sky / rms^2" in tbl.meta["gain"]
    gain = float(tbl.meta["gain"].split()[0])
    # sky 200 e- over gain 2: sky/rms^2 = 100 / ((200 + 25) / 4) ~ 1.8 e-/ADU.
    assert 1.5 < gain < 2.1
    assert not np.any(tbl["flags"] & F.NO_SOURCE_NOISE)


def test_compact_flag_knows_an_undersampled_psf():
    # Stars of a Gaussian PSF of FWHM 0.7 px put over 70 % of their central 3x3 sum in one
    # pixel: without a PSF they look like artefacts, with the frame's PSF they do not; a
    # hot pixel (one pixel, no light around it) stays COMPACT either way.
    from photutils.psf import CircularGaussianPRF

    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import make_star_field

    n = 12
    ys, xs = np.divmod(np.arange(n), 4)
    positions = (24.0 + 16 * xs, 24.0 + 16 * ys)
    image, _, _ = make_star_field((88, 88), psf={"family": "gaussian", "fwhm": 0.7},
                                  positions=positions, fluxes=np.full(n, 2e4), sky=100.0,
                                  gain=1.0, seed=3)
    image = np.asarray(image, dtype=float)
    image[80, 8] += 5e3
    init = QTable({"x": [*positions[0], 8.0], "y": [*positions[1], 80.0]})
    compact = {}
    for label, psf in (("none", None), ("given", CircularGaussianPRF(fwhm=0.7))):
        phot = MLPhotometry(psf_model=psf, aperture_correction=False)
        with pytest.warns(FlaggedSourcesWarning):
            tbl = phot(image, init_params=init, gain=1.0)
        compact[label] = (np.asarray(tbl["flags"]) & F.COMPACT) != 0
    assert compact["none"][:n].sum() >= n // 2
    assert not compact["given"][:n].any()
    assert compact["none"][n] and compact["given"][n]
