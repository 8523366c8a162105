"""
``asidfe-phot`` as a SourceExtractor user runs it: weight, rms and variance maps, masks,
ASCII_HEAD and FITS_LDAC catalogues, CSV tables and ds9 region files.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS

from asidfe_phot import cli
from asidfe_phot.datasets import make_test_image
from asidfe_phot.flags import EDGE, MASKED

SHAPE = (96, 96)
#: The sky noise of make_test_image (sky 100 ADU, gain 2, read noise 5 e-), ADU.
SKY_RMS = np.sqrt(200.0 + 25.0) / 2.0
_ASCII_HEAD = ["#   1 NUMBER                 Running object number",
               "#   2 X_IMAGE                Object position along x                    [pixel]",
               "#   3 Y_IMAGE                Object position along y                    [pixel]",
               "#   4 XWIN_IMAGE             Windowed position estimate along x         [pixel]",
               "#   5 YWIN_IMAGE             Windowed position estimate along y         [pixel]",
               "#   6 FLAGS                  Extraction flags"]


def _ascii_head(path, x1, y1, numbers, x_barycentre_offset=0.3):
    """A SourceExtractor ASCII_HEAD catalogue (1-based XWIN; X_IMAGE deliberately off)."""
    rows = [f"{n:10d} {x + x_barycentre_offset:10.4f} {y:10.4f} {x:10.4f} {y:10.4f}  0"
            for n, x, y in zip(numbers, x1, y1)]
    path.write_text("\n".join(_ASCII_HEAD + rows) + "\n")


@pytest.fixture(name="sex")
def fixture_sex(tmp_path):
    """An image (BUNIT adu, GAIN 2), its SourceExtractor catalogue, an edge source added."""
    image, truth = make_test_image(shape=SHAPE, n_sources=8, seed=1)
    path = tmp_path / "field.fits"
    fits.PrimaryHDU(image.astype(">f4"), header=fits.Header([("BUNIT", "adu"),
                                                             ("GAIN", 2.0)])).writeto(path)
    x = np.append(np.asarray(truth["x"], float), 1.5)     # an EDGE source
    y = np.append(np.asarray(truth["y"], float), 40.0)
    numbers = np.arange(101, 101 + x.size)
    cat = tmp_path / "field.cat"
    _ascii_head(cat, x + 1, y + 1, numbers)
    return {"image": path, "cat": cat, "x": x, "y": y, "numbers": numbers,
            "dir": tmp_path, "data": image}


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _write_map(path, values):
    fits.PrimaryHDU(np.asarray(values, dtype=np.float32)).writeto(path)
    return path


def test_ascii_head_catalogue_weight_map_csv_and_regions(sex, capsys):
    """The SourceExtractor user's run: 1-based XWIN_IMAGE, NUMBER as id, CSV, ds9 regions."""
    d = sex["dir"]
    weight = _write_map(d / "field.weight.fits", np.full(SHAPE, 4.0))
    out, reg = d / "phot.csv", d / "phot.reg"
    rc, stdout, err = _run(capsys, sex["image"], "--catalog", sex["cat"], "--weight", weight,
                           "--weight-type", "weight", "-o", out, "--regions", reg,
                           "--psf", "none", "--rows", "0")
    assert rc == 0, err
    assert "SourceExtractor XWIN_IMAGE, YWIN_IMAGE minus 1" in stdout
    tbl = QTable.read(out, format="ascii.csv")
    np.testing.assert_array_equal(tbl["id"], sex["numbers"])        # NUMBER -> id
    np.testing.assert_allclose(tbl["x_init"], sex["x"], atol=1e-4)  # XWIN - 1, not X_IMAGE
    np.testing.assert_allclose(tbl["y_init"], sex["y"], atol=1e-4)
    assert tbl["flags"][-1] & EDGE
    # ds9: one circle per source at the 1-based fitted position; the flagged one red,
    # with its flag names.
    lines = reg.read_text().splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and "image" in lines
    circles = [line for line in lines if line.startswith("circle(")]
    assert len(circles) == len(tbl)
    centre = [float(v) for v in re.match(r"circle\(([^,]+),([^,]+),", circles[0]).groups()]
    np.testing.assert_allclose(centre, [tbl["x_fit"][0] + 1, tbl["y_fit"][0] + 1], atol=1e-3)
    assert [("color=red" in c) for c in circles] == [bool(f) for f in tbl["flags"]]
    assert circles[-1].endswith("# color=red text={EDGE}")


