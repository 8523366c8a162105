"""
The public switches that calibration and evaluation code use instead of private state
(``sigma_calibration``, ``flux_bias_correction``, ``diagnostics``), and the warnings of a
call pointing at the caller's line.
"""

import json
import shutil
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import NDData
from astropy.table import QTable
from photutils.datasets import make_model_image
from photutils.psf import CircularGaussianPRF

from asidfe_phot import MLPhotometry
from asidfe_phot.exceptions import (
    AsidfePhotWarning,
    FlaggedSourcesWarning,
    NoSourceNoiseWarning,
    PSFModelWarning,
    TooFewPSFStarsWarning,
)
from asidfe_phot.models import model_path

#: The model card's sigma calibrations: of the network, with a given PSF, with "auto".
CALIBRATIONS = ("sigma_calibration", "sigma_calibration_psf", "sigma_calibration_auto")
NETWORK_COLUMNS = ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err")
RESULT_COLUMNS = NETWORK_COLUMNS + ("flags",)
FWHM = 2.5
GAUSSIAN = CircularGaussianPRF(fwhm=FWHM)


@pytest.fixture(name="stars", scope="module")
def fixture_stars():
    """Gaussian stars (FWHM 2.5 px) kept 14 px apart, white noise: image, positions, error."""
    rng = np.random.default_rng(11)
    shape, n, noise = (128, 128), 20, 3.0
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(16, shape[1] - 17), rng.uniform(16, shape[0] - 17)
        if all(np.hypot(x - a, y - b) > 14 for a, b in zip(xs, ys)):
            xs.append(x)
            ys.append(y)
    truth = QTable({"x_0": xs, "y_0": ys, "flux": np.exp(rng.uniform(np.log(300), np.log(3e4),
                                                                       n))})
    image = make_model_image(shape, GAUSSIAN, truth, x_name="x_0", y_name="y_0",
                             model_shape=(25, 25))
    image = image + rng.normal(0, noise, shape)
    init = QTable({"x": truth["x_0"] + rng.normal(0, 0.2, n),
                   "y": truth["y_0"] + rng.normal(0, 0.2, n)})
    return image, init, np.full(shape, noise)


def _measure(phot, stars, **kwargs):
    image, init, error = stars
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "auto" on 20 stars warns that they are few
        return phot(image, init_params=init, error=error, background=0, **kwargs)


def _model_without(tmp_path, keys):
    """The shipped default model, copied, with ``keys`` left out of its card."""
    directory = tmp_path / "model"
    shutil.copytree(model_path(None), directory)
    card = json.loads((directory / "config.json").read_text())
    for key in keys:
        card.pop(key, None)
    (directory / "config.json").write_text(json.dumps(card))
    return directory


def _assert_same(a, b, columns=RESULT_COLUMNS):
    for name in columns:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


@pytest.mark.parametrize("psf_model", [None, GAUSSIAN, "auto"], ids=["none", "given", "auto"])
def test_sigma_calibration_off_gives_the_uncalibrated_card(tmp_path, stars, psf_model):
    raw_phot = MLPhotometry(psf_model=psf_model, sigma_calibration=False)
    raw = _measure(raw_phot, stars)
    bare = _measure(MLPhotometry(model=_model_without(tmp_path, CALIBRATIONS), psf_model=psf_model),
                    stars)
    calibrated = _measure(MLPhotometry(psf_model=psf_model), stars)
    assert raw.meta["psf_used"] == (psf_model is not None)
    _assert_same(raw, bare)
    # The calibration does change the errors (so the test above means something), and
    # nothing but the errors.
    assert not np.array_equal(raw["flux_err"], calibrated["flux_err"])
    if psf_model is None:
        _assert_same(raw, calibrated, ("x_fit", "y_fit", "flux_fit", "flags"))
    assert raw.meta["sigma_calibration"] is False
    assert calibrated.meta["sigma_calibration"] is True
    # The card itself is left intact.
    assert all(key in raw_phot.model_card for key in CALIBRATIONS)


def test_sigma_calibration_network_leaves_out_the_psf_mode_calibrations(tmp_path, stars):
    directory = _model_without(tmp_path, CALIBRATIONS[1:])
    for psf_model in (GAUSSIAN, "auto"):
        network = _measure(MLPhotometry(psf_model=psf_model, sigma_calibration="network"),
                           stars)
        _assert_same(network, _measure(MLPhotometry(model=directory, psf_model=psf_model), stars))
        assert network.meta["sigma_calibration"] == "network"
        full = _measure(MLPhotometry(psf_model=psf_model), stars)
        assert not np.array_equal(network["flux_err"], full["flux_err"])
    # Without a PSF the network's calibration is all there is.
    _assert_same(_measure(MLPhotometry(psf_model=None, sigma_calibration="network"), stars),
                 _measure(MLPhotometry(psf_model=None), stars))


