"""``asidfe-phot`` on multi-extension FITS files: ``--hdu all`` / ``--hdu 1,2``."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable, vstack

from asidfe_phot import cli
from asidfe_phot.datasets import make_test_image

SHAPE = (96, 96)


@pytest.fixture(name="mef")
def fixture_mef(tmp_path):
    """Primary (no data, GAIN) + two image extensions + a table; per-HDU truths."""
    hdus = [fits.PrimaryHDU(header=fits.Header([("GAIN", 2.0)]))]
    truths = {}
    for hdu, seed in ((1, 1), (2, 2)):
        image, truth = make_test_image(shape=SHAPE, n_sources=5 + hdu, seed=seed)
        hdus.append(fits.ImageHDU(image.astype(">f4"), name=f"CCD{hdu}"))
        truths[hdu] = truth
    hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="a", format="E",
                                                           array=np.zeros(2))]))
    path = tmp_path / "mef.fits"
    fits.HDUList(hdus).writeto(path)
    both = []
    for hdu, truth in truths.items():
        part = QTable({"id": truth["id"], "x": truth["x"], "y": truth["y"]})
        part["hdu"] = hdu
        both.append(part)
    cat = tmp_path / "cat.ecsv"
    vstack(both).write(cat)
    return {"path": path, "truths": truths, "cat": cat, "dir": tmp_path}


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_all_hdus_one_ecsv_with_an_hdu_column(mef, capsys):
    d = mef["dir"]
    out = d / "phot.ecsv"
    rc, stdout, err = _run(capsys, mef["path"], "--hdu", "all", "--catalog", mef["cat"],
                           "-o", out, "--regions", d / "phot.reg", "--psf", "none",
                           "--rows", "0", "--progress")
    assert rc == 0, err
    tbl = QTable.read(out)
    assert tbl.colnames[:2] == ["id", "hdu"]
    for hdu, truth in mef["truths"].items():
        rows = tbl[tbl["hdu"] == hdu]
        np.testing.assert_array_equal(rows["id"], truth["id"])
        np.testing.assert_allclose(rows["x_init"], truth["x"])
        regions = (d / f"phot_hdu{hdu}.reg").read_text()
        assert regions.count("circle(") == len(truth)
        assert f"[HDU {hdu}]" in regions
    assert not (d / "phot.reg").exists()
    assert tbl.meta["hdu"] == [1, 2]
    assert set(tbl.meta["per_hdu"]) <= {1, 2}
    assert "wrote" in stdout and "(13 rows from 2 HDUs)" in stdout
    # Progress between HDUs (on stderr, whole lines in a log), with its source bars.
    assert "asidfe-phot: 2/2 HDUs (100%), done in" in err
    assert "MLPhotometry: 7/7 sources (100%)" in err


def test_hdu_list_to_fits_one_table_per_hdu(mef, capsys):
    out = mef["dir"] / "phot.fits"
    rc, _, err = _run(capsys, mef["path"], "--hdu", "2,1", "--catalog", mef["cat"], "-o", out,
                      "--psf", "none", "--rows", "0")
    assert rc == 0, err
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "HDU2", "HDU1"]
    for hdu, truth in mef["truths"].items():
        tbl = QTable.read(out, hdu=f"HDU{hdu}")
        assert tbl.meta["HDU"] == hdu and set(tbl["hdu"]) == {hdu}
        np.testing.assert_allclose(tbl["x_init"], truth["x"])


def test_hdu_without_catalogue_rows_gets_an_empty_table(mef, capsys):
    d = mef["dir"]
    QTable({"x": [30.0, 50.0], "y": [40.0, 60.0], "hdu": [2, 2]}).write(d / "two.ecsv")
    out = d / "phot.fits"
    rc, stdout, err = _run(capsys, mef["path"], "--hdu", "all", "--catalog", d / "two.ecsv",
                           "-o", out, "--psf", "none", "--rows", "0")
    assert rc == 0, err
    assert "has no rows for HDU 1" in stdout
    assert len(QTable.read(out, hdu="HDU1")) == 0
    assert list(QTable.read(out, hdu="HDU2")["x_init"]) == [30.0, 50.0]


def test_sextractor_ext_number_picks_the_rows(mef, capsys):
    """EXT_NUMBER counts the image extensions from 1 (SourceExtractor's numbering)."""
    lines = ["#   1 NUMBER     Running object number",
             "#   2 X_IMAGE    Object position along x   [pixel]",
             "#   3 Y_IMAGE    Object position along y   [pixel]",
             "#   4 EXT_NUMBER FITS extension number"]
    for ext, truth in enumerate(mef["truths"].values(), start=1):
        lines += [f"{i} {x + 1:.4f} {y + 1:.4f} {ext}" for i, x, y in
                  zip(truth["id"], truth["x"], truth["y"])]
    cat = mef["dir"] / "mef.cat"
    cat.write_text("\n".join(lines) + "\n")
    out = mef["dir"] / "one.ecsv"
    rc, _, err = _run(capsys, mef["path"], "--hdu", "2", "--catalog", cat, "-o", out,
                      "--psf", "none", "--rows", "0")
    assert rc == 0, err
    tbl = QTable.read(out)
    assert "hdu" not in tbl.colnames       # one HDU asked for: today's table
    np.testing.assert_allclose(tbl["x_init"], mef["truths"][2]["x"], atol=1e-4)


def test_find_in_every_hdu_without_catalogue(mef, capsys):
    out = mef["dir"] / "found.ecsv"
    rc, _, err = _run(capsys, mef["path"], "--hdu", "all", "--find", "-o", out, "--psf", "none",
                      "--rows", "0")
    assert rc == 0, err
    assert set(QTable.read(out)["hdu"]) == {1, 2}


@pytest.mark.parametrize(("args", "message"), [
    (["--hdu", "1,7"], "HDU 7 does not exist in"),
    (["--hdu", "3"], "HDU 3 of {path} holds no image data, not a 2-D image"),
    (["--hdu", "0"], "HDU 0 of {path} holds no image data"),
    (["--hdu", "1,x"], "expected an HDU index, a comma list of indices"),
    (["--hdu", "all", "--catalog", "{nohdu}"], "does not say which HDU each row belongs to"),
    (["--hdu", "1", "--catalog", "{other}"], "has no rows for HDU 1"),
    (["--hdu", "all", "--catalog", "{nowhere}"], "has no rows for any of HDUs [1, 2]"),
    (["--hdu", "all", "--weight", "{weights}"], "has no 2-D image in HDU 1 to match"),
])
def test_errors(mef, capsys, args, message):
    d = mef["dir"]
    QTable({"x": [10.0], "y": [10.0]}).write(d / "nohdu.ecsv")
    QTable({"x": [10.0], "y": [10.0], "hdu": [2]}).write(d / "other.ecsv")
    QTable({"x": [10.0], "y": [10.0], "hdu": [5]}).write(d / "nowhere.ecsv")
    # Weights whose HDU 1 is a table and that hold two images elsewhere: which one is
    # meant for image HDU 1 cannot be told.
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[0.0])])
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(np.ones(SHAPE)),
                  fits.ImageHDU(np.ones(SHAPE))]).writeto(d / "weights.fits")
    names = {"path": mef["path"], "nohdu": d / "nohdu.ecsv", "other": d / "other.ecsv",
             "nowhere": d / "nowhere.ecsv", "weights": d / "weights.fits"}
    if "--catalog" not in args:
        args = [*args, "--catalog", str(mef["cat"])]
    out = d / "out.ecsv"
    rc, _, err = _run(capsys, mef["path"], *[a.format(**names) for a in args], "-o", out,
                      "--psf", "none")
    assert rc == 2
    assert message.format(**names) in err
    assert not out.exists()
