"""
The classical methods of `evaluation.synthetic`, each on one simulated frame:
sep FLUX_AUTO with SourceExtractor's neighbour masking, photutils apertures,
the SourceExtractor binary (AUTO/WIN, and PSF fitting with PSFEx) tied to the
inputs by ASSOC, and photutils PSF photometry with the true PSF.
"""

import tempfile
from pathlib import Path

import numpy as np

from training import simulate as simulate_mod

#: SourceExtractor ASSOC radius (px) between a detection's X_IMAGE/Y_IMAGE and an input.
ASSOC_RADIUS = 2.0
#: The simulator's sep detection threshold (S/N of the matched-filtered image).
SEP_THRESH = 1.2


#: The simulator's other ``sep.extract`` settings (``training/simulate.py``, `simulate_frame`):
#: with `SEP_THRESH` and ``err`` = its rms map, `sep_segmentation` reproduces its catalogue.
SEP_EXTRACT = {"minarea": 4, "deblend_cont": 0.005}


def sep_segmentation(sub, rms):
    """
    The simulator's sep detection, repeated with a segmentation map.

    The same call as `training.simulate.simulate_frame` (the background-
    subtracted image, `SEP_THRESH` times the rms map, `SEP_EXTRACT`), so the
    catalogue is the simulator's; the segmentation map (``int32``, 0 for sky,
    ``i + 1`` for the pixels of detection ``i``) lets `_sep_flux_auto` mask
    the other objects. Returns ``(objects, segmap)``.
    """
    import sep

    return sep.extract(sub, SEP_THRESH, err=rms, segmentation_map=True, **SEP_EXTRACT)


def segmentation_ids(objects, x, y):
    """Segmentation id (1-based) of the detection nearest to each ``(x, y)``, and its distance."""
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(np.column_stack([objects["x"], objects["y"]])).query(
        np.column_stack([np.asarray(x, float), np.asarray(y, float)]))
    return (np.asarray(idx) + 1).astype(np.int32), np.asarray(dist)


def _sep_flux_auto(sub, objects, rms, gain, segmap=None, seg_id=None):
    """
    SourceExtractor-like FLUX_AUTO with sep for ``objects`` (sep's object array).

    With ``segmap`` (`sep_segmentation`) and ``seg_id`` (one per object), the
    pixels of other detections are left out of the Kron radius and of the
    flux (sep's ``seg_id > 0`` masking; dropped, not replaced by their
    mirror pixels as SourceExtractor's MASK_TYPE CORRECT does, and without
    sep's masked-area rescaling, which applies to ``mask=`` only).
    """
    import sep

    def masking(sel):
        if segmap is None:
            return {}
        return {"segmap": segmap, "seg_id": np.asarray(seg_id, dtype=np.int32)[sel]}

    every = np.ones(len(objects), dtype=bool)
    kron, _ = sep.kron_radius(sub, objects["x"], objects["y"], objects["a"], objects["b"],
                              objects["theta"], 6.0, **masking(every))
    # SourceExtractor's PHOT_AUTOPARAMS 2.5, 3.5: 2.5 Kron radii, at least 3.5, both in
    # units of the isophotal a and b (its KRON_RADIUS output is this product). Stars have
    # Kron radii near 1: 2.5 Kron radii alone lose ~4 % of their flux.
    scale = np.maximum(2.5 * np.nan_to_num(kron, nan=0.0), 3.5)
    flux = np.full(len(objects), np.nan)
    err = np.full(len(objects), np.nan)
    a, b, theta = objects["a"], objects["b"], objects["theta"]
    # sep rejects degenerate ellipses (it checks a >= b > 0 and |theta| <= pi/2):
    # those get a circle of radius 3.5 px.
    ellipse = (np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0) & (a >= b)
               & (np.abs(theta) <= np.pi / 2))
    circle = ~ellipse
    if ellipse.any():
        o = objects[ellipse]
        flux[ellipse], err[ellipse], _ = sep.sum_ellipse(
            sub, o["x"], o["y"], o["a"], o["b"], o["theta"], scale[ellipse], err=rms,
            gain=gain, subpix=1, **masking(ellipse))
    if circle.any():
        flux[circle], err[circle], _ = sep.sum_circle(sub, objects["x"][circle],
                                                      objects["y"][circle], 3.5, err=rms,
                                                      gain=gain, subpix=1, **masking(circle))
    return flux, err


