"""
Simulated test and validation frames, re-made from a data set's seeds, measured by
`MLPhotometry`: what calibration (`training.calibrate`) and evaluation
(`evaluation.synthetic`, which adds the classical methods) share.

The test split is by frame, so frames are re-simulated in full from the data set's
seeds and need no stored stamps. ML methods: ``ml`` (the network alone), ``mlpsf``
(the frame's true PSF as ``psf_model``), ``mlauto`` (``psf_model="auto"``).
"""

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from asidfe_phot._progress import Progress

from . import simulate as simulate_mod

#: The methods measured here (the others belong to `evaluation.synthetic`).
ML_METHODS = ("ml", "mlpsf", "mlauto")
#: Each worker process runs its libraries single-threaded when frames run in parallel.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_RESULT_COLUMNS = ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err")


def data_recipe(data, model=None):
    """
    The simulator recipe of the test frames: ``data`` itself when it is a recipe (a
    dict, e.g. a card's ``training_data_broad``), ``data/index.json`` when the data
    set is there, else the model card's ``training_data`` (preset, seed, frame count,
    families, frame shape; the first of a list): test frames are re-simulated from their
    seeds, so the evaluation needs no stored stamps.
    """
    if isinstance(data, dict):
        return data
    if data is not None and (Path(data) / "index.json").exists():
        return json.loads((Path(data) / "index.json").read_text())
    from asidfe_phot.models import load_model_card

    recipe = load_model_card(model).get("training_data")
    if isinstance(recipe, list):   # several data sets (asidfe_tsmve_v5): the first, generic
        recipe = recipe[0] if recipe else None
    if not recipe:
        msg = (f"no {Path(data) / 'index.json' if data is not None else 'data set'} and no "
               "training_data in the model card: cannot tell which frames to simulate")
        raise FileNotFoundError(msg)
    return recipe


def frame_tasks(index, n_frames, split="test"):
    """``(frame_id, seed)`` of the first ``n_frames`` frames of ``split``."""
    seeds = simulate_mod.frame_seeds(index["seed"], index["n_frames"])
    frames = [f for f in range(index["n_frames"]) if simulate_mod.split_of(f) == split]
    return [(frame_id, int(seeds[frame_id])) for frame_id in frames[:n_frames]]


def simulate_test_frame(frame_id, seed, index):
    """
    One frame, re-simulated, with the truths and detector positions of its stored sources.

    Returns None for a frame without stored sources, else a dict: ``image``, ``sub``
    (background-subtracted by the simulator's background), ``rms``, ``cond``, ``shape``,
    ``psf`` (the true PSF parameters per source), ``x_in, y_in`` (the detections), ``det``
    and ``obj`` (the simulator's detections and each source's), and ``columns`` (the
    per-source truths: frame, snr, contamination, stars_per_beam, fwhm, family, x_true,
    y_true, flux_true, x_init, y_init, crlb_flux, crlb_x, crlb_y).
    """
    shape = tuple(index["frame_shape"])
    _, meta, frame = simulate_mod.simulate_frame(
        frame_id, seed, index["preset"], tuple(index["families"]), shape, return_frame=True)
    if len(meta) == 0:
        return None
    cond = frame["cond"]
    det = frame["detections"]
    match = frame["match"]
    # Stored rows are the matched detections whose stamps lie inside the frame.
    det_x = meta["x_frame"] - meta["true_dx"] + meta["det_dx"]
    det_y = meta["y_frame"] - meta["true_dy"] + meta["det_dy"]
    d2 = (det["x"][None, :] - det_x[:, None]) ** 2 + (det["y"][None, :] - det_y[:, None]) ** 2
    obj = np.argmin(d2, axis=1)
    star = match[obj]
    x_in, y_in = np.asarray(det["x"][obj], float), np.asarray(det["y"][obj], float)
    psf = {key: (v[star] if np.ndim(v) else v) for key, v in frame["truth"]["psf"].items()}
    psf.pop("truncation", None)
    tx, ty = frame["truth"]["x"][star], frame["truth"]["y"][star]
    n = len(meta)
    columns = {
        "frame": meta["frame"], "snr": meta["snr"], "contamination": meta["contamination"],
        "stars_per_beam": np.full(n, float(cond["stars_per_beam"])),
        "fwhm": meta["fwhm"], "family": meta["family"],
        "x_true": tx, "y_true": ty, "flux_true": frame["truth"]["flux"][star],
        "x_init": x_in, "y_init": y_in,
        "crlb_flux": meta["crlb_flux"], "crlb_x": meta["crlb_x"], "crlb_y": meta["crlb_y"],
    }
    return {"image": frame["image"], "sub": frame["image"] - frame["background"],
            "rms": frame["rms"], "cond": cond, "shape": shape, "psf": psf,
            "x_in": x_in, "y_in": y_in, "det": det, "obj": obj, "columns": columns,
            "frame_id": frame_id}


