"""
photutils 3.0 ``PSFPhotometry`` API parity of `MLPhotometry`: the constructor's order and
keywords, fixed (forced) parameters, the local background, groups, init_params forms,
``results_to_init_params``, model/residual images, qfit/cfit and decode_flags.
"""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import NDData
from astropy.table import QTable, Table
from astropy.utils.exceptions import AstropyDeprecationWarning
from photutils.datasets import make_model_image
from photutils.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper

import asidfe_phot
from asidfe_phot import MLPhotometry, _onnx
from asidfe_phot import flags as F
from asidfe_phot.datasets import make_test_image
from asidfe_phot.exceptions import AsidfePhotWarning
from asidfe_phot.models import DEFAULT_MODEL, model_path

FWHM = 3.0
NOISE = 5.0
SHAPE = (96, 96)


def _gaussian(x_fixed=False, y_fixed=False, flux_fixed=False):
    psf = CircularGaussianPRF(fwhm=FWHM)
    psf.x_0.fixed, psf.y_0.fixed, psf.flux.fixed = x_fixed, y_fixed, flux_fixed
    return psf


@pytest.fixture(name="stars", scope="module")
def fixture_stars():
    """16 isolated Gaussian stars on a zero background, white noise: image, truth, error."""
    rng = np.random.default_rng(3)
    xs, ys = [], []
    while len(xs) < 16:
        x, y = rng.uniform(10, SHAPE[1] - 10), rng.uniform(10, SHAPE[0] - 10)
        if all(np.hypot(x - a, y - b) > 11 for a, b in zip(xs, ys, strict=True)):
            xs.append(x)
            ys.append(y)
    truth = QTable({"x_0": xs, "y_0": ys, "flux": rng.uniform(2e3, 2e4, 16)})
    clean = make_model_image(SHAPE, _gaussian(), truth, x_name="x_0", y_name="y_0",
                             model_shape=(25, 25))
    image = clean + rng.normal(0, NOISE, SHAPE)
    return image, truth, np.full(SHAPE, NOISE)


@pytest.fixture(name="small", scope="module")
def fixture_small():
    """A 64x64 Moffat field of 6 stars with a sky of 100 ADU: image, truth."""
    return make_test_image((64, 64), 6, seed=1)


def _quiet(phot, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(*args, **kwargs)


# --------------------------------------------------------------------------- constructor

def test_psf_model_and_fit_shape_are_positional_in_photutils_order():
    psf = _gaussian()
    phot = MLPhotometry(psf, (5, 7), aperture_radius=3, xy_bounds=1.0)
    assert phot.psf_model is psf
    assert phot.fit_shape == (5, 7)
    assert phot.xy_bounds == (1.0, 1.0)
    assert phot.aperture_radius == 3.0
    assert MLPhotometry(psf, 5).fit_shape == (5, 5)
    assert MLPhotometry(None, model=DEFAULT_MODEL).model_card["name"] == "asidfe_tsmve"


def test_a_model_as_first_positional_is_deprecated_but_works():
    with pytest.warns(AstropyDeprecationWarning, match=r"MLPhotometry\(model="):
        phot = MLPhotometry(DEFAULT_MODEL)
    assert str(phot.psf_model) == "auto"
    with pytest.warns(AstropyDeprecationWarning, match="first positional argument is now"):
        MLPhotometry(model_path(DEFAULT_MODEL))     # a model directory
    with pytest.raises(TypeError, match="give the network as model= only"):
        MLPhotometry(DEFAULT_MODEL, model=DEFAULT_MODEL)


def test_localbkg_estimator_is_a_deprecated_alias():
    from photutils.background import LocalBackground

    estimator = LocalBackground(5, 10)
    with pytest.warns(AstropyDeprecationWarning, match="local_bkg_estimator"):
        phot = MLPhotometry(localbkg_estimator=estimator)
    assert phot.local_bkg_estimator is estimator
    with pytest.warns(AstropyDeprecationWarning, match="use local_bkg_estimator"):
        assert phot.localbkg_estimator is estimator
    with (pytest.raises(TypeError, match="local_bkg_estimator"),
          pytest.warns(AstropyDeprecationWarning)):
        MLPhotometry(localbkg_estimator=estimator, local_bkg_estimator=estimator)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"fitter": object()}, ValueError, "not an astropy fitter; leave fitter=None"),
    ({"fitter_maxiters": 500}, ValueError, "fitter_maxiters=500 cannot be honoured"),
    ({"xy_bounds": 0}, ValueError, "xy_bounds must be strictly positive"),
    ({"xy_bounds": (1, 2, 3)}, ValueError, "xy_bounds must be a number or a pair"),
    ({"aperture_radius": -1}, ValueError, "aperture_radius must be a strictly positive"),
    ({"fit_shape": 4}, ValueError, "fit_shape must hold odd integers"),
    ({"fit_shape": 5, "psf_model": None}, ValueError, "psf_model=None fits no PSF"),
    ({"group_warning_threshold": 0}, ValueError, "group_warning_threshold must be a positive"),
    ({"grouper": 3}, TypeError, "grouper must be callable"),
    ({"local_bkg_estimator": 3}, TypeError, "local_bkg_estimator must be callable"),
    ({"psf_model": CircularGaussianPRF(fwhm=3, fixed={"fwhm": False})}, ValueError,
     r"free parameters \['fwhm'\]"),
    ({"device_id": -1}, ValueError, "device_id must be a non-negative integer"),
])
def test_photutils_keywords_we_cannot_honour_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MLPhotometry(**kwargs)