def test_weight_types_mean_what_sourceextractor_means(sex, capsys):
    """
    rms and variance maps are absolute (the same noise gives the same table); a weight
    map is relative (4x the weights: the same table, scaled to the image's rms); a
    larger rms gives larger errors.
    """
    d = sex["dir"]
    maps = {"rms": ("rms", np.full(SHAPE, SKY_RMS)),
            "var": ("variance", np.full(SHAPE, SKY_RMS**2)),
            "rms3": ("rms", np.full(SHAPE, 3 * SKY_RMS)),
            "w1": ("weight", np.full(SHAPE, 1.0)),
            "w4": ("weight", np.full(SHAPE, 4.0))}
    tables = {}
    for name, (kind, values) in maps.items():
        path = _write_map(d / f"{name}.fits", values)
        out = d / f"{name}.ecsv"
        rc, stdout, err = _run(capsys, sex["image"], "--catalog", sex["cat"], "--weight", path,
                               "--weight-type", kind, "-o", out, "--psf", "none",
                               "--rows", "0", "--aperture-correction", "off")
        assert rc == 0, err
        tables[name] = QTable.read(out)
    err = {name: tbl["flux_err"].value for name, tbl in tables.items()}
    np.testing.assert_allclose(err["rms"], err["var"], rtol=1e-5)
    np.testing.assert_allclose(err["w1"], err["w4"], rtol=1e-5)
    # The weight map's scale comes from the measured sky rms: close to the true one.
    np.testing.assert_allclose(err["w1"], err["rms"], rtol=0.1)
    # The network reads the rms it is given (its errors are not simply proportional).
    assert np.median(err["rms3"] / err["rms"]) > 1.05
    assert "scaled to the image's background rms" in " ".join(tables["w1"].meta["noise_inputs"])
    assert tables["var"].meta["background"] == "mesh 64 px, rms from --weight (variance)"


def test_zero_weight_and_mask_flag_the_covered_source(sex, capsys):
    d = sex["dir"]
    x0, y0 = int(round(sex["x"][0])), int(round(sex["y"][0]))
    weight = np.ones(SHAPE)
    weight[y0 - 1:y0 + 2, x0 - 1:x0 + 2] = 0.0
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[y0 - 1:y0 + 2, x0 - 1:x0 + 2] = 4                 # any nonzero value is bad
    _write_map(d / "w.fits", weight)
    fits.PrimaryHDU(mask).writeto(d / "mask.fits")
    flags, printed = {}, {}
    for name, extra in (("weight", ["--weight", d / "w.fits"]),
                        ("mask", ["--mask", d / "mask.fits"]), ("none", [])):
        rc, printed[name], err = _run(capsys, sex["image"], "--catalog", sex["cat"], *extra,
                                      "-o", d / f"{name}.ecsv", "--psf", "none", "--rows", "0")
        assert rc == 0, err
        flags[name] = QTable.read(d / f"{name}.ecsv")["flags"]
    assert not flags["none"][0] & MASKED
    assert flags["weight"][0] & MASKED and flags["mask"][0] & MASKED
    assert "9 zero-weight pixel(s) masked" in printed["weight"]
    assert "9 bad pixel(s)" in printed["mask"]


def test_error_map_used_as_given(sex, capsys):
    d = sex["dir"]
    small = _write_map(d / "err1.fits", np.full(SHAPE, SKY_RMS))
    large = _write_map(d / "err4.fits", np.full(SHAPE, 4 * SKY_RMS))
    errs = []
    for path in (small, large):
        rc, stdout, err = _run(capsys, sex["image"], "--catalog", sex["cat"], "--error", path,
                               "-o", d / f"{path.stem}.ecsv", "--psf", "none", "--rows", "0")
        assert rc == 0, err
        assert "total 1-sigma error, used as given" in stdout
        errs.append(QTable.read(d / f"{path.stem}.ecsv")["flux_err"].value)
    assert np.median(errs[1] / errs[0]) > 1.05     # read (see the weight-type test)


def test_fits_ldac_catalogue(sex, capsys):
    d = sex["dir"]
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column(name="Field Header Card", format="80A", array=np.array(["SIMPLE = T"]))],
        name="LDAC_IMHEAD")
    objects = fits.BinTableHDU.from_columns(
        [fits.Column(name="NUMBER", format="J", array=sex["numbers"]),
         fits.Column(name="X_IMAGE", format="D", unit="pixel", array=sex["x"] + 1),
         fits.Column(name="Y_IMAGE", format="D", unit="pixel", array=sex["y"] + 1)],
        name="LDAC_OBJECTS")
    cat = d / "field.ldac"
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(cat)
    out = d / "ldac.ecsv"
    rc, stdout, err = _run(capsys, sex["image"], "--catalog", cat, "-o", out, "--psf", "none",
                           "--rows", "0")
    assert rc == 0, err
    assert "SourceExtractor FITS_LDAC X_IMAGE, Y_IMAGE" in stdout
    tbl = QTable.read(out)
    np.testing.assert_allclose(tbl["x_init"], sex["x"], atol=1e-6)
    np.testing.assert_array_equal(tbl["id"], sex["numbers"])


