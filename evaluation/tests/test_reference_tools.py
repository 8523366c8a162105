"""Light tests of evaluation.reference_tools (SourceExtractor, PSFEx skipped when absent)."""

import shutil

import numpy as np
import pytest

from asidfe_phot.datasets import make_star_field, render_psf_stamps
from evaluation import reference_tools as rt

HAS_SEX = bool(shutil.which("source-extractor") or shutil.which("sex"))
HAS_PSFEX = bool(shutil.which("psfex"))
PSF = {"family": "moffat", "fwhm": 3.0, "beta": 3.0}


@pytest.fixture(scope="module", name="field")
def fixture_field():
    image, truth, meta = make_star_field((128, 128), 25, psf=PSF, flux_range=(3e3, 2e5),
                                         sky=200.0, gain=2.0, border=10, seed=11)
    return image, truth, meta


def _nearest(x, y, truth):
    d = np.hypot(np.asarray(x)[:, None] - truth["x"][None],
                 np.asarray(y)[:, None] - truth["y"][None])
    return d.argmin(axis=1), d.min(axis=1)


def test_missing_binary_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    with pytest.raises(rt.ToolNotFoundError, match="apt-get install"):
        rt.run_source_extractor(np.zeros((8, 8)))
    with pytest.raises(rt.ToolNotFoundError, match="psfex"):
        rt.find_psfex()


