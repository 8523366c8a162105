"""
The one S/N binning and the metric definitions every evaluation uses.

A source's bin is its true S/N (the simulator's, or the injected star's);
the bins are `SNR_BINS`. Metrics are NaN-aware: a method that gave no value
for a source is left out of that metric (failures are counted separately
by the callers).
"""

import numpy as np

# The package's bins (its artificial-star summaries use them too): one definition.
from asidfe_phot.artificial_stars import SNR_BINS

__all__ = ["SNR_BINS", "bin_label", "snr_bins", "relative_errors", "mare", "median_bias",
           "mae", "z_scores", "calibration"]


def bin_label(lo, hi):
    """``"3-5"``, ..., ``">1000"``."""
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"


def snr_bins(snr, bins=SNR_BINS):
    """``(lo, hi, mask)`` of each bin: ``lo <= snr < hi``."""
    snr = np.asarray(snr, dtype=float)
    for lo, hi in zip(bins[:-1], bins[1:]):
        yield lo, hi, (snr >= lo) & (snr < hi)


def relative_errors(measured, true):
    """``measured / true - 1``."""
    return np.asarray(measured, dtype=float) / np.asarray(true, dtype=float) - 1


def mare(measured, true):
    """Mean absolute relative error (NaN values left out)."""
    return float(np.nanmean(np.abs(relative_errors(measured, true))))


def median_bias(measured, true):
    """Median relative error (NaN values left out)."""
    return float(np.nanmedian(relative_errors(measured, true)))


def mae(residuals):
    """Mean absolute error (NaN values left out)."""
    return float(np.nanmean(np.abs(np.asarray(residuals, dtype=float))))


def z_scores(residuals, errors):
    """``residuals / errors``: the z-scores of calibrated errors have std 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(residuals, dtype=float) / np.asarray(errors, dtype=float)


def calibration(residuals, errors):
    """
    How well errors describe residuals: the z-score std (``zstd``, 1 when calibrated) and
    the fractions within 1 and 2 sigma (``cov68``, ``cov95``: 0.68 and 0.95 for Gaussian
    errors), over the finite z-scores.
    """
    z = z_scores(residuals, errors)
    z = z[np.isfinite(z)]
    if not z.size:
        return {"zstd": np.nan, "cov68": np.nan, "cov95": np.nan}
    return {"zstd": float(np.std(z)), "cov68": float(np.mean(np.abs(z) < 1)),
            "cov95": float(np.mean(np.abs(z) < 2))}
