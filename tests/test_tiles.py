"""Frames measured tile by tile (asidfe_phot.tiles): the same table, bounded reads."""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_star_field
from asidfe_phot.tiles import measure_tiled, tile_grid


@pytest.fixture(scope="module", name="field")
def fixture_field():
    image, truth, meta = make_star_field((300, 260), 180, sky=100.0, gain=2.0, seed=3)
    init = Table({"x": np.asarray(truth["x"]), "y": np.asarray(truth["y"])})
    # A row without a position and one off the frame come back too, flagged, in place.
    init.insert_row(5, {"x": np.nan, "y": 4.0})
    init.add_row({"x": -30.0, "y": 250.0})
    init["id"] = np.arange(101, 101 + len(init))
    return image.astype(np.float32), init, meta


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_the_tiles_cover_the_frame_once():
    grid = tile_grid((300, 260), 128, 20)
    covered = np.zeros((300, 260), int)
    for core, region in grid:
        covered[core] += 1
        assert region[0].start == max(core[0].start - 20, 0)
        assert region[1].stop == min(core[1].stop + 20, 260)
    assert np.all(covered == 1)
    assert len(grid) == 3 * 3


def test_tiles_give_the_whole_frames_table_when_nothing_is_estimated_per_tile(field):
    # Given background, noise and gain, no PSF, no aperture correction: a tile's stamps,
    # neighbours and noise are the whole frame's, so every number must be the same.
    image, init, meta = field
    phot = MLPhotometry(psf_model=None, aperture_correction=False)
    kwargs = {"gain": 2.0, "background": meta["background"], "error": meta["noise"]}
    whole = _quiet(phot, image, init_params=init, **kwargs)
    tiled = _quiet(measure_tiled, phot, image, init, tile=96, **kwargs)
    assert len(tiled.meta["tiles"]) > 4
    assert list(tiled["id"]) == list(init["id"])
    for name in ("x_init", "y_init", "x_fit", "y_fit", "flux_fit", "x_err", "flux_err",
                 "flags"):
        np.testing.assert_array_equal(np.asarray(tiled[name]), np.asarray(whole[name]))
    assert tiled["flags"][5] and tiled["flags"][-1]


def test_a_memory_mapped_fits_section_is_read_tile_by_tile(field, tmp_path):
    image, init, _ = field
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(image.astype(">f4")).writeto(path)
    phot = MLPhotometry(psf_model=None)
    in_memory = _quiet(measure_tiled, phot, image, init, tile=128, gain=2.0)
    with fits.open(path, memmap=True) as hdul:
        from_file = _quiet(measure_tiled, phot, hdul[0].section, init, tile=128, gain=2.0)
    for name in ("x_fit", "flux_fit", "flux_err", "flags"):
        np.testing.assert_array_equal(np.asarray(from_file[name]), np.asarray(in_memory[name]))
    # Default settings estimate the background per tile: close to the whole frame's.
    whole = _quiet(phot, image, init_params=init, gain=2.0)
    ok = np.isfinite(np.asarray(whole["flux_fit"])) & (np.asarray(whole["flux_fit"]) > 500)
    ratio = np.asarray(in_memory["flux_fit"])[ok] / np.asarray(whole["flux_fit"])[ok]
    assert np.median(np.abs(ratio - 1)) < 0.01


def test_found_sources_are_kept_once_and_groups_stay_unique(field):
    from photutils.detection import DAOStarFinder

    image, _, meta = field
    finder = DAOStarFinder(threshold=8 * float(np.median(meta["noise"])), fwhm=2.5)
    phot = MLPhotometry(psf_model=None, finder=finder)
    whole = _quiet(phot, image, gain=2.0, background=meta["background"])
    tiled = _quiet(measure_tiled, phot, image, tile=96, gain=2.0,
                   background=meta["background"])
    assert list(tiled["id"]) == list(range(1, len(tiled) + 1))
    # Each detection once: a source near a tile edge is found by two tiles, kept by one.
    xy = np.c_[tiled["x_init"], tiled["y_init"]]
    gaps = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() > 0.5
    assert abs(len(tiled) - len(whole)) <= 0.02 * len(whole)
    groups = {}
    for gid, x, y in zip(tiled["group_id"], tiled["x_init"], tiled["y_init"], strict=True):
        groups.setdefault(int(gid), []).append((x, y))
    # A group never spans two tiles' numbering: its members are neighbours.
    for members in groups.values():
        m = np.array(members)
        assert np.ptp(m[:, 0]) < 96 and np.ptp(m[:, 1]) < 96


