"""
The real target of the transfer-learning study (`training.transfer_study`, ``--target real``):
the ESO NTT/EMMI frame of ``shared/real`` labelled by a reference catalogue, as the paper
labelled its MeerLICHT and ZTF frames with SourceExtractor and DAOPHOT (Stoppa et al. 2023,
sections 4.2-4.3).

Reference: the frame's SourceExtractor + PSFEx PSF-fit catalogue
(``galaxies_sextractor_psffit_rerun.cat``): XPSF/YPSF and FLUX_PSF, with errors on all three
(DAOPHOT ALLSTAR gives none on positions, so ConTEST could not add the reference's own
position errors), and the tool of the paper's own real-image comparison (its Table 1).
Rows: a successful PSF fit (FLUX_PSF, FLUXERR_PSF and both position variances > 0), no flag
beyond "has neighbours" / "blended" (FLAGS & ~3 == 0: not saturated, not truncated), not
sharper than the PSF (SPREAD_MODEL >= -0.01: in this catalogue the 10 rows below it are
failed fits, FLUX_PSF 1.6-12 times FLUX_AUTO and centres up to 1.7 px from the detection),
the 34x34 stamp inside the frame. Most are galaxies (about 70 are point-like,
``|SPREAD_MODEL| < 0.003``): the labels are the reference's PSF-fit values whatever the
source, as a network trained on a pipeline's catalogue would learn them.

Stamps: the frame is prepared as `~asidfe_phot.MLPhotometry` and ``asidfe-phot tailor``
prepare it (`training.tailor.measure_frame`: mesh background and rms, gain from sky / rms^2,
the ePSF of ``psf_model="auto"``); a 34x34 stamp is cut around each row's detection position
(X_IMAGE, Y_IMAGE: the isophotal barycentre, not the PSF fit) and its ePSF stamp beside it,
in the simulator's data set layout (`training.data.StampSet` reads it): truth offsets are
the reference's XPSF/YPSF (1-based there, 0-based here) from the stamp's reference pixel,
the flux target the reference's FLUX_PSF times the scale below (`StampSet` divides it by the
flux unit, as for simulated stamps).

Split: by ``blocks x blocks`` tiles of the frame, a seeded ``test_fraction`` of the tiles for
the test rows, the others for training; training rows whose stamp would reach into a test
tile are dropped (no test pixel is seen in training, neighbours included), and a seeded
``val_fraction`` of the rest is the validation split (early stopping).

DAOPHOT reference (``target["reference"] = "daophot"``, ``--reference daophot``): the
labels are the frame's IRAF DAOPHOT ALLSTAR fits (``galaxies_iraf_daophot_allstar_rerun.txt``:
XCENTER/YCENTER, 1-based; flux ``10**(-0.4 (MAG - 25))`` with error ``flux MERR ln(10) /
2.5``), each matched to the SourceExtractor row whose detection lies within
``DAOPHOT_MATCH_RADIUS`` px (mutual nearest), which gives the stamp's detection position,
the FLAGS cut and the point-like flag; SPREAD_MODEL's failed-fit cut is SourceExtractor's
own and is not applied. ALLSTAR gives no position errors: the ConTEST verdicts with the
reference's errors added are then given for the flux alone.

Flux scale: the reference's PSF fluxes are on PSFEx's normalisation, ours are total fluxes.
One factor ``k`` puts the reference on our scale: the median of the shipped network's flux
(no PSF, the ``direct`` mode) over the reference's, on the *training* rows that are
point-like with reference S/N >= 20 (all training rows with S/N >= 20 when fewer than 5).
Labels and reference flux errors are multiplied by ``k``; it is recorded in ``index.json``.
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps

from . import simulate as simulate_mod

#: The environment variable naming the folder of the real frames (as ``evaluation``'s).
REAL_DATA_VARIABLE = "ASIDFE_REAL_DATA"
FRAME = "eso_ntt_emmi/galaxies.fits"
CATALOGUE = "eso_ntt_emmi/galaxies_sextractor_psffit_rerun.cat"
#: SourceExtractor position columns (1-based in the catalogue).
_POSITIONS = ("X_IMAGE", "Y_IMAGE", "XPSF_IMAGE", "YPSF_IMAGE", "XWIN_IMAGE", "YWIN_IMAGE")
#: Point-like: the PSFEx-based classifier (CLASS_STAR is unusable in this catalogue, see
#: ``evaluation.real_frames``).
POINT_SPREAD_MODEL = 0.003
#: Rows sharper than the PSF by more than this are the reference's failed fits.
MIN_SPREAD_MODEL = -0.01
#: Rows whose reference S/N reaches this take part in the flux-scale fit.
SCALE_MIN_SNR = 20.0
#: A DAOPHOT star and a SourceExtractor detection within this (px) are the same source.
DAOPHOT_MATCH_RADIUS = 1.5


def daophot_labels(path, cat):
    """
    The SourceExtractor catalogue ``cat`` (0-based, `read_catalogue`) relabelled by a
    DAOPHOT ALLSTAR list (ID XCENTER YCENTER MAG MERR MSKY CHI SHARPNESS): the rows
    matched to an ALLSTAR star keep their detection columns and take its position and
    flux as XPSF/YPSF and FLUX_PSF; position errors are unknown (NaN).
    """
    from scipy.spatial import cKDTree

    table = np.loadtxt(path, ndmin=2)
    dx, dy = table[:, 1] - 1.0, table[:, 2] - 1.0
    mag, merr = table[:, 3], table[:, 4]
    good = np.isfinite(dx) & np.isfinite(dy) & np.isfinite(mag) & (merr > 0) & (merr < 9)
    dx, dy, mag, merr = dx[good], dy[good], mag[good], merr[good]
    detections = np.column_stack([cat["X_IMAGE"], cat["Y_IMAGE"]])
    stars = np.column_stack([dx, dy])
    dist, nearest = cKDTree(detections).query(stars, distance_upper_bound=DAOPHOT_MATCH_RADIUS)
    _, back = cKDTree(stars).query(detections, distance_upper_bound=DAOPHOT_MATCH_RADIUS)
    star = np.flatnonzero(np.isfinite(dist))
    star = star[back[nearest[star]] == star]          # mutual nearest only
    rows = nearest[star]
    out = {name: values[rows] for name, values in cat.items()}
    flux = 10.0 ** (-0.4 * (mag[star] - 25.0))
    out["XPSF_IMAGE"], out["YPSF_IMAGE"] = dx[star], dy[star]
    out["FLUX_PSF"] = flux
    out["FLUXERR_PSF"] = flux * merr[star] * np.log(10.0) / 2.5
    out["ERRX2PSF_IMAGE"] = np.full(star.size, np.nan)
    out["ERRY2PSF_IMAGE"] = np.full(star.size, np.nan)
    return out


def real_data_dir():
    """``$ASIDFE_REAL_DATA``, else ``../shared/real`` beside the repository."""
    given = os.environ.get(REAL_DATA_VARIABLE)
    return Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "real"


def read_catalogue(path):
    """The SourceExtractor ASCII_HEAD catalogue as a dict of arrays, positions 0-based."""
    import warnings

    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = Table.read(path, format="ascii.sextractor")
    cat = {name: np.asarray(tbl[name], dtype=np.float64) for name in tbl.colnames}
    for name in _POSITIONS:
        if name in cat:
            cat[name] = cat[name] - 1.0
    return cat


def select_rows(cat, shape):
    """Indices of the usable rows (see the module doc) for a frame of ``shape``."""
    half = _stamps.STORED_STAMP_SIZE // 2
    ref_x = _stamps.reference_pixel(cat["X_IMAGE"])
    ref_y = _stamps.reference_pixel(cat["Y_IMAGE"])
    # DAOPHOT labels (`daophot_labels`) have no position errors (NaN), and the
    # SPREAD_MODEL cut of SourceExtractor's failed fits does not judge them.
    sextractor_fit = np.isfinite(cat["ERRX2PSF_IMAGE"]) | np.isfinite(cat["ERRY2PSF_IMAGE"])
    ok = ((cat["FLUX_PSF"] > 0) & (cat["FLUXERR_PSF"] > 0)
          & ((cat["FLAGS"].astype(int) & ~3) == 0)
          & (~sextractor_fit | ((cat["ERRX2PSF_IMAGE"] > 0) & (cat["ERRY2PSF_IMAGE"] > 0)
                                & (cat["SPREAD_MODEL"] >= MIN_SPREAD_MODEL))))
    ok &= (ref_x - half >= 0) & (ref_x + half < shape[1])
    ok &= (ref_y - half >= 0) & (ref_y + half < shape[0])
    return np.flatnonzero(ok)


def split_rows(x, y, shape, target):
    """
    ``'train'``, ``'val'``, ``'test'`` or ``''`` (dropped) per row at detections ``x, y``.

    Tiles of the frame go to the test split (a seeded ``test_fraction`` of them) or not;
    a non-test row whose stamp reaches a test tile is dropped; ``val_fraction`` of the
    remaining rows (seeded) are the validation split.
    """
    from scipy.ndimage import maximum_filter

    rng = np.random.default_rng(target["seed"])
    n = int(target["blocks"])
    tile_y = np.minimum((np.arange(shape[0]) * n) // shape[0], n - 1)
    tile_x = np.minimum((np.arange(shape[1]) * n) // shape[1], n - 1)
    tiles = rng.permutation(n * n)
    test_tiles = tiles[:max(1, int(round(target["test_fraction"] * n * n)))]
    test_map = np.isin(tile_y[:, None] * n + tile_x[None, :], test_tiles)
    # Pixels within a stamp's half-size (and the crop margin) of a test tile.
    near_test = maximum_filter(test_map, size=2 * (_stamps.STORED_STAMP_SIZE // 2) + 3)
    iy = np.clip(_stamps.reference_pixel(y), 0, shape[0] - 1)
    ix = np.clip(_stamps.reference_pixel(x), 0, shape[1] - 1)
    split = np.where(test_map[iy, ix], "test", np.where(near_test[iy, ix], "", "train"))
    rest = np.flatnonzero(split == "train")
    n_val = int(round(target["val_fraction"] * rest.size))
    split[rng.choice(rest, n_val, replace=False)] = "val"
    return split.astype("<U5")


def load_target(target):
    """The frame (cut as ``target['cut']`` says: ``[y0, y1, x0, x1]``) and its catalogue."""
    from asidfe_phot.io import read_image

    root = real_data_dir()
    data, _, _ = read_image(root / target["frame"])
    cat = read_catalogue(root / target["catalogue"])
    if target.get("reference", "sextractor") == "daophot":
        cat = daophot_labels(root / target["daophot"], cat)
    cut = target.get("cut")
    if cut:
        y0, y1, x0, x1 = (int(v) for v in cut)
        data = np.ascontiguousarray(data[y0:y1, x0:x1])
        for name in _POSITIONS:
            if name in cat:
                cat[name] = cat[name] - (x0 if name.startswith("X") else y0)
    return data, cat


def write_dataset(out, target, source, predict, log=print):
    """
    The labelled stamps of the real target in the simulator's layout (see the module doc);
    returns the index. ``predict(weights, stamp_set, psf_mode, limit)`` is the study's
    `~training.transfer_study.predict_physical` (used for the flux scale).

    ``out/reference.json`` holds, per split and in the stamps' order, the catalogue's
    NUMBER, the reference's errors (x, y px; flux on our scale) and the point-like flag.
    """
    from .data import StampSet
    from .tailor import _stamp_meta, measure_frame

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data, cat = load_target(target)
    frame, _, _, conditions = measure_frame(data, psf_model="auto", parent=source)
    rows = select_rows(cat, data.shape)
    det_x, det_y = cat["X_IMAGE"][rows], cat["Y_IMAGE"][rows]
    split = split_rows(det_x, det_y, data.shape, target)
    image = frame.subtracted if frame.bad is None else np.where(frame.bad, 0.0,
                                                                frame.subtracted)
    flux, flux_err = cat["FLUX_PSF"][rows], cat["FLUXERR_PSF"][rows]
    meta, ref_x, ref_y = _stamp_meta(frame, 0, cat["XPSF_IMAGE"][rows],
                                     cat["YPSF_IMAGE"][rows], det_x, det_y, flux,
                                     flux / flux_err)
    stamps, _ = _stamps.cutout_stamps(image, ref_x + 0.0, ref_y + 0.0,
                                      _stamps.STORED_STAMP_SIZE, fill=0.0)
    psf = frame.sampler.stamps(ref_x, ref_y, _stamps.STORED_PSF_SIZE)
    point = np.abs(cat["SPREAD_MODEL"][rows]) < POINT_SPREAD_MODEL
    reference = {}
    splits = {}
    for name in simulate_mod.SPLITS:
        sel = np.flatnonzero(split == name)
        if not sel.size:
            msg = f"the real target has no {name} rows (cut {target.get('cut')}): enlarge it"
            raise ValueError(msg)
        writer = simulate_mod._ShardWriter(out, name, 10**9)
        writer.add(stamps[sel].astype(np.float32), meta[sel], psf[sel].astype(np.float32))
        writer.flush()
        splits[name] = {"shards": writer.shards, "count": writer.count}
        reference[name] = {
            "number": cat["NUMBER"][rows][sel].astype(int).tolist(),
            "x_err": np.sqrt(cat["ERRX2PSF_IMAGE"][rows][sel]).tolist(),
            "y_err": np.sqrt(cat["ERRY2PSF_IMAGE"][rows][sel]).tolist(),
            "flux_err": flux_err[sel].tolist(), "point": point[sel].tolist()}
    index = {
        "preset": "real", "seed": target["seed"], "n_frames": 1,
        "frame_shape": list(data.shape), "families": [],
        "stamp_size": _stamps.STORED_STAMP_SIZE,
        "meta_fields": [f for f, _ in simulate_mod.META_FIELDS], "psf": True,
        "psf_errors": None, "splits": splits, "target": target,
        "conditions": {k: v for k, v in conditions.items() if k != "luminosity_function"},
        "n_rows": int(rows.size), "n_dropped_near_test": int(np.count_nonzero(split == "")),
        "n_point": {s: int(np.count_nonzero(point[split == s])) for s in simulate_mod.SPLITS},
    }
    # The flux scale, from the shipped network on the training rows (labels still at k = 1).
    (out / "index.json").write_text(json.dumps(index, indent=2))
    train = StampSet(out, "train")
    res, truth = predict(source, train, "without", len(train))
    k, n_scale, rule = fit_flux_scale(res["flux"], truth["flux"], truth["snr"],
                                      np.asarray(reference["train"]["point"]))
    log(f"real target: {rows.size} rows, counts {({s: v['count'] for s, v in splits.items()})}"
        f", flux scale k = {k:.4f} ({rule}, {n_scale} rows)")
    for name in simulate_mod.SPLITS:
        for shard in splits[name]["shards"]:
            path = out / f"{shard}.meta.npy"
            m = np.load(path)
            m["flux"] = m["flux"] * k
            np.save(path, m)
        reference[name]["flux_err"] = (np.asarray(reference[name]["flux_err"]) * k).tolist()
    (out / "reference.json").write_text(json.dumps(reference))
    index.update({"flux_scale": k, "flux_scale_rows": n_scale, "flux_scale_rule": rule,
                  "seconds": time.time() - start})
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def fit_flux_scale(flux, reference, snr, point):
    """
    ``k``: median of ``flux / reference`` over the point-like rows with S/N >= 20 (all rows
    with S/N >= 20 when fewer than 5 are point-like; all rows when fewer than 5 reach it).
    Returns ``k``, the rows used and which rule chose them.
    """
    ok = np.isfinite(flux) & np.isfinite(reference) & (reference > 0)
    bright = ok & (snr >= SCALE_MIN_SNR)
    choices = [(bright & point, f"point-like, S/N >= {SCALE_MIN_SNR:g}"),
               (bright, f"S/N >= {SCALE_MIN_SNR:g}"), (ok, "all")]
    sel, rule = next((c for c in choices if np.count_nonzero(c[0]) >= 5), choices[-1])
    return float(np.median(flux[sel] / reference[sel])), int(np.count_nonzero(sel)), rule


def is_ready(out):
    """Whether the labelled set is complete (its flux scale is written last)."""
    index = Path(out) / "index.json"
    return index.exists() and "flux_scale" in json.loads(index.read_text())


def reference_metrics(res, truth, out, n_sim=10_000):
    """
    What the real target adds to `~training.transfer_study.mode_metrics`: the ConTEST
    statistic with the network's errors alone (the reference as the model, as the table's
    verdict), the verdict and statistic with the reference's errors added, the same on the
    point-like rows alone, and the median flux ratio to the reference (our scale).
    """
    from asidfe_phot.consistency import contest

    ref = json.loads((Path(out) / "reference.json").read_text())["test"]
    n = len(truth["flux"])
    ref_err = {key: np.asarray(ref[name])[:n]
               for key, name in (("dx", "x_err"), ("dy", "y_err"), ("flux", "flux_err"))}
    point = np.asarray(ref["point"], dtype=bool)[:n]
    extra = {"n_point": int(point.sum())}
    for key in ("dx", "dy", "flux"):
        value, err, true = res[key], res[f"{key}_err"], truth[key]
        good = np.isfinite(value) & np.isfinite(err) & (err > 0)
        alone = contest(value[good], true[good], err[good], n_sim=n_sim)
        extra[f"contest_t_{key}"] = alone.statistic
        extra[f"contest_p_{key}"] = alone.pvalue
        if np.isfinite(ref_err[key][good]).all():
            both = contest(value[good], true[good], err[good], ref_err[key][good],
                           n_sim=n_sim)
            extra[f"contest_both_{key}"] = "Rejected" if both.rejected else "Not Rejected"
            extra[f"contest_both_t_{key}"] = both.statistic
        else:   # the reference gives no errors here (DAOPHOT's positions)
            extra[f"contest_both_{key}"] = "n/a"
            extra[f"contest_both_t_{key}"] = float("nan")
        sub = good & point
        if sub.sum() >= 3:
            extra[f"point_pearson_{key}"] = float(np.corrcoef(value[sub], true[sub])[0, 1])
            p = contest(value[sub], true[sub], err[sub], n_sim=n_sim)
            extra[f"point_contest_{key}"] = "Rejected" if p.rejected else "Not Rejected"
            extra[f"point_contest_t_{key}"] = p.statistic
    ratio = res["flux"] / truth["flux"]
    extra["flux_ratio_median"] = float(np.nanmedian(ratio))
    extra["point_flux_ratio_median"] = (float(np.nanmedian(ratio[point])) if point.any()
                                        else float("nan"))
    return extra


def rst_table(results):
    """
    The real target's second and third tables: on all held-out rows, the ConTEST statistic
    with the network's errors alone and with the reference's added, the verdict with both,
    the median flux ratio; on the point-like held-out rows, the first table's columns.
    """
    short = {"Rejected": "R", "Not Rejected": "NR", "n/a": "-"}
    keys = ("dx", "dy", "flux")
    modes = results["modes"]
    n_test = results["n_test_stamps"]
    n_point = next(iter(modes.values()))["n_point"]

    def stats(m, prefix):
        return "/".join(f"{m.get(f'{prefix}_{k}', np.nan):.2f}" for k in keys)

    def verdicts(m, prefix):
        if f"{prefix}_flux" not in m:
            return "-"
        return "/".join(short[m[f"{prefix}_{k}"]] for k in keys)

    rule = "========== ============== ============== ============== ==========="
    lines = [f"Against the reference, all {n_test} held-out rows. ConTEST statistic t = rms of "
             "(network - reference) / sigma: 1 when the errors fit the differences, < 1 "
             "errors too large, > 1 too small; sigma the network's error alone (the first "
             "table's verdict) or with the reference's error added:", "",
             rule,
             "Mode       t x/y/f        t x/y/f        ConTEST x/y/f  flux median",
             "           net errs       net+ref errs   net+ref errs   net / ref",
             rule]
    for mode, m in modes.items():
        lines.append(f"{mode:<10} {stats(m, 'contest_t'):<14} {stats(m, 'contest_both_t'):<14} "
                     f"{verdicts(m, 'contest_both'):<14} {m['flux_ratio_median']:<11.3f}")
    lines += [rule, ""]
    rule = "========== ========= ========= ========== ============= ============== ==========="
    lines += [f"The {n_point} point-like held-out rows (SPREAD_MODEL within +-"
              f"{POINT_SPREAD_MODEL:g}), network errors alone:", "",
              rule,
              "Mode       Pearson x Pearson y Pearson f  ConTEST x/y/f t x/y/f        "
              "flux median",
              " " * rule.rindex(" ") + " net / ref",
              rule]
    for mode, m in modes.items():
        pearson = " ".join(f"{m.get(f'point_pearson_{k}', np.nan):<{w}.{d}f}"
                           for k, w, d in (("dx", 9, 3), ("dy", 9, 3), ("flux", 10, 4)))
        lines.append(f"{mode:<10} {pearson} {verdicts(m, 'point_contest'):<13} "
                     f"{stats(m, 'point_contest_t'):<14} {m['point_flux_ratio_median']:<11.3f}")
    lines.append(rule)
    return "\n".join(lines) + "\n"
