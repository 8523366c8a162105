"""Tests of asidfe_phot.artificial_stars: injection, placement, the test, its CLI."""

import subprocess
import sys

import astropy.units as u
import matplotlib
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from matplotlib.figure import Figure
from photutils.psf import CircularGaussianPRF, MoffatPSF

from asidfe_phot import MLPhotometry, cli
from asidfe_phot import artificial_stars as ast
from asidfe_phot.datasets import make_star_field
from asidfe_phot.exceptions import TooFewPSFStarsWarning
from asidfe_phot.flags import SATURATED
from asidfe_phot.visualization import plot_artificial_stars

matplotlib.use("agg")

FWHM = 2.5
GAIN = 2.0


def _model_on_grid(model, shape, x, y, flux):
    """The photutils model itself evaluated at every pixel centre (an independent render)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    out = np.zeros(shape)
    for xi, yi, fi in zip(x, y, flux):
        params = {n: getattr(model, n).value for n in model.param_names}
        params.update(x_0=xi, y_0=yi, flux=fi)
        out += model.evaluate(xx, yy, *[params[n] for n in model.param_names])
    return out


def test_injection_is_the_model_at_its_flux_and_centre():
    psf = CircularGaussianPRF(fwhm=FWHM)
    x, y, flux = [20.3, 41.0, 30.75], [30.0, 41.6, 15.2], [1000.0, 500.0, 2.5e4]
    data = np.full((64, 64), 7.0, dtype=np.float32)
    image, truth = ast.inject_stars(data, psf, x, y, flux)
    added = image.astype(np.float64) - data
    expected = _model_on_grid(psf, data.shape, x, y, flux)
    assert np.max(np.abs(added - expected)) < 2e-4 * max(flux)
    assert np.allclose(truth["x"], x) and np.allclose(truth["y"], y)
    assert np.allclose(truth["flux"], flux)
    # A Gaussian of FWHM 2.5 px lies entirely within the rendering radius.
    assert np.isclose(added.sum(), sum(flux), rtol=1e-4)
    assert np.allclose(truth["flux_rendered"], flux, rtol=1e-4)
    # Each star's first moment is its centre.
    yy, xx = np.mgrid[0:64, 0:64]
    for xi, yi, fi in zip(x, y, flux):
        alone = _model_on_grid(psf, data.shape, [xi], [yi], [fi])
        near = (np.hypot(xx - xi, yy - yi) < 8)
        part = np.where(near, added, 0) - np.where(near, expected - alone, 0)
        assert abs((part * xx).sum() / part.sum() - xi) < 0.01
        assert abs((part * yy).sum() / part.sum() - yi) < 0.01
    assert truth.meta["gain"] is None and "noise-free" in truth.meta["noise"]


def test_injected_light_is_the_enclosed_fraction_of_a_wide_psf():
    # A Moffat with wings beyond the rendering radius: the image gains the flux times
    # the fraction of the model within it, and truth keeps the model's total.
    psf = MoffatPSF(alpha=4.0, beta=1.5)
    image, truth = ast.inject_stars(np.zeros((80, 80)), psf, [40.0], [39.5], [1e4])
    # Rendered: the pixels whose centres lie within RADIUS px of the star's, in x and y.
    yy, xx = np.mgrid[0:80, 0:80]
    box = (np.abs(xx - 40.0) <= ast._psf.RADIUS) & (np.abs(yy - 39.5) <= ast._psf.RADIUS)
    enclosed = _model_on_grid(psf, (80, 80), [40.0], [39.5], [1.0])[box].sum()
    assert enclosed < 0.95                      # the test is not trivial
    assert np.isclose(image.sum(), 1e4 * enclosed, rtol=1e-3)
    assert np.isclose(truth["flux_rendered"][0], 1e4 * enclosed, rtol=1e-3)
    assert truth["flux"][0] == 1e4


def test_poisson_noise_follows_the_gain():
    psf = CircularGaussianPRF(fwhm=FWHM)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(20, 180, 40), rng.uniform(20, 180, 40)
    flux = np.full(40, 4e4)
    clean, _ = ast.inject_stars(np.zeros((200, 200)), psf, x, y, flux)
    noisy, truth = ast.inject_stars(np.zeros((200, 200)), psf, x, y, flux, gain=GAIN, rng=1)
    lit = clean > 50
    ratio = np.sum((noisy - clean)[lit] ** 2) / np.sum(clean[lit] / GAIN)
    assert 0.9 < ratio < 1.1                    # variance = model / gain
    assert truth.meta["gain"] == GAIN and "Poisson" in truth.meta["noise"]
    again, _ = ast.inject_stars(np.zeros((200, 200)), psf, x, y, flux, gain=GAIN, rng=1)
    assert np.array_equal(noisy, again)
    clipped, truth = ast.inject_stars(np.zeros((200, 200)), psf, x, y, flux, saturation=500.0)
    assert clipped.max() == 500.0 and truth.meta["n_pixels_clipped"] > 0


def test_injection_keeps_units_and_refuses_bad_input():
    psf = CircularGaussianPRF(fwhm=FWHM)
    image, truth = ast.inject_stars(np.zeros((40, 40)) * u.adu, psf, [20.0], [20.0],
                                    [100.0] * u.adu, gain=2 * u.electron / u.adu)
    assert image.unit == u.adu and truth["flux"].unit == u.adu
    with pytest.raises(ValueError, match="x must be finite"):
        ast.inject_stars(np.zeros((40, 40)), psf, [np.nan], [20.0], [1.0])
    with pytest.raises(ValueError, match="for the image's own ePSF"):
        ast.inject_stars(np.zeros((40, 40)), "auto", [20.0], [20.0], [1.0])
    with pytest.raises(u.UnitsError, match="flux has units but data has none"):
        ast.inject_stars(np.zeros((40, 40)), psf, [20.0], [20.0], [1.0] * u.adu)


def test_placement_rules():
    shape = (200, 300)
    rng = np.random.default_rng(0)
    avoid = (rng.uniform(0, 300, 60), rng.uniform(0, 200, 60))
    bad = np.zeros(shape, bool)
    bad[50:80, 100:160] = True
    x, y, info = ast.place_stars(shape, 80, min_separation=6.0, spacing=12.0, avoid=avoid,
                                 bad=bad, rng=1)
    assert x.size == info["n_placed"] == 80
    edge = ast.EDGE
    assert np.all((x >= edge) & (x <= 299 - edge) & (y >= edge) & (y <= 199 - edge))
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 12.0
    assert np.hypot(x[:, None] - avoid[0][None], y[:, None] - avoid[1][None]).min() >= 6.0
    assert not bad[np.floor(y + 0.5).astype(int), np.floor(x + 0.5).astype(int)].any()
    # The blocked fraction estimates the allowed area near a source or on bad pixels.
    yy, xx = np.mgrid[edge:200 - edge, edge:300 - edge]
    near = np.hypot(xx[..., None] - avoid[0], yy[..., None] - avoid[1]).min(-1) < 6.0
    expected = np.mean(near | bad[edge:200 - edge, edge:300 - edge])
    assert abs(info["blocked_fraction"] - expected) < 0.03
    # Seeded: the same positions; a frame without room gives fewer.
    x2, y2, _ = ast.place_stars(shape, 80, min_separation=6.0, spacing=12.0, avoid=avoid,
                                bad=bad, rng=1)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    few = ast.place_stars((60, 60), 50, min_separation=0, spacing=20.0, rng=0)[2]
    assert 0 < few["n_placed"] < 50
    with pytest.raises(ValueError, match="has no room for stars 16 px from its edges"):
        ast.place_stars((30, 30), 5, min_separation=1.0)


def test_flux_for_snr_inverts_optimal_snr():
    psf = CircularGaussianPRF(fwhm=FWHM)
    noise = np.random.default_rng(2).uniform(3, 6, (64, 64))
    x, y = np.array([20.2, 40.7]), np.array([30.5, 21.0])
    snr = np.array([3.0, 3000.0])
    for gain in (None, GAIN):
        flux = ast.flux_for_snr(psf, x, y, snr, noise, gain=gain)
        assert np.allclose(ast.optimal_snr(psf, x, y, flux, noise, gain=gain), snr, rtol=1e-6)
    # Background-limited, constant noise: S/N = F sqrt(sum p^2) / sigma.
    flux = ast.flux_for_snr(psf, x, y, snr, 4.0)
    p = _model_on_grid(psf, (64, 64), [x[0]], [y[0]], [1.0])
    assert np.isclose(flux[0] * np.sqrt(np.sum(p**2)) / 4.0, 3.0, rtol=1e-3)
    # The source's own noise needs more flux for the same S/N; at 3000 about S/N^2 / gain.
    bright = ast.flux_for_snr(psf, x, y, snr, noise, gain=GAIN)[1]
    assert bright > flux[1] and bright > 3000.0**2 / GAIN


# --- the whole test on a simulated frame -------------------------------------------------

@pytest.fixture(name="frame", scope="module")
def fixture_frame():
    """A sparse 160x160 field of Gaussian stars (FWHM 2.5 px, gain 2) and its true noise."""
    image, truth, meta = make_star_field((160, 160), 10, psf={"family": "gaussian",
                                                              "fwhm": FWHM},
                                         flux_range=(5e3, 1e5), sky=300.0, gain=GAIN,
                                         read_noise=5.0, border=10, seed=3)
    return image, truth, meta["noise"]


@pytest.fixture(name="true_psf_phot", scope="module")
def fixture_true_psf_phot():
    # The true PSF and no sigma calibration: the PSF fit's own (Fisher) errors, which
    # describe an isolated star of known PSF (the shipped calibration is fitted on
    # crowded, varied frames; see the user guide).
    return MLPhotometry(psf_model=CircularGaussianPRF(fwhm=FWHM), sigma_calibration=False,
                        threads=1)


@pytest.fixture(name="result", scope="module")
def fixture_result(frame, true_psf_phot):
    image, _, noise = frame
    return ast.artificial_star_test(image, n_stars=120, rounds=4, seed=1, gain=GAIN,
                                    error=noise, psf_model=CircularGaussianPRF(fwhm=FWHM),
                                    phot=true_psf_phot)


def test_ast_tables(result):
    stars, bins = result
    assert len(stars) == 120 and stars.meta["rounds"] == 4
    assert list(stars["id"]) == list(range(1, 121))
    assert set(stars["round"]) == {0, 1, 2, 3}
    assert stars["snr_true"].min() >= 3 * 0.999 and stars["snr_true"].max() <= 3000 * 1.001
    found = np.asarray(stars["found"])
    assert np.all(np.isfinite(stars["flux_fit"][found]))
    assert np.all(np.isnan(stars["flux_fit"][~found]))
    assert np.all(stars["match_distance"][found] <= stars.meta["match_radius_px"])
    assert np.allclose(stars["mag_true"], -2.5 * np.log10(stars["flux_true"]))
    assert "Poisson" in stars.meta["noise"] and stars.meta["gain"] == GAIN
    assert sum(bins["n_injected"]) == 120
    assert np.allclose(bins["completeness"], bins["n_found"] / bins["n_injected"])


def test_completeness_is_one_bright_and_falls_at_low_snr(result):
    stars, _ = result
    coarse = ast.bin_statistics(stars, bins=(3, 5, 50, np.inf))
    faint, _, bright = coarse["completeness"]
    assert bright == 1.0
    assert faint < 0.5
    # Bright stars are measured to their S/N: the flux scatter falls with it.
    assert coarse["flux_scatter"][2] < coarse["flux_scatter"][1]


def test_zscores_near_one_with_the_true_noise(result):
    stars, _ = result
    pooled = ast.bin_statistics(stars, bins=(20, np.inf))
    assert pooled["n_good"][0] >= 50
    for q in ("flux", "x", "y"):
        assert 0.7 < pooled[f"zstd_{q}"][0] < 1.35, q
        assert 0.6 < pooled[f"zstd_{q}_robust"][0] < 1.4, q
    # Not a constant: errors twice too large read as z std near 0.5.
    doubled = stars.copy()
    for name in ("flux_err", "x_err", "y_err"):
        doubled[name] = 2 * doubled[name]
    wide = ast.bin_statistics(doubled, bins=(20, np.inf))
    for q in ("flux", "x", "y"):
        assert np.isclose(wide[f"zstd_{q}"][0], pooled[f"zstd_{q}"][0] / 2)
        assert not 0.7 < wide[f"zstd_{q}"][0] < 1.35


def test_seed_decides_the_stars(frame, true_psf_phot):
    image, _, noise = frame
    kw = {"n_stars": 8, "rounds": 1, "gain": GAIN, "error": noise,
          "psf_model": CircularGaussianPRF(fwhm=FWHM), "phot": true_psf_phot}
    one, _ = ast.artificial_star_test(image, seed=7, **kw)
    two, _ = ast.artificial_star_test(image, seed=7, **kw)
    other, _ = ast.artificial_star_test(image, seed=8, **kw)
    for name in ("x_true", "y_true", "flux_true", "found", "flux_fit", "flux_err"):
        assert np.array_equal(np.asarray(one[name]), np.asarray(two[name]), equal_nan=True)
    assert not np.array_equal(one["x_true"], other["x_true"])


def test_catalogue_sources_are_measured_and_avoided(frame, true_psf_phot):
    image, truth, noise = frame
    stars, _ = ast.artificial_star_test(image, n_stars=10, rounds=1, seed=2, gain=GAIN,
                                        catalog=truth, psf_model=CircularGaussianPRF(fwhm=FWHM),
                                        phot=true_psf_phot)
    assert stars.meta["sources"] == "10 from the catalogue"
    d = np.hypot(np.asarray(stars["x_true"])[:, None] - np.asarray(truth["x"])[None],
                 np.asarray(stars["y_true"])[:, None] - np.asarray(truth["y"])[None])
    assert d.min() >= stars.meta["min_separation_px"]
    assert stars["found"][stars["snr_true"] > 50].all()


def test_units_and_saturation(frame, true_psf_phot):
    image, _, noise = frame
    stars, _ = ast.artificial_star_test(image * u.adu, n_stars=6, rounds=1, seed=4,
                                        error=noise * u.adu, gain=2 * u.electron / u.adu,
                                        saturation=3e4 * u.adu, phot=true_psf_phot,
                                        psf_model=CircularGaussianPRF(fwhm=FWHM))
    for name in ("flux_true", "flux_fit", "flux_err"):
        assert stars[name].unit == u.adu
    # Stars far above the saturation level are clipped, as on the detector: the finder
    # loses their flat tops, or the measurement flags them.
    saturated = np.asarray(stars["flux_true"].to_value(u.adu) > 1e6)
    assert saturated.any()
    lost = ~np.asarray(stars["found"]) | ((np.asarray(stars["flags"]) & SATURATED) != 0)
    assert lost[saturated].all()
    assert stars["found"][(stars["snr_true"] > 50) & ~saturated].all()


def test_bad_input(frame, true_psf_phot):
    image, _, _ = frame
    psf = CircularGaussianPRF(fwhm=FWHM)
    with pytest.raises(ValueError, match="n_stars must be a positive integer"):
        ast.artificial_star_test(image, n_stars=0, psf_model=psf, phot=true_psf_phot)
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        ast.artificial_star_test(image, n_stars=5, rounds=0, psf_model=psf,
                                 phot=true_psf_phot)
    with pytest.raises(ValueError, match="the stars need a PSF"):
        ast.artificial_star_test(image, n_stars=5, psf_model=None, phot=true_psf_phot)
    with pytest.raises(TypeError, match="phot must be an asidfe_phot.MLPhotometry"):
        ast.artificial_star_test(image, n_stars=5, psf_model=psf, phot="daophot")
    with pytest.raises(ValueError, match="snr_range"):
        ast.artificial_star_test(image, n_stars=5, psf_model=psf, phot=true_psf_phot,
                                 snr_range=(10, 1))
    blank = np.random.default_rng(0).normal(100, 5, (64, 64))
    with pytest.warns(TooFewPSFStarsWarning), pytest.raises(ValueError,
                                                             match="too few for an ePSF"):
        ast.artificial_star_test(blank, n_stars=5, phot=true_psf_phot)


def test_bin_statistics_by_hand():
    n = 8
    stars = QTable({"snr_true": [4.0] * 4 + [60.0] * 4, "found": [1, 0, 0, 0, 1, 1, 1, 1],
                    "x_true": np.zeros(n), "y_true": np.zeros(n), "flux_true": np.full(n, 100.0),
                    "mag_true": np.full(n, -5.0), "flux_fit": [90.0, np.nan, np.nan, np.nan,
                                                               101.0, 99.0, 104.0, 102.0],
                    "x_fit": [0.1, np.nan, np.nan, np.nan, 0.1, -0.1, 0.2, 0.0],
                    "y_fit": [0.0, np.nan, np.nan, np.nan, 0.0, 0.1, -0.1, 0.0],
                    "flux_err": np.full(n, 2.0), "x_err": np.full(n, 0.1),
                    "y_err": np.full(n, 0.1), "flags": [0, 0, 0, 0, 0, 0, 0, 8]})
    stars["found"] = stars["found"].astype(bool)
    bins = ast.bin_statistics(stars)
    assert list(bins["snr_bin"]) == ["3-5", "50-100"]
    assert list(bins["completeness"]) == [0.25, 1.0]
    assert bins["flagged_fraction"][1] == 0.25 and bins["n_good"][1] == 3
    good = np.array([101.0, 99.0, 104.0])
    assert np.isclose(bins["flux_bias"][1], np.median(good / 100 - 1))
    assert np.isclose(bins["zstd_flux"][1], np.std((good - 100) / 2.0))
    assert np.isclose(bins["zstd_flux_robust"][1],
                      1.4826 * np.median(np.abs((good - 100) / 2 - np.median((good - 100) / 2))))
    assert np.isclose(bins["completeness_err"][0], np.sqrt(0.25 * 0.75 / 4))


def test_plot(result):
    fig = plot_artificial_stars(result[1], fig=Figure())
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="bins has no column 'completeness_err'"):
        plot_artificial_stars(result[1][["snr_median", "completeness"]])


# --- the command line ------------------------------------------------------------------------

@pytest.fixture(name="tiny_fits")
def fixture_tiny_fits(tmp_path):
    # Enough bright isolated stars for psf_model="auto" (the CLI's default).
    image, _, _ = make_star_field((160, 160), 30, psf={"family": "moffat", "fwhm": 3.0,
                                                       "beta": 3.0},
                                  flux_range=(2e4, 4e5), sky=200.0, gain=2.0, border=14, seed=2)
    path = tmp_path / "tiny.fits"
    fits.PrimaryHDU(image.astype(">f4"), header=fits.Header({"GAIN": 2.0})).writeto(path)
    return path


def test_cli_ast(tiny_fits, tmp_path):
    out, stars, png = tmp_path / "bins.ecsv", tmp_path / "stars.fits", tmp_path / "ast.png"
    proc = subprocess.run([sys.executable, "-m", "asidfe_phot.cli", "ast", str(tiny_fits),
                           "--n-stars", "12", "--rounds", "2", "--seed", "3", "--out", str(out),
                           "--stars", str(stars), "--plot", str(png)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "completeness" in proc.stdout and "12 stars in" in proc.stdout
    bins, table = QTable.read(out), QTable.read(stars)
    assert sum(bins["n_injected"]) == len(table) == 12
    assert bins.meta["image"] == str(tiny_fits)
    assert "noise of the stars: Poisson, gain 2 electrons" in proc.stdout
    assert png.stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--n-stars", "0"], "--n-stars must be a positive integer"),
    (["--n-stars", "5", "--fwhm", "0"], "--fwhm must be positive"),
    (["--n-stars", "5", "--out", "x.txt"], "--out must end in one of .ecsv"),
    (["--n-stars", "5", "--catalog", "nope.ecsv"], "catalogue file not found"),
    ([], "the following arguments are required: --n-stars"),
])
def test_cli_ast_errors(tiny_fits, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["ast", str(tiny_fits), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
