"""The synthetic side-by-side evaluation (evaluation.synthetic) on one small re-simulated frame."""

import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from evaluation import baselines as classical
from evaluation import reference_tools as rt
from evaluation import report
from evaluation import synthetic as ev
from training import simulate as simulate_mod

HAS_SEX = bool(shutil.which("source-extractor") or shutil.which("sex"))
HAS_PSFEX = HAS_SEX and bool(shutil.which("psfex"))
#: Seed 5 makes test frame 4 (of 5) a sparse 256x256 frame with ~90 stars, ~20 of S/N > 50.
INDEX = {"preset": "generic", "seed": 5, "n_frames": 5, "frame_shape": [256, 256],
         "families": ["gaussian", "moffat", "double_gaussian"]}


def _packaged_model_error():
    """Why the packaged model does not load (e.g. an older preprocessing contract), or None."""
    from asidfe_phot import MLPhotometry
    from asidfe_phot.exceptions import ModelError

    try:
        MLPhotometry()
    except ModelError as exc:
        return str(exc)
    return None


ML_ERROR = _packaged_model_error()
needs_ml = pytest.mark.skipif(ML_ERROR is not None, reason=f"packaged model: {ML_ERROR}")


@pytest.fixture(scope="module", name="data")
def fixture_data(tmp_path_factory):
    """measure_frames only reads index.json: the frames are re-simulated from its seed."""
    out = tmp_path_factory.mktemp("data")
    (out / "index.json").write_text(json.dumps(INDEX))
    return out


@pytest.fixture(scope="module", name="results")
def fixture_results(data):
    """Every installed method on the one test frame (packaged model for 'ml', if it loads)."""
    methods = None
    if ML_ERROR is not None:
        methods = [m for m in ev.resolve_methods(None, log=lambda *a: None) if m != "ml"]
    return ev.measure_frames(None, data, n_frames=1, log=lambda *a: None, methods=methods)


def test_all_methods_present(results):
    expected = ["ml", "mlpsf", "mlauto", "sep", "aper", "psf"]
    if HAS_SEX:
        expected.insert(5, "sex")
    if HAS_PSFEX:
        expected.insert(6, "psfex")
    if ML_ERROR is not None:
        for m in ("ml", "mlpsf", "mlauto"):
            expected.remove(m)
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
        assert np.median(rel) < 0.05, m
        if m == "sep":
            # Neighbours masked: no Kron aperture swallows one (unmasked, one of these
            # stars came out 5.2 times too bright).
            assert np.all(rel < 0.1)
        if m in ev.POSITION_METHODS:
            d = np.hypot(r[f"x_{m}"][ok] - r["x_true"][ok], r[f"y_{m}"][ok] - r["y_true"][ok])
            # 0-based everywhere: a 1-based catalogue would be 1.4 px off.
            assert np.median(d) < 0.05, m
            assert np.all(d < 0.5), m


@pytest.mark.skipif(not HAS_PSFEX, reason="SourceExtractor or PSFEx not installed")
def test_psfex_fluxes_are_aperture_corrected(results):
    corr = np.unique(results["aperture_correction_psfex"])
    assert corr.size == 1 and 1.0 <= corr[0] < 1.5


@needs_ml
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
    paths = report.write_method_tables(metrics, tmp_path / "metrics")
    assert [p.name for p in paths] == [f"metrics_{k}.rst" for k in
                                       ("flux", "position", "calibration", "crlb", "failures")]
    flux = Table.read(tmp_path / "metrics_flux.rst", format="ascii.rst")
    assert flux.colnames == ["S/N", "N", *(report.SHORT[m] for m in methods)]
    bins = report.wins(metrics)
    assert len(bins) == len(metrics)
    assert set(bins[-1]["flux_mare_lower"]) == set(methods) - {"ml"}
    assert "init" in bins[-1]["pos_mae_lower"] and "sep" not in bins[-1]["pos_mae_lower"]
    report.plot_metrics(metrics, tmp_path / "metrics.png", title="test")
    assert (tmp_path / "metrics.png").stat().st_size > 10_000


