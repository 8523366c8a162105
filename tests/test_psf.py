"""psf_model=: photutils models, PSFEx files, 'auto', the PSF fit, model and residual images."""

import json
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import Table
from photutils.datasets import make_model_image
from photutils.psf import (
    CircularGaussianPRF,
    GriddedPSFModel,
    ImagePSF,
    MoffatPSF,
)

from asidfe_phot import MLPhotometry
from asidfe_phot import flags as F
from asidfe_phot._background import estimate_background
from asidfe_phot.exceptions import TooFewPSFStarsWarning
from asidfe_phot.psf import PSFSampler, build_epsf, read_psfex, select_psf_stars


@pytest.fixture(name="ntt")
def fixture_ntt(real_data):
    """The ESO NTT frame's folder of the real data (skips, naming ASIDFE_REAL_DATA, without)."""
    return real_data / "eso_ntt_emmi"


def _field(psf, shape=(120, 120), n=16, noise=3.0, seed=0, flux=(2e3, 3e4), border=15):
    """Stars rendered with ``psf`` (photutils), white noise; returns image, truth, noise."""
    rng = np.random.default_rng(seed)
    # Keep the stars apart so each test checks the PSF, not the blend handling.
    xs, ys = [], []
    while len(xs) < n:
        x, y = rng.uniform(border, shape[1] - border), rng.uniform(border, shape[0] - border)
        if all(np.hypot(x - a, y - b) > 12 for a, b in zip(xs, ys)):
            xs.append(x)
            ys.append(y)
    truth = Table({"x_0": xs, "y_0": ys, "flux": np.exp(rng.uniform(*np.log(flux), n))})
    image = make_model_image(shape, psf, truth, x_name="x_0", y_name="y_0",
                             model_shape=(31, 31))
    image = image + rng.normal(0, noise, shape)
    return image, truth, noise