def test_flux_bias_correction_off_gives_the_networks_fluxes(stars):
    options = {"psf_model": None, "aperture_correction": False, "diagnostics": True}
    on_phot = MLPhotometry(**options)
    on = _measure(on_phot, stars)
    off = _measure(MLPhotometry(flux_bias_correction=False, **options), stars)
    assert on.meta["flux_bias_correction"] is True
    assert off.meta["flux_bias_correction"] is False
    correction = on_phot.model_card["flux_bias_correction"]
    factor = np.interp(np.log10(np.asarray(on["snr_core"])), correction["log10_core_snr"],
                       correction["factor"])
    assert np.ptp(factor) > 0.01  # faint and bright stars: the factors differ
    np.testing.assert_allclose(on["flux_fit"], factor * off["flux_fit"], rtol=1e-12)
    np.testing.assert_allclose(on["flux_err"], factor * off["flux_err"], rtol=1e-12)
    _assert_same(on, off, ("x_fit", "y_fit", "x_err", "y_err", "snr_core"))


def test_diagnostics_add_exactly_their_columns(stars):
    plain = _measure(MLPhotometry(psf_model=GAUSSIAN), stars)
    phot = MLPhotometry(psf_model=GAUSSIAN, diagnostics=True)
    table = _measure(phot, stars)
    assert table.meta["psf_used"]
    assert table.colnames[:len(plain.colnames)] == plain.colnames
    assert set(table.colnames) - set(plain.colnames) == {
        "snr_core", *(f"{name}{suffix}" for name in NETWORK_COLUMNS
                      for suffix in ("_network", "_psf"))}
    _assert_same(table, plain, plain.colnames)
    image, init, error = stars
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, internals = phot._call(image, init_params=init, error=error, background=0)
    np.testing.assert_array_equal(table["snr_core"], internals["snr_core"])
    for name in NETWORK_COLUMNS:
        np.testing.assert_array_equal(table[f"{name}_network"], internals["network"][name])
    # The PSF fit moved the bright stars' values away from the network's.
    assert not np.array_equal(table["flux_fit"], table["flux_fit_network"])
    # Each flux is one of the two estimates: the one with the smaller error (the PSF
    # mode's calibration off, as here, the chosen error is that estimate's own).
    net, fit = table["flux_fit_network"], table["flux_fit_psf"]
    took_fit = table["flux_fit"] == fit
    assert took_fit.any() and (took_fit | (table["flux_fit"] == net)).all()
    assert np.all(table["flux_err_psf"][took_fit] <= table["flux_err_network"][took_fit])
    assert np.all(table["flux_err_psf"][~took_fit] > table["flux_err_network"][~took_fit])
    # Without a PSF model there are no network columns (the values are the network's).
    alone = _measure(MLPhotometry(psf_model=None, diagnostics=True), stars)
    assert set(alone.colnames) - set(plain.colnames) == {"snr_core"}


def test_diagnostics_network_fluxes_are_in_data_units(stars):
    image, init, error = stars
    scale = 2.0**40  # beyond the internal scale's safe range: measured as image / 2**k
    phot = MLPhotometry(psf_model=GAUSSIAN, diagnostics=True)
    plain = _measure(phot, stars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaled = phot(image * scale * u.adu, init_params=init, error=error * scale * u.adu,
                      background=0 * u.adu)
    assert scaled.meta["internal_scale"] != 1
    for name in ("flux_fit_network", "flux_err_network"):
        assert scaled[name].unit == u.adu
        np.testing.assert_allclose(scaled[name].value, scale * np.asarray(plain[name]),
                                   rtol=1e-6, err_msg=name)
    for name in ("x_fit_network", "snr_core"):
        np.testing.assert_allclose(scaled[name], plain[name], rtol=1e-6, err_msg=name)


def test_diagnostics_rows_without_a_position_are_nan(stars):
    image, init, error = stars
    init = QTable(init)
    init["x"][3] = np.nan
    with pytest.warns(FlaggedSourcesWarning):
        table = MLPhotometry(psf_model=GAUSSIAN, diagnostics=True)(
            image, init_params=init, error=error, background=0)
    for name in ("snr_core", *(f"{n}_network" for n in NETWORK_COLUMNS)):
        assert np.isnan(table[name][3]), name
        assert np.all(np.isfinite(np.delete(np.asarray(table[name]), 3))), name


@pytest.mark.parametrize(("name", "value"), [
    ("sigma_calibration", "psf"), ("sigma_calibration", None), ("sigma_calibration", 1),
    ("flux_bias_correction", "no"), ("diagnostics", None)])
def test_switches_are_checked(name, value):
    with pytest.raises(ValueError, match=name):
        MLPhotometry(**{name: value})


# --------------------------------------------------------------------------- warnings


def _assert_at_this_file(record, category):
    caught = [w for w in record if issubclass(w.category, category)]
    assert caught
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]