def test_device_id_reaches_the_session(monkeypatch):
    seen = {}
    create = _onnx.create_session

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(_onnx, "create_session", spy)
    phot = MLPhotometry(device_id=0)
    assert seen["device_id"] == 0
    assert phot.device_id == 0


def test_repository_call_sites_pass_the_network_by_keyword():
    """No MLPhotometry(<network>, ...) is left that would now warn (or mean psf_model)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    network = ("model", "model_dir", "DEFAULT_MODEL")
    offenders = []
    for folder in ("asidfe_phot", "tests", "evaluation", "training", "docs"):
        for path in (root / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MLPhotometry"
                        and node.args and path.name != "test_photutils_api.py"):
                    first = ast.unparse(node.args[0])
                    if first.split(".")[-1] in network or first.startswith(("'asidfe", '"asidfe')):
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders


# --------------------------------------------------------------------------- init_params forms

def test_init_params_forms_give_the_same_result(small):
    from photutils.aperture import CircularAperture

    image, truth = small
    phot = MLPhotometry(None)
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    ref = phot(image, init_params=Table({"x": x, "y": y}), gain=2.0)

    class Frame:            # the parts of a pandas DataFrame that are used
        columns = ("xcentroid", "ycentroid")

        def __getitem__(self, name):
            return {"xcentroid": x, "ycentroid": y}[name]

    forms = {"pair": {"init_params": (x, y)},
             "rows": {"init_params": np.column_stack([x, y])},
             "aperture": {"init_params": CircularAperture(np.column_stack([x, y]), 3)},
             "frame": {"init_params": Frame()},
             "keywords": {"x": x, "y": y}}
    for name, form in forms.items():
        tbl = phot(image, gain=2.0, **form)
        assert list(tbl["id"]) == list(range(1, len(x) + 1)), name
        for column in ("x_init", "y_init", "x_fit", "flux_fit", "flux_err"):
            np.testing.assert_array_equal(tbl[column], ref[column], err_msg=name)
    one = phot(image, init_params=np.array([x[0], y[0]]), gain=2.0)
    assert len(one) == 1 and one["flux_fit"][0] == ref["flux_fit"][0]
    broadcast = phot(image, x=x[:2], y=30.0, gain=2.0)
    np.testing.assert_array_equal(broadcast["y_init"], [30.0, 30.0])


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"init_params": (1.0, 2.0, 3.0)}, ValueError, "must be \\(x, y\\)"),
    ({"init_params": np.ones((3, 3))}, ValueError, "shape \\(N, 2\\)"),
    ({"init_params": ([1.0, 2.0], [1.0, 2.0, 3.0])}, ValueError, "do not broadcast"),
    ({"init_params": (1.0, 2.0), "x": [1.0], "y": [2.0]}, TypeError, "not both"),
    ({"x": [1.0]}, TypeError, "x= and y= go together"),
    ({"init_params": ["a", "b"]}, TypeError, "must hold numbers"),
])
def test_init_params_form_errors(phot, small, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        phot(small[0], **kwargs)


# --------------------------------------------------------------------------- local background

def test_local_bkg_column_is_the_background_subtracted_at_each_source(small):
    image, truth = small
    phot = MLPhotometry(None)
    tbl = _quiet(phot, image, init_params=truth["x", "y"], gain=2.0)
    # make_test_image's sky: 200 e at gain 2, i.e. 100 ADU.
    np.testing.assert_allclose(tbl["local_bkg"], 100.0, rtol=0.03)
    quantity = _quiet(phot, image * u.adu, init_params=truth["x", "y"], gain=2.0)
    assert quantity["local_bkg"].unit == u.adu
    np.testing.assert_allclose(quantity["local_bkg"].value, tbl["local_bkg"], rtol=1e-6)
    # Without a sky, the user's background=0: nothing subtracted.
    flat = _quiet(phot, image - 100.0, init_params=truth["x", "y"], gain=2.0, background=0)
    np.testing.assert_array_equal(flat["local_bkg"], 0.0)


def test_local_bkg_estimator_adds_to_the_reported_background(small):
    from photutils.background import LocalBackground

    image, truth = small
    phot = MLPhotometry(None, local_bkg_estimator=LocalBackground(8, 14))
    local = _quiet(phot, image, init_params=truth["x", "y"], gain=2.0, background=100.0)
    raised = _quiet(phot, image + 40.0, init_params=truth["x", "y"], gain=2.0,
                    background=100.0)
    plain = _quiet(MLPhotometry(None), image + 40.0, init_params=truth["x", "y"], gain=2.0,
                   background=100.0)
    np.testing.assert_allclose(plain["local_bkg"], 100.0)
    # The annulus level (near 0 here) on top of the given 2-D background.
    np.testing.assert_allclose(local["local_bkg"], 100.0, atol=5.0)
    assert np.any(local["local_bkg"] != 100.0)
    np.testing.assert_allclose(raised["local_bkg"] - local["local_bkg"], 40.0, rtol=1e-4)
    np.testing.assert_allclose(raised["flux_fit"], local["flux_fit"], rtol=2e-3)
    assert np.all(plain["flux_fit"] > 1.1 * local["flux_fit"])   # the pedestal taken as flux


def test_init_params_local_bkg_is_the_sources_background(small):
    image, truth = small
    phot = MLPhotometry(None)
    ref = _quiet(phot, image, init_params=truth["x", "y"], gain=2.0, background=100.0)
    given = QTable({"x": truth["x"], "y": truth["y"], "local_bkg": np.full(len(truth), 100.0)})
    tbl = _quiet(phot, image, init_params=given, gain=2.0)      # 2-D estimate replaced
    np.testing.assert_allclose(tbl["local_bkg"], 100.0)
    np.testing.assert_allclose(tbl["flux_fit"], ref["flux_fit"], rtol=1e-5)
    high = given.copy()
    high["local_bkg"] = 110.0
    raised = _quiet(phot, image, init_params=high, gain=2.0)
    assert np.all(raised["flux_fit"] < tbl["flux_fit"])
    blank = given.copy()
    blank["local_bkg"][0] = np.nan
    with pytest.raises(ValueError, match="'local_bkg' must be finite"):
        phot(image, init_params=blank, gain=2.0)


# --------------------------------------------------------------------------- fixed parameters

def test_fixed_positions_give_photutils_forced_photometry(stars):
    image, truth, error = stars
    psf = _gaussian(x_fixed=True, y_fixed=True)
    for offset in (0.0, 0.5):
        init = QTable({"x": truth["x_0"] + offset, "y": truth["y_0"], "flux": truth["flux"]})
        ours = MLPhotometry(psf, 7)(image, init_params=init, error=error, background=0)
        theirs = PSFPhotometry(psf, 7)(image, init_params=init, error=error)
        np.testing.assert_array_equal(ours["x_fit"], init["x"])
        np.testing.assert_array_equal(ours["y_fit"], init["y"])
        assert np.all(np.isnan(ours["x_err"])) and np.all(np.isnan(ours["y_err"]))
        # The flux of the PSF at the given position, as photutils measures it.
        np.testing.assert_allclose(ours["flux_fit"], theirs["flux_fit"], rtol=2e-3)
        np.testing.assert_allclose(ours["qfit"], theirs["qfit"], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(ours["cfit"], theirs["cfit"], atol=1e-5)
        if offset == 0:
            # photutils' errors, grown by sqrt(reduced chi^2) where that exceeds 1.
            ratio = ours["flux_err"] / theirs["flux_err"]
            assert np.all(ratio > 0.995) and np.median(ratio) < 1.15
            z = (ours["flux_fit"] - truth["flux"]) / ours["flux_err"]
            assert 0.5 < np.std(z) < 1.6
        else:
            # Off the centre the flux is biased low (as photutils'); the error grows with
            # the reduced chi^2 to cover the bias.
            ratio = ours["flux_fit"] / truth["flux"]
            assert np.all(ratio < 0.99)
            assert np.all(np.abs(ours["flux_fit"] - truth["flux"]) < 2 * ours["flux_err"])
        assert ours.meta["fixed_parameters"] == ["x", "y"]


def test_fixed_flux_uses_flux_init(stars):
    image, truth, error = stars
    init = QTable({"x": truth["x_0"] + 0.3, "y": truth["y_0"], "flux": truth["flux"] * 1.1})
    tbl = MLPhotometry(_gaussian(flux_fixed=True))(image, init_params=init, error=error,
                                                   background=0)
    np.testing.assert_array_equal(tbl["flux_fit"], init["flux"])
    np.testing.assert_array_equal(tbl["flux_init"], init["flux"])
    assert np.all(np.isnan(tbl["flux_err"]))
    # The positions are still fitted, towards the true centres.
    assert np.median(np.abs(tbl["x_fit"] - truth["x_0"])) < 0.1
    with pytest.raises(ValueError, match="psf_model.flux is fixed"):
        MLPhotometry(_gaussian(flux_fixed=True))(image, init_params=init["x", "y"], error=error)


def test_all_parameters_fixed_returns_the_inputs(stars):
    image, truth, error = stars
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    tbl = MLPhotometry(_gaussian(True, True, True))(image, init_params=init, error=error,
                                                    background=0)
    for name in ("x", "y", "flux"):
        np.testing.assert_array_equal(tbl[f"{name}_fit"], init[name])
        assert np.all(np.isnan(tbl[f"{name}_err"]))
    assert np.all(np.isfinite(tbl["qfit"]))


def test_without_a_psf_model_the_network_measures_the_source_where_it_is(stars):
    """
    psf_model=None has no parameters to fix: the network's flux is that of the source in
    its stamp, wherever its centre lies near the input position, so an input position
    off by half a FWHM gives an unbiased flux (and the true centre back).
    """
    image, truth, error = stars
    phot = MLPhotometry(None)
    centred = _quiet(phot, image, init_params=QTable({"x": truth["x_0"], "y": truth["y_0"]}),
                     error=error, background=0)
    init = QTable({"x": truth["x_0"] + 0.7, "y": truth["y_0"] - 0.4})
    tbl = _quiet(phot, image, init_params=init, error=error, background=0)
    assert np.median(tbl["flux_fit"] / centred["flux_fit"]) == pytest.approx(1.0, abs=0.03)
    assert np.median(np.hypot(tbl["x_fit"] - truth["x_0"], tbl["y_fit"] - truth["y_0"])) < 0.05


def test_xy_bounds_hold_the_fitted_position(stars):
    image, truth, error = stars
    init = QTable({"x": truth["x_0"] + 0.5, "y": truth["y_0"]})
    for psf in (None, _gaussian()):
        free = _quiet(MLPhotometry(psf), image, init_params=init, error=error, background=0)
        held = _quiet(MLPhotometry(psf, xy_bounds=(0.2, None)), image, init_params=init,
                      error=error, background=0)
        assert np.median(np.abs(free["x_fit"] - init["x"])) > 0.4
        assert np.all(np.abs(held["x_fit"] - init["x"]) <= 0.2 + 1e-12)
        assert np.median(np.abs(held["y_fit"] - truth["y_0"])) < 0.1    # y is free


def test_fit_shape_sets_the_fit_box(stars):
    image, truth, error = stars
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    psf = _gaussian(x_fixed=True, y_fixed=True)
    small = MLPhotometry(psf, 3)(image, init_params=init, error=error, background=0)
    large = MLPhotometry(psf, (11, 9))(image, init_params=init, error=error, background=0)
    theirs = PSFPhotometry(psf, (11, 9))(image, init_params=init, error=error)
    assert small.meta["fit_shape"] == (3, 3) and large.meta["fit_shape"] == (11, 9)
    # qfit sums the residuals over the box: a larger box, more noise summed.
    assert np.median(large["qfit"]) > 2 * np.median(small["qfit"])
    np.testing.assert_allclose(large["qfit"], theirs["qfit"], rtol=1e-3)


# --------------------------------------------------------------------------- flux_init

def test_aperture_radius_gives_flux_init(small):
    from photutils.aperture import CircularAperture, aperture_photometry

    image, truth = small
    tbl = _quiet(MLPhotometry(None, aperture_radius=4), image, init_params=truth["x", "y"],
                 gain=2.0, background=100.0)
    aperture = CircularAperture(np.column_stack([truth["x"], truth["y"]]), 4)
    expected = aperture_photometry(np.asarray(image) - 100.0, aperture)["aperture_sum"]
    np.testing.assert_allclose(tbl["flux_init"], expected, rtol=1e-4)
    assert tbl.colnames.index("flux_init") == tbl.colnames.index("y_init") + 1
    # Without it (and without a flux column) there is no flux_init, as there is none.
    plain = _quiet(MLPhotometry(None), image, init_params=truth["x", "y"], gain=2.0)
    assert "flux_init" not in plain.colnames


# --------------------------------------------------------------------------- groups

def test_groups_follow_photutils(stars):
    image, truth, error = stars
    x = np.append(np.asarray(truth["x_0"]), truth["x_0"][0] + 4.0)
    y = np.append(np.asarray(truth["y_0"]), truth["y_0"][0])
    init = QTable({"id": np.arange(10, 10 + x.size), "x": x, "y": y})
    phot = MLPhotometry(None)
    alone = _quiet(phot, image, init_params=init, error=error, background=0)
    np.testing.assert_array_equal(alone["group_id"], init["id"])     # photutils: id
    np.testing.assert_array_equal(alone["group_size"], 1)
    grouper = SourceGrouper(min_separation=6)
    grouped = _quiet(MLPhotometry(None, grouper=grouper), image, init_params=init,
                     error=error, background=0)
    np.testing.assert_array_equal(grouped["group_id"], grouper(x, y))
    assert grouped["group_size"][0] == grouped["group_size"][-1] == 2
    assert np.count_nonzero(grouped["group_size"] == 1) == x.size - 2
    own = init.copy()
    own["group_id"] = np.full(x.size, 7)
    with pytest.warns(AsidfePhotWarning, match="more than 5 sources"):
        given = _quiet_except(MLPhotometry(None, grouper=grouper, group_warning_threshold=5),
                              image, init_params=own, error=error, background=0)
    np.testing.assert_array_equal(given["group_id"], 7)
    own["group_id"] = np.arange(x.size) - 1
    with pytest.raises(ValueError, match="positive"):
        phot(image, init_params=own, error=error)


def _quiet_except(phot, *args, **kwargs):
    """Call, silencing only the flags' summary warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", asidfe_phot.exceptions.FlaggedSourcesWarning)
        return phot(*args, **kwargs)