def photometers(model, methods, single_threaded=False, calibrated=True):
    """
    The `MLPhotometry` options of each ML method in ``methods``.

    ``calibrated=False``: the sigmas without the card's post-hoc calibration being
    fitted (on validation frames).
    """
    from asidfe_phot import MLPhotometry

    chosen = [m for m in ML_METHODS if m in methods]
    if not chosen:
        return {}
    options = {"threads": 1 if single_threaded else None, "diagnostics": True}
    # Uncalibrated: without the calibration being fitted, that of the network alone
    # ("ml"), or that of the PSF mode's outputs, the network's own being kept.
    psf_options = {**options, "sigma_calibration": True if calibrated else "network"}
    out = {"options": (model, psf_options)}
    if "ml" in chosen:
        out["ml"] = MLPhotometry(model=model, psf_model=None, sigma_calibration=calibrated,
                                 **options)
    if "mlauto" in chosen:
        out["mlauto"] = MLPhotometry(model=model, psf_model="auto", **psf_options)
    # "mlpsf" gets each frame's true PSF (`measure_ml`).
    return out


def measure_ml(frame, phots, methods):
    """Columns of the ML methods on one frame (``<value>_<method>``; see module doc)."""
    from asidfe_phot import MLPhotometry

    cols, timings = {}, {}
    init = Table({"x": frame["x_in"], "y": frame["y_in"]})
    cond, shape = frame["cond"], frame["shape"]
    for m in (m for m in ML_METHODS if m in methods):
        t0 = time.perf_counter()
        if m == "mlpsf":
            psf_model = true_gridded_psf(
                lambda gx, gy: simulate_mod._psf_at(cond, gx, gy, shape), shape, nodes=5,
                half_size=16)
            model, options = phots["options"]
            phot = MLPhotometry(model=model, psf_model=psf_model, **options)
        else:
            phot = phots[m]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tbl = phot(frame["image"], init_params=init, gain=cond["gain"])
        suffix = "ml" if m == "ml" else m
        for c in _RESULT_COLUMNS:
            cols[f"{c.replace('_fit', '')}_{suffix}"] = np.asarray(tbl[c])
        cols[f"flags_{suffix}"] = np.asarray(tbl["flags"])
        cols[f"snr_core_{suffix}"] = np.asarray(tbl["snr_core"])
        if m != "ml" and "flux_fit_network" in tbl.colnames:
            # The network's own values with the PSF channel (before the fit), for the
            # sigma calibration of that mode.
            cols.update({f"{c.replace('_fit', '')}_{m}_nn": np.asarray(tbl[f"{c}_network"])
                         for c in _RESULT_COLUMNS})
        timings[m] = time.perf_counter() - t0
    return cols, timings


#: The per-process state of `measure_frames`.
_WORKER = {}


def _start_worker(model, index, methods, single_threaded, calibrated, other):
    _WORKER.clear()
    _WORKER.update(index=index, methods=methods, other=other,
                   phots=photometers(model, methods, single_threaded, calibrated))


def _measure_in_worker(task_and_setup):
    task, setup = task_and_setup
    if _WORKER.get("setup") != setup:
        _start_worker(*setup)
        _WORKER["setup"] = setup
    frame_id, seed = task
    methods = _WORKER["methods"]
    timings = dict.fromkeys(methods, 0.0)
    frame = simulate_test_frame(frame_id, seed, _WORKER["index"])
    if frame is None:
        return None, timings, []
    cols = dict(frame["columns"])
    messages = []
    # Method order as given: ML methods here, the others by the caller's function.
    ml_cols, ml_times = measure_ml(frame, _WORKER["phots"], methods)
    timings.update(ml_times)
    other = _WORKER["other"]
    for m in methods:
        if m in ML_METHODS:
            cols.update({k: v for k, v in ml_cols.items() if k.endswith(f"_{m}")
                         or k.endswith(f"_{m}_nn")})
        elif other is not None:
            t0 = time.perf_counter()
            more, notes = other(frame, m)
            cols.update(more)
            messages += notes
            timings[m] += time.perf_counter() - t0
    return Table(cols), timings, messages


