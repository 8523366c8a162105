"""The transfer-learning study's real target (the NTT frame and its catalogue) on a cut of it."""

import json
import warnings

import numpy as np
import pytest

from training import real_target, transfer_study
from training.data import StampSet


def test_split_keeps_training_stamps_away_from_the_test_tiles():
    rng = np.random.default_rng(3)
    shape = (400, 600)
    x, y = rng.uniform(0, 600, 3000), rng.uniform(0, 400, 3000)
    target = {"blocks": 4, "test_fraction": 0.4, "val_fraction": 0.2, "seed": 5}
    split = real_target.split_rows(x, y, shape, target)
    assert np.array_equal(split, real_target.split_rows(x, y, shape, target))  # seeded
    counts = {s: int(np.count_nonzero(split == s)) for s in ("train", "val", "test", "")}
    assert all(counts.values())
    assert 0.3 < counts["test"] / x.size < 0.5
    assert 0.15 < counts["val"] / (counts["train"] + counts["val"]) < 0.25
    # No training (or validation) stamp, with its crop margin, reaches a test source's pixel.
    px, py = (np.floor(v + 0.5) for v in (x, y))
    test = split == "test"
    for s in ("train", "val"):
        sel = split == s
        gap = np.maximum(np.abs(px[sel, None] - px[None, test]),
                         np.abs(py[sel, None] - py[None, test]))
        assert gap.min() > 18


@pytest.fixture(name="study", scope="module")
def fixture_study(tmp_path_factory):
    root = real_target.real_data_dir()
    if not (root / real_target.FRAME).exists():
        pytest.skip(reason=f"real frames not found at {root}; set "
                           f"{real_target.REAL_DATA_VARIABLE} to the project's shared/real")
    out = tmp_path_factory.mktemp("real_study")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the cut's ePSF has few stars: it says so
        results = transfer_study.run(out, transfer_study.REAL_QUICK, log=lambda *a: None)
    return out, results


def test_real_stamps_carry_the_catalogue_labels_on_our_flux_scale(study):
    out, results = study
    data = out / "data_real"
    index = json.loads((data / "index.json").read_text())
    reference = json.loads((data / "reference.json").read_text())
    k = index["flux_scale"]
    assert 0.8 < k < 1.25 and index["flux_scale_rows"] >= 5
    _, cat = real_target.load_target(transfer_study.REAL_QUICK["target"])
    row = {int(n): i for i, n in enumerate(cat["NUMBER"])}
    for split in ("train", "val", "test"):
        meta = StampSet(data, split).meta
        i = np.array([row[n] for n in reference[split]["number"]])
        # 0-based positions of the PSF fit, on the cut's pixels; flux = k * FLUX_PSF.
        np.testing.assert_allclose(meta["x_frame"], cat["XPSF_IMAGE"][i], atol=1e-3)
        np.testing.assert_allclose(meta["y_frame"], cat["YPSF_IMAGE"][i], atol=1e-3)
        np.testing.assert_allclose(meta["flux"], k * cat["FLUX_PSF"][i], rtol=1e-5)
        assert np.all(np.abs(meta["true_dx"]) < 1.5) and np.all(np.abs(meta["true_dy"]) < 1.5)
    assert results["reference"]["counts"] == {s: v["count"] for s, v in index["splits"].items()}


def test_real_study_runs_every_mode_against_the_reference_and_resumes(study):
    out, results = study
    assert list(results["modes"]) == list(transfer_study.MODES)
    for mode, m in results["modes"].items():
        assert (m["samples"] > 0) == (not mode.startswith("direct"))
        for key in ("dx", "dy", "flux"):
            assert m[f"contest_{key}"] in ("Rejected", "Not Rejected")
            assert m[f"contest_both_{key}"] in ("Rejected", "Not Rejected")
            # Adding the reference's errors can only lower the statistic.
            assert m[f"contest_both_t_{key}"] <= m[f"contest_t_{key}"] + 1e-12
            assert -1 <= m[f"pearson_{key}"] <= 1
    # The shipped network on the held-out point-like stars agrees with the PSF fit: the
    # scale fitted on the training rows holds there (stamps and labels are aligned).
    direct = results["modes"]["direct"]
    assert abs(direct["point_flux_ratio_median"] - 1) < 0.1
    assert direct["point_pearson_flux"] > 0.99
    table = (out / "study.rst").read_text()
    assert "Against the reference" in table
    assert all(mode in table for mode in transfer_study.MODES)
    again = transfer_study.run(out, transfer_study.REAL_QUICK, log=lambda *a: None)
    for mode in transfer_study.MODES:
        assert again["modes"][mode]["pearson_flux"] == results["modes"][mode]["pearson_flux"]
        assert again["modes"][mode]["cpu_minutes"] == results["modes"][mode]["cpu_minutes"]


