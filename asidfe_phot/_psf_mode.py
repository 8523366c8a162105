"""
The PSF mode of `~asidfe_phot.MLPhotometry` (private): the image's PSF, tabulated, and
the PSF fit that refines the network's estimates, combined with them value by value.

The fit starts at the network's estimates (`asidfe_phot._psf_fit`); each flux and centre
is then taken from whichever estimate is the more precise, with the PSF model's own error
(DAOPHOT's profile error) and, for an ePSF built from the image, the scatter of its
centre against the network's in the fit's errors.
"""

import numpy as np

from asidfe_phot import _psf_fit, _stamps
from asidfe_phot import flags as _flags
from asidfe_phot import psf as _psf
from asidfe_phot._thresholds import OWN_MODEL_ERROR_MIN, UNEXPLAINED_ERROR_PER_EPS

__all__ = []  # private module

#: Core S/N from which the PSF fit's flux and centre replace the network's (see
#: `~asidfe_phot.MLPhotometry`'s Notes).
PSF_FIT_MIN_SNR = 0.0
#: Offset (px) of an automatic ePSF's centre from the network's that is removed (see
#: `fit_psf`).
AUTO_CENTRE_TOLERANCE = 0.02
#: Relative PSF-model error (``psf_profile_error``) beyond which the model is not used.
UNUSABLE_PSF_ERROR = 0.25
#: PSF-model error (relative) from which the fit is redone with it in the pixel variances.
_MIN_PROFILE_ERROR = 0.005
#: The fit's value is taken unless its error exceeds this times the network's (a model
#: card's ``psf_mode_network_margin``; see `takes_fit`).
NETWORK_MARGIN = 1.0
#: Flux error (relative) and position error (in FWHM) per unit relative PSF-model error.
_PSF_FLUX_ERROR_PER_EPS = 0.5
_PSF_POSITION_ERROR_PER_EPS = 0.25


def psf_sampler(psf_model, prepared, prebuilt=None):
    """The PSF of this image, tabulated (or None), and what to report in meta.

    ``psf_model``: `~asidfe_phot.MLPhotometry`'s (resolved: a model, ``"auto"`` or None);
    ``prebuilt``: for ``"auto"``, ``(model, meta entries)`` of an ePSF already built for
    the frame this image is a tile of (`asidfe_phot.tiles`), used instead of building one.
    """
    if psf_model is None:
        return None, {"psf_model": None, "psf_used": False}
    if isinstance(psf_model, str) and prebuilt is not None:
        model, info = prebuilt[0], {**prebuilt[1], "psf_built_for": "frame"}
    elif isinstance(psf_model, str):  # "auto"
        saturation = None
        if prepared.saturation is not None:
            # The saturation level above the median background; the difference image is
            # a temporary, so the median may sort it in place (no second whole-image copy).
            level = prepared.raw - prepared.subtracted
            saturation = prepared.saturation - float(np.median(level, overwrite_input=True))
            del level
        # The rms as a map read strip by strip (`_epsf._snr_peaks`), not made whole.
        noise = prepared.error if prepared.error is not None else prepared.rms_map
        model, info = _psf.build_epsf(prepared.subtracted, noise, prepared.bad,
                                      saturation=saturation,
                                      quiet=psf_model is _psf.DEFAULT_PSF_MODEL)
        if model is None:
            return None, {**info, "psf_used": False}
    else:
        model = psf_model
        info = {"psf_model": type(model).__name__}
    info["psf_used"] = True
    sampler = _psf.PSFSampler(model)
    info["psf_fwhm"] = sampler.fwhm
    return sampler, info


def error_boxes(prepared):
    """A function cutting error boxes from the error map or the noise model."""
    def boxes(cx, cy, size, data_boxes):
        if prepared.error is not None:
            return _stamps.cutout_stamps(prepared.error, cx, cy, size, fill=np.inf)[0]
        rms = _stamps.cutout_stamps(prepared.rms, cx, cy, size, fill=np.inf)[0]
        return _stamps.total_error(data_boxes, rms, prepared.gain)
    return boxes