def _aperture_flux(sub, x, y, radius, error, psf, tx, ty):
    """photutils circular aperture photometry, corrected by the true PSF's enclosed fraction."""
    from photutils.aperture import CircularAperture, aperture_photometry

    from asidfe_phot.datasets import render_psf_stamps

    tbl = aperture_photometry(sub, CircularAperture(np.column_stack([x, y]), radius),
                              error=error)
    stamps, x0, y0 = render_psf_stamps(psf, tx, ty)
    h = stamps.shape[1] // 2
    frac = np.array([aperture_photometry(st, CircularAperture((xi - x0i + h, yi - y0i + h),
                                                              radius))["aperture_sum"][0]
                     for st, xi, yi, x0i, y0i in zip(stamps, x, y, x0, y0)])
    return np.asarray(tbl["aperture_sum"]) / frac, np.asarray(tbl["aperture_sum_err"]) / frac


def detection_threshold(rms):
    """
    SourceExtractor's absolute detection threshold (ADU) equivalent to the simulator's sep call.

    ``sep.extract(sub, 1.2, err=rms)`` applies a matched filter (the 3x3
    default.conv kernel k) and thresholds its S/N at 1.2, i.e. the filtered
    image at ``1.2 * rms * sqrt(sum k^2) / sum k = 0.45 rms``; SourceExtractor
    filters with the same normalised kernel, so this threshold (frame median
    of the rms map) gives it the same detections and deblending. (A
    threshold of 1.2 of SourceExtractor's own, much smaller, background rms
    merges a quarter of the stars of crowded frames into blends.)
    """
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=float)
    return float(SEP_THRESH * np.median(rms) * np.sqrt((k**2).sum()) / k.sum())


def _source_extractor_config(cond, assoc_path, threshold):
    """SourceExtractor keywords: the frame's gain, sep-like detection, ASSOC to the inputs."""
    return {
        "GAIN": float(cond["gain"]), "SATUR_LEVEL": 1e20,     # simulated frames do not saturate
        "THRESH_TYPE": "ABSOLUTE", "DETECT_THRESH": threshold, "ANALYSIS_THRESH": threshold,
        "DETECT_MINAREA": 4,
        "DEBLEND_NTHRESH": 32, "DEBLEND_MINCONT": 0.005,
        # Crowded frames hold up to 8000 stars.
        "MEMORY_OBJSTACK": 30000, "MEMORY_PIXSTACK": 3000000,
        "ASSOC_NAME": str(assoc_path), "ASSOC_PARAMS": "1,2", "ASSOC_DATA": "3",
        "ASSOC_RADIUS": ASSOC_RADIUS, "ASSOC_TYPE": "NEAREST", "ASSOCSELEC_TYPE": "MATCHED",
    }


def _write_assoc(path, x, y):
    """ASSOC list: 1-based SourceExtractor pixel positions and a 1-based id."""
    ids = np.arange(1, len(x) + 1)
    np.savetxt(path, np.column_stack([np.asarray(x) + 1.0, np.asarray(y) + 1.0, ids]),
               fmt=("%.4f", "%.4f", "%d"))


def _assoc_columns(tbl, x, y, columns):
    """
    SourceExtractor rows matched to the n inputs (via VECTOR_ASSOC), one per input.

    ``columns`` maps output names to catalogue columns. An input claimed by
    several detections keeps the one whose X_IMAGE/Y_IMAGE is closest; inputs
    without a detection get NaN.
    """
    n = len(x)
    out = {name: np.full(n, np.nan) for name in columns}
    if tbl is None or len(tbl) == 0:
        return out
    ids = np.asarray(tbl["VECTOR_ASSOC"], dtype=float).round().astype(int) - 1
    good = (ids >= 0) & (ids < n)
    rows = np.flatnonzero(good)
    ids = ids[good]
    d2 = ((np.asarray(tbl["X_IMAGE"], float)[rows] - x[ids]) ** 2
          + (np.asarray(tbl["Y_IMAGE"], float)[rows] - y[ids]) ** 2)
    order = np.argsort(d2, kind="stable")
    first_ids, first = np.unique(ids[order], return_index=True)
    chosen = rows[order[first]]
    for name, col in columns.items():
        if col in tbl.colnames:
            out[name][first_ids] = np.asarray(tbl[col], dtype=float)[chosen]
    return out