@pytest.mark.skipif(not HAS_SEX, reason="SourceExtractor not installed")
def test_source_extractor_positions_are_zero_based(field):
    image, truth, _ = field
    tbl = rt.run_source_extractor(image, config={"GAIN": 2.0, "DETECT_THRESH": 5})
    assert {"XWIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "ERRX2WIN_IMAGE"} <= set(tbl.colnames)
    assert len(tbl) >= 15
    j, sep = _nearest(tbl["XWIN_IMAGE"], tbl["YWIN_IMAGE"], truth)
    good = sep < 1.0
    assert good.sum() >= 15
    # 0-based: a 1-based catalogue would be offset by +1 px in both axes.
    assert abs(np.median(tbl["XWIN_IMAGE"][good] - truth["x"][j][good])) < 0.1
    assert abs(np.median(tbl["YWIN_IMAGE"][good] - truth["y"][j][good])) < 0.1
    assert 0.85 < np.median(tbl["FLUX_AUTO"][good] / truth["flux"][j][good]) < 1.05


@pytest.mark.skipif(not (HAS_SEX and HAS_PSFEX), reason="SourceExtractor or PSFEx not installed")
def test_psfex_psf_fit(field, tmp_path):
    image, truth, _ = field
    tbl = rt.source_extractor_psf_fit(image, config={"GAIN": 2.0, "DETECT_THRESH": 5},
                                      psfex_config={"PSFVAR_DEGREES": 0, "SAMPLE_MINSN": 10},
                                      seeing_fwhm=3.0, workdir=tmp_path)
    assert (tmp_path / "pass1" / "out.psf").exists()
    fitted = tbl["FLUX_PSF"] > 0
    j, sep = _nearest(tbl["XPSF_IMAGE"], tbl["YPSF_IMAGE"], truth)
    good = fitted & (sep < 1.0)
    assert good.sum() >= 10
    assert abs(np.median(tbl["XPSF_IMAGE"][good] - truth["x"][j][good])) < 0.1
    assert 0.85 < np.median(tbl["FLUX_PSF"][good] / truth["flux"][j][good]) < 1.1


def test_true_image_psf_reproduces_the_simulator():
    model = rt.true_image_psf(PSF, oversampling=4)
    x, y = 20.3, 19.85
    stamps, x0, y0 = render_psf_stamps(PSF, [x], [y], half_size=15)
    yy, xx = np.mgrid[y0[0] - 15:y0[0] + 16, x0[0] - 15:x0[0] + 16]
    np.testing.assert_allclose(model.evaluate(xx, yy, 1.0, x, y), stamps[0],
                               atol=1e-3 * stamps[0].max())


def test_psf_photometry_with_true_psf(field):
    image, truth, meta = field
    sub = image - meta["background"]
    bright = np.argsort(truth["flux"])[-6:]
    tbl = rt.psf_photometry_true_psf(sub, truth["x"][bright] + 0.3, truth["y"][bright] - 0.2,
                                     PSF, error=meta["noise"])
    assert len(tbl) == 6
    np.testing.assert_allclose(tbl["x_fit"], truth["x"][bright], atol=0.1)
    np.testing.assert_allclose(tbl["flux_fit"] / truth["flux"][bright], 1.0, atol=0.05)
    assert np.all(tbl["flux_err"] > 0)
    # Per-source PSFs (a varying PSF) give the same answer when they are all equal.
    per = rt.psf_photometry_true_psf(sub, truth["x"][bright[:2]], truth["y"][bright[:2]],
                                     {**PSF, "fwhm": np.array([3.0, 3.0])}, error=meta["noise"],
                                     per_source=True)
    np.testing.assert_allclose(per["flux_fit"], tbl["flux_fit"][:2], rtol=0.02)


def _varying_psf_frame(seed=4):
    """Observing conditions of a simulator frame (spatially varying PSF) and its psf_at."""
    from training import simulate

    cond = simulate._draw_frame(np.random.default_rng(seed), "generic",
                                ("gaussian", "moffat", "double_gaussian"))
    cond["fwhm0"] = 3.0
    shape = (192, 192)
    return cond, shape, (lambda x, y: simulate._psf_at(cond, x, y, shape))


def test_gridded_true_psf_matches_the_simulator_between_nodes():
    cond, shape, psf_at = _varying_psf_frame()
    model = rt.true_gridded_psf(psf_at, shape, nodes=9, half_size=8)
    x, y = 50.3, 127.8
    stamps, x0, y0 = render_psf_stamps(psf_at(np.array([x]), np.array([y])), [x], [y])
    h = stamps.shape[1] // 2
    yy, xx = np.mgrid[y0[0] - 6:y0[0] + 7, x0[0] - 6:x0[0] + 7]
    np.testing.assert_allclose(model.evaluate(xx.astype(float), yy.astype(float), 1.0, x, y),
                               stamps[0][h - 6:h + 7, h - 6:h + 7],
                               atol=1e-3 * stamps[0].max())


def test_true_psf_fit_reaches_the_cramer_rao_bound_on_isolated_stars():
    """The reference for 'rms / CRLB': ~1 on isolated stars with the true noise map."""
    from asidfe_phot.datasets import fisher_bounds, render_sources

    cond, shape, psf_at = _varying_psf_frame()
    rng = np.random.default_rng(1)
    gx, gy = np.meshgrid(np.arange(20.0, 180, 28), np.arange(20.0, 180, 28))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    psf = psf_at(x, y)
    flux_e = np.full(x.size, 1e5)
    clean = render_sources(shape, x, y, flux_e, psf)
    bkg_var = cond["sky"] + cond["read_noise"] ** 2
    noisy = (rng.poisson(clean + cond["sky"]) - cond["sky"]
             + rng.normal(0, cond["read_noise"], shape)) / cond["gain"]
    error = np.sqrt(clean + bkg_var) / cond["gain"]
    model = rt.true_gridded_psf(psf_at, shape, half_size=10)
    tbl = rt.psf_photometry_true_psf(noisy, x + 0.3, y - 0.2, model, error=error, fit_shape=11)
    bounds = fisher_bounds({**psf, "truncation": np.full(x.size, 3.0)}, x, y, flux_e,
                           cond["sky"], cond["read_noise"])
    res = tbl["flux_fit"] - flux_e / cond["gain"]
    ratio = np.sqrt(np.mean(res**2)) / np.sqrt(np.mean((bounds["crlb_flux"] / cond["gain"]) ** 2))
    assert 0.6 < ratio < 1.5
    dx = tbl["x_fit"] - x
    assert 0.6 < np.sqrt(np.mean(dx**2)) / np.sqrt(np.mean(bounds["crlb_x"] ** 2)) < 1.5
    assert 0.6 < np.std(res / tbl["flux_err"]) < 1.5