def test_bad_tile_sizes_are_refused(field):
    image, init, _ = field
    with pytest.raises(ValueError, match="at least 64"):
        measure_tiled(MLPhotometry(psf_model=None), image, init, tile=32)
    with pytest.raises(ValueError, match="2-D"):
        measure_tiled(MLPhotometry(psf_model=None), image[None], init)


def _frame_files(tmp_path, field):
    image, init, meta = field
    header = fits.Header({"BUNIT": "adu", "GAIN": 2.0})
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(path)
    error = tmp_path / "error.fits"
    fits.PrimaryHDU(np.asarray(meta["noise"], ">f4")).writeto(error)
    mask = tmp_path / "mask.fits"
    bad = np.zeros(image.shape, np.uint8)
    bad[100:104, 50:60] = 1
    fits.PrimaryHDU(bad).writeto(mask)
    cat = tmp_path / "cat.ecsv"
    init.write(cat, format="ascii.ecsv")
    return path, cat, error, mask


def test_the_command_line_tiles_a_frame_with_its_maps(field, tmp_path, capsys):
    from astropy.table import QTable

    from asidfe_phot import cli

    path, cat, error, mask = _frame_files(tmp_path, field)
    common = [str(path), "--catalog", str(cat), "--error", str(error), "--mask", str(mask),
              "--psf", "none", "--aperture-correction", "off", "--no-progress"]
    assert cli.main([*common, "-o", str(tmp_path / "whole.ecsv")]) == 0
    assert cli.main([*common, "--tile", "96", "-o", str(tmp_path / "tiled.ecsv")]) == 0
    out = capsys.readouterr().out
    assert "tiles: 12 of 96 px" in out
    whole = QTable.read(tmp_path / "whole.ecsv")
    tiled = QTable.read(tmp_path / "tiled.ecsv")
    assert list(tiled["id"]) == list(whole["id"])
    assert tiled["flux_fit"].unit == whole["flux_fit"].unit == u.adu
    # The maps are read tile by tile: masked pixels and errors as on the whole frame.
    ok = np.isfinite(whole["flux_fit"].value)
    ratio = tiled["flux_fit"].value[ok] / whole["flux_fit"].value[ok]
    assert np.median(np.abs(ratio - 1)) < 0.01
    np.testing.assert_array_equal(np.asarray(tiled["flags"]) & 0b11110,
                                  np.asarray(whole["flags"]) & 0b11110)


@pytest.mark.parametrize(("extra", "message"), [
    (["--tile", "32"], "at least 64"),
    (["--tile", "128", "--weight", "{error}"], "--weight needs the whole frame"),
])
def test_the_command_line_refuses_tile_clashes(field, tmp_path, capsys, extra, message):
    from asidfe_phot import cli

    path, cat, error, _ = _frame_files(tmp_path, field)
    argv = [str(path), "--catalog", str(cat), *[a.format(error=error) for a in extra]]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_auto_epsf_is_built_once_for_the_frame():
    # A tile alone may lack the stars an ePSF needs: one is built from the frame's centre
    # and every tile uses it, as the whole frame's call does.
    image, truth, _ = make_star_field((512, 512), 500, sky=100.0, gain=2.0, seed=3,
                                      flux_range=(300, 3e5))
    image = image.astype(np.float32)
    init = Table({"x": np.asarray(truth["x"]), "y": np.asarray(truth["y"])})
    phot = MLPhotometry()
    whole = _quiet(phot, image, init_params=init, gain=2.0)
    tiled = _quiet(measure_tiled, phot, image, init, tile=128, gain=2.0)
    assert whole.meta["psf_used"]
    assert tiled.meta["tile_epsf"] == "one for the frame, from its central region"
    assert all(t["psf_used"] and t["psf_built_for"] == "frame" for t in tiled.meta["tiles"])
    assert phot._frame_epsf is None           # not left behind for the next call
    ok = np.isfinite(np.asarray(whole["flux_fit"])) & (np.asarray(whole["flags"]) == 0)
    ratio = np.asarray(tiled["flux_fit"])[ok] / np.asarray(whole["flux_fit"])[ok]
    assert np.median(np.abs(ratio - 1)) < 0.01