def takes_fit(fit_err, network_err, snr_core, margin=NETWORK_MARGIN):
    """
    Where the PSF mode takes the fit's value (of those fitted): from core S/N
    ``PSF_FIT_MIN_SNR``, unless the fit's error exceeds ``margin`` times the network's
    (a NaN error of the network's: the fit's). 1: the smaller error wins; above 1 the
    fit is favoured, below 1 the network (0: the network's value always).

    Both estimates come from the same pixels, so their errors are correlated: where
    the two sigmas are close, picking the smaller one per source picks noise in the
    sigmas; and a fit's error does not count what its model leaves out (a background
    the mesh misses under nebulosity). A tailored model measures the margin on its
    frame's artificial stars (`training.tailor_calibration`); the shipped cards use 1.
    """
    return ~(fit_err > margin * network_err) & (snr_core >= PSF_FIT_MIN_SNR)


def fit_psf(prepared, res, sampler, psf_model, calibration=None, options=None,
            flux_start=None, network_margin=NETWORK_MARGIN):
    """
    Refine ``res`` in place by a PSF fit at the network's estimates; meta entries.

    ``psf_model``: `~asidfe_phot.MLPhotometry`'s (``"auto"`` or a model);
    ``calibration``: the model card's sigma calibration of this PSF mode
    (``sigma_calibration_auto`` or ``sigma_calibration_psf``), or None.
    ``options``: photutils' options of the fit (`asidfe_phot._psf_fit.FitOptions`).
    A held position (photutils' ``x_0.fixed``) makes this forced photometry: the
    flux is always the fit's, at the input position (a linear fit when the flux
    is free), with the fit's own errors (the card's calibrations are of the
    network's and the free fit's errors). A held flux starts, and stays, at
    ``flux_start`` (``flux_init``). ``network_margin``: see `takes_fit`.
    """
    auto = isinstance(psf_model, str)
    options = _psf_fit.FitOptions() if options is None else options
    forced = not (options.free[1] and options.free[2])
    ok = np.isfinite(res["x_fit"]) & ((res["flags"] & _flags.NO_OVERLAP) == 0)
    start_flux = res["flux_fit"] if options.free[0] or flux_start is None else flux_start

    def fit(profile_error=0.0):
        out = _psf_fit.fit_sources(prepared.subtracted, error_boxes(prepared),
                                   prepared.bad, res["x_fit"], res["y_fit"],
                                   start_flux, sampler, fit=ok,
                                   x_input=res["x_init"], y_input=res["y_init"],
                                   flux_err=res["flux_err"], profile_error=profile_error,
                                   options=options)
        res["flags"][out["blended"]] |= _flags.BLENDED
        return out

    fitted = fit()
    res["network"] = {k: res[k].copy() for k in ("x_fit", "y_fit", "flux_fit", "x_err",
                                                 "y_err", "flux_err")}

    def bright(f):
        return (ok & np.isfinite(f["flux"]) & np.isfinite(f["flux_err"]) & ~f["blended"]
                & (res["snr_core"] >= 30))
    # How well the PSF model describes this image's bright sources. An imperfect model
    # is refitted with its error in the pixel variances (DAOPHOT's profile error), and
    # what remains adds to the fit's errors (a wrong model biases flux and centre alike).
    # Forced photometry: the residuals of a source at a given position judge that
    # position as much as the model; neither the model's error nor a source's own is
    # measured (the fit's errors still grow with its reduced chi^2).
    profile_error = (np.nan if forced
                     else _psf_fit.psf_model_error(fitted, bright(fitted)))
    if np.isfinite(profile_error) and profile_error > _MIN_PROFILE_ERROR:
        fitted = fit(profile_error)
    else:
        profile_error = 0.0 if np.isfinite(profile_error) else profile_error
    res["psf_fit"] = fitted
    fitted_ok = ok & np.isfinite(fitted["flux"])
    for key, free in zip(("flux_err", "x_err", "y_err"), options.free, strict=True):
        if free:    # a held parameter has no error (NaN)
            fitted_ok &= np.isfinite(fitted[key])
    if np.isfinite(profile_error):
        eps_used = profile_error
    else:
        # Too few bright sources to judge the model: trust a model the user gave; an
        # automatic ePSF must prove itself first.
        eps_used = 0.0 if not auto or forced else np.inf
    # A source the PSF does not describe (a galaxy, an unlisted neighbour) has its own,
    # larger model error: where it stands out from the image's (a bright star's small
    # excess is the image's model error seen at high S/N, already counted).
    own = _psf_fit.source_model_error(fitted)
    own_core = _psf_fit.source_model_error(fitted, core=True)
    if forced:
        own, own_core = np.zeros_like(own), np.zeros_like(own_core)
    unexplained = fitted_ok & (own_core > np.maximum(3 * eps_used, OWN_MODEL_ERROR_MIN))
    eps_used = np.where(own > np.maximum(3 * eps_used, OWN_MODEL_ERROR_MIN), own, eps_used)
    # A model error is coherent over a source's pixels: it biases the flux and centre by
    # a fraction of itself (measured on the real frames: ~0.75 of eps in flux), which
    # no number of pixels averages away.
    flux_err = np.hypot(fitted["flux_err"],
                        _PSF_FLUX_ERROR_PER_EPS * eps_used * np.abs(fitted["flux"]))
    pos_floor = eps_used * sampler.fwhm * _PSF_POSITION_ERROR_PER_EPS
    # The model's centre against the network's (trained on first moments) on bright,
    # unblended sources. A given model defines the centre, as in photutils (where the
    # model is exact, the network's own offsets of ~0.01 px were the larger). An ePSF
    # built here has no authority on its centre: an offset beyond AUTO_CENTRE_TOLERANCE
    # is removed, and the scatter the two estimates do not explain becomes a floor of
    # the fitted centres' errors (a shifted model fits as well: chi^2 cannot see it).
    offset, scatter, n_ref = centre_offset(res, fitted, bright(fitted))
    if forced:      # the centre is the user's: nothing to shift
        offset, scatter = np.zeros(2), 0.0
    elif auto:
        offset = np.where(np.abs(offset) > AUTO_CENTRE_TOLERANCE, offset, 0.0)
        fitted["x"] = fitted["x"] - offset[0]
        fitted["y"] = fitted["y"] - offset[1]
        pos_floor = np.hypot(pos_floor, scatter)
    else:
        offset = np.zeros(2)
    x_err = np.hypot(fitted["x_err"], pos_floor)
    y_err = np.hypot(fitted["y_err"], pos_floor)
    res["psf_estimates"] = {
        "x_fit": np.where(fitted_ok, fitted["x"], np.nan),
        "y_fit": np.where(fitted_ok, fitted["y"], np.nan),
        "flux_fit": np.where(fitted_ok, fitted["flux"], np.nan),
        "x_err": np.where(fitted_ok, x_err, np.nan), "y_err": np.where(fitted_ok, y_err, np.nan),
        "flux_err": np.where(fitted_ok, flux_err, np.nan)}
    # Each value from whichever estimate is the more precise: the fit (bright sources,
    # a good model) or the network (faint ones, a poor model, tangled neighbours).
    use_flux = fitted_ok & takes_fit(flux_err, res["flux_err"], res["snr_core"],
                                     network_margin)
    use_pos = fitted_ok & takes_fit(np.hypot(x_err, y_err),
                                    np.hypot(res["x_err"], res["y_err"]), res["snr_core"],
                                    network_margin)
    if forced:      # the flux at the user's position, whatever the network measured
        use_flux = fitted_ok.copy()
    res["flux_fit"] = np.where(use_flux, fitted["flux"], res["flux_fit"])
    res["flux_err"] = np.where(use_flux, flux_err, res["flux_err"])
    for key, err in (("x", x_err), ("y", y_err)):
        res[f"{key}_fit"] = np.where(use_pos, fitted[key], res[f"{key}_fit"])
        res[f"{key}_err"] = np.where(use_pos, err, res[f"{key}_err"])
    res["qfit"], res["cfit"] = fitted["qfit"], fitted["cfit"]
    res["split"] = use_flux & ~fitted["blended"]
    if calibration is not None and not forced:
        # The errors of the PSF mode (fit or network, as chosen), calibrated on
        # simulated frames measured with their true PSF, or with psf_model="auto" (an
        # ePSF's own errors are larger), per the model card.
        chosen = {"dx_err": res["x_err"], "dy_err": res["y_err"],
                  "flux_err": res["flux_err"]}
        _stamps.calibrate_sigmas(chosen, calibration, res["snr_core"])
        res["x_err"], res["y_err"] = chosen["dx_err"], chosen["dy_err"]
        res["flux_err"] = chosen["flux_err"]
    # Light the PSF does not explain within a FWHM of the centre (an unlisted
    # neighbour, a galaxy, a cosmic ray) may belong to another source; how much is not
    # known. The core's model error measures the unexplained fraction; the flux bias
    # it leaves is 0.5-4x that (an unlisted equal neighbour at 2, 3, 4 px, FWHM 3:
    # core error 0.22, 0.46, 0.38, flux +86 %, +52 %, +20 %): the errors are at least
    # 2x that. A floor, not a sum: on real frames the whole-box model error already
    # covers most such stars (61 of 1350 injected stars flagged, z std 0.7-1.3).
    res["flags"][unexplained] |= _flags.BLENDED
    unexplained_flux = UNEXPLAINED_ERROR_PER_EPS * own_core * np.abs(res["flux_fit"])
    res["flux_err"] = np.where(unexplained, np.fmax(res["flux_err"], unexplained_flux),
                               res["flux_err"])
    unexplained_pos = UNEXPLAINED_ERROR_PER_EPS * own_core * sampler.fwhm
    for key in ("x_err", "y_err"):
        res[key] = np.where(unexplained, np.fmax(res[key], unexplained_pos), res[key])
    return {"aperture_correction": 1.0,
            "aperture_correction_note": "none needed: fluxes are the PSF model's totals",
            "psf_profile_error": profile_error,
            "psf_centre_offset": [float(offset[0]), float(offset[1])],
            "psf_centre_scatter": float(scatter), "psf_centre_nsources": n_ref,
            "psf_fit_flux_nsources": int(np.count_nonzero(use_flux)),
            "psf_fit_position_nsources": int(np.count_nonzero(use_pos)),
            "psf_mode_network_margin": float(network_margin),
            }


def centre_offset(res, fitted, bright, min_sources=10):
    """
    Median offset (x, y) of the fitted centres from the network's, the scatter of
    their differences that the two errors do not explain, and the sources used.

    Zero offset and scatter with fewer than ``min_sources`` bright sources, or an
    offset within 3 standard errors of zero.
    """
    sel = bright & np.isfinite(res["x_fit"]) & np.isfinite(fitted["x"])
    n = int(np.count_nonzero(sel))
    if n < min_sources:
        return np.zeros(2), 0.0, n
    d = np.stack([fitted["x"][sel] - res["x_fit"][sel], fitted["y"][sel] - res["y_fit"][sel]])
    med = np.median(d, axis=1)
    mad = 1.4826 * np.median(np.abs(d - med[:, None]), axis=1)
    err = 1.2533 * mad / np.sqrt(n)
    offset = np.where(np.abs(med) > 3 * err, med, 0.0)
    explained = np.median(np.concatenate([
        np.hypot(fitted["x_err"][sel], res["x_err"][sel]),
        np.hypot(fitted["y_err"][sel], res["y_err"][sel])]))
    scatter = float(np.sqrt(max(np.mean(mad**2) - explained**2, 0.0)))
    return offset, scatter, n