def test_warnings_of_a_call_point_at_the_callers_line(stars):
    image, init, error = stars
    phot = MLPhotometry(psf_model=None)
    outside = QTable({"x": [-100.0], "y": [50.0]})
    with pytest.warns(FlaggedSourcesWarning) as record:
        phot(image, init_params=outside, error=error, background=0)
    _assert_at_this_file(record, FlaggedSourcesWarning)
    with pytest.warns(NoSourceNoiseWarning) as record:
        phot(image, init_params=init, background=0)
    _assert_at_this_file(record, NoSourceNoiseWarning)
    with pytest.warns(AsidfePhotWarning, match="the mask keyword") as record:
        phot(NDData(image, mask=np.zeros(image.shape, bool)), mask=np.zeros(image.shape, bool),
             init_params=init, error=error, background=0)
    _assert_at_this_file(record, AsidfePhotWarning)
    with pytest.warns(PSFModelWarning, match="not used") as record:
        MLPhotometry(psf_model=CircularGaussianPRF(fwhm=3 * FWHM))(
            image, init_params=init, error=error, background=0)
    _assert_at_this_file(record, PSFModelWarning)
    few = QTable({"x": [20.0], "y": [20.0]})
    with pytest.warns(TooFewPSFStarsWarning) as record:
        MLPhotometry(psf_model="auto")(image[:40, :40], init_params=few, error=error[:40, :40],
                                       background=0)
    _assert_at_this_file(record, TooFewPSFStarsWarning)
    # The private entry point the training code still uses names its caller too.
    with pytest.warns(FlaggedSourcesWarning) as record:
        phot._call(image, init_params=outside, error=error, background=0)
    _assert_at_this_file(record, FlaggedSourcesWarning)


def _model_with(tmp_path, entries):
    """The shipped default model, copied, with ``entries`` added to its card."""
    directory = _model_without(tmp_path, ())
    card = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**card, **entries}))
    return directory


@pytest.mark.parametrize("margin", [0.0, 1e9])
def test_a_cards_margin_weighs_the_psf_modes_choice(tmp_path, stars, margin):
    # 0: the network's value always; a huge margin: the fit's wherever it fitted.
    phot = MLPhotometry(model=_model_with(tmp_path, {"psf_mode_network_margin": margin}),
                        psf_model=GAUSSIAN, diagnostics=True)
    table = _measure(phot, stars)
    assert table.meta["psf_mode_network_margin"] == margin
    fitted = np.isfinite(table["flux_fit_psf"])
    assert fitted.sum() > 10
    chosen = table["flux_fit_network"] if margin == 0 else table["flux_fit_psf"]
    np.testing.assert_array_equal(table["flux_fit"][fitted], chosen[fitted])
    chosen = table["x_fit_network"] if margin == 0 else table["x_fit_psf"]
    np.testing.assert_array_equal(table["x_fit"][fitted], chosen[fitted])


def test_a_cards_network_psf_calibration_is_used_only_with_the_psf(tmp_path, stars):
    # The network given the PSF takes the card's calibration of that case; without a
    # PSF the network's one calibration stays.
    card = json.loads((model_path(None) / "config.json").read_text())
    doubled = {**card["sigma_calibration"],
               **{t: [2 * f for f in card["sigma_calibration"][t]] for t in ("dx", "dy", "flux")}}
    model = _model_with(tmp_path, {"network_psf_calibration": {"sigma_calibration": doubled}})
    for psf_model in (GAUSSIAN, None):
        plain = _measure(MLPhotometry(psf_model=psf_model, diagnostics=True), stars)
        other = _measure(MLPhotometry(model=model, psf_model=psf_model, diagnostics=True),
                         stars)
        suffix = "_network" if psf_model is not None else ""
        ratio = np.asarray(other[f"flux_err{suffix}"]) / np.asarray(plain[f"flux_err{suffix}"])
        np.testing.assert_allclose(ratio, 2.0 if psf_model is not None else 1.0, rtol=1e-9)