def test_split_by_crowding(results):
    fake = results.copy()
    half = len(fake) // 2
    fake["stars_per_beam"][:half] = 0.5
    fake["stars_per_beam"][half:] = 0.1
    parts = ev.split_by_crowding(fake, 0.2)
    assert len(parts["crowded"]) == half and len(parts["sparse"]) == len(fake) - half
    assert len(parts["all"]) == len(fake)


@needs_ml
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
    # The frames' progress (with its ETA) comes through the same log, first.
    assert printed.startswith("measure test: 1/1 frames (100%), done in ")
    assert "\nseconds per frame: ml " in printed
    printed = json.loads(printed[printed.index("\n[") + 1:])
    assert printed[0]["snr_lo"] == ev.SNR_BINS[0]
    with pytest.raises(ValueError, match="unknown methods"):
        ev.resolve_methods("ml,daophot")


@needs_ml
def test_parallel_frames_give_the_same_results(tmp_path):
    """jobs > 1 measures frames in worker processes: same rows, same order, same numbers."""
    index = dict(INDEX, n_frames=20)
    (tmp_path / "index.json").write_text(json.dumps(index))
    test_frames = [f for f in range(20) if simulate_mod.split_of(f) == "test"]
    assert len(test_frames) >= 2

    def run(jobs):
        return ev.measure_frames(None, tmp_path, n_frames=2, log=lambda *a: None,
                                 methods=["ml", "sep", "aper"], jobs=jobs)

    serial, parallel = run(1), run(2)
    assert list(np.unique(parallel["frame"])) == test_frames[:2]
    assert serial.colnames == parallel.colnames and len(serial) == len(parallel)
    for name in serial.colnames:
        # The network runs multi-threaded in one, single-threaded in the other.
        np.testing.assert_allclose(np.asarray(parallel[name], float),
                                   np.asarray(serial[name], float), rtol=1e-5, err_msg=name)
    assert parallel.meta["timings"].keys() == serial.meta["timings"].keys()


def test_parallel_frames_with_a_bad_model_fail_at_once(data, tmp_path):
    """The model is resolved before any worker starts: a clear error, not a hung pool."""
    from asidfe_phot.exceptions import ModelError

    with pytest.raises(ModelError):
        ev.measure_frames(tmp_path / "no_model", data, n_frames=1, log=lambda *a: None,
                          methods=["ml"], jobs=2)


def test_missing_source_extractor_is_skipped_unless_asked(monkeypatch):
    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    messages = []
    assert ev.resolve_methods(None, log=messages.append) == ["ml", "mlpsf", "mlauto", "sep",
                                                             "aper", "psf"]
    assert "skipping sex, psfex" in messages[0]
    with pytest.raises(rt.ToolNotFoundError):
        ev.resolve_methods("ml,sex")


def test_assoc_columns_keep_the_closest_detection():
    x = np.array([10.0, 20.0, 30.0])
    y = np.array([10.0, 20.0, 30.0])
    tbl = Table({"VECTOR_ASSOC": [1, 1, 3], "X_IMAGE": [10.9, 10.1, 30.0],
                 "Y_IMAGE": [10.0, 10.0, 30.2], "FLUX_AUTO": [5.0, 7.0, 9.0]})
    out = classical._assoc_columns(tbl, x, y, {"flux": "FLUX_AUTO"})
    np.testing.assert_array_equal(out["flux"], [7.0, np.nan, 9.0])