def measure_frames(model, data, n_frames=60, log=print, methods=ML_METHODS[:1], jobs=1,
                   split="test", calibrated=True, other=None):
    """
    Per-source results of ``methods`` on the first ``n_frames`` frames of ``split``.

    ``other(frame, method)``: a module-level function measuring a non-ML method on a
    frame of `simulate_test_frame`, returning ``(columns, messages)``.
    ``calibrated=False``: ML sigmas without the card's post-hoc calibration.
    ``jobs``: frames measured at once, one process each (each method runs
    single-threaded then); the results do not depend on it. ``meta['timings']``
    holds each method's total seconds.
    """
    from astropy.table import vstack

    methods = tuple(methods)
    index = data_recipe(data, model)
    tasks = frame_tasks(index, n_frames, split)
    if set(ML_METHODS) & set(methods):
        from asidfe_phot.models import verify_model

        # The resolved directory, not a name: a worker process may import asidfe_phot from
        # another place (a source tree) than this one, with another model registry.
        model = verify_model(model)[0]
    setup = (None if model is None else str(model), index, methods, jobs > 1, calibrated,
             other)
    # Each task carries the setup and a worker starts itself on its first task: an error
    # there reaches this process (a Pool initializer that fails is restarted for ever).
    tasks = [(task, setup) for task in tasks]
    timings = dict.fromkeys(methods, 0.0)
    rows = []
    if jobs > 1:
        import multiprocessing

        # spawn: no onnxruntime state forked from this process. One BLAS/OpenMP thread per
        # worker (read when numpy loads there), so that `jobs` processes share the cores;
        # Pool starts its workers at once, so the setting can be undone right after.
        saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
        try:
            pool = multiprocessing.get_context("spawn").Pool(jobs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        outcomes = pool.imap(_measure_in_worker, tasks)
    else:
        pool = None
        _WORKER.clear()
        outcomes = map(_measure_in_worker, tasks)
    progress = Progress(len(tasks), f"measure {split}", unit="frames", log=log)
    try:
        for table, frame_timings, messages in outcomes:
            for message in messages:
                log(message)
            for m, s in frame_timings.items():
                timings[m] += s
            if table is not None:
                rows.append(table)
            progress.update()
    finally:
        if pool is not None:
            pool.terminate()
    if not rows:
        msg = f"no {split} frame with sources among the first {n_frames} of {split}"
        raise ValueError(msg)
    results = vstack(rows)
    results.meta["methods"] = list(methods)
    results.meta["n_frames"] = len(rows)
    results.meta["timings"] = {m: float(t) for m, t in timings.items()}
    return results


def usable(results, method, with_positions=True):
    """Rows where ``method`` gave finite values and positive errors."""
    ok = np.ones(len(results), dtype=bool)
    keys = [("flux", "flux_err")]
    if with_positions and f"x_{method}" in results.colnames:
        keys += [("x", "x_err"), ("y", "y_err")]
    with np.errstate(invalid="ignore"):
        for val, err in keys:
            v = np.asarray(results[f"{val}_{method}"], dtype=float)
            e = np.asarray(results[f"{err}_{method}"], dtype=float)
            ok &= np.isfinite(v) & np.isfinite(e) & (e > 0)
    return ok


def true_image_psf(psf_params, oversampling=4, half_size=None):
    """
    The simulator's PSF as a photutils `~photutils.psf.ImagePSF`.

    The image holds the *pixel-integrated* PSF (what the simulator puts in a
    pixel) sampled every ``1/oversampling`` pixel, i.e. an effective PSF
    (ePSF), so ``ImagePSF`` evaluated at pixel centres reproduces the
    simulator's stamps.

    Parameters
    ----------
    psf_params : dict
        Scalar parameters of `asidfe_phot.datasets.render_psf_stamps` (one star).
    oversampling : int, optional
    half_size : int, optional
        Half-size in pixels; default the simulator's ``ceil(5 * fwhm)``.

    Returns
    -------
    `~photutils.psf.ImagePSF`
    """
    from photutils.psf import ImagePSF

    from asidfe_phot.datasets import render_psf_stamps

    o = int(oversampling)
    params = {k: v for k, v in psf_params.items()}
    fwhm = float(np.asarray(params.get("fwhm", 3.0)).ravel()[0])
    trunc = float(np.asarray(params.get("truncation", 5.0)).ravel()[0])
    h = int(np.ceil(trunc * fwhm)) if half_size is None else int(half_size)
    # Star at (x, y) = (-j/o, -k/o) + 0: pixel g holds the pixel-integrated PSF at offset g + j/o.
    shifts = np.arange(o) / o
    xs = np.repeat(-shifts, o)
    ys = np.tile(-shifts, o)
    stamps, x0, y0 = render_psf_stamps(params, xs, ys, half_size=h)
    size = 2 * h + 1
    fine = np.zeros((size * o, size * o))
    grid = np.arange(size) - h
    for s, xi, yi, x0i, y0i in zip(stamps, xs, ys, x0, y0):
        ox = np.rint((grid + x0i - xi + h) * o).astype(int)
        oy = np.rint((grid + y0i - yi + h) * o).astype(int)
        okx = (ox >= 0) & (ox < size * o)
        oky = (oy >= 0) & (oy < size * o)
        fine[np.ix_(oy[oky], ox[okx])] = s[np.ix_(oky, okx)]
    # Centre of the fine grid: offset 0 is at index h * o.
    return ImagePSF(fine, origin=(h * o, h * o), oversampling=o)


def true_gridded_psf(psf_at, shape, *, nodes=9, oversampling=4, half_size=None):
    """
    A spatially varying true PSF as a photutils `~photutils.psf.GriddedPSFModel`.

    The true ePSF (`true_image_psf`) at ``nodes x nodes`` positions spanning
    the frame, bilinearly interpolated between them by photutils: one model
    for all the sources of a frame, so `psf_photometry_true_psf` fits a
    whole frame in one `~photutils.psf.PSFPhotometry` call instead of one
    call per source (twice as fast, and identical to 1e-4 in flux). The
    simulator's PSF parameters vary as a 2nd-order polynomial across the
    frame by a few per cent; with a 9x9 grid the model differs from the
    simulator's pixels by about 1e-4 of the peak.

    Parameters
    ----------
    psf_at : callable
        ``psf_at(x, y)`` with 1-D arrays returns the PSF parameters there, as
        in `asidfe_phot.datasets.render_psf_stamps` (scalars or per-star
        arrays), e.g. ``lambda x, y: training.simulate._psf_at(cond, x, y,
        shape)``.
    shape : tuple of int
        ``(ny, nx)`` of the frame; the nodes span pixels ``0 .. n - 1``.
    nodes : int, optional
        Nodes per axis (at least 2; photutils refuses 2 or 3 ePSFs in all,
        so a 2x2 grid is the smallest).
    oversampling : int, optional
    half_size : int, optional
        Half-size in pixels of the ePSF images. Default the full truncation
        radius; a smaller value crops the wings (the PSF stays normalised
        to the full profile, so fitted fluxes remain total fluxes), which
        is enough when the fit box is smaller.

    Returns
    -------
    `~photutils.psf.GriddedPSFModel`
    """
    from astropy.nddata import NDData
    from photutils.psf import GriddedPSFModel

    ny, nx = shape
    nodes = max(int(nodes), 2)
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, nodes), np.linspace(0, ny - 1, nodes))
    gx, gy = gx.ravel(), gy.ravel()
    params = psf_at(gx, gy)
    o = int(oversampling)
    images = []
    for i in range(gx.size):
        one = {k: (v if isinstance(v, str) else np.broadcast_to(np.asarray(v), gx.shape)[i].item())
               for k, v in params.items()}
        model = true_image_psf(one, oversampling=o)
        # true_image_psf puts offset 0 at index h * o of a (2h + 1) * o grid; GriddedPSFModel
        # wants it at the centre of an odd-sized image: keep indices h*o - c*o .. h*o + c*o.
        h = (model.data.shape[0] // o - 1) // 2
        images.append((model.data, h))
    c = min(h for _, h in images)
    if half_size is not None:
        c = min(c, int(half_size))
    data = np.stack([d[(h - c) * o:(h + c) * o + 1, (h - c) * o:(h + c) * o + 1]
                     for d, h in images])
    nd = NDData(data, meta={"grid_xypos": np.column_stack([gx, gy]).tolist(),
                            "oversampling": o})
    return GriddedPSFModel(nd)