# --------------------------------------------------------------------------- results & images

def test_results_to_init_params_feeds_the_fitted_values_back(stars):
    image, truth, error = stars
    init = QTable({"x": np.append(truth["x_0"] + 0.3, np.nan), "y": np.append(truth["y_0"],
                                                                             np.nan)})
    phot = MLPhotometry(_gaussian())
    assert phot.results_to_init_params() is None
    first = _quiet(phot, image, init_params=init, error=error, background=0)
    again = phot.results_to_init_params()
    assert again.colnames == ["id", "x_init", "y_init", "flux_init"]
    assert len(again) == len(truth)                        # the NaN row removed
    np.testing.assert_array_equal(again["x_init"], first["x_fit"][:-1])
    np.testing.assert_array_equal(again["flux_init"], first["flux_fit"][:-1])
    kept = phot.results_to_init_params(remove_invalid=False)
    assert len(kept) == len(init) and np.isnan(kept["x_init"][-1])
    second = _quiet(phot, image, init_params=again, error=error, background=0)
    np.testing.assert_array_equal(second["x_init"], first["x_fit"][:-1])
    np.testing.assert_array_equal(second["flux_init"], first["flux_fit"][:-1])
    same = phot.results_to_init_params(results=first, reset_ids=False)
    np.testing.assert_array_equal(same["id"], first["id"][:-1])