def test_sep_segmentation_repeats_the_simulators_detection(data):
    index = json.loads((data / "index.json").read_text())
    seeds = simulate_mod.frame_seeds(index["seed"], index["n_frames"])
    frame_id = 4
    assert simulate_mod.split_of(frame_id) == "test"
    _, _, frame = simulate_mod.simulate_frame(frame_id, int(seeds[frame_id]), index["preset"],
                                              tuple(index["families"]),
                                              tuple(index["frame_shape"]), return_frame=True)
    det = frame["detections"]
    objects, segmap = classical.sep_segmentation(frame["image"] - frame["background"], frame["rms"])
    np.testing.assert_array_equal(objects["x"], det["x"])
    np.testing.assert_array_equal(objects["y"], det["y"])
    assert segmap.shape == frame["image"].shape and segmap.max() == len(det)
    ids, dist = classical.segmentation_ids(objects, det["x"][::-1], det["y"][::-1])
    np.testing.assert_array_equal(ids, np.arange(len(det), 0, -1))
    assert np.all(dist == 0)


def test_sep_flux_auto_masks_a_bright_neighbour():
    """A star 10 px (3.3 FWHM) from one 20 times brighter: the segmentation map saves it."""
    from asidfe_phot.datasets import make_star_field

    sky, read_noise = 200.0, 5.0
    image, truth, meta = make_star_field((48, 48), positions=([19.0, 29.0], [24.0, 24.5]),
                                         fluxes=[2e4, 4e5], sky=sky, read_noise=read_noise,
                                         seed=1)
    sub = (image - meta["background"]).astype(np.float32)
    rms = np.full(image.shape, np.sqrt(sky + read_noise**2) / meta["gain"], np.float32)
    objects, segmap = classical.sep_segmentation(sub, rms)
    assert len(objects) == 2
    ids, dist = classical.segmentation_ids(objects, truth["x"], truth["y"])
    assert np.all(dist < 1)
    o = objects[ids - 1]
    sub = sub.astype(np.float64)
    plain, _ = classical._sep_flux_auto(sub, o, rms, meta["gain"])
    masked, err = classical._sep_flux_auto(sub, o, rms, meta["gain"], segmap=segmap, seg_id=ids)
    rel_plain = np.abs(plain / truth["flux"] - 1)
    rel_masked = np.abs(masked / truth["flux"] - 1)
    # Unmasked, the faint star's Kron aperture swallows the neighbour (~20 times its flux).
    assert rel_plain[0] > 5
    assert rel_masked[0] < 0.1
    assert rel_masked[0] < rel_plain[0]
    # The bright star loses no more than a little of its own light under the faint one's segment.
    assert rel_masked[1] < 0.1
    assert np.all(err > 0)


def test_detection_threshold_matches_seps_matched_filter():
    assert classical.detection_threshold(np.full((4, 4), 10.0)) == pytest.approx(1.2 * 10 * 0.375)


