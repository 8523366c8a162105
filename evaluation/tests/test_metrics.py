"""The one S/N binning and the metric definitions (evaluation.metrics)."""

import numpy as np
import pytest

from evaluation import metrics


def test_bins_cover_each_source_once():
    snr = np.array([2.9, 3.0, 4.99, 5.0, 999.0, 1000.0, 1e6])
    counts = np.zeros(snr.size, int)
    labels = []
    for lo, hi, mask in metrics.snr_bins(snr):
        counts += mask
        labels.append(metrics.bin_label(lo, hi))
    assert counts.tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert labels[0] == "3-5" and labels[-1] == ">1000"


def test_calibration_of_gaussian_errors():
    rng = np.random.default_rng(1)
    err = rng.uniform(0.5, 2.0, 20_000)
    cal = metrics.calibration(rng.normal(0.0, err), err)
    assert cal["zstd"] == pytest.approx(1.0, abs=0.02)
    assert cal["cov68"] == pytest.approx(0.683, abs=0.01)
    assert cal["cov95"] == pytest.approx(0.954, abs=0.01)
    assert metrics.calibration(rng.normal(0.0, err), err / 2)["zstd"] == pytest.approx(
        2.0, abs=0.05)


def test_nan_values_are_left_out():
    measured = np.array([1.1, np.nan, 0.9])
    true = np.ones(3)
    assert metrics.mare(measured, true) == pytest.approx(0.1)
    assert metrics.median_bias(measured, true) == pytest.approx(0.0)
    assert metrics.mae([np.nan, -2.0]) == 2.0
    cal = metrics.calibration([1.0, np.nan, 1.0], [1.0, 1.0, 0.0])
    assert cal["zstd"] == 0.0 and cal["cov68"] == 0.0
    assert np.isnan(metrics.calibration([np.nan], [1.0])["zstd"])
