"""
Post-hoc flux-bias correction and sigma calibration of an exported model.

First the flux-bias correction: a network trained on a population of stars
pulls a faint star's flux toward that population's typical flux (+20 to
+50 % at core S/N 1-5). On simulated fields of stars at known positions (no
detection selection, S/N log-uniform; `unselected_stars`) the median true /
predicted flux per core-S/N bin gives factors that undo that on average
(``flux_bias_correction`` in the card; `asidfe_phot._stamps.correct_flux_bias`).

    python -m training.calibrate --model models/asidfe_tsmve_v5 \
        [--data runs/v5/data_generic,runs/v5/data_broad] [--n-frames 150] [--bias-fields 20]

Runs `MLPhotometry` (the user's code path: raw frame, gain, the package's own
background, stamps, onnxruntime) with the network's *uncalibrated* sigmas on
the validation frames of the training data's recipe (re-simulated from its
seed, `training.frames`, as `evaluation.synthetic` does with the test frames), standardises the
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


def predict_frames(model_dir, data, n_frames=300, jobs=1, log=print, method="ml"):
    """
    Uncalibrated MLPhotometry results and truths on ``n_frames`` validation frames.

    ``method``: ``"ml"`` (the network alone) or ``"mlpsf"`` (with the frame's true PSF
    as ``psf_model``: the outputs of the PSF mode, fit or network).

    Returns ``pred`` (``dx, dy, flux`` and their ``_err``; positions in
    frame pixels, which leaves the residuals unchanged) and ``truth``.
    """
    from . import frames

    results = frames.measure_frames(model_dir, data, n_frames, log=log, methods=[method],
                                    jobs=jobs, split="val", calibrated=False)
    results = results[frames.usable(results, method)]

    def column(name):
        return np.asarray(results[name], dtype=float)

    m = method
    pred = {"dx": column(f"x_{m}"), "dy": column(f"y_{m}"), "flux": column(f"flux_{m}"),
            "dx_err": column(f"x_err_{m}"), "dy_err": column(f"y_err_{m}"),
            "flux_err": column(f"flux_err_{m}"), "snr_core": column(f"snr_core_{m}")}
    truth = {"dx": column("x_true"), "dy": column("y_true"), "flux": column("flux_true")}
    return pred, truth


def _spread(z, clip):
    z = z[np.isfinite(z)]
    return float(np.sqrt(np.mean(np.square(np.clip(z, -clip, clip)))))


def _core_snr_bins(snr_core, n_bins, ok=True):
    """Equal-count bins of log10 core S/N over the ``ok`` rows: (knot, row mask) per bin."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_snr = np.log10(snr_core)
    ok = ok & np.isfinite(log_snr)
    edges = np.quantile(log_snr[ok], np.linspace(0, 1, n_bins + 1))
    for lo, hi in zip(edges[:-1], edges[1:]):
        k = ok & (log_snr >= lo) & (log_snr <= hi)
        yield float(np.median(log_snr[k])), k


def fit_sigma_calibration(pred, truth, n_bins=12, clip=10.0):
    """Factors per target at knots in log10 core S/N (equal-count bins)."""
    z = {t: (pred[t] - truth[t]) / pred[f"{t}_err"] for t in TARGETS}
    knots, factors = [], {t: [] for t in TARGETS}
    for knot, k in _core_snr_bins(pred["snr_core"], n_bins):
        knots.append(knot)
        for t in TARGETS:
            factors[t].append(_spread(z[t][k], clip))
    return {"log10_core_snr": knots, **factors, "n_bins": n_bins, "clip": clip,
            "method": "per core-S/N bin: the std of z clipped at |z| = clip; linear "
                      "interpolation in log10 core S/N, clamped"}


