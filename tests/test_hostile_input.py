"""
Hostile and edge-case input: each case once gave a wrong number without a flag,
lost a file, or failed with a message that did not name the problem.

The contract: every input row comes back, in order, with its id; each row is
finite or flagged; bad input raises an exception that names the problem.
"""

import os
import subprocess
import sys
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, QTable, Table
from astropy.utils.masked import Masked
from photutils.psf import CircularGaussianPRF

from asidfe_phot import MLPhotometry, cli
from asidfe_phot import flags as F
from asidfe_phot.datasets import make_test_image
from asidfe_phot.exceptions import ModelError
from asidfe_phot.models import DEFAULT_MODEL, model_path


@pytest.fixture(name="net", scope="module")
def fixture_net():
    """The network alone (no PSF model): the cases below are about input handling."""
    return MLPhotometry(psf_model=None, aperture_correction=False)


@pytest.fixture(name="star0")
def fixture_star0(field):
    """Pixel (row, col) of the first star and a 3x3 mask over its core."""
    truth = field[1]
    row, col = int(round(truth["y"][0])), int(round(truth["x"][0]))
    mask = np.zeros(field[0].shape, bool)
    mask[row - 1:row + 2, col - 1:col + 2] = True
    return mask


def _quiet(phot, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(*args, **kwargs)


def _finite_or_flagged(tbl):
    values = np.column_stack([u.Quantity(tbl[c]).value for c in
                              ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err")])
    bad = ~np.isfinite(values).all(axis=1)
    return not np.any(bad & (np.asarray(tbl["flags"]) == 0))


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", ["numpy.ma", "astropy Masked", "Masked Quantity"])
def test_masked_data_mask_is_used(net, image, init, star0, kind):
    corrupted = image.copy()
    corrupted[star0] = 1e6   # what the mask hides must not be measured
    if kind == "numpy.ma":
        data = np.ma.MaskedArray(corrupted, star0)
    elif kind == "astropy Masked":
        data = Masked(corrupted, mask=star0)
    else:
        data = Masked(corrupted * u.adu, mask=star0)
    tbl = _quiet(net, data, init_params=init, gain=2.0 / u.adu if kind == "Masked Quantity"
                 else 2.0)
    assert tbl["flags"][0] & F.CORE_MASKED
    assert u.Quantity(tbl["flux_fit"][0]).value < 1e6


@pytest.mark.parametrize("wrap", [lambda e, m: np.ma.MaskedArray(e, m),
                                  lambda e, m: Masked(e, mask=m)])
def test_masked_error_mask_is_used(net, image, error, init, star0, wrap):
    corrupted = image.copy()
    corrupted[star0] = 1e6
    tbl = _quiet(net, corrupted, error=wrap(error, star0), init_params=init)
    assert tbl["flags"][0] & F.CORE_MASKED
    assert tbl["flux_fit"][0] < 1e6


def test_masked_catalogue_cell_is_a_flagged_row(net, image, init):
    table = Table({"id": np.arange(10, 10 + len(init)),
                   "x": MaskedColumn(init["x_init"], mask=[i == 3 for i in range(len(init))]),
                   "y": init["y_init"]})
    tbl = _quiet(net, image, init_params=table, gain=2.0)
    assert list(tbl["id"]) == list(table["id"])
    assert tbl["flags"][3] & F.NO_POSITION
    assert np.isnan(tbl["flux_fit"][3]) and np.isnan(tbl["x_init"][3])
    assert np.all(np.isfinite(np.delete(np.asarray(tbl["flux_fit"]), 3)))


def test_masked_quantity_position_cell(net, image, init):
    x = Masked(np.asarray(init["x_init"]) * u.pix, mask=np.arange(len(init)) == 0)
    table = QTable({"x": x, "y": np.asarray(init["y_init"]) * u.pix})
    tbl = _quiet(net, image, init_params=table, gain=2.0)
    assert tbl["flags"][0] & F.NO_POSITION
    assert _finite_or_flagged(tbl)


# --------------------------------------------------------------------------- NaN rows


def test_nan_background_pixel_is_masked_not_nan(net, image, error, init, field):
    truth = field[1]
    background = np.full(image.shape, 200.0)
    # Outside star 0's core but inside its stamp.
    background[int(round(truth["y"][0])) + 5, int(round(truth["x"][0])) + 5] = np.nan
    tbl = _quiet(net, image, background=background, error=error, init_params=init)
    assert _finite_or_flagged(tbl)
    assert np.all(np.isfinite(tbl["flux_fit"]))


@pytest.mark.parametrize("k", [1e-30, 1e-22, 1e18, 1e19, 1e25])
def test_extreme_scales_keep_the_scale_law(net, image, init, k):
    ref = _quiet(net, image, init_params=init, gain=2.0)
    tbl = _quiet(net, image.astype(np.float64) * k, init_params=init, gain=2.0 / k)
    assert _finite_or_flagged(tbl)
    np.testing.assert_allclose(tbl["flux_fit"], k * ref["flux_fit"], rtol=1e-4)
    np.testing.assert_allclose(tbl["flux_err"], k * ref["flux_err"], rtol=1e-4)
    np.testing.assert_allclose(tbl["x_fit"], ref["x_fit"], atol=1e-4)
    np.testing.assert_array_equal(tbl["flags"], ref["flags"])


def test_f_nu_image_without_error_map(net, image, init):
    unit = u.erg / u.s / u.cm**2 / u.Hz
    tbl = _quiet(net, image * 1e-30 * unit, init_params=init)
    assert tbl["flux_fit"].unit == unit
    assert np.all(np.isfinite(tbl["flux_fit"]))
    ref = _quiet(net, image, init_params=init)
    np.testing.assert_allclose(tbl["flux_fit"].value, 1e-30 * ref["flux_fit"], rtol=1e-4)


# --------------------------------------------------------------------------- blends


def _pair_image(separation, flux=1e5, shape=(64, 64), seed=1):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape)
    for dx in (0.0, separation):
        img += CircularGaussianPRF(flux=flux, x_0=32 + dx, y_0=32, fwhm=3)(xx, yy)
    return np.random.default_rng(seed).poisson(img + 200).astype(float)


@pytest.mark.parametrize("psf", [None, CircularGaussianPRF(fwhm=3)])
@pytest.mark.parametrize("separation", [1.0, 2.0, 3.0])
def test_close_pair_is_flagged_and_covered(psf, separation):
    phot = MLPhotometry(psf_model=psf, aperture_correction=False)
    tbl = _quiet(phot, _pair_image(separation), init_params=QTable(
        {"x": [32.0, 32.0 + separation], "y": [32.0, 32.0]}), gain=1.0)
    assert np.all(tbl["flags"] & F.BLENDED)
    z = (np.asarray(tbl["flux_fit"]) - 1e5) / np.asarray(tbl["flux_err"])
    assert np.all(np.abs(z) < 1.5), z
    if separation <= 1.0:
        # The same stamp for both: the pair's light is counted once, split or not (a model
        # image must not double it).
        assert abs(np.sum(tbl["flux_fit"]) / 2e5 - 1) < 0.15, tbl["flux_fit"]


@pytest.mark.parametrize("separation", [2.0, 3.0])
def test_unlisted_neighbour_is_flagged_with_a_psf(separation):
    phot = MLPhotometry(psf_model=CircularGaussianPRF(fwhm=3), aperture_correction=False)
    tbl = _quiet(phot, _pair_image(separation), init_params=QTable({"x": [32.0], "y": [32.0]}),
                 gain=1.0)
    assert tbl["flags"][0] & F.BLENDED
    assert abs(tbl["flux_fit"][0] - 1e5) < 1.5 * tbl["flux_err"][0]


def test_isolated_star_is_not_blended():
    phot = MLPhotometry(psf_model=CircularGaussianPRF(fwhm=3), aperture_correction=False)
    tbl = _quiet(phot, _pair_image(0.0, flux=5e4), init_params=QTable({"x": [32.0],
                                                                        "y": [32.0]}),
                 gain=1.0)
    assert tbl["flags"][0] == 0


# --------------------------------------------------------------------------- model loading


def test_registry_name_is_not_hijacked_by_cwd(tmp_path, monkeypatch):
    (tmp_path / DEFAULT_MODEL).mkdir()   # an empty folder named like the default model
    monkeypatch.chdir(tmp_path)
    assert model_path(DEFAULT_MODEL) != tmp_path / DEFAULT_MODEL
    assert model_path(None).is_relative_to(model_path(DEFAULT_MODEL).parent)
    MLPhotometry()                        # the shipped default still loads
    with pytest.raises(ModelError, match="has no config.json"):
        MLPhotometry(model=f"./{DEFAULT_MODEL}")   # given as a path, the folder is used


@pytest.mark.parametrize("model", [123, 1.5, ["asidfe_tsmve_v5"]])
def test_model_of_wrong_type(model):
    with pytest.raises(ModelError, match="model must be a shipped model name or a model dir"):
        MLPhotometry(model=model)


def test_providers_as_a_string():
    assert MLPhotometry(providers="CPUExecutionProvider").providers == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="unknown onnxruntime providers"):
        MLPhotometry(providers=["C", "P", "U"])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "exc", "message"), [
    ({"gain": np.full((96, 96), 2.0)}, ValueError, "gain must be a single number"),
    ({"saturation": np.full((96, 96), 1e4)}, ValueError, "saturation must be a single number"),
    ({"background": np.zeros((10, 10))}, ValueError, r"background must be .* shape \(96, 96\)"),
    ({"background": np.nan}, ValueError, "background must be finite"),
    ({"error": np.zeros((96, 96))}, ValueError, "error has no usable pixel"),
    ({"error": np.full((96, 96), np.inf)}, ValueError, "error has no usable pixel"),
    ({"wcs": "hello"}, TypeError, "wcs must be an astropy WCS"),
    ({"saturation": np.nan}, ValueError, "saturation must be finite"),
    ({"gain": np.inf}, ValueError, "gain must be positive and finite"),
    ({"gain": 0.0}, ValueError, "gain must be positive and finite"),
    ({"gain": "two"}, TypeError, "gain must be a number"),
])
def test_bad_keywords_name_the_problem(net, image, init, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        net(image, init_params=init, **kwargs)


def test_complex_data_is_refused(net, image, init):
    with pytest.raises(TypeError, match="data must be numeric"):
        net(image.astype(np.complex64), init_params=init)


@pytest.mark.parametrize("unit", [u.mag, u.ABmag, u.dex])
def test_logarithmic_units_are_refused(net, image, init, unit):
    with pytest.raises(u.UnitsError, match="logarithmic unit"):
        net(u.Quantity(image, unit) if unit is not u.ABmag else image * unit, init_params=init)


def test_gain_in_electrons_per_adu(net, image, init):
    ref = _quiet(net, image, init_params=init, gain=2.0)
    tbl = _quiet(net, image * u.adu, init_params=init, gain=2 * u.electron / u.adu)
    np.testing.assert_allclose(tbl["flux_fit"].value, ref["flux_fit"], rtol=1e-6)
    with pytest.raises(u.UnitsError, match="expected electrons per data unit"):
        net(image * u.adu, init_params=init, gain=2 * u.s / u.adu)


def test_tiny_image_is_measured(net):
    image = np.random.default_rng(0).normal(10.0, 1.0, (5, 5))
    image[2, 2] += 50
    tbl = _quiet(net, image, init_params=QTable({"x": [2.0], "y": [2.0]}), gain=1.0)
    assert tbl["flags"][0] & F.EDGE
    assert _finite_or_flagged(tbl)


def test_non_numeric_position_column(net, image):
    table = Table({"x": ["10", "abc"], "y": [10.0, 20.0]})
    with pytest.raises(TypeError, match="column 'x' must hold numbers"):
        net(image, init_params=table)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(name="files")
def fixture_files(tmp_path):
    image, truth = make_test_image(shape=(96, 96), n_sources=8, seed=1)
    header = fits.Header({"GAIN": 2.0})
    paths = {}
    for band in ("r", "g"):
        paths[band] = tmp_path / f"field.{band}.fits"
        fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(paths[band])
    paths["cat"] = tmp_path / "truth.ecsv"
    truth.write(paths["cat"], format="ascii.ecsv")
    return paths


def _cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_default_names_keep_the_whole_stem(files, capsys, monkeypatch):
    monkeypatch.chdir(files["r"].parent)
    for band in ("r", "g"):
        rc, _, err = _cli(capsys, files[band], "--catalog", files["cat"], "--psf", "none")
        assert rc == 0, err
    assert (files["r"].parent / "field.r_asidfe.ecsv").is_file()
    assert (files["r"].parent / "field.g_asidfe.ecsv").is_file()
    assert cli.default_output_name("a/b/img.fits.gz") == "img_asidfe.ecsv"
    assert cli.default_output_name("img") == "img_asidfe.ecsv"


def test_demo_default_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(capsys, "--demo", "--rows", "0", "--psf", "none")
    assert rc == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["demo_asidfe.ecsv"]


@pytest.mark.parametrize("which", ["image", "cat"])
def test_output_over_an_input_is_refused(files, capsys, which):
    target = files["r"] if which == "image" else files["cat"]
    before = target.read_bytes()
    suffix = ["-o", target, "--overwrite"]
    rc, _, err = _cli(capsys, files["r"], "--catalog", files["cat"], *suffix)
    assert rc == 2
    assert "is an input file" in err
    assert target.read_bytes() == before


def test_bad_plot_extension_fails_before_any_work(files, tmp_path, capsys):
    out = tmp_path / "out.ecsv"
    rc, _, err = _cli(capsys, files["r"], "--catalog", files["cat"], "-o", out,
                      "--plot", tmp_path / "fig.xyz")
    assert rc == 2 and "unknown figure format '.xyz'" in err
    assert not out.exists()


def test_interrupted_write_keeps_the_old_table(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.ecsv"
    out.write_text("the previous good table\n")

    def cut_off(tbl, path, fmt):
        with open(path, "w") as f:
            f.write("# %ECSV 1.0\n# half a tab")
        raise OSError(27, "File too large")

    monkeypatch.setattr(cli, "_write_table_to", cut_off)
    rc, _, err = _cli(capsys, files["r"], "--catalog", files["cat"], "-o", out, "--overwrite",
                      "--psf", "none")
    assert rc == 2 and "File too large" in err
    assert out.read_text() == "the previous good table\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.ecsv")]


