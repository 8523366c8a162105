"""
Calibrating and checking a tailored model (`training.tailor`) on its frame's artificial
stars: the flux-bias corrections and sigma calibrations of the card (the network alone,
the network given the PSF, the PSF mode), the PSF mode's margin between the network's
value and the fit's, and the star-by-star comparison with the parent model.
"""

import json
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps


def ast_results(data, model, psf_model, n_stars, seed, *, gain, saturation, mask, error,
                 frame_psf="auto", **options):
    """
    Per-star table of an artificial-star test of ``model`` on the frame: stars rendered
    with ``frame_psf``, measured with ``psf_model`` (None: the network alone).
    """
    from asidfe_phot import MLPhotometry
    from asidfe_phot.artificial_stars import artificial_star_test

    phot = MLPhotometry(model=model, psf_model=psf_model, diagnostics=True, **options)
    stars, bins = artificial_star_test(data, n_stars=n_stars, psf_model=frame_psf,
                                       phot=phot, gain=gain, saturation=saturation,
                                       mask=mask, error=error, seed=seed)
    return stars, bins


def good_stars(stars, calibrating=False):
    """
    Found, unflagged stars with errors, as the calibration fitters take them.
    ``calibrating``: also those flagged only OUTSIDE_TRAINING, a test of the predicted
    S/N, i.e. of the very sigmas being calibrated.
    """
    from asidfe_phot import flags as _flags
    from asidfe_phot.artificial_stars import BAD_FLAGS

    bad_flags = BAD_FLAGS & ~_flags.OUTSIDE_TRAINING if calibrating else BAD_FLAGS
    ok = np.asarray(stars["found"]) & ((np.asarray(stars["flags"]) & bad_flags) == 0)
    return ok & np.isfinite(_column(stars, "flux_err")) & np.isfinite(_column(stars, "snr_core"))


def _column(stars, name):
    values = stars[name]
    return np.asarray(getattr(values, "value", values), dtype=float)


def estimates(stars, ok, suffix=""):
    """
    The calibration fitters' ``pred`` of the rows ``ok``. ``suffix``: ``"_network"`` or
    ``"_psf"``, the network's or the PSF fit's own estimates in the PSF mode
    (``diagnostics`` columns), not the values the mode chose.
    """
    pred = {key: _column(stars, f"{name}{suffix}")[ok] for key, name in (
        ("dx", "x_fit"), ("dy", "y_fit"), ("flux", "flux_fit"), ("dx_err", "x_err"),
        ("dy_err", "y_err"), ("flux_err", "flux_err"))}
    pred["snr_core"] = _column(stars, "snr_core")[ok]
    return pred


def pred_truth(stars, calibrating=False, suffix=""):
    """``pred`` (see `estimates`) and truths of the good stars (`good_stars`)."""
    ok = good_stars(stars, calibrating)
    if suffix:
        ok &= np.isfinite(_column(stars, f"flux_err{suffix}"))
    truth = {"dx": _column(stars, "x_true")[ok], "dy": _column(stars, "y_true")[ok],
             "flux": _column(stars, "flux_true")[ok]}
    return estimates(stars, ok, suffix), truth


_FITTED_ON = "artificial stars injected into the tailored frame (training.tailor)"
#: The margins `choose_network_margin` tries (see `asidfe_phot._psf_mode.takes_fit`): below
#: 1 the network's value is favoured (0: always taken), above 1 the fit's.
NETWORK_MARGINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
#: Those that favour the network, tried only with a given PSF model (see
#: `choose_network_margin`).
NETWORK_FAVOURING = tuple(m for m in NETWORK_MARGINS if m < 1)


def psf_mode_values(stars, ok, margin):
    """
    The PSF mode's values and errors (before its calibration) of the rows ``ok`` as
    ``margin`` would choose them, from the ``diagnostics`` columns (the rule of
    `asidfe_phot._psf_mode.takes_fit`, where the fit has a value).
    """
    from asidfe_phot._psf_mode import takes_fit

    net, fit = estimates(stars, ok, "_network"), estimates(stars, ok, "_psf")
    snr_core = net["snr_core"]
    pred = {"snr_core": snr_core}
    fitted = np.isfinite(fit["flux"])    # the fit's estimates are NaN where it failed
    flux = fitted & takes_fit(fit["flux_err"], net["flux_err"], snr_core, margin)
    pos = fitted & takes_fit(np.hypot(fit["dx_err"], fit["dy_err"]),
                             np.hypot(net["dx_err"], net["dy_err"]), snr_core, margin)
    for keys, take in ((("flux", "flux_err"), flux), (("dx", "dy", "dx_err", "dy_err"), pos)):
        for key in keys:
            pred[key] = np.where(take, fit[key], net[key])
    return pred