def test_report_marks_one_row_bins_and_is_valid_rst():
    import io

    import docutils.core

    bins = [{"snr": "3-10", "n": 1, "flux_mare": 0.5, "position_mae": 0.2, "z_std_flux": 0.0,
             "z_std_x": 0.0},
            {"snr": "10-30", "n": 40, "flux_mare": 0.1, "position_mae": 0.1,
             "z_std_flux": 0.9, "z_std_x": 1.1}]
    mode = {"pearson_dx": 0.9, "pearson_dy": 0.8, "pearson_flux": 0.99, "samples": 10,
            "cpu_minutes": 0.5, "n_point": 3, "flux_ratio_median": 1.1,
            "point_flux_ratio_median": 1.0, "bins": bins}
    for key in ("dx", "dy", "flux"):
        mode.update({f"contest_{key}": "Rejected", f"contest_both_{key}": "Not Rejected",
                     f"contest_t_{key}": 1.5, f"contest_both_t_{key}": 1.2,
                     f"point_pearson_{key}": 0.99, f"point_contest_{key}": "Not Rejected",
                     f"point_contest_t_{key}": 0.9})
    results = {"n_test_stamps": 41, "reference": {}, "modes": {"direct": mode,
                                                                "scratch": dict(mode)}}
    text = transfer_study.report(results)
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
    assert "0.500/0.200/-/-" in rows["3-10"] and "0.100/0.100/0.90/1.10" in rows["10-30"]
    assert "1.50/1.50/1.50 1.20/1.20/1.20 NR/NR/NR" in text
    errors = io.StringIO()
    docutils.core.publish_doctree(text, settings_overrides={"warning_stream": errors,
                                                            "report_level": 1})
    assert errors.getvalue() == ""


def test_daophot_labels_are_matched_to_the_detections(tmp_path):
    # A small ALLSTAR list against a small SourceExtractor table: mutual nearest within
    # 1.5 px, the flux from the magnitude, the position error unknown.
    cat = {"NUMBER": np.array([1.0, 2.0, 3.0, 4.0]),
           "X_IMAGE": np.array([10.0, 20.0, 30.0, 30.8]),
           "Y_IMAGE": np.array([10.0, 20.0, 30.0, 30.0]),
           "FLAGS": np.zeros(4), "SPREAD_MODEL": np.zeros(4)}
    allstar = tmp_path / "allstar.txt"
    # 1-based centres: star 1 matches row 1 (0.3 px), star 2 none (3 px off), star 3 lies
    # between rows 3 and 4 and is the nearest of row 4 only; MERR 9.99 is a failed star.
    allstar.write_text("1 11.3 11.0 15.0 0.01 0 1 0\n"
                       "2 24.0 21.0 16.0 0.02 0 1 0\n"
                       "3 31.6 31.0 17.0 0.05 0 1 0\n"
                       "4 41.0 41.0 18.0 9.99 0 1 0\n")
    labels = real_target.daophot_labels(allstar, cat)
    assert list(labels["NUMBER"]) == [1.0, 4.0]
    np.testing.assert_allclose(labels["XPSF_IMAGE"], [10.3, 30.6])
    np.testing.assert_allclose(labels["FLUX_PSF"], [10**4, 10**3.2])
    np.testing.assert_allclose(labels["FLUXERR_PSF"] / labels["FLUX_PSF"],
                               np.array([0.01, 0.05]) * np.log(10) / 2.5)
    assert np.isnan(labels["ERRX2PSF_IMAGE"]).all()
    # The first is too near the edge for a stamp; no SPREAD_MODEL cut for DAOPHOT labels.
    assert list(real_target.select_rows(labels, (64, 64))) == [1]