def test_performance_page_summary_from_the_numbers():
    from astropy.table import QTable

    from evaluation import performance_page as pp

    def entry(snr, n, flux, pos):
        return {"snr": snr, "n": n,
                "flux_mare_lower": {m: (r < 1 if r else None) for m, r in flux.items()},
                "flux_mare_ratio": flux,
                "pos_mae_lower": {m: (r < 1 if r else None) for m, r in pos.items()},
                "pos_mae_ratio": pos}

    bins = [entry("3-5", 10, {"sep": 0.5, "sex": 1.2}, {"init": 0.8, "sex": 1.004}),
            entry("5-10", 20, {"sep": 0.25, "sex": 0.9}, {"init": 0.5, "sex": 0.7}),
            entry(">1000", 0, {"sep": None, "sex": None}, {"init": None, "sex": None})]
    wins = {"crowding_threshold": 0.2,
            "subsets": {"all": {"frames": 3, "sources": 1234, "bins": bins,
                                "bins_won": {"flux_mare": {"sep": "2/2", "sex": "1/2"}}},
                        "sparse": {"frames": 3, "sources": 1234, "bins": bins,
                                   "bins_won": {"flux_mare": {"sep": "2/2", "sex": "1/2"}}},
                        "crowded": {"frames": 0, "sources": 0, "bins": [],
                                    "bins_won": {"flux_mare": {}}}}}
    metrics = QTable({"snr_lo": [3.0, 5.0, 1000.0], "snr_hi": [5.0, 10.0, np.inf],
                      "n": [10, 20, 0], "flux_zstd_ml": [0.95, 1.3, np.nan],
                      "flux_cov68_ml": [0.7, 0.5, np.nan], "x_zstd_ml": [0.8, 0.85, np.nan],
                      "x_cov68_ml": [0.8, 0.79, np.nan], "y_zstd_ml": [1.0, 1.05, np.nan],
                      "y_cov68_ml": [0.66, 0.7, np.nan]})
    text = pp.summary_rst(wins, metrics, "asidfe_tsmve_v9")
    assert text.startswith("**Where asidfe_tsmve_v9 wins and where it loses** (3 test frames, "
                           "1,234 sources;")
    assert ("*Against sep FLUX_AUTO.* ML's flux MARE lower in all 2 S/N bins "
            "(ML / method 0.25-0.50)." in text)
    assert ("ML's flux MARE lower in 1 of 2 S/N bins (5-10; ML / method 0.90), higher in 1 "
            "(ML / method 3-5: 1.2)" in text)
    # A ratio that would round to 1.0 keeps a third digit.
    assert "higher in 1 (ML / method 3-5: 1.004)" in text
    assert "ML / input 0.50-0.80" in text
    assert "flux 0.95-1.3, within [0.9, 1.1] in 1 of 2 bins: 3-5" in text
    assert "x 0.80-0.85, in none of the 2 bins within [0.9, 1.1]" in text
    assert "y 1.0-1.1, within [0.9, 1.1] in all 2 bins" in text
    assert "cov68, 0.68 for calibrated errors): flux 0.50-0.70" in text
    assert "sparse frames (3 frames, 1,234 sources)" in text and "crowded frames (" not in text
    assert ">1000" not in text


def test_performance_page_calibration_figure(tmp_path):
    from evaluation import performance_page as pp

    rng = np.random.default_rng(0)
    n = 200
    tbl = Table({"snr": rng.uniform(1, 100, n), "x_true": rng.uniform(0, 50, n),
                 "y_true": rng.uniform(0, 50, n), "flux_true": rng.uniform(100, 1000, n)})
    for c, err in (("x", 0.1), ("y", 0.1), ("flux", 20.0)):
        tbl[f"{c}_err_ml"] = np.full(n, err)
        tbl[f"{c}_ml"] = tbl[f"{c}_true"] + rng.normal(0, err, n)
    tbl.write(tmp_path / "results.ecsv")
    assert pp.write_calibration_figure(tmp_path / "results.ecsv", tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    tbl.remove_column("flux_ml")
    tbl.write(tmp_path / "no_ml.ecsv")
    assert not pp.write_calibration_figure(tmp_path / "no_ml.ecsv", tmp_path / "none.png")


def test_data_recipe_from_index_or_model_card(tmp_path):
    from evaluation.synthetic import data_recipe

    card = data_recipe(tmp_path / "missing")  # no data set: the packaged model's recipe
    for key in ("preset", "seed", "n_frames", "families", "frame_shape"):
        assert key in card
    (tmp_path / "index.json").write_text(json.dumps({"seed": 5, "n_frames": 3}))
    assert data_recipe(tmp_path) == {"seed": 5, "n_frames": 3}


@needs_ml
def test_write_card_records_the_metrics_under_a_key(data, tmp_path):
    """The test metrics reach the card from here, not from training.pipeline."""
    import shutil

    from asidfe_phot.models import model_path

    model = tmp_path / "model"
    shutil.copytree(model_path(None), model)
    ev.main(["--model", str(model), "--data", str(data), "--n-frames", "1", "--out",
             str(tmp_path / "eval"), "--methods", "ml", "--write-card", "--card-key",
             "test_metrics_broad"])
    card = json.loads((model / "config.json").read_text())
    assert card["test_metrics_broad"][0]["snr_lo"] == ev.SNR_BINS[0]
    assert "flux_mare_ml" in card["test_metrics_broad"][0]
