"""The synthetic side-by-side evaluation (training.evaluate) on one small re-simulated frame."""

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from training import evaluate as ev
from training import reference_tools as rt

HAS_SEX = bool(shutil.which("source-extractor") or shutil.which("sex"))
HAS_PSFEX = HAS_SEX and bool(shutil.which("psfex"))
#: Seed 5 makes test frame 4 (of 5) a sparse 256x256 frame with ~90 stars, ~20 of S/N > 50.
INDEX = {"preset": "generic", "seed": 5, "n_frames": 5, "frame_shape": [256, 256],
         "families": ["gaussian", "moffat", "double_gaussian"]}


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
    """measure_frames only reads index.json: the frames are re-simulated from its seed."""
    out = tmp_path_factory.mktemp("data")
    (out / "index.json").write_text(json.dumps(INDEX))
    return out


@pytest.fixture(scope="module", name="results")
def fixture_results(data):
    """Every installed method on the one test frame (packaged model for 'ml')."""
    return ev.measure_frames(None, data, n_frames=1, log=lambda *a: None)


def test_all_methods_present(results):
    expected = ["ml", "sep", "aper", "psf"]
    if HAS_SEX:
        expected.insert(3, "sex")
    if HAS_PSFEX:
        expected.insert(4, "psfex")
    assert ev.methods_in(results) == expected
    assert results.meta["methods"] == expected
    assert set(results.meta["timings"]) == set(expected)
    assert len(results) > 50
    for m in expected:
        assert {f"flux_{m}", f"flux_err_{m}"} <= set(results.colnames)
        if m in ev.POSITION_METHODS:
            assert {f"x_{m}", f"y_{m}", f"x_err_{m}", f"y_err_{m}"} <= set(results.colnames)
    assert np.all(results["stars_per_beam"] > 0)


def test_methods_agree_with_truth_on_bright_stars(results):
    bright = (results["snr"] > 50) & (results["contamination"] < 0.1)
    assert bright.sum() >= 8
    r = results[bright]
    for m in ev.methods_in(results):
        ok = ev.usable(r, m)
        assert ok.mean() > 0.85, m
        rel = np.abs(r[f"flux_{m}"][ok] / r["flux_true"][ok] - 1)
        # sep's Kron apertures do not mask neighbours: loose, and on the median only.
        assert np.median(rel) < (0.1 if m == "sep" else 0.05), m
        if m in ev.POSITION_METHODS:
            d = np.hypot(r[f"x_{m}"][ok] - r["x_true"][ok], r[f"y_{m}"][ok] - r["y_true"][ok])
            # 0-based everywhere: a 1-based catalogue would be 1.4 px off.
            assert np.median(d) < 0.05, m
            assert np.all(d < 0.5), m


@pytest.mark.skipif(not HAS_PSFEX, reason="SourceExtractor or PSFEx not installed")
def test_psfex_fluxes_are_aperture_corrected(results):
    corr = np.unique(results["aperture_correction_psfex"])
    assert corr.size == 1 and 1.0 <= corr[0] < 1.5


def test_bin_metrics_tables_and_wins(results, tmp_path):
    metrics = ev.bin_metrics(results)
    methods = ev.methods_in(results)
    # Existing names (the docs table and other code read them) and the new pattern.
    for name in ("flux_mare_ml", "flux_mare_sep", "flux_mare_aper", "flux_zstd_ml",
                 "flux_cov68_ml", "x_zstd_ml", "x_cov68_ml", "x_mae_ml", "x_mae_init",
                 "x_rms_over_crlb_ml", "flux_rms_over_crlb_ml", "flagged_fraction_ml"):
        assert name in metrics.colnames
    for m in methods:
        for name in ("flux_mare", "flux_rms_over_crlb", "flux_zstd", "flux_cov68",
                     "flux_cov95", "failure_rate"):
            assert f"{name}_{m}" in metrics.colnames
        if m in ev.POSITION_METHODS:
            for c in ("x", "y", "pos"):
                for name in ("mae", "rms_over_crlb", "zstd", "cov68", "cov95"):
                    assert f"{c}_{name}_{m}" in metrics.colnames
    assert metrics["n"].sum() == np.count_nonzero(results["snr"] >= ev.SNR_BINS[0])
    filled = metrics["n"] > 0
    assert np.all(np.isfinite(metrics["flux_mare_psf"][filled]))
    paths = ev.write_method_tables(metrics, tmp_path / "metrics")
    assert [p.name for p in paths] == [f"metrics_{k}.rst" for k in
                                       ("flux", "position", "calibration", "crlb", "failures")]
    flux = Table.read(tmp_path / "metrics_flux.rst", format="ascii.rst")
    assert flux.colnames == ["S/N", "N", *(ev.SHORT[m] for m in methods)]
    bins = ev.wins(metrics)
    assert len(bins) == len(metrics)
    assert set(bins[-1]["flux_mare_lower"]) == set(methods) - {"ml"}
    assert "init" in bins[-1]["pos_mae_lower"] and "sep" not in bins[-1]["pos_mae_lower"]
    ev.plot_metrics(metrics, tmp_path / "metrics.png", title="test")
    assert (tmp_path / "metrics.png").stat().st_size > 10_000