def test_csv_format_option_splits_sky_coordinates(tmp_path, capsys):
    image, truth = make_test_image(shape=SHAPE, n_sources=4, seed=3)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [48.0, 48.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    path = tmp_path / "wcs.fits"
    fits.PrimaryHDU(image, header=wcs.to_header()).writeto(path)
    truth.write(tmp_path / "cat.ecsv")
    out = tmp_path / "table.txt"      # any name: --format decides
    rc, _, err = _run(capsys, path, "--catalog", tmp_path / "cat.ecsv", "-o", out,
                      "--format", "csv", "--psf", "none", "--rows", "0")
    assert rc == 0, err
    tbl = QTable.read(out, format="ascii.csv")
    assert "sky_centroid_ra" in tbl.colnames and "sky_centroid_dec" in tbl.colnames
    ra, dec = wcs.pixel_to_world_values(tbl["x_fit"], tbl["y_fit"])
    np.testing.assert_allclose(tbl["sky_centroid_ra"], ra, atol=1e-9)
    np.testing.assert_allclose(tbl["sky_centroid_dec"], dec, atol=1e-9)


@pytest.mark.parametrize(("extra", "message"), [
    (["--weight", "{small}"], "is 32x32 px but the image [HDU 0] is 96x96 px"),
    (["--mask", "{small}"], "--mask {small} [HDU 0] is 32x32 px"),
    (["--error", "{small}"], "must match pixel for pixel"),
    (["--weight", "{zero}"], "has no usable pixel"),
    (["--weight", "{missing}"], "image file not found"),
    (["--weight", "{zero}", "--weight-type", "inverse"], "invalid choice: 'inverse'"),
    (["--weight", "{zero}", "--error", "{zero}"], "not allowed with argument"),
    (["--regions", "{image}", "--overwrite"], "is an input file"),
    (["--regions", "{out}"], "is another output of this run"),
    (["--output", "{weight}", "--weight", "{weight}", "--overwrite"], "is an input file"),
    (["--threads", "0"], "--threads must be a positive number"),
    (["--providers", "NoSuchExecutionProvider"], "unknown onnxruntime providers"),
    (["--providers", ","], "expected a comma list of onnxruntime providers"),
])
def test_errors(sex, capsys, extra, message):
    d = sex["dir"]
    names = {"small": _write_map(d / "small.fits", np.ones((32, 32))),
             "zero": _write_map(d / "zero.fits", np.zeros(SHAPE)),
             "weight": _write_map(d / "weight.fits", np.ones(SHAPE)),
             "missing": d / "missing.fits", "image": sex["image"], "out": d / "out.ecsv"}
    before = {p: p.read_bytes() for p in d.iterdir()}
    argv = [sex["image"], "--catalog", sex["cat"], "-o", d / "out.ecsv", "--psf", "none",
            *[a.format(**names) for a in extra]]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2
    assert message.format(**names) in err
    assert "Traceback" not in err
    assert {p: p.read_bytes() for p in d.iterdir()} == before     # nothing written


def test_threads_and_providers(sex, capsys):
    out = sex["dir"] / "o.ecsv"
    rc, stdout, err = _run(capsys, sex["image"], "--catalog", sex["cat"], "-o", out,
                           "--threads", "1", "--providers", "CPUExecutionProvider",
                           "--psf", "none", "--rows", "0")
    assert rc == 0, err
    assert "on CPUExecutionProvider" in stdout
    assert list(QTable.read(out).meta["providers"]) == ["CPUExecutionProvider"]


def test_command_in_a_subprocess(sex):
    """The installed command: --version, and a weight + ASCII_HEAD + regions run."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "asidfe_phot.cli"]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0
    assert re.match(r"asidfe-phot \S+ \(Python 3\.\d+\.\d+, onnxruntime \S+\)", proc.stdout)
    d = sex["dir"]
    weight = _write_map(d / "w.fits", np.ones(SHAPE))
    proc = subprocess.run([*command, str(sex["image"]), "--catalog", str(sex["cat"]),
                           "--weight", str(weight), "-o", str(d / "o.ecsv"), "--regions",
                           str(d / "o.reg"), "--psf", "none", "--rows", "0"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=d)
    assert proc.returncode == 0, proc.stderr
    assert len(QTable.read(d / "o.ecsv")) == len(sex["x"])
    assert (d / "o.reg").read_text().count("circle(") == len(sex["x"])
