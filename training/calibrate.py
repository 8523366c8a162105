"""
Post-hoc sigma calibration of an exported model on validation frames.

    python -m training.calibrate --model models/asidfe_tsmve_v3 --data runs/data_v1 \
        [--n-frames 300]

Runs `MLPhotometry` (the user's code path: raw frame, gain, the package's own
background, stamps, onnxruntime) with the network's *uncalibrated* sigmas on
the validation frames of the training data's recipe (re-simulated from its
seed, as `training.evaluate` does with the test frames), standardises the
residuals ``z = (prediction - truth) / sigma`` and fits, per target, one
factor per bin of the stamps' *core S/N* (`asidfe_phot._stamps.core_snr`:
measured on the data, so it follows the true S/N, where the network's
predicted S/N levels off near 30) that makes the bin's z spread 1. The
factors go into the model card (``sigma_calibration``); `MLPhotometry`
applies them (`asidfe_phot._stamps.calibrate_sigmas`). The validation frames
are not the test frames, so the test metrics stay an honest check.

The spread is the standard deviation of z with |z| clipped at ``clip`` (a
blend whose flux is wrong by 30 sigma is not noise, and would set the factor
of its whole bin). With tails heavier than Gaussian, a standard deviation of
1 puts more than 68 % of the sources within 1 sigma; the z-std is what the
paper, and users comparing catalogues, read.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

TARGETS = ("dx", "dy", "flux")


def predict_frames(model_dir, data, n_frames=300, jobs=1, log=print):
    """
    Uncalibrated MLPhotometry results and truths on ``n_frames`` validation frames.

    Returns ``pred`` (``dx, dy, flux`` and their ``_err``; positions in
    frame pixels, which leaves the residuals unchanged) and ``truth``.
    """
    from training import evaluate

    results = evaluate.measure_frames(model_dir, data, n_frames, log=log, methods=["ml"],
                                      jobs=jobs, split="val", calibrated=False)
    results = results[evaluate.usable(results, "ml")]

    def column(name):
        return np.asarray(results[name], dtype=float)

    pred = {"dx": column("x_ml"), "dy": column("y_ml"), "flux": column("flux_ml"),
            "dx_err": column("x_err_ml"), "dy_err": column("y_err_ml"),
            "flux_err": column("flux_err_ml"), "snr_core": column("snr_core_ml")}
    truth = {"dx": column("x_true"), "dy": column("y_true"), "flux": column("flux_true")}
    return pred, truth


def _spread(z, clip):
    z = z[np.isfinite(z)]
    return float(np.sqrt(np.mean(np.square(np.clip(z, -clip, clip)))))


def fit_sigma_calibration(pred, truth, n_bins=12, clip=10.0):
    """Factors per target at knots in log10 core S/N (equal-count bins)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_snr = np.log10(pred["snr_core"])
    ok = np.isfinite(log_snr)
    edges = np.quantile(log_snr[ok], np.linspace(0, 1, n_bins + 1))
    z = {t: (pred[t] - truth[t]) / pred[f"{t}_err"] for t in TARGETS}
    knots, factors = [], {t: [] for t in TARGETS}
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = ok & (log_snr >= lo) & (log_snr <= hi)
        knots.append(float(np.median(log_snr[k])))
        for t in TARGETS:
            factors[t].append(_spread(z[t][k], clip))
    return {"log10_core_snr": knots, **factors, "n_bins": n_bins, "clip": clip,
            "method": "per core-S/N bin: the std of z clipped at |z| = clip; linear "
                      "interpolation in log10 core S/N, clamped"}


def calibrate(model_dir, data, n_frames=300, jobs=1, log=print):
    """
    Fit on validation frames, write it into the card; returns the calibration.

    ``data``: a data set folder (or None: the card's recipe), or a list of them, which
    share ``n_frames`` equally.
    """
    from training.export import update_card

    data_sets = data if isinstance(data, (list, tuple)) else [data]
    per_set = max(1, n_frames // len(data_sets))
    parts = [predict_frames(model_dir, d, per_set, jobs, log) for d in data_sets]
    pred = {k: np.concatenate([p[k] for p, _ in parts]) for k in parts[0][0]}
    truth = {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]}
    calibration = fit_sigma_calibration(pred, truth)
    calibration["fitted_on"] = (f"MLPhotometry on {per_set * len(data_sets)} validation frames "
                                f"({len(data_sets)} recipe(s)), {len(truth['flux'])} sources")
    update_card(model_dir, {"sigma_calibration": calibration})
    log(json.dumps({t: [round(f, 3) for f in calibration[t]] for t in TARGETS}))
    return calibration


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=None,
                        help="data set folder (its index.json); several, comma-separated, "
                             "share the frames; default: the model card's recipe")
    parser.add_argument("--n-frames", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    data = None if args.data is None else args.data.split(",")
    calibrate(Path(args.model), data, args.n_frames, args.jobs)


if __name__ == "__main__":
    main()