def test_file_created_meanwhile_is_not_replaced(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.ecsv"
    real = cli._write_table_to

    def racing(tbl, path, fmt):   # another run writes the same name during this one
        out.write_text("the other run's table\n")
        real(tbl, path, fmt)

    monkeypatch.setattr(cli, "_write_table_to", racing)
    rc, _, err = _cli(capsys, files["r"], "--catalog", files["cat"], "-o", out, "--psf", "none")
    assert rc == 2 and "was created while this run was working" in err
    assert out.read_text() == "the other run's table\n"


def test_write_limit_leaves_old_file(files, tmp_path):
    """A real cut-off write (``ulimit -f``) in a child process: the old table survives."""
    if sys.platform == "win32":
        pytest.skip("ulimit is POSIX")
    out = tmp_path / "out.ecsv"
    out.write_text("the previous good table\n")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
            "from asidfe_phot import cli; "
            f"sys.exit(cli.main([{str(files['r'])!r}, '--catalog', {str(files['cat'])!r}, "
            f"'-o', {str(out)!r}, '--overwrite', '--psf', 'none', '--rows', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode != 0
    assert out.read_text() == "the previous good table\n"


def test_non_numeric_catalogue_value(files, tmp_path, capsys):
    cat = tmp_path / "bad.csv"
    cat.write_text("x,y\n10,12\nabc,20\n")
    rc, _, err = _cli(capsys, files["r"], "--catalog", cat, "-o", tmp_path / "o.ecsv")
    assert rc == 2
    assert "column 'x' must hold numbers" in err
    assert "Traceback" not in err


def test_blank_catalogue_cell_is_a_flagged_row(files, tmp_path, capsys):
    cat = tmp_path / "blank.csv"
    cat.write_text("x,y\n48,48\n,20\n30,30\n")
    out = tmp_path / "o.ecsv"
    rc, _, err = _cli(capsys, files["r"], "--catalog", cat, "-o", out, "--psf", "none")
    assert rc == 0, err
    tbl = QTable.read(out)
    assert len(tbl) == 3
    assert tbl["flags"][1] & F.NO_POSITION
    assert not tbl["flags"][1] & F.EDGE


@pytest.mark.parametrize("option", ["--saturation", "--gain"])
def test_nonpositive_levels_are_refused(files, tmp_path, capsys, option):
    rc, _, err = _cli(capsys, files["r"], "--catalog", files["cat"], "-o", tmp_path / "o.ecsv",
                      option, "-5")
    assert rc == 2 and f"{option} must be a positive number" in err


def test_truncated_fits(files, tmp_path, capsys):
    data = files["r"].read_bytes()
    short = tmp_path / "short.fits"
    short.write_bytes(data[:len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc, _, err = _cli(capsys, short, "--catalog", files["cat"], "-o", tmp_path / "o.ecsv")
    assert rc == 2 and "truncated or corrupt" in err


def test_progress_in_a_log_has_no_carriage_returns(image, init, capsys):
    phot = MLPhotometry(psf_model=None, progress_bar=True, batch_size=4)
    _quiet(phot, image, init_params=init, gain=2.0)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "MLPhotometry: 12/12 sources" in err


@pytest.mark.parametrize("dtype", ["<i4", "<f4"])
def test_blank_value_pixel_is_masked(net, image, init, star0, dtype):
    """A -2**31 pixel (an integer image's blank value) in a stamp is masked, not measured."""
    corrupted = np.asarray(image, dtype=np.float64).round().astype(dtype)
    rows, cols = np.nonzero(star0)
    corrupted[rows[0] + 6, cols[0]] = np.iinfo(np.int32).min
    ref = _quiet(net, np.asarray(image).round(), init_params=init, gain=2.0)
    tbl = _quiet(net, corrupted, init_params=init, gain=2.0)
    assert tbl["flags"][0] & F.MASKED
    assert tbl.meta["low_bad_pixels"] == 1
    assert abs(tbl["flux_fit"][0] / ref["flux_fit"][0] - 1) < 0.05