def test_split_by_crowding(results):
    fake = results.copy()
    half = len(fake) // 2
    fake["stars_per_beam"][:half] = 0.5
    fake["stars_per_beam"][half:] = 0.1
    parts = ev.split_by_crowding(fake, 0.2)
    assert len(parts["crowded"]) == half and len(parts["sparse"]) == len(fake) - half
    assert len(parts["all"]) == len(fake)


def test_methods_option_from_the_command_line(data, tmp_path, capsys):
    out = tmp_path / "eval"
    ev.main(["--data", str(data), "--n-frames", "1", "--out", str(out), "--methods", "ml,sep"])
    results = Table.read(out / "results.ecsv")
    assert ev.methods_in(results) == ["ml", "sep"]
    assert "flux_aper" not in results.colnames and "x_psf" not in results.colnames
    for stem in ("metrics", "metrics_sparse", "metrics_crowded"):
        for suffix in (".ecsv", ".rst", ".png", "_flux.rst", "_position.rst",
                       "_calibration.rst", "_crlb.rst", "_failures.rst"):
            assert (out / f"{stem}{suffix}").exists(), stem + suffix
    wins = json.loads((out / "wins.json").read_text())
    assert set(wins["subsets"]) == {"all", "sparse", "crowded"}
    # The one test frame is sparse (0.10 stars per FWHM^2).
    assert wins["subsets"]["crowded"]["sources"] == 0
    assert wins["subsets"]["all"]["bins_won"]["flux_mare"]["sep"].endswith(
        f"/{sum(b['flux_mare_lower']['sep'] is not None for b in wins['subsets']['all']['bins'])}")
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["seconds_per_frame"]) == {"ml", "sep"}
    printed = capsys.readouterr().out
    assert printed.startswith("seconds per frame: ml ")
    printed = json.loads(printed[printed.index("\n[") + 1:])
    assert printed[0]["snr_lo"] == ev.SNR_BINS[0]
    with pytest.raises(ValueError, match="unknown methods"):
        ev.resolve_methods("ml,daophot")


def test_missing_source_extractor_is_skipped_unless_asked(monkeypatch):
    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    messages = []
    assert ev.resolve_methods(None, log=messages.append) == ["ml", "sep", "aper", "psf"]
    assert "skipping sex, psfex" in messages[0]
    with pytest.raises(rt.ToolNotFoundError):
        ev.resolve_methods("ml,sex")


def test_assoc_columns_keep_the_closest_detection():
    x = np.array([10.0, 20.0, 30.0])
    y = np.array([10.0, 20.0, 30.0])
    tbl = Table({"VECTOR_ASSOC": [1, 1, 3], "X_IMAGE": [10.9, 10.1, 30.0],
                 "Y_IMAGE": [10.0, 10.0, 30.2], "FLUX_AUTO": [5.0, 7.0, 9.0]})
    out = ev._assoc_columns(tbl, x, y, {"flux": "FLUX_AUTO"})
    np.testing.assert_array_equal(out["flux"], [7.0, np.nan, 9.0])


def test_detection_threshold_matches_seps_matched_filter():
    assert ev.detection_threshold(np.full((4, 4), 10.0)) == pytest.approx(1.2 * 10 * 0.375)