def _run_source_extractor(image, x, y, cond, threshold, psf_fit=False):
    """The ``sex`` (FLUX_AUTO, XWIN) or ``psfex`` (PSF fit) results at the input positions."""
    from evaluation import reference_tools as rt

    with tempfile.TemporaryDirectory(prefix="asidfe_eval_") as tmp:
        assoc = Path(tmp) / "assoc.txt"
        _write_assoc(assoc, x, y)
        config = _source_extractor_config(cond, assoc, threshold)
        assoc_params = ("VECTOR_ASSOC(1)", "NUMBER_ASSOC")
        run, params, pos, flux = ((rt.source_extractor_psf_fit, rt.PSF_FIT_PARAMS, "PSF", "PSF")
                                  if psf_fit else
                                  (rt.run_source_extractor, rt.DEFAULT_PARAMS, "WIN", "AUTO"))
        tbl = run(image, config=config, params=params + assoc_params,
                  seeing_fwhm=float(cond["fwhm0"]))
        cols = {"x": f"X{pos}_IMAGE", "y": f"Y{pos}_IMAGE", "x_var": f"ERRX2{pos}_IMAGE",
                "y_var": f"ERRY2{pos}_IMAGE", "flux": f"FLUX_{flux}",
                "flux_err": f"FLUXERR_{flux}", "flags": "FLAGS"}
    out = _assoc_columns(tbl, np.asarray(x, float), np.asarray(y, float), cols)
    if psf_fit:
        # FLUX_PSF is exactly 0 where the PSF fit failed.
        failed = out["flux"] == 0
        for key in ("x", "y", "x_var", "y_var", "flux", "flux_err"):
            out[key][failed] = np.nan
        corr = psfex_aperture_correction(tbl)
        out["flux"] *= corr
        out["flux_err"] *= corr
        out["aperture_correction"] = np.full(len(x), corr)
    with np.errstate(invalid="ignore"):
        out["x_err"] = np.sqrt(out.pop("x_var"))
        out["y_err"] = np.sqrt(out.pop("y_var"))
    out["flags"] = np.nan_to_num(out["flags"], nan=-1).astype(int)
    return out


def psfex_aperture_correction(tbl, min_snr=(50, 20), min_stars=5):
    """
    FLUX_AUTO / FLUX_PSF: the median over unflagged bright stars of the frame.

    PSFEx normalises its model to the flux in the catalogue's first
    aperture (PHOTFLUX_KEY = FLUX_APER(1), here 10 px in diameter), so
    FLUX_PSF is an aperture flux (70 % of the total for a Gaussian of FWHM
    7.5 px); the usual correction to a total flux uses bright stars. 1.0
    when too few stars qualify.
    """
    fp = np.asarray(tbl["FLUX_PSF"], dtype=float)
    ep = np.asarray(tbl["FLUXERR_PSF"], dtype=float)
    fa = np.asarray(tbl["FLUX_AUTO"], dtype=float)
    base = (np.asarray(tbl["FLAGS"]) == 0) & (fp > 0) & (ep > 0) & (fa > 0)
    for snr in min_snr:
        sel = base & (fp > snr * ep)
        if sel.sum() >= min_stars:
            return float(np.median(fa[sel] / fp[sel]))
    return 1.0


def _fit_shape(fwhm):
    """Fit box of the true-PSF fit: about 3 FWHM wide, odd, at least 7 px."""
    return max(7, 2 * int(np.ceil(1.5 * fwhm)) + 1)


def _true_psf_fit(sub, x, y, cond, shape, error):
    """photutils PSFPhotometry with the true, spatially varying PSF of the frame."""
    from evaluation import reference_tools as rt

    fit_shape = _fit_shape(float(cond["fwhm0"]))
    model = rt.true_gridded_psf(lambda gx, gy: simulate_mod._psf_at(cond, gx, gy, shape), shape,
                                half_size=fit_shape // 2 + 3)
    res = rt.psf_photometry_true_psf(np.asarray(sub, dtype=np.float64), x, y, model,
                                     error=error, fit_shape=fit_shape)
    return {"x_psf": np.asarray(res["x_fit"]), "y_psf": np.asarray(res["y_fit"]),
            "flux_psf": np.asarray(res["flux_fit"]), "x_err_psf": np.asarray(res["x_err"]),
            "y_err_psf": np.asarray(res["y_err"]), "flux_err_psf": np.asarray(res["flux_err"]),
            "flags_psf": np.asarray(res["flags"])}