def choose_network_margin(stars, favour_network=True):
    """
    The margin (of `NETWORK_MARGINS`) whose PSF-mode fluxes scatter least about the
    truth on these artificial stars, in units of each star's expected error
    (1.4826 MAD of ``(f / f_true - 1) S/N_true``), and the scores.

    ``favour_network=False`` leaves out the margins below 1. The artificial stars are
    copies of the PSF model, so the choice holds for the frame's own stars only as far
    as the model describes them. An ePSF (``psf_model="auto"``) stops at its footprint
    (25-31 px), inside the network's 32-px stamp and beyond the fit's box: on the
    simulated ``airy_spikes`` frame the copies favoured the network (margin 0), and the
    frame's own stars, whose spikes reach beyond the ePSF, then scattered 1.1-1.5 times
    more at S/N 10-300 (flux MARE; `evaluation.tailoring`) than with the fit favoured
    (margin 3).
    """
    ok = good_stars(stars, calibrating=True) & np.isfinite(_column(stars, "flux_err_network"))
    truth = _column(stars, "flux_true")[ok]
    snr = _column(stars, "snr_true")[ok]
    scores = {}
    for margin in NETWORK_MARGINS:
        if margin in NETWORK_FAVOURING and not favour_network:
            continue
        r = (psf_mode_values(stars, ok, margin)["flux"] / truth - 1) * snr
        scores[margin] = float(1.4826 * np.median(np.abs(r - np.median(r))))
    return min(scores, key=scores.get), scores


#: Fewest good artificial stars to refit a calibration from (else the parent's is kept).
MIN_CALIBRATION_STARS = 40


