"""
Accuracy of a model on held-out simulated frames, side by side with classical photometry.

    python -m evaluation.synthetic --model models/asidfe_tsmve_v5 --data runs/data_v1 \
        --n-frames 60 --out runs/v1/evaluation [--methods ml,sep,aper,sex,psfex,psf]

Test frames are re-simulated in full from the data set's seeds (the test split
is by frame), so every method sees the same image and the same detector
positions (the simulator's sep detections matched to a star). Methods
(``--methods``, default all; SourceExtractor ones are skipped with a message
when the binaries are not installed):

- ``ml``: asidfe_phot `MLPhotometry` (the exported ONNX model, the user's code
  path: raw frame, gain given, background estimated by the package).
- ``sep``: SourceExtractor's FLUX_AUTO through ``sep`` on the detections
  (Kron radius within 6 isophotal a, b; elliptical aperture of 2.5 Kron
  radii, at least 3.5, in units of a and b, as SourceExtractor's default
  PHOT_AUTOPARAMS 2.5, 3.5; the simulator's background). Neighbours are
  masked as in SourceExtractor: sep's detection is run again with the
  simulator's settings (`sep_segmentation`, the same catalogue) and a
  segmentation map, each input is given the segmentation id of its nearest
  detection, and the pixels of all other detections are left out of its
  Kron radius and its flux (sep's ``segmap``/``seg_id``; SourceExtractor's
  default MASK_TYPE CORRECT replaces them by their mirror pixels instead,
  so sep loses the star's own light under a neighbour's segment). No
  positions of its own (they are the input positions).
- ``aper``: photutils circular apertures (radius 1.5 FWHM) at the input
  positions, corrected with the true PSF's enclosed fraction.
- ``sex``: the SourceExtractor binary on the raw frame (its own background,
  ``GAIN`` = the frame's gain so FLUXERR_AUTO holds the Poisson noise,
  detection set like the simulator's sep call: the same absolute threshold
  (`detection_threshold`), 4 px, DEBLEND_MINCONT 0.005): FLUX_AUTO and
  FLUXERR_AUTO, XWIN/YWIN with errors sqrt(ERRX2WIN/ERRY2WIN). Its
  detections are tied to the input positions with SourceExtractor's ASSOC
  (nearest input within ``ASSOC_RADIUS`` px of its X_IMAGE/Y_IMAGE; an input
  claimed by two detections keeps the closer one). Inputs without a
  detection get NaN and count as failures.
- ``psfex``: SourceExtractor PSF fitting with a PSFEx model built from the
  same frame (XPSF/YPSF with sqrt(ERRX2PSF/ERRY2PSF), FLUX_PSF/FLUXERR_PSF),
  tied to the inputs the same way; FLUX_PSF = 0 (failed fit) counts as a
  failure. PSFEx normalises its model to a 10 px aperture, so the fluxes
  are aperture-corrected to FLUX_AUTO with the frame's median ratio over
  unflagged bright stars (`psfex_aperture_correction`, kept in the results).
- ``psf``: photutils `~photutils.psf.PSFPhotometry` with the TRUE PSF,
  started at the input positions: the simulator's spatially varying PSF on
  a 9x9 grid of true ePSFs (`reference_tools.true_gridded_psf`, within
  ~1e-4 of the peak of the simulator's PSF), fit box 2 ceil(1.5 FWHM) + 1
  px (at least 7), weights from the total error map (background rms and
  the sources' Poisson noise). Each source is fitted alone (neighbours are
  not subtracted). With PSFEx the slowest method (~60-130 sources/s); leave
  it out with ``--methods``.

The yardstick is the Cramér–Rao bound (CRLB) of a fit with the true PSF.

Metrics per S/N bin (`bin_metrics`; columns ``<metric>_<method>``): flux
MARE, flux rms/CRLB, std of the flux z-score ``(estimate - truth) / sigma``
(``zstd``, 1 for calibrated errors), the fractions within 1 and 2 sigma
(``cov68``, ``cov95``), and for methods with positions (``ml``, ``sex``,
``psfex``, ``psf``) the same per axis (``x_mae``, ``x_rms_over_crlb``,
``x_zstd``, ``x_cov68``, ``x_cov95``, y alike) and pooled over both axes
(``pos_*``); ``x_mae_init``/``pos_mae_init`` are the input positions'
errors. ``failure_rate_<method>``: fraction of the bin's sources for which
the method gave no usable result (a non-finite value, or an error <= 0, or
no matched detection); the other metrics of a method are over its usable
results. ``flagged_fraction_ml``: MLPhotometry rows with flags != 0 (kept
in all metrics).

Frames are split by crowding: the simulator's stars per FWHM^2 (``stars_per
_beam`` in the frame's conditions, log-uniform in 0.05-0.8) at or above
``--crowding-threshold`` (default 0.2, the median of that distribution) are
"crowded", the others "sparse". Written into ``--out``:

- ``results.ecsv``: one row per source, all methods (meta: timings).
- ``metrics.ecsv``, ``metrics.rst`` (the docs' ML table), ``metrics.png``
  (MARE, z-std and rms/CRLB of flux and position vs S/N, one line per
  method), and the docs tables ``metrics_flux.rst`` (flux MARE per method),
  ``metrics_position.rst`` (position MAE per method), ``metrics_calibration.rst``
  (z-std / cov68 / cov95 per method), ``metrics_crlb.rst`` (rms/CRLB per
  method), ``metrics_failures.rst`` (failure rates, ML flagged fraction):
  all frames.
- The same with ``metrics_sparse`` and ``metrics_crowded`` in place of
  ``metrics``: the two halves.
- ``wins.json``: per subset, S/N bin and classical method, whether ML's flux
  MARE and position MAE are lower, with the ratio ML / method.
- ``timings.json``: seconds per frame and sources per second of each method.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from astropy.table import QTable

from evaluation.baselines import (
    _aperture_flux,
    _run_source_extractor,
    _sep_flux_auto,
    _true_psf_fit,
    detection_threshold,
    segmentation_ids,
    sep_segmentation,
)
from evaluation.metrics import SNR_BINS, calibration, mae, mare, snr_bins
from evaluation.report import (
    METHODS,
    POSITION_METHODS,
    _win_counts,
    plot_metrics,
    wins,
    write_method_tables,
    write_metrics_rst,
)
from training import frames as frames_mod
from training.frames import data_recipe  # noqa: F401 (the recipe of --data)

#: Methods that need the SourceExtractor (and PSFEx) binaries.
SOURCE_EXTRACTOR_METHODS = ("sex", "psfex")
#: Frames with at least this many stars (S/N > 1) per FWHM^2 are "crowded".
CROWDING_THRESHOLD = 0.2
def resolve_methods(methods=None, log=print):
    """
    The methods to run, in `METHODS` order.

    ``None`` (or ``"all"``) means all of them, leaving out the SourceExtractor
    ones (with a message) when the binaries are not installed; methods named
    explicitly must be runnable.
    """
    from evaluation import reference_tools as rt

    explicit = methods is not None and methods != "all"
    if not explicit:
        methods = METHODS
    elif isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        msg = f"unknown methods {unknown}; choose from {', '.join(METHODS)}"
        raise ValueError(msg)
    chosen = [m for m in METHODS if m in methods]
    if not chosen:
        msg = "no methods to run"
        raise ValueError(msg)
    missing = []
    for m in SOURCE_EXTRACTOR_METHODS:
        if m in chosen:
            try:
                rt.find_source_extractor()
                if m == "psfex":
                    rt.find_psfex()
            except rt.ToolNotFoundError:
                if explicit:
                    raise
                missing.append(m)
    if missing:
        log(f"skipping {', '.join(missing)}: SourceExtractor/PSFEx not installed "
            "(apt-get install -y source-extractor psfex)")
    return [m for m in chosen if m not in missing]


def measure_frames(model, data, n_frames=60, log=print, methods=None, jobs=1, split="test",
                   calibrated=True):
    """
    Per-source results of every method on the first ``n_frames`` frames of ``split``.

    ``methods``: see `resolve_methods`. The ML methods are measured by
    `training.frames.measure_frames` (``calibrated=False``: ML sigmas without the
    card's post-hoc calibration), the others by `measure_classical`. ``jobs``: frames
    measured at once, one process each (each method runs single-threaded then); the
    results do not depend on it. The returned table's ``meta['timings']`` holds each
    method's total seconds, summed over frames (the ``sep`` time includes its
    detection run for the segmentation map, not the background estimate, which the
    simulator did; ``sex`` and ``psfex`` include their own detection and, for
    ``psfex``, building the PSF model).
    """
    methods = resolve_methods(methods, log)
    return frames_mod.measure_frames(model, data, n_frames, log=log, methods=methods, jobs=jobs,
                                     split=split, calibrated=calibrated,
                                     other=measure_classical)


def measure_classical(frame, m):
    """
    Columns of a classical method ``m`` on a frame of
    `training.frames.simulate_test_frame`, and messages to log.
    """
    from photutils.utils import calc_total_error

    cond, shape, sub, rms = frame["cond"], frame["shape"], frame["sub"], frame["rms"]
    x_in, y_in, det, obj = frame["x_in"], frame["y_in"], frame["det"], frame["obj"]
    tx, ty = frame["columns"]["x_true"], frame["columns"]["y_true"]
    n = x_in.size
    messages = []
    if m == "sep":
        objects, segmap = sep_segmentation(sub, rms)
        if len(objects) != len(det) or not np.array_equal(objects["x"], det["x"]):
            messages.append(f"frame {frame['frame_id']}: sep's segmentation run found "
                            f"{len(objects)} detections, the simulator {len(det)}; ids from "
                            "the nearest one")
        seg_id, _ = segmentation_ids(objects, x_in, y_in)
        flux, err = _sep_flux_auto(sub.astype(np.float64), det[obj], rms, cond["gain"],
                                   segmap=segmap, seg_id=seg_id)
        return {"flux_sep": flux, "flux_err_sep": err}, messages
    if m == "aper":
        error = calc_total_error(sub, rms, cond["gain"])
        flux, err = _aperture_flux(sub, x_in, y_in, 1.5 * cond["fwhm0"], error, frame["psf"],
                                   tx, ty)
        return {"flux_aper": flux, "flux_err_aper": err}, messages
    if m in ("sex", "psfex"):
        try:
            res = _run_source_extractor(frame["image"], x_in, y_in, cond,
                                        detection_threshold(rms), psf_fit=m == "psfex")
        except RuntimeError as exc:
            # E.g. PSFEx finds too few stars: every source of the frame fails.
            messages.append(f"frame {frame['frame_id']}: {m} failed: "
                            f"{str(exc).splitlines()[0]}")
            res = {key: np.full(n, np.nan) for key in
                   ("x", "y", "x_err", "y_err", "flux", "flux_err")}
            res["flags"] = np.full(n, -1)
        cols = {f"{key}_{m}": res[key] for key in
                ("x", "y", "x_err", "y_err", "flux", "flux_err", "flags")}
        if m == "psfex":
            cols["aperture_correction_psfex"] = res.get("aperture_correction",
                                                        np.full(n, np.nan))
        return cols, messages
    if m == "psf":
        error = calc_total_error(sub, rms, cond["gain"])
        return _true_psf_fit(sub, x_in, y_in, cond, shape, error), messages
    msg = f"not a classical method: {m}"
    raise ValueError(msg)


def methods_in(results):
    """The methods with results in a table (`METHODS` order)."""
    return [m for m in METHODS if f"flux_{m}" in results.colnames]


def _has_positions(results, m):
    return m in POSITION_METHODS and f"x_{m}" in results.colnames


def usable(results, m):
    """Rows where method ``m`` gave finite values and positive errors."""
    return frames_mod.usable(results, m, with_positions=m in POSITION_METHODS)


def metric_names(methods):
    """The per-bin metric columns for ``methods``, in `bin_metrics` order."""
    names = ["x_mae_init", "y_mae_init", "pos_mae_init"]
    for m in methods:
        names += [f"flux_mare_{m}", f"flux_rms_over_crlb_{m}", f"flux_zstd_{m}",
                  f"flux_cov68_{m}", f"flux_cov95_{m}"]
        if m in POSITION_METHODS:
            for c in ("x", "y", "pos"):
                names += [f"{c}_mae_{m}", f"{c}_rms_over_crlb_{m}", f"{c}_zstd_{m}",
                          f"{c}_cov68_{m}", f"{c}_cov95_{m}"]
        names.append(f"failure_rate_{m}")
    if "ml" in methods:
        names.append("flagged_fraction_ml")
    return names


def bin_metrics(results, bins=SNR_BINS):
    """Per S/N bin: accuracy, error calibration and failures of every method (module doc)."""
    methods = methods_in(results)
    names = metric_names(methods)
    out = []
    for lo, hi, in_bin in snr_bins(results["snr"], bins):
        r = results[in_bin]
        row = {"snr_lo": lo, "snr_hi": hi, "n": len(r)}
        if len(r) == 0:
            out.append(row)
            continue
        dx0 = np.asarray(r["x_init"] - r["x_true"], float)
        dy0 = np.asarray(r["y_init"] - r["y_true"], float)
        row["x_mae_init"] = mae(dx0)
        row["y_mae_init"] = mae(dy0)
        row["pos_mae_init"] = mae(np.concatenate([dx0, dy0]))
        for m in methods:
            ok = usable(r, m)
            row[f"failure_rate_{m}"] = float(1.0 - np.mean(ok))
            g = r[ok]
            if len(g) == 0:
                continue
            ft = np.asarray(g["flux_true"], float)
            res = np.asarray(g[f"flux_{m}"], float) - ft
            row[f"flux_mare_{m}"] = mare(g[f"flux_{m}"], ft)
            row[f"flux_rms_over_crlb_{m}"] = _rms_over_crlb(res, g["crlb_flux"])
            for key, v in calibration(res, g[f"flux_err_{m}"]).items():
                row[f"flux_{key}_{m}"] = v
            if not _has_positions(r, m):
                continue
            pooled = {"res": [], "err": [], "crlb": []}
            for c in ("x", "y"):
                res = np.asarray(g[f"{c}_{m}"] - g[f"{c}_true"], float)
                err = np.asarray(g[f"{c}_err_{m}"], float)
                crlb = np.asarray(g[f"crlb_{c}"], float)
                row[f"{c}_mae_{m}"] = mae(res)
                row[f"{c}_rms_over_crlb_{m}"] = _rms_over_crlb(res, crlb)
                for key, v in calibration(res, err).items():
                    row[f"{c}_{key}_{m}"] = v
                pooled["res"].append(res)
                pooled["err"].append(err)
                pooled["crlb"].append(crlb)
            res, err, crlb = (np.concatenate(pooled[k]) for k in ("res", "err", "crlb"))
            row[f"pos_mae_{m}"] = mae(res)
            row[f"pos_rms_over_crlb_{m}"] = _rms_over_crlb(res, crlb)
            for key, v in calibration(res, err).items():
                row[f"pos_{key}_{m}"] = v
        if "ml" in methods:
            row["flagged_fraction_ml"] = float(np.mean(r["flags_ml"] != 0))
        out.append(row)
    # Empty bins, and methods without usable results in a bin, get NaN.
    keys = ["snr_lo", "snr_hi", "n", *names]
    metrics = QTable(rows=[{k: row.get(k, np.nan) for k in keys} for row in out], names=keys)
    metrics["n"] = metrics["n"].astype(int)
    metrics.meta["methods"] = methods
    return metrics


def _rms_over_crlb(residuals, crlb):
    """The residuals' rms over the Cramer-Rao bound's (1 for an optimal estimator)."""
    crlb = np.asarray(crlb, float)
    return float(np.sqrt(np.mean(np.square(residuals))) / np.sqrt(np.mean(crlb**2)))


def split_by_crowding(results, threshold=CROWDING_THRESHOLD):
    """``{'all', 'sparse', 'crowded'}`` subsets of the per-source results (by frame crowding)."""
    crowded = np.asarray(results["stars_per_beam"]) >= threshold
    return {"all": results, "sparse": results[~crowded], "crowded": results[crowded]}


def timing_summary(results):
    """Seconds per frame and sources per second of each method."""
    n_frames = max(int(results.meta.get("n_frames", 0)), 1)
    n = len(results)
    t = results.meta.get("timings", {})
    # With jobs > 1 each method ran single-threaded, `jobs` frames at a time.
    return {"frames": n_frames, "sources": n, "jobs": int(results.meta.get("jobs", 1)),
            "seconds_per_frame": {m: round(s / n_frames, 3) for m, s in t.items()},
            "sources_per_second": {m: (round(n / s, 1) if s > 0 else None)
                                   for m, s in t.items()}}


def evaluate_model(model, data, n_frames=60, out=None, log=print, methods=None,
                   crowding_threshold=CROWDING_THRESHOLD, jobs=1):
    """
    Measure, bin and (with ``out``) write everything listed in the module doc.

    Returns the per-bin metrics of all frames as a list of dicts (NaN as None).
    """
    results = measure_frames(model, data, n_frames, log, methods=methods, jobs=jobs)
    results.meta["jobs"] = jobs
    subsets = split_by_crowding(results, crowding_threshold)
    metrics = {name: bin_metrics(r) for name, r in subsets.items()}
    timing = timing_summary(results)
    log("seconds per frame: " + ", ".join(f"{m} {s:.2f}"
                                          for m, s in timing["seconds_per_frame"].items()))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        results.write(out / "results.ecsv", overwrite=True)
        win_json = {"crowding_threshold": crowding_threshold,
                    "definition": "ML's flux MARE / position MAE (pooled x and y) against each "
                                  "method's in the same S/N bin; *_lower: ML's is lower; "
                                  "*_ratio: ML / method; 'init': the input positions",
                    "subsets": {}}
        for name, m in metrics.items():
            stem = "metrics" if name == "all" else f"metrics_{name}"
            n_frames_sub = len(np.unique(subsets[name]["frame"]))
            m.meta["subset"] = name
            m.meta["frames"] = n_frames_sub
            m.write(out / f"{stem}.ecsv", overwrite=True)
            write_metrics_rst(m, out / f"{stem}.rst")
            write_method_tables(m, out / stem)
            title = (f"{name} frames ({n_frames_sub} frames, {len(subsets[name])} sources; "
                     f"crowded: >= {crowding_threshold:g} stars per FWHM$^2$)")
            plot_metrics(m, out / f"{stem}.png", title=title)
            bins = wins(m)
            win_json["subsets"][name] = {"frames": n_frames_sub,
                                         "sources": len(subsets[name]),
                                         "bins_won": _win_counts(bins), "bins": bins}
        (out / "wins.json").write_text(json.dumps(win_json, indent=1))
        (out / "timings.json").write_text(json.dumps(timing, indent=1))
    all_metrics = metrics["all"]
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
             for k, v in dict(zip(all_metrics.colnames, row)).items()}
            for row in all_metrics.as_array().tolist()]


def compare_psf_modes(runs):
    """
    Flux MARE, position MAE and flux z-std of the PSF modes, side by side.

    ``runs``: ``{label: folder of an evaluation}``; the first holds ``ml`` (no PSF),
    ``mlpsf`` (the true PSF given), ``mlauto`` (``psf_model="auto"``) and ``psf`` (the
    photutils fit with the true PSF); the others (e.g. the previous model) their ``ml``.
    """
    from astropy.table import QTable

    from evaluation.report import modes_rst

    tables = {label: QTable.read(Path(folder) / "metrics.ecsv") for label, folder in runs.items()}
    labels = list(tables)
    head, others = labels[0], labels[1:]
    columns = []
    for metric, name in (("flux_mare", "flux MARE"), ("pos_mae", "pos MAE"),
                         ("flux_zstd", "flux z-std")):
        for other in others:
            columns.append((f"{other} {name}", other, f"{metric}_ml"))
        for m, short in (("ml", "none"), ("mlpsf", "true PSF"), ("mlauto", "auto")):
            columns.append((f"{head} {short} {name}", head, f"{metric}_{m}"))
        if metric != "flux_zstd":
            columns.append((f"true-PSF fit {name}", head, f"{metric}_psf"))
    return modes_rst(columns, tables)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="model directory for 'ml' (default: the packaged model)")
    parser.add_argument("--data", default=None,
                        help="data set folder (its index.json); default: the model card's "
                             "recipe")
    parser.add_argument("--n-frames", type=int, default=60)
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated subset of {','.join(METHODS)} (default all; "
                             "SourceExtractor ones are skipped when not installed)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="frames measured in parallel, one single-threaded process each "
                             "(default: the number of cores; the results do not depend on it)")
    parser.add_argument("--crowding-threshold", type=float, default=CROWDING_THRESHOLD,
                        help="stars (S/N > 1) per FWHM^2 from which a frame counts as crowded")
    parser.add_argument("--write-card", action="store_true",
                        help="record the per-bin metrics in the model's card (--card-key)")
    parser.add_argument("--card-key", default="test_metrics",
                        help="the card entry --write-card writes (default test_metrics; "
                             "test_metrics_broad for the broad recipe)")
    parser.add_argument("--compare", default=None,
                        help="LABEL=DIR,...: write (to --out) and print an RST table of the "
                             "PSF modes of earlier runs side by side, and exit")
    args = parser.parse_args(argv)
    if args.compare:
        runs = dict(item.split("=", 1) for item in args.compare.split(","))
        text = compare_psf_modes(runs)
        Path(args.out).write_text(text)
        print(text)
        return
    metrics = evaluate_model(args.model, args.data, args.n_frames, args.out,
                             methods=args.methods, crowding_threshold=args.crowding_threshold,
                             jobs=args.jobs)
    if args.write_card:
        if args.model is None:
            parser.error("--write-card needs --model (a model directory)")
        from training.export import update_card

        update_card(args.model, {args.card_key: metrics})
    print(json.dumps(metrics, indent=1, default=float))


if __name__ == "__main__":
    main()