def test_model_and_residual_images_follow_photutils(stars):
    image, truth, error = stars
    init = QTable({"x": truth["x_0"], "y": truth["y_0"]})
    phot = MLPhotometry(_gaussian(), 7)
    tbl = phot(image, init_params=init, error=error, background=0)
    theirs = PSFPhotometry(_gaussian(), 7)
    theirs(image, init_params=QTable({"x": tbl["x_fit"], "y": tbl["y_fit"],
                                      "flux": tbl["flux_fit"]}), error=error)
    model = phot.make_model_image(SHAPE)
    assert isinstance(model, np.ndarray) and not isinstance(model, u.Quantity)
    assert model.sum() / np.sum(tbl["flux_fit"]) == pytest.approx(1.0, abs=1e-3)
    cut = phot.make_model_image(SHAPE, psf_shape=(5, 5))
    assert cut.sum() < 0.95 * model.sum()
    np.testing.assert_allclose(phot.make_model_image(SHAPE, results=tbl), model)
    with_bkg = phot.make_model_image(SHAPE, psf_shape=5, include_local_bkg=True)
    np.testing.assert_allclose(with_bkg, phot.make_model_image(SHAPE, psf_shape=5))  # bkg 0
    residual = phot.make_residual_image(image)
    assert np.std(residual) < 1.1 * NOISE
    nd = phot.make_residual_image(NDData(image))
    assert isinstance(nd, NDData)
    np.testing.assert_allclose(nd.data, residual)
    assert phot.make_residual_image(image * u.adu).unit == u.adu
    with pytest.raises(ValueError, match="psf_shape must be a positive integer"):
        phot.make_model_image(SHAPE, psf_shape=(0, 3))