def _n_bins(pred):
    return min(12, max(2, pred["flux"].size // 40))


def _network_calibrations(pred, truth):
    """The flux-bias correction, then the sigma calibration of bias-corrected values."""
    from . import calibrate as calibrate_mod

    bias = calibrate_mod.fit_flux_bias(pred["snr_core"], pred["flux"] / truth["flux"],
                                       n_bins=_n_bins(pred))
    _stamps.correct_flux_bias(pred, bias, pred["snr_core"])
    sigmas = calibrate_mod.fit_sigma_calibration(pred, truth, n_bins=_n_bins(pred))
    bias["fitted_on"] = sigmas["fitted_on"] = _FITTED_ON
    return bias, sigmas


def calibrate_on_frame(model_dir, data, config, *, gain, saturation, mask, error,
                       psf_model="auto", parent_card=None, log=print):
    """
    The card's flux-bias correction and sigma calibrations, refitted on the frame's own
    artificial stars: the network alone first (bias, then its sigmas); the network given
    the frame's PSF (``network_psf_calibration``: its outputs differ, and the PSF mode
    picks the fit's or the network's value by their sigmas); then the PSF mode with the
    network's calibrations applied (as MLPhotometry chains them). A fit with fewer than
    ``MIN_CALIBRATION_STARS`` good stars keeps the parent's entry (and says so).
    """
    from . import calibrate as calibrate_mod
    from .export import update_card

    common = {"gain": gain, "saturation": saturation, "mask": mask, "error": error,
              "frame_psf": psf_model}
    n, seed = config["calibration_stars"], config["seed"] + 1000
    # The parent's calibrations (``parent_card``; default: those ``model_dir`` holds) stay
    # where too few artificial stars are good to refit them.
    parent = parent_card or json.loads((Path(model_dir) / "config.json").read_text())
    keys = ("flux_bias_correction", "sigma_calibration", "sigma_calibration_psf",
            "sigma_calibration_auto")
    inherited = {key: parent.get(key) for key in keys}
    notes = {}
    update_card(model_dir, {**dict.fromkeys(keys), "network_psf_calibration": None,
                            "psf_mode_network_margin": None})
    log("== calibrate: the network alone")
    stars, _ = ast_results(data, model_dir, None, n, seed, **common)
    pred, truth = pred_truth(stars, calibrating=True)
    if pred["flux"].size >= MIN_CALIBRATION_STARS:
        bias, network = _network_calibrations(pred, truth)
        notes["network"] = f"refitted on {pred['flux'].size} artificial stars"
    else:
        bias, network = inherited["flux_bias_correction"], inherited["sigma_calibration"]
        notes["network"] = f"the parent's: only {pred['flux'].size} good artificial stars"
    update_card(model_dir, {"flux_bias_correction": bias, "sigma_calibration": network})
    log("== calibrate: the network given the frame's PSF")
    stars, _ = ast_results(data, model_dir, psf_model, n, seed + 2, sigma_calibration=False,
                            flux_bias_correction=False, **common)
    pred, truth = pred_truth(stars, calibrating=True, suffix="_network")
    with_psf = None
    if pred["flux"].size >= MIN_CALIBRATION_STARS:
        bias, network = _network_calibrations(pred, truth)
        with_psf = {"flux_bias_correction": bias, "sigma_calibration": network}
        notes["network_psf"] = f"refitted on {pred['flux'].size} artificial stars"
    else:
        notes["network_psf"] = (f"the network's without the PSF: only {pred['flux'].size} "
                                "good artificial stars")
    update_card(model_dir, {"network_psf_calibration": with_psf})
    log("== calibrate: the PSF mode")
    stars, _ = ast_results(data, model_dir, psf_model, n, seed + 1, sigma_calibration="network",
                            **common)
    pred, truth = pred_truth(stars, calibrating=True)
    margin = None
    if pred["flux"].size >= MIN_CALIBRATION_STARS and "flux_err_psf" in stars.colnames:
        # Which of the network's and the fit's values to take: chosen on these stars,
        # then the sigmas of the values so chosen calibrated.
        given_psf = not (isinstance(psf_model, str) and psf_model == "auto")
        margin, scores = choose_network_margin(stars, favour_network=given_psf)
        notes["psf_mode_network_margin"] = (
            f"{margin} of {list(scores)}, scores (1.4826 MAD of (f / f_true - 1) S/N_true) "
            + ", ".join(f"{v:.3f}" for v in scores.values()))
        ok = good_stars(stars, calibrating=True)
        pred = psf_mode_values(stars, ok, margin)
    if pred["flux"].size >= MIN_CALIBRATION_STARS:
        psf_mode = calibrate_mod.fit_sigma_calibration(pred, truth, n_bins=_n_bins(pred))
        psf_mode["fitted_on"] = _FITTED_ON
        notes["psf_mode"] = (f"refitted on {pred['flux'].size} artificial stars; "
                             "sigma_calibration_psf = sigma_calibration_auto")
    else:
        psf_mode = inherited["sigma_calibration_auto"]
        notes["psf_mode"] = f"the parent's: only {pred['flux'].size} good artificial stars"
    log(f"   calibrations: {notes}")
    return update_card(model_dir, {
        "psf_mode_network_margin": margin,
        "sigma_calibration_auto": psf_mode, "sigma_calibration_psf": psf_mode,
        "calibration_note": {"source": "artificial stars injected into the tailored frame "
                                       "(training.tailor), not simulations", **notes}})


def bins_json(bins):
    out = []
    for row in bins:
        out.append({name: (float(row[name]) if np.ndim(row[name]) == 0
                           and np.issubdtype(np.asarray(row[name]).dtype, np.number)
                           else str(row[name])) for name in bins.colnames})
    return out


def paired_ratios(shipped, tailored, n_boot=1000, seed=0):
    """
    Per S/N bin, over the stars both models measured unflagged: the median |f / f_true -
    1| of the tailored model over the shipped one's, and its 95 % bootstrap interval
    (stars resampled in pairs: the two models' errors on one star are correlated, so
    the pair is far more telling than two independent scatters).
    """
    from asidfe_phot.artificial_stars import BAD_FLAGS, SNR_BINS, _label

    def good(stars):
        return np.asarray(stars["found"]) & ((np.asarray(stars["flags"]) & BAD_FLAGS) == 0)

    def error(stars):
        return np.abs(_column(stars, "flux_fit") / _column(stars, "flux_true") - 1)

    both = good(shipped) & good(tailored)
    snr = _column(shipped, "snr_true")
    a, b = error(shipped), error(tailored)
    rng = np.random.default_rng(seed)
    out = {}
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:], strict=True):
        sel = np.flatnonzero(both & (snr >= lo) & (snr < hi) & np.isfinite(a) & np.isfinite(b))
        if sel.size < 10:
            continue
        draws = rng.integers(0, sel.size, (n_boot, sel.size))
        boot = np.median(b[sel][draws], axis=1) / np.median(a[sel][draws], axis=1)
        out[_label(lo, hi)] = (float(np.median(b[sel]) / np.median(a[sel])),
                               float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
    return out
