"""Tests of the ``asidfe-phot`` command line (asidfe_phot.cli)."""

import importlib.metadata

import astropy.units as u
import matplotlib
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS

from asidfe_phot import cli
from asidfe_phot.datasets import make_test_image

matplotlib.use("agg")

OUTPUT_COLUMNS = ["id", "group_id", "group_size", "local_bkg", "x_init", "y_init", "x_fit",
                  "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "qfit", "cfit", "flags"]


@pytest.fixture(name="image_files")
def fixture_image_files(tmp_path):
    """A small simulated FITS image (BUNIT adu, GAIN 2) and its truth catalogue (ECSV)."""
    image, truth = make_test_image(shape=(96, 96), n_sources=8, seed=1)
    header = fits.Header()
    header["BUNIT"] = "adu"
    header["GAIN"] = 2.0
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(path)
    cat = tmp_path / "truth.ecsv"
    truth.write(cat, format="ascii.ecsv")
    return path, cat, truth


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_demo_writes_table_and_plot(tmp_path, capsys):
    out_path, png = tmp_path / "demo.ecsv", tmp_path / "demo.png"
    rc, out, err = _run(capsys, "--demo", "--output", out_path, "--plot", png, "--rows", "3")
    assert rc == 0, err
    assert "Traceback" not in err
    tbl = QTable.read(out_path)
    assert len(tbl) == 65
    # The library's columns, in its order (the CLI adds none); no WCS, no sky_centroid.
    assert [c for c in tbl.colnames if c in OUTPUT_COLUMNS] == OUTPUT_COLUMNS
    assert "sky_centroid" not in tbl.colnames and "hdu" not in tbl.colnames
    assert tbl.meta["image"] == "demo:sep_image.fits"
    assert "SourceExtractor" in tbl.meta["positions"]
    assert tbl.meta["gain_source"] == "sky / rms^2"
    assert png.stat().st_size > 0
    assert "measured 65 source(s)" in out
    assert "... 62 more row(s)" in out
    assert f"wrote {out_path}" in out


def test_catalog_ecsv_to_fits(image_files, tmp_path, capsys):
    image, cat, truth = image_files
    out_path = tmp_path / "phot.fits"
    rc, out, err = _run(capsys, image, "--catalog", cat, "--output", out_path,
                        "--batch-size", "3")
    assert rc == 0, err
    tbl = QTable.read(out_path)
    assert [c for c in tbl.colnames if c in OUTPUT_COLUMNS] == OUTPUT_COLUMNS
    assert len(tbl) == len(truth)
    np.testing.assert_array_equal(tbl["id"], truth["id"])
    np.testing.assert_allclose(tbl["x_init"], truth["x"])
    assert tbl["flux_fit"].unit == u.adu  # from BUNIT
    assert tbl.meta["GAIN"] == 2.0  # from the GAIN keyword
    assert "gain: 2.0 (GAIN keyword)" in out


def test_aperture_correction_option(image_files, tmp_path, capsys):
    image, cat, _ = image_files
    tables = {}
    for mode in ("off", "1.1"):
        out_path = tmp_path / f"phot_{mode}.ecsv"
        rc, out, err = _run(capsys, image, "--catalog", cat, "--output", out_path,
                            "--aperture-correction", mode)
        assert rc == 0, err
        assert "aperture correction: " in out
        tables[mode] = QTable.read(out_path)
    np.testing.assert_allclose(tables["1.1"]["flux_fit"], 1.1 * tables["off"]["flux_fit"],
                               rtol=1e-6)
    rc, out, err = _run(capsys, image, "--catalog", cat, "--aperture-correction", "maybe")
    assert rc != 0 and "auto, on, off or a positive factor" in err


def test_catalog_csv_case_insensitive_aliases(image_files, tmp_path, capsys):
    image, _, truth = image_files
    cat = tmp_path / "cat.csv"
    QTable({"X": truth["x"], "Y": truth["y"]}).write(cat, format="ascii.csv")
    out_path = tmp_path / "out.ecsv"
    rc, out, err = _run(capsys, image, "--catalog", cat, "-o", out_path)
    assert rc == 0, err
    assert len(QTable.read(out_path)) == len(truth)
    assert "columns x, y" in out


def test_catalog_fits_table(image_files, tmp_path, capsys):
    image, _, truth = image_files
    cat = tmp_path / "cat.fits"
    QTable({"xcentroid": truth["x"], "ycentroid": truth["y"]}).write(cat)
    out_path = tmp_path / "out.ecsv"
    rc, _, err = _run(capsys, image, "--catalog", cat, "-o", out_path, "--gain", "3")
    assert rc == 0, err
    assert QTable.read(out_path).meta["gain_source"] == "--gain"


def test_find(image_files, tmp_path, capsys):
    image, _, _ = image_files
    out_path, png = tmp_path / "found.ecsv", tmp_path / "found.png"
    rc, out, err = _run(capsys, image, "--find", "--fwhm", "3", "-o", out_path, "--plot", png)
    assert rc == 0, err
    tbl = QTable.read(out_path)
    assert len(tbl) > 0
    assert "DAOStarFinder" in tbl.meta["positions"]
    assert "DAOStarFinder (fwhm 3 px" in out
    assert png.is_file()


def test_find_nothing_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "blank.fits"
    fits.PrimaryHDU(rng.normal(100.0, 5.0, (64, 64)).astype(np.float32)).writeto(path)
    rc, out, err = _run(capsys, path, "--find", "--threshold", "50", "-o", tmp_path / "o.ecsv")
    assert rc == 2
    assert "no sources found by --find" in err
    assert not (tmp_path / "o.ecsv").exists()


def test_wcs_and_saturation_from_header(tmp_path, capsys):
    image, truth = make_test_image(shape=(96, 96), n_sources=6, seed=2)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [48.0, 48.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    header = wcs.to_header()
    header["SATURATE"] = 1000.0  # below the brightest peaks: some stars get flagged
    # An extension image: GAIN is inherited from the primary header.
    hdul = fits.HDUList([fits.PrimaryHDU(header=fits.Header([("GAIN", 2.0)])),
                         fits.ImageHDU(image, header=header, name="SCI")])
    path = tmp_path / "wcs.fits"
    hdul.writeto(path)
    cat = tmp_path / "truth.ecsv"
    truth.write(cat)
    out_path = tmp_path / "out.ecsv"
    rc, out, err = _run(capsys, path, "--catalog", cat, "-o", out_path)
    assert rc == 0, err
    tbl = QTable.read(out_path)
    assert "sky_centroid" in tbl.colnames
    assert tbl.meta["hdu"] == 1
    assert tbl.meta["saturation"] == 1000.0
    assert tbl.meta["gain_source"] == "GAIN keyword"
    assert "saturation: 1000.0 (SATURATE keyword)" in out
    assert np.any(tbl["flags"] & 128)
    # The library's summary warning is printed, not raised.
    assert "warning: FlaggedSourcesWarning" in err


def test_progress_bar_above_threshold(image_files, tmp_path, capsys, monkeypatch):
    image, cat, _ = image_files
    monkeypatch.setattr(cli, "PROGRESS_THRESHOLD", 2)
    rc, _, err = _run(capsys, image, "--catalog", cat, "-o", tmp_path / "o.ecsv")
    assert rc == 0
    assert "MLPhotometry: 8/8 sources" in err
    rc, _, err = _run(capsys, image, "--catalog", cat, "-o", tmp_path / "o2.ecsv",
                      "--no-progress")
    assert rc == 0
    assert "MLPhotometry:" not in err


def test_default_output_in_cwd(image_files, tmp_path, capsys, monkeypatch):
    image, cat, _ = image_files
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, _, err = _run(capsys, image, "--catalog", cat, "--rows", "0")
    assert rc == 0, err
    assert (work / "image_asidfe.ecsv").is_file()


def test_overwrite(image_files, tmp_path, capsys):
    image, cat, _ = image_files
    out_path = tmp_path / "o.ecsv"
    out_path.write_text("old")
    rc, _, err = _run(capsys, image, "--catalog", cat, "-o", out_path)
    assert rc == 2
    assert "exists; pass --overwrite" in err
    assert out_path.read_text() == "old"
    rc, _, err = _run(capsys, image, "--catalog", cat, "-o", out_path, "--overwrite")
    assert rc == 0, err
    assert len(QTable.read(out_path)) == 8


def test_outputs_get_the_usual_file_mode(image_files, tmp_path, capsys):
    # The atomic write goes through a private temporary file: the result must not stay 0600.
    import os

    image, cat, _ = image_files
    out_path = tmp_path / "mode.ecsv"
    old = os.umask(0o022)
    try:
        rc, _, err = _run(capsys, image, "--catalog", cat, "-o", out_path)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert out_path.stat().st_mode & 0o777 == 0o644


def _bad_catalogs(tmp_path):
    sextractor = tmp_path / "sex.ecsv"
    QTable({"X_IMAGE": [10.0], "Y_IMAGE": [10.0]}).write(sextractor)
    nopos = tmp_path / "nopos.ecsv"
    QTable({"a": [1.0], "b": [2.0]}).write(nopos)
    empty = tmp_path / "empty.ecsv"
    QTable({"x": np.zeros(0), "y": np.zeros(0)}).write(empty)
    garbage = tmp_path / "garbage.fits"
    garbage.write_text("not a table")
    dup = tmp_path / "dup.ecsv"
    QTable({"id": [1, 1], "x": [10.0, 20.0], "y": [10.0, 20.0]}).write(dup)
    return sextractor, nopos, empty, garbage, dup


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/missing.fits", "--find"], "image file not found"),
    (["{image}", "--hdu", "3", "--find"], "HDU 3 does not exist"),
    (["{tmp}/notfits.fits", "--find"], "cannot read"),
    (["{image}"], "no positions: give --catalog"),
    ([], "give an IMAGE"),
    (["{image}", "--catalog", "{tmp}/nope.ecsv"], "catalogue file not found"),
    (["{image}", "--catalog", "{tmp}/nopos.ecsv"], "has no position columns"),
    (["{image}", "--catalog", "{tmp}/empty.ecsv"], "has no rows"),
    (["{image}", "--catalog", "{tmp}/garbage.fits"], "cannot read catalogue"),
    (["{image}", "--catalog", "{tmp}/dup.ecsv"], "duplicate values"),
    (["{image}", "--find", "--output", "{tmp}/out.txt"], "must end in .ecsv, .csv or .fits"),
    (["{image}", "--find", "--output", "{tmp}/nodir/out.ecsv"], "does not exist"),
    (["{image}", "--find", "--fwhm", "0"], "--fwhm must be positive"),
    (["{image}", "--find", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["{image}", "--find", "--model", "no_such_model"], "neither a model directory"),
    (["--demo", "{image}"], "--demo uses the embedded image"),
    (["{image}", "--find", "--catalog", "{tmp}/nopos.ecsv"], "not allowed with argument"),
    (["{image}", "--hdu", "x"], "expected an HDU index, a comma list"),
])
def test_errors_exit_2(image_files, tmp_path, capsys, monkeypatch, args, message):
    image, _, _ = image_files
    monkeypatch.chdir(tmp_path)
    _bad_catalogs(tmp_path)
    (tmp_path / "notfits.fits").write_text("hello")
    argv = [a.format(tmp=tmp_path, image=image) for a in args]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*_asidfe.ecsv"))


def test_hdu_without_image(tmp_path, capsys):
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(np.zeros((4, 5, 6), dtype=np.float32))]).writeto(path)
    rc, _, err = _run(capsys, path, "--find")
    assert rc == 2
    assert "has no 2-D image HDU" in err
    rc, _, err = _run(capsys, path, "--hdu", "1", "--find")
    assert rc == 2
    assert "holds a 3-D array, not a 2-D image" in err


def test_help(capsys):
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0
    assert "--catalog" in out and "--demo" in out


def test_console_script_declared():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    entry = [ep for ep in scripts if ep.name == "asidfe-phot"]
    assert entry and entry[0].value == "asidfe_phot.cli:main"