def unselected_stars(model_dir, recipe, n_fields, seed, shape=(1024, 1024), n_stars=400):
    """
    Core S/N and predicted / true flux of stars at known positions (no detection).

    Each field draws its PSF, sky, gain and read noise as a frame of ``recipe``
    does (`training.simulate`), and ``n_stars`` stars with S/N log-uniform from
    1.5 to 3000, wherever they fall (some overlap, as in real fields); the inputs
    are the truths plus 0.3 px offsets. The network alone: no flux-bias
    correction, no aperture correction.
    """
    import warnings

    from astropy.table import Table

    from asidfe_phot import MLPhotometry
    from asidfe_phot.datasets import make_star_field

    from . import simulate

    phot = MLPhotometry(model=model_dir, aperture_correction=False, psf_model=None,
                        flux_bias_correction=False, diagnostics=True)
    rng = np.random.default_rng(seed)
    core, ratio = [], []
    for _ in range(n_fields):
        cond = simulate._draw_frame(rng, recipe["preset"], recipe["families"])
        x = rng.uniform(16, shape[1] - 17, n_stars)
        y = rng.uniform(16, shape[0] - 17, n_stars)
        psf = simulate._psf_at(cond, x, y, shape)
        # Flux for a target optimal S/N of a Gaussian-like core: F^2 = S^2 (A var + F).
        snr = 10 ** rng.uniform(np.log10(1.5), np.log10(3000), n_stars)
        area = 4 * np.pi * (psf["fwhm"] / simulate.FWHM_PER_SIGMA) ** 2
        var = cond["sky"] + cond["read_noise"] ** 2
        flux = 0.5 * (snr**2 + np.sqrt(snr**4 + 4 * snr**2 * area * var))
        image, truth, _ = make_star_field(shape, positions=(x, y), fluxes=flux, psf=psf,
                                          sky=cond["sky"], gain=cond["gain"],
                                          read_noise=cond["read_noise"],
                                          seed=int(rng.integers(2**31)))
        init = Table({"x": x + rng.normal(0, 0.3, n_stars), "y": y + rng.normal(0, 0.3, n_stars)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tbl = phot(image, init_params=init, gain=cond["gain"])
        ok = np.asarray(tbl["flags"]) == 0
        core.append(np.asarray(tbl["snr_core"])[ok])
        ratio.append(np.asarray(tbl["flux_fit"])[ok] / np.asarray(truth["flux"])[ok])
    return np.concatenate(core), np.concatenate(ratio)


def fit_flux_bias(snr_core, ratio, n_bins=12):
    """Factors (median true / predicted flux) at knots in log10 core S/N (equal-count bins)."""
    knots, factors = [], []
    for knot, k in _core_snr_bins(snr_core, n_bins, ok=np.isfinite(ratio)):
        knots.append(knot)
        factors.append(float(1.0 / np.median(ratio[k])))
    return {"log10_core_snr": knots, "factor": factors, "n_bins": n_bins,
            "method": "per core-S/N bin: 1 / median(predicted / true flux) of stars at known "
                      "positions; linear interpolation in log10 core S/N, clamped"}


def calibrate(model_dir, data, n_frames=300, jobs=1, log=print, bias_fields=40, seed=0,
              with_psf=False):
    """
    Fit the flux-bias correction and the sigma calibration, write them into the card.

    ``data``: a data set folder (or None: the card's recipe), or a list of them, which
    share ``n_frames`` validation frames and ``bias_fields`` fields of unselected stars
    (`unselected_stars`) equally. The sigma calibration is fitted on fluxes that are
    already bias-corrected. ``with_psf``: also the calibrations of the outputs with a
    PSF model (``sigma_calibration_psf``: fitted on the same frames measured with their
    true PSF; ``sigma_calibration_auto``: with ``psf_model="auto"``), applied by
    `MLPhotometry` after its PSF fit. Returns the sigma calibration.
    """
    from .export import update_card
    from .frames import data_recipe

    data_sets = data if isinstance(data, (list, tuple)) else [data]
    if bias_fields:
        stars = [unselected_stars(model_dir, data_recipe(d, model_dir),
                                  max(1, bias_fields // len(data_sets)), seed + k)
                 for k, d in enumerate(data_sets)]
        bias = fit_flux_bias(np.concatenate([c for c, _ in stars]),
                             np.concatenate([r for _, r in stars]))
        bias["fitted_on"] = (f"{bias_fields} fields of stars at known positions "
                             f"({len(data_sets)} recipe(s)), "
                             f"{sum(len(c) for c, _ in stars)} stars")
        update_card(model_dir, {"flux_bias_correction": bias})
        log("flux bias factors: " + json.dumps([round(f, 3) for f in bias["factor"]]))
    per_set = max(1, n_frames // len(data_sets))
    parts = [predict_frames(model_dir, d, per_set, jobs, log) for d in data_sets]
    pred = {k: np.concatenate([p[k] for p, _ in parts]) for k in parts[0][0]}
    truth = {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]}
    calibration = fit_sigma_calibration(pred, truth)
    calibration["fitted_on"] = (f"MLPhotometry on {per_set * len(data_sets)} validation frames "
                                f"({len(data_sets)} recipe(s)), {len(truth['flux'])} sources")
    update_card(model_dir, {"sigma_calibration": calibration})
    log(json.dumps({t: [round(f, 3) for f in calibration[t]] for t in TARGETS}))
    if with_psf:
        calibrate_psf(model_dir, data_sets, per_set * len(data_sets), jobs, log)
    return calibration


def calibrate_psf(model_dir, data, n_frames=300, jobs=1, log=print):
    """
    The calibrations of the PSF mode: ``sigma_calibration_psf`` (validation frames
    measured with their true PSF as ``psf_model``) and ``sigma_calibration_auto`` (with
    ``psf_model="auto"``), fitted as `fit_sigma_calibration` on the outputs as chosen
    (PSF fit or network) and written into the card.
    """
    from .export import update_card

    data_sets = data if isinstance(data, (list, tuple)) else [data]
    per_set = max(1, n_frames // len(data_sets))
    out = {}
    for method, key, what in (("mlpsf", "sigma_calibration_psf", "the true PSF"),
                              ("mlauto", "sigma_calibration_auto", 'psf_model="auto"')):
        parts = [predict_frames(model_dir, d, per_set, jobs, log, method=method)
                 for d in data_sets]
        pred = {k: np.concatenate([p[k] for p, _ in parts]) for k in parts[0][0]}
        truth = {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]}
        cal = fit_sigma_calibration(pred, truth)
        cal["fitted_on"] = (f"MLPhotometry with {what} on {per_set * len(data_sets)} "
                            f"validation frames, {len(truth['flux'])} sources")
        update_card(model_dir, {key: cal})
        out[key] = cal
        log(f"{method}: " + json.dumps({t: [round(f, 3) for f in cal[t]] for t in TARGETS}))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=None,
                        help="data set folder (its index.json); several, comma-separated, "
                             "share the frames; default: the model card's recipe")
    parser.add_argument("--n-frames", type=int, default=300)
    parser.add_argument("--bias-fields", type=int, default=40,
                        help="fields of stars at known positions for the flux-bias correction "
                             "(0: keep the card's)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--with-psf", action="store_true",
                        help="also the PSF mode's calibrations (true PSF and psf_model='auto')")
    parser.add_argument("--psf-only", action="store_true",
                        help="only the PSF mode's calibrations (e.g. after a change of the fit)")
    args = parser.parse_args(argv)
    data = None if args.data is None else args.data.split(",")
    if args.psf_only:
        calibrate_psf(Path(args.model), data, args.n_frames, args.jobs)
        return
    calibrate(Path(args.model), data, args.n_frames, args.jobs, bias_fields=args.bias_fields,
              with_psf=args.with_psf)


if __name__ == "__main__":
    main()