def test_include_local_bkg_adds_each_sources_level(small):
    image, truth = small
    phot = MLPhotometry(CircularGaussianPRF(fwhm=3.0))
    tbl = _quiet(phot, image, init_params=truth["x", "y"], gain=2.0, background=100.0)
    plain = phot.make_model_image(image.shape, psf_shape=5)
    with_bkg = phot.make_model_image(image.shape, psf_shape=5, include_local_bkg=True)
    expected = 25 * np.sum(tbl["local_bkg"][np.isfinite(tbl["flux_fit"])])
    assert (with_bkg - plain).sum() == pytest.approx(expected, rel=1e-6)


def test_qfit_and_cfit_without_a_psf_are_nan(small):
    image, truth = small
    tbl = _quiet(MLPhotometry(None), image, init_params=truth["x", "y"], gain=2.0)
    assert np.all(np.isnan(tbl["qfit"])) and np.all(np.isnan(tbl["cfit"]))


# --------------------------------------------------------------------------- flags

def test_decode_flags_has_photutils_call_shape(small):
    image, truth = small
    phot = MLPhotometry(None)
    with pytest.raises(ValueError, match="no results yet"):
        phot.decode_flags()
    init = QTable({"x": [1.0, 32.0], "y": [1.0, 32.0]})
    tbl = _quiet(phot, image, init_params=init, gain=2.0)
    decoded = phot.decode_flags()                      # photutils: the last results' flags
    assert decoded == asidfe_phot.decode_flags(tbl["flags"])
    assert "EDGE" in decoded[0]
    bits = phot.decode_flags(return_bit_values=True)
    assert F.EDGE in bits[0] and all(isinstance(b, int) for b in bits[0])
    assert asidfe_phot.decode_flags(F.EDGE | F.BLENDED, return_bit_values=True) == [F.EDGE,
                                                                                    F.BLENDED]
    assert phot.decode_flags(F.MASKED) == ["MASKED"]   # ours: any flags too


def test_no_sources_with_a_psf_model_gives_an_empty_table():
    # The PSF fit of nothing (every position missing, or none given) is an empty result.
    image = np.random.default_rng(0).normal(100, 5, (64, 64))
    phot = MLPhotometry(CircularGaussianPRF(fwhm=2.7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(phot(image, init_params=QTable({"x": [], "y": []}))) == 0
        tbl = phot(image, init_params=QTable({"x": [np.nan], "y": [np.nan]}))
    assert len(tbl) == 1 and tbl["flags"][0] & F.NO_POSITION


def test_finder_with_a_quantity_threshold_on_quantity_data():
    # photutils' finders want a Quantity threshold for Quantity data: both kinds work.
    from photutils.detection import DAOStarFinder

    image = make_test_image()[0]
    counts = []
    for threshold in (50.0, 50.0 * u.electron):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tbl = MLPhotometry(finder=DAOStarFinder(threshold=threshold, fwhm=3.0))(
                np.asarray(image) * u.electron)
        counts.append(len(tbl))
    assert counts[0] == counts[1] > 5
