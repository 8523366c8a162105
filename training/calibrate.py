"""
Post-hoc sigma calibration of an exported model on the validation split.

    python -m training.calibrate --model models/asidfe_tsmve_v2 --data runs/data_v1

Runs the shipped ONNX file (the inference code path: `asidfe_phot._stamps`
and onnxruntime) on validation stamps, standardises the residuals
``z = (prediction - truth) / sigma`` and fits, per target, one factor per
bin of *predicted* flux S/N that makes the bin's z spread 1. The factors
go into the model card (``sigma_calibration``); `MLPhotometry` applies them
(`asidfe_phot._stamps.calibrate_sigmas`). The validation frames are not the
test frames, so the test metrics stay an honest check.

The spread is measured as the mean of two estimates: the standard deviation
of z with |z| clipped at ``clip`` (blends with a wrong flux are not noise) and
the half-width of the central 68.27 % of z (what coverage needs); they differ
when the tails are heavier than Gaussian.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from asidfe_phot import _onnx, _stamps
from asidfe_phot.models import verify_model
from training.data import StampSet

TARGETS = ("dx", "dy", "flux")


def predict_split(model_dir, data, split="val", limit=200_000, batch=4096):
    """Decoded, *uncalibrated* predictions and the truths of a split's stamps (central crops)."""
    directory, card = verify_model(model_dir)
    session = _onnx.create_session(directory / card.get("file", "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    stamps = StampSet(data, split, limit=limit)
    parts = []
    for start in range(0, len(stamps), batch):
        idx = np.arange(start, min(start + batch, len(stamps)))
        inputs, _, unit = stamps.batch(idx)
        parts.append(_stamps.decode_outputs(_onnx.run(session, inputs), unit))
    pred = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    truth = {"dx": stamps.meta["true_dx"], "dy": stamps.meta["true_dy"],
             "flux": stamps.meta["flux"]}
    return pred, truth, stamps.meta


def _spread(z, clip):
    z = z[np.isfinite(z)]
    clipped_std = np.sqrt(np.mean(np.square(np.clip(z, -clip, clip))))
    half_width_68 = np.quantile(np.abs(z), 0.6827)
    return 0.5 * (clipped_std + half_width_68)


def fit_sigma_calibration(pred, truth, n_bins=12, clip=5.0):
    """Factors per target at knots in log10 predicted flux S/N (equal-count bins)."""
    # The same S/N the inference side interpolates in (before calibration).
    log_snr = _stamps.predicted_log_snr(pred)
    ok = np.isfinite(log_snr)
    edges = np.quantile(log_snr[ok], np.linspace(0, 1, n_bins + 1))
    z = {t: (pred[t] - truth[t]) / pred[f"{t}_err"] for t in TARGETS}
    knots, factors = [], {t: [] for t in TARGETS}
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = ok & (log_snr >= lo) & (log_snr <= hi)
        knots.append(float(np.median(log_snr[k])))
        for t in TARGETS:
            factors[t].append(float(_spread(z[t][k], clip)))
    return {"log10_snr": knots, **factors, "n_bins": n_bins, "clip": clip,
            "method": "per predicted-S/N bin: mean of the clipped z std and the 68.27 % "
                      "half-width of |z|; linear interpolation in log10 S/N, clamped"}


def calibrate(model_dir, data, limit=200_000, log=print):
    """Fit on the validation split, write it into the card; returns the calibration."""
    from training.export import update_card

    pred, truth, _ = predict_split(model_dir, data, "val", limit)
    calibration = fit_sigma_calibration(pred, truth)
    calibration["fitted_on"] = f"validation split, {len(truth['flux'])} stamps (central crops)"
    update_card(model_dir, {"sigma_calibration": calibration})
    log(json.dumps({t: [round(f, 3) for f in calibration[t]] for t in TARGETS}))
    return calibration


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=200_000)
    args = parser.parse_args(argv)
    calibrate(Path(args.model), args.data, args.limit)


if __name__ == "__main__":
    main()