def _measure(psf_model, image, truth, noise, **kw):
    phot = MLPhotometry(psf_model=psf_model, **kw)
    rng = np.random.default_rng(5)
    init = Table({"x": truth["x_0"] + rng.normal(0, 0.3, len(truth)),
                  "y": truth["y_0"] + rng.normal(0, 0.3, len(truth))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = phot(image, init_params=init, error=np.full(image.shape, noise), background=0)
    return phot, tbl


def _gaussian_image_psf(fwhm=3.0, oversampling=4):
    """An ImagePSF tabulated from a Gaussian PRF (sum = oversampling^2)."""
    g = (np.arange(25 * oversampling) - (25 * oversampling - 1) / 2) / oversampling
    model = CircularGaussianPRF(fwhm=fwhm)
    data = model(g[None, :], g[:, None])
    return ImagePSF(data * oversampling**2 / data.sum(), oversampling=oversampling)


def test_sampler_renders_the_model():
    psf = CircularGaussianPRF(fwhm=2.2)
    sampler = PSFSampler(psf)
    x, y = np.array([40.3, 10.0]), np.array([41.8, 12.45])
    x0, y0 = np.array([35, 5]), np.array([36, 7])
    got = sampler.render(x, y, x0, y0, 11)
    grid = np.arange(11)
    for k in range(2):
        want = psf.evaluate(x0[k] + grid[None, :], y0[k] + grid[:, None], 1.0, x[k], y[k], 2.2)
        np.testing.assert_allclose(got[k], want, atol=2e-4 * want.max())
    stamp = sampler.stamps(np.array([50]), np.array([60]))[0]
    assert np.unravel_index(stamp.argmax(), stamp.shape) == (16, 16)
    assert abs(sampler.fwhm - 2.2) < 0.3


def test_sampler_refuses_a_model_without_position_and_flux():
    from astropy.modeling.models import Gaussian2D

    with pytest.raises(TypeError, match="x_0, y_0 and flux"):
        MLPhotometry(psf_model=Gaussian2D())
    with pytest.raises(FileNotFoundError, match="no file"):
        MLPhotometry(psf_model="no_such_file.psf")


@pytest.mark.parametrize("kind", ["prf", "image", "moffat"])
def test_each_model_kind_measures_bright_stars_to_the_noise(kind):
    psf = {"prf": CircularGaussianPRF(fwhm=2.5), "image": _gaussian_image_psf(2.5),
           "moffat": MoffatPSF(alpha=2.94, beta=3.0)}[kind]
    image, truth, noise = _field(psf)
    phot, tbl = _measure(psf, image, truth, noise)
    ratio = np.asarray(tbl["flux_fit"]) / truth["flux"]
    # At S/N 100-1000 a fit with the right PSF is good to ~1 %; the network alone is not.
    assert np.median(np.abs(ratio - 1)) < 0.01
    dx = np.concatenate([tbl["x_fit"] - truth["x_0"], tbl["y_fit"] - truth["y_0"]])
    assert np.median(np.abs(dx)) < 0.01
    # The errors describe the scatter (z-score std near 1, loosely: 16 stars).
    z = (ratio - 1) * truth["flux"] / np.asarray(tbl["flux_err"])
    assert 0.4 < np.std(z) < 2.0
    assert {"qfit", "cfit"} <= set(tbl.colnames)
    assert np.all(np.abs(tbl["cfit"]) < 0.05)
    assert tbl.meta["aperture_correction"] == 1.0


def test_without_a_psf_the_fit_is_not_run(image, init, error):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = MLPhotometry(psf_model=None)(image, init_params=init, error=error)
    assert np.all(np.isnan(tbl["qfit"])) and np.all(np.isnan(tbl["cfit"]))
    assert tbl.meta["psf_model"] is None


def test_the_default_builds_an_epsf_only_from_enough_stars_and_quietly():
    psf = CircularGaussianPRF(fwhm=2.5)
    few, truth, noise = _field(psf, n=5, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # no TooFewPSFStarsWarning from the default
        tbl = MLPhotometry()(few, init_params=Table({"x": truth["x_0"], "y": truth["y_0"]}),
                             error=np.full(few.shape, noise), background=0)
    assert tbl.meta["psf_model"] == "auto" and not tbl.meta["psf_used"]
    many, truth, noise = _field(psf, shape=(200, 200), n=40, seed=13)
    _, tbl = _measure(MLPhotometry().psf_model, many, truth, noise)
    assert tbl.meta["psf_used"] and tbl.meta["psf_nstars"] >= 10


@pytest.mark.parametrize("fwhm", [3.0, 5.0])
def test_a_wrong_psf_does_not_beat_the_network(fwhm):
    """A PSF too wide: its error is measured and the network's values are kept."""
    image, truth, noise = _field(CircularGaussianPRF(fwhm=2.5), seed=3)
    _, right = _measure(None, image, truth, noise)
    _, wrong = _measure(CircularGaussianPRF(fwhm=fwhm), image, truth, noise)
    assert wrong.meta["psf_profile_error"] > 0.05
    # Far off (2x): not used at all, and said so.
    assert wrong.meta["psf_used"] == (fwhm < 4)
    err_wrong = np.median(np.abs(np.asarray(wrong["flux_fit"]) / truth["flux"] - 1))
    err_net = np.median(np.abs(np.asarray(right["flux_fit"]) / truth["flux"] - 1))
    assert err_wrong < 1.5 * err_net + 0.005


def test_an_unusable_psf_warns():
    from asidfe_phot.exceptions import PSFModelWarning

    image, truth, noise = _field(CircularGaussianPRF(fwhm=2.5), seed=3)
    with pytest.warns(PSFModelWarning, match="not used"):
        MLPhotometry(psf_model=CircularGaussianPRF(fwhm=6.0))(
            image, init_params=Table({"x": truth["x_0"], "y": truth["y_0"]}),
            error=np.full(image.shape, noise), background=0)


def test_a_varying_psf_is_rendered_where_each_star_is():
    shape = (256, 256)
    data, xy = [], []
    for yv in (0, 255):
        for xv in (0, 255):
            fwhm = 2.0 if xv == 0 else 4.0
            data.append(_gaussian_image_psf(fwhm).data)
            xy.append((xv, yv))
    gridded = GriddedPSFModel(NDData(np.array(data), meta={"grid_xypos": xy,
                                                            "oversampling": 4}))
    sampler = PSFSampler(gridded)
    assert sampler.varies
    narrow, wide = sampler.stamps(np.array([20, 235]), np.array([128, 128]))
    assert narrow.max() > 2 * wide.max()
    assert sampler.cell <= 64
    image, truth, noise = _field(gridded, shape=shape, n=20, seed=4)
    _, tbl = _measure(gridded, image, truth, noise)
    ratio = np.asarray(tbl["flux_fit"]) / truth["flux"]
    assert np.median(np.abs(ratio - 1)) < 0.015


def test_blended_pair_shares_its_light():
    psf = CircularGaussianPRF(fwhm=3.0)
    truth = Table({"x_0": [40.0, 42.6, 20.0], "y_0": [40.0, 41.0, 20.0],
                   "flux": [2e4, 2e4, 1e4]})
    rng = np.random.default_rng(2)
    image = make_model_image((64, 64), psf, truth, x_name="x_0", y_name="y_0",
                             model_shape=(25, 25)) + rng.normal(0, 3.0, (64, 64))
    phot = MLPhotometry(psf_model=psf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = phot(image, init_params=Table({"x": truth["x_0"], "y": truth["y_0"]}),
                   error=np.full(image.shape, 3.0), background=0)
    # Each of the pair alone would take both stars' light (2x): together they share it.
    pair = np.asarray(tbl["flux_fit"][:2])
    assert abs(pair.sum() / 4e4 - 1) < 0.03
    assert np.all(np.abs(pair / 2e4 - 1) < 0.25)
    assert np.all(tbl["flags"][:2] & F.BLENDED)
    assert not tbl["flags"][2] & F.BLENDED
    # Their errors cover what the split leaves.
    assert np.all(np.abs(pair - 2e4) < 5 * np.asarray(tbl["flux_err"][:2]))


def test_an_input_source_in_the_core_is_blended_without_a_psf_too(image, init, error):
    def blended(table):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tbl = MLPhotometry()(image, init_params=table, error=error)
        return (np.asarray(tbl["flags"]) & F.BLENDED) != 0

    before = blended(init)
    init = init.copy()
    k = int(np.flatnonzero(~before)[0])
    init.add_row({"x_init": init["x_init"][k] + 2.0, "y_init": init["y_init"][k] - 1.0})
    after = blended(init)
    assert after[k] and after[-1]
    others = np.ones(len(before), bool)
    others[k] = False
    np.testing.assert_array_equal(after[:-1][others], before[others])


def test_model_and_residual_images():
    psf = CircularGaussianPRF(fwhm=2.5)
    image, truth, noise = _field(psf, seed=6)
    phot = MLPhotometry(psf_model=psf)
    with pytest.raises(ValueError, match="measurement first"):
        phot.make_model_image(image.shape)
    _, tbl = _measure(psf, image, truth, noise)
    phot, tbl = _measure(psf, image, truth, noise)
    model = phot.make_model_image(image.shape)
    assert abs(model.sum() / truth["flux"].sum() - 1) < 0.01
    residual = phot.make_residual_image(image)
    assert np.std(residual) < 1.2 * noise < 0.2 * np.std(image)
    np.testing.assert_allclose(phot.make_model_image(image.shape, results=tbl), model)
    no_psf = MLPhotometry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_psf(image, init_params=Table({"x": truth["x_0"], "y": truth["y_0"]}), background=0,
               error=np.full(image.shape, noise))
    with pytest.raises(ValueError, match="no PSF model"):
        no_psf.make_model_image(image.shape)


def test_psfex_files_become_photutils_models(ntt):
    varying = read_psfex(ntt / "galaxies_psfex_rerun.psf")
    assert isinstance(varying, GriddedPSFModel)
    constant = read_psfex(ntt / "astromatic_tests_default.psf")
    assert isinstance(constant, ImagePSF)
    for model in (varying, constant):
        sampler = PSFSampler(model)
        assert 1.5 < sampler.fwhm < 3.5   # PSFEx says 2.6 px (its own FWHM measure)
        stamp = sampler.stamps(np.array([500]), np.array([500]))[0]
        assert 0.95 < stamp.sum() <= 1.01
    # The NTT PSF varies across the frame: its PSFEx model says so.
    a, b = PSFSampler(varying).stamps(np.array([100, 900]), np.array([100, 900]))
    assert abs(a.max() / b.max() - 1) > 0.2


def _ntt_image(ntt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # ESO-LOG header cards
        return fits.getdata(ntt / "galaxies.fits").astype(np.float32)


def test_auto_builds_the_epsf_from_the_image_stars_not_its_galaxies(ntt):
    """On the galaxy-rich NTT frame, the stars chosen are point sources (SPREAD_MODEL)."""
    image = _ntt_image(ntt)
    bkg, rms = estimate_background(image)
    x, y, info = select_psf_stars(image - bkg, rms)
    assert x.size >= 15
    cat = Table.read(ntt / "galaxies_sextractor_psffit_rerun.cat", format="ascii.sextractor")
    cx, cy = np.asarray(cat["XWIN_IMAGE"]) - 1, np.asarray(cat["YWIN_IMAGE"]) - 1
    d = np.hypot(x[:, None] - cx[None], y[:, None] - cy[None])
    nearest = d.argmin(axis=1)
    matched = d[np.arange(x.size), nearest] < 2
    # SourceExtractor's SPREAD_MODEL: near 0 for point sources, > 0.005 for galaxies.
    stellar = np.abs(np.asarray(cat["SPREAD_MODEL"])[nearest]) < 0.005
    assert np.mean(matched & stellar) > 0.9
    epsf, info = build_epsf(image - bkg, rms)
    assert info["psf_oversampling"] in (2, 4) and info["psf_nstars"] == x.size
    assert 1.8 < PSFSampler(epsf).fwhm < 3.0


def test_auto_on_a_real_frame_reports_its_stars_in_meta(ntt):
    image = _ntt_image(ntt)
    cat = Table.read(ntt / "galaxies_sextractor_psffit_rerun.cat", format="ascii.sextractor")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.asarray(cat["FLUX_PSF"]) / np.asarray(cat["FLUXERR_PSF"])
    cat = cat[(np.abs(cat["SPREAD_MODEL"]) < 0.003) & (cat["FLAGS"] == 0) & (snr > 50)]
    init = Table({"x": np.asarray(cat["XPSF_IMAGE"]) - 1, "y": np.asarray(cat["YPSF_IMAGE"]) - 1})
    phot = MLPhotometry(psf_model="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = phot(image, init_params=init)
    meta = tbl.meta
    assert meta["psf_model"] == "auto" and meta["psf_nstars"] >= 10
    assert len(meta["psf_stars_x"]) == meta["psf_nstars"]
    assert np.isfinite(meta["psf_profile_error"])
    # The fluxes agree with SourceExtractor + PSFEx's to a few per cent (a 16 px
    # aperture holds 1.3 % more than FLUX_PSF on these stars).
    ratio = np.asarray(tbl["flux_fit"]) / np.asarray(cat["FLUX_PSF"])
    assert abs(np.median(ratio) - 1) < 0.04


def test_auto_warns_when_the_image_has_too_few_stars():
    psf = CircularGaussianPRF(fwhm=2.5)
    image, truth, noise = _field(psf, n=4, seed=8)
    with pytest.warns(TooFewPSFStarsWarning):
        phot, tbl = _measure("auto", image, truth, noise)
        MLPhotometry(psf_model="auto")(image, init_params=Table({"x": truth["x_0"],
                                                                 "y": truth["y_0"]}),
                                       error=np.full(image.shape, noise), background=0)


def test_auto_picks_oversampling_2_on_undersampled_images():
    psf = CircularGaussianPRF(fwhm=1.2)
    image, truth, noise = _field(psf, shape=(200, 200), n=40, seed=9, flux=(3e3, 2e4))
    epsf, info = build_epsf(image, np.full(image.shape, noise))
    assert info["psf_hfr"] < 1.2 and info["psf_oversampling"] == 2
    _, tbl = _measure("auto", image, truth, noise)
    ratio = np.asarray(tbl["flux_fit"]) / truth["flux"]
    assert np.median(np.abs(ratio - 1)) < 0.03


def _contract_2_model(directory):
    """
    A contract-2 model (two input channels, no PSF channel, as v2-v4 were) written into
    ``directory``: the shipped model behind a graph that appends its all-zero PSF channel
    ("PSF not known"), with a card of contract 2 and without the PSF-mode calibrations.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from asidfe_phot import _stamps
    from asidfe_phot.models import file_sha256, load_model_card, model_path

    model = onnx.load(str(model_path() / "model.onnx"))
    graph = model.graph
    (shipped_input,) = graph.input
    name, widened = shipped_input.name, shipped_input.name + "_with_psf_channel"
    for node in graph.node:
        node.input[:] = [widened if i == name else i for i in node.input]
    two = helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                        ["batch", 2, _stamps.STAMP_SIZE, _stamps.STAMP_SIZE])
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v])
              for n, v in (("c2_start", 0), ("c2_end", 1), ("c2_axis", 1))]
    consts.append(helper.make_tensor("c2_zero", TensorProto.FLOAT, [], [0.0]))
    prefix = [helper.make_node("Slice", [name, "c2_start", "c2_end", "c2_axis"], ["c2_first"]),
              helper.make_node("Mul", ["c2_first", "c2_zero"], ["c2_zeros"]),
              helper.make_node("Concat", [name, "c2_zeros"], [widened], axis=1)]
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    del graph.input[:]
    graph.input.append(two)
    directory.mkdir()
    onnx.save(model, str(directory / "model.onnx"))
    card = load_model_card()
    for key in ("sigma_calibration_psf", "sigma_calibration_auto"):
        card.pop(key, None)
    card.update(name="two_channel_test", version=2, contract=_stamps.contract(2),
                sha256=file_sha256(directory / "model.onnx"),
                input=dict(card["input"], shape=["batch", 2, 32, 32]))
    (directory / "config.json").write_text(json.dumps(card))
    return directory


def test_a_contract_2_model_uses_the_psf_in_its_fit_only(tmp_path):
    """A model without a PSF channel still runs, with or without a PSF; the fit refines it."""
    psf = CircularGaussianPRF(fwhm=2.5)
    image, truth, noise = _field(psf, seed=10)
    model = _contract_2_model(tmp_path / "two_channel_test_v2")
    phot, tbl = _measure(psf, image, truth, noise, model=model)
    assert phot.model_card["contract"]["version"] == 2
    assert phot._n_channels == 2
    ratio = np.asarray(tbl["flux_fit"]) / truth["flux"]
    assert np.median(np.abs(ratio - 1)) < 0.01


def test_the_default_model_sees_the_psf():
    """The shipped default is PSF-conditioned: the PSF channel changes its outputs."""
    psf = CircularGaussianPRF(fwhm=2.5)
    image, truth, noise = _field(psf, seed=11)
    phot = MLPhotometry(psf_model=psf)
    assert phot.model_card["contract"]["version"] == 3
    init = Table({"x": truth["x_0"], "y": truth["y_0"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, with_psf = phot._call(image, init_params=init, error=np.full(image.shape, noise),
                                 background=0)
        _, without = MLPhotometry()._call(image, init_params=init,
                                          error=np.full(image.shape, noise), background=0)
    assert not np.allclose(with_psf["network"]["flux_fit"], without["flux_fit"])


def test_stars_all_near_the_edge_give_no_psf_stars():
    # Peaks too near the frame's edge for a cutout: no candidate, not an error.
    image = np.zeros((40, 40))
    image[5, 6] = image[34, 33] = 1000.0
    x, y, info = select_psf_stars(image, np.ones_like(image))
    assert x.size == y.size == 0
    assert info["n_candidates"] == 2
    with pytest.warns(TooFewPSFStarsWarning, match="found 0"):
        epsf, _ = build_epsf(image, np.ones_like(image))
    assert epsf is None


def test_the_psf_star_search_by_strips_equals_one_pass(monkeypatch):
    # The peak search reads the image strip by strip (bounded memory); a strip boundary
    # must not add, lose or move a peak, nor change the order of the chosen stars.
    from asidfe_phot import _epsf
    image, _, noise = _field(CircularGaussianPRF(fwhm=2.5), shape=(200, 150), n=40, seed=3)
    error = np.full(image.shape, noise)
    bad = np.zeros(image.shape, bool)
    bad[57, 30:90] = True
    whole = select_psf_stars(image, error, bad, min_snr=5.0)
    for rows in (7, 16, 33):
        monkeypatch.setattr(_epsf, "_STRIP_ROWS", rows)
        strips = select_psf_stars(image, error, bad, min_snr=5.0)
        np.testing.assert_array_equal(strips[0], whole[0])
        np.testing.assert_array_equal(strips[1], whole[1])
        assert strips[2] == whole[2]
    assert whole[0].size >= 10


def test_the_fit_by_chunks_of_sources_equals_one_chunk(monkeypatch):
    # The PSF fit works a chunk of sources at a time and evaluates the model only at the
    # fit boxes' pixels (memory flat in the image size): the numbers must not change.
    from asidfe_phot import _psf_fit
    psf = CircularGaussianPRF(fwhm=3.0)
    image, truth, noise = _field(psf, shape=(160, 160), n=30, seed=7)
    truth.add_row({"x_0": truth["x_0"][0] + 2.5, "y_0": truth["y_0"][0], "flux": 5e3})
    image = image + make_model_image(image.shape, psf, truth[-1:], x_name="x_0",
                                     y_name="y_0", model_shape=(31, 31))
    runs = []
    for chunk in (4096, 7):
        monkeypatch.setattr(_psf_fit, "_FIT_CHUNK", chunk)
        monkeypatch.setattr(_psf_fit, "_PAINT_CHUNK", max(chunk, 5))
        runs.append(_measure(psf, image, truth, noise)[1])
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err", "x_err", "qfit", "cfit", "flags"):
        np.testing.assert_allclose(np.asarray(runs[1][name]), np.asarray(runs[0][name]),
                                   rtol=1e-12, atol=0)


def test_the_model_at_some_pixels_is_the_whole_model_there():
    from asidfe_phot import _psf_fit
    sampler = PSFSampler(CircularGaussianPRF(fwhm=2.0))
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-5, 65, 40), rng.uniform(-5, 45, 40)
    flux = rng.uniform(10, 1000, 40)
    whole = _psf_fit.model_image((40, 60), sampler, x, y, flux)
    pixels = np.unique(rng.integers(0, 40 * 60, 500))
    part = _psf_fit.model_image((40, 60), sampler, x, y, flux, pixels=pixels)
    np.testing.assert_allclose(part, whole.ravel()[pixels], rtol=1e-12, atol=1e-12)
    assert whole.sum() > 0.5 * flux[(x > 3) & (x < 57) & (y > 3) & (y < 37)].sum()


def _fit_one(psf, truth_xy, start_xy, input_xy, flux=1e4, extra=0.0, seed=0, options=None):
    """fit_sources of one star of ``psf`` (plus ``extra`` light) on a noisy frame."""
    from asidfe_phot import _psf_fit
    noise = 5.0
    table = Table(rows=[(*truth_xy, flux)], names=("x_0", "y_0", "flux"))
    image = make_model_image((64, 64), psf, table, x_name="x_0", y_name="y_0",
                             model_shape=(25, 25))
    image = image + extra + np.random.default_rng(seed).normal(0, noise, image.shape)

    def boxes(cx, cy, size, data_boxes):
        return np.full(data_boxes.shape, noise)

    return _psf_fit.fit_sources(image, boxes, None, [start_xy[0]], [start_xy[1]], [flux],
                                PSFSampler(psf), x_input=[input_xy[0]], y_input=[input_xy[1]],
                                flux_err=[0.1 * flux], options=options)


def test_an_undersampled_star_detected_a_pixel_off_is_fitted_from_the_network_start():
    # FWHM 1 px: a detection 1.36 px off the star (as the finder gives on EY UMa) is a
    # start the fit cannot climb from; the network's start, more than 1 px from the
    # input, is tried too and kept for its smaller chi^2 (it was dropped: flux ~0).
    psf = CircularGaussianPRF(fwhm=1.0)
    out = _fit_one(psf, (32.3, 31.6), (32.28, 31.62), (32.7, 32.9))
    assert abs(out["flux"][0] / 1e4 - 1) < 0.02
    assert np.hypot(out["x"][0] - 32.3, out["y"][0] - 31.6) < 0.02


def test_a_network_start_drawn_to_another_star_is_not_kept():
    # The other start is kept only where it explains the star's own light better: a
    # network drawn 1.45 px off an undersampled star, onto an unlisted fainter one
    # (where a fit from there stays), leaves the input's start and the listed star
    # (whose fit the unlisted one's light still pulls by 0.3 px, as from any start).
    psf = CircularGaussianPRF(fwhm=0.8)
    unlisted = Table({"x_0": [31.45], "y_0": [30.0], "flux": [1000.0]})
    out = _fit_one(psf, (30.0, 30.0), (31.45, 30.0), (30.0, 30.0), flux=2000,
                   extra=make_model_image((64, 64), psf, unlisted, x_name="x_0",
                                          y_name="y_0", model_shape=(25, 25)))
    assert abs(out["x"][0] - 30.0) < 0.5 and abs(out["y"][0] - 30.0) < 0.05
    assert out["flux"][0] > 1500


@pytest.mark.parametrize("bounds", [None, (0.2, 0.2)])
def test_a_held_or_bounded_position_keeps_its_input_when_the_network_is_drawn(bounds):
    # Forced photometry (x, y held) measures at the input whatever the network's start;
    # xy_bounds hold the other start within the bounds too.
    from asidfe_phot import _psf_fit
    psf = CircularGaussianPRF(fwhm=1.0)
    free = (True, True, True) if bounds else (True, False, False)
    out = _fit_one(psf, (32.3, 31.6), (32.28, 31.62), (32.7, 32.9),
                   options=_psf_fit.FitOptions(free=free, xy_bounds=bounds))
    assert abs(out["x"][0] - 32.7) <= 0.2 + 1e-9 and abs(out["y"][0] - 32.9) <= 0.2 + 1e-9
    if not bounds:
        assert (out["x"][0], out["y"][0]) == (32.7, 32.9)
