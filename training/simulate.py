"""
Write a training / validation / test set of 34x34 stamps from simulated frames.

    python -m training.simulate --preset generic --n-frames 3000 --out runs/data

Each frame draws its own PSF family and parameters (varying smoothly across
the frame), sky, gain, read noise, crowding and luminosity function; sources
are detected with sep (SourceExtractor as a library) on the background-
subtracted frame, detections are matched to the truth, and a 34x34 stamp is
stored around each matched *detector* position, so the network learns from
imperfect input positions. Splits are 60/20/20 by frame.

Output: ``DIR/index.json`` and, per split and shard, ``<split>_<k>.stamps.npy``
(float32, background-subtracted data in ADU), ``<split>_<k>.meta.npy``
(structured array, one row per stamp; fields documented in ``META_FIELDS``) and
``<split>_<k>.psf.npy`` (float32, 33x33: the PSF the network is told, centred on
the stamp's reference pixel and made imperfect as a real ePSF is; see
`imperfect_psf_stamps`).
"""

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from asidfe_phot import _stamps
from asidfe_phot._progress import Progress
from asidfe_phot.background import estimate_background
from asidfe_phot.datasets import (
    PSF_FAMILIES,
    TRUNCATION_FWHM,
    fisher_bounds,
    render_psf_stamps,
    render_sources,
)

#: One row per stored stamp. Positions in the stored stamp's frame are offsets
#: from its reference pixel (index 17 of 34), in px.
META_FIELDS = [
    ("frame", "i4"),            # frame id (splits are by frame)
    ("true_dx", "f4"), ("true_dy", "f4"),    # truth offset from the stored reference pixel
    ("det_dx", "f4"), ("det_dy", "f4"),      # detector position, same frame
    ("flux", "f4"),             # true total flux (ADU)
    ("rms", "f4"),              # estimated background rms at the source (ADU)
    ("gain", "f4"),             # electrons per ADU
    ("sky_e", "f4"),            # true sky (e-/px) at the source
    ("read_noise", "f4"),       # e-
    ("snr", "f4"),              # optimal PSF-weighted S/N (known position and background)
    ("crlb_flux", "f4"),        # Cramér–Rao bound on flux (ADU), isolated star, true PSF
    ("crlb_x", "f4"), ("crlb_y", "f4"),      # px
    ("contamination", "f4"),    # sum of neighbours' flux within 16 px / own flux
    ("fwhm", "f4"), ("family", "i1"), ("beta", "f4"), ("ellipticity", "f4"),
    ("x_frame", "f4"), ("y_frame", "f4"),    # truth position in the frame
]
META_DTYPE = np.dtype(META_FIELDS)

#: The families of the generic recipes (the broad one adds the Airy pattern).
GENERIC_FAMILIES = ("gaussian", "moffat", "double_gaussian")
PRESETS = {
    # FWHM ranges in pixels; the rest is shared (see _draw_frame) unless a preset sets it.
    "generic": {"fwhm": (1.5, 8.0)},
    # PSF shapes beyond the generic ones: undersampled (FWHM down to 1 px), Airy patterns with
    # a central obstruction (space telescopes), Moffat wings down to beta 1.5, stronger
    # asymmetry (coma, tracking).
    "broad": {"fwhm": (1.0, 8.0), "beta": (1.5, 6.0), "asym_max": 0.3,
              "obstruction": (0.0, 0.45), "centred_truncation": True,
              "families": PSF_FAMILIES},
    "meerlicht-like": {"fwhm": (1.2 / 0.56, 3.0 / 0.56)},   # 0.56"/px, seeing 1.2-3"
    "ztf-like": {"fwhm": (1.5, 3.0)},                       # 1.0"/px, seeing 1.5-3"
    # A telescope none of the shipped models saw (the transfer-learning study's target):
    # undersampled space-like optics, FWHM 0.6-1.0 px (the training floor is 1 px), Airy
    # patterns with an obstruction or a Gaussian core, centred tapering.
    "undersampled": {"fwhm": (0.6, 1.0), "obstruction": (0.1, 0.45), "centred_truncation": True,
                     "families": ("gaussian", "airy")},
}
FRAME_SHAPE = (512, 512)
SPLITS = ("train", "val", "test")

#: A Gaussian's FWHM over its sigma, as the simulator's S/N and area formulas use it
#: (rounded: the recorded S/N of existing data sets depend on it).
FWHM_PER_SIGMA = 2.3548


def split_of(frame_id):
    """60/20/20 split by frame."""
    r = frame_id % 5
    return "train" if r < 3 else ("val" if r == 3 else "test")


def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def preset_families(preset):
    """The PSF families a preset draws from unless told otherwise."""
    return tuple(PRESETS[preset].get("families", GENERIC_FAMILIES))


def _draw_frame(rng, preset, families):
    """Random observing conditions and PSF for one frame."""
    recipe = PRESETS[preset]
    fwhm0 = _loguniform(rng, *recipe["fwhm"])
    family = rng.choice([PSF_FAMILIES.index(f) for f in families])
    cond = {
        "fwhm0": fwhm0, "family": family,
        "beta": rng.uniform(*recipe.get("beta", (2.0, 6.0))),
        "ellipticity0": rng.uniform(0.0, 0.15) * (rng.uniform() < 0.7),
        "angle": rng.uniform(0, np.pi),
        "halo_fraction": rng.uniform(0.05, 0.3), "halo_scale": rng.uniform(1.8, 3.5),
        "asym_fraction": rng.uniform(0.02, recipe.get("asym_max", 0.1)) * (rng.uniform() < 0.3),
        "asym_distance": rng.uniform(0.2, 0.5) * fwhm0, "asym_angle": rng.uniform(0, 2 * np.pi),
        # 2nd-order polynomial variation of FWHM and ellipticity across the frame (PSFEx-like).
        "fwhm_poly": rng.normal(0, 0.04, 5), "ell_poly": rng.normal(0, 0.03, 5),
        "sky": _loguniform(rng, 10, 1e4),
        "sky_gradient": rng.uniform(-0.2, 0.2, 2),
        "gain": _loguniform(rng, 0.5, 10.0),
        "read_noise": rng.uniform(2.0, 15.0),
        # Stars (S/N > 1) per FWHM^2: sparse to crowded.
        "stars_per_beam": _loguniform(rng, 0.05, 0.8),
        "flux_slope": rng.uniform(0.35, 0.8),
        "galaxy_density": _loguniform(rng, 5e-5, 8e-4) * (rng.uniform() < 0.3),
    }
    # Drawn last, and only by presets that set it, so older recipes keep their frames.
    cond["obstruction"] = rng.uniform(*recipe["obstruction"]) if "obstruction" in recipe else 0.0
    # Newer recipes taper their PSFs around the star's centre (exact first moments for
    # slowly falling wings such as beta < 2); the generic recipe keeps its hard cut.
    cond["centred_truncation"] = recipe.get("centred_truncation", False)
    return cond


def _psf_at(cond, x, y, shape):
    """Per-star PSF parameters with the smooth variation across the frame."""
    u = x / shape[1] - 0.5
    v = y / shape[0] - 0.5
    terms = np.stack([u, v, u * u, u * v, v * v])
    fwhm = cond["fwhm0"] * (1 + cond["fwhm_poly"] @ terms)
    ell = np.clip(cond["ellipticity0"] + cond["ell_poly"] @ terms, 0.0, 0.3)
    return {"family": np.full(x.size, cond["family"]), "fwhm": fwhm, "beta": cond["beta"],
            "ellipticity": ell, "angle": cond["angle"],
            "halo_fraction": cond["halo_fraction"], "halo_scale": cond["halo_scale"],
            "obstruction": cond["obstruction"], "asym_fraction": cond["asym_fraction"],
            "asym_distance": cond["asym_distance"],
            "centred_truncation": cond["centred_truncation"],
            "asym_angle": cond["asym_angle"]}


#: How the PSF given to the network departs from the truth, per frame: the ePSF a user
#: builds is made from a few dozen noisy stars (pixel noise), with small centring and
#: FWHM errors, and is often one PSF for the whole frame where the truth varies.
PSF_ERRORS = {
    "constant_fraction": 0.5,         # one PSF (the frame centre's) for every star
    "fwhm_error": (0.0, 0.04),        # std of the relative FWHM error, drawn per frame
    "ellipticity_error": 0.02,        # std, per frame
    "centring_error": (0.003, 0.05),  # px, log-uniform std of the per-frame offset
    "photons": (1e5, 1e8),            # electrons summed over the ePSF's stars (log-uniform)
    "floor": (3e-4, 1e-2),            # background noise, relative to the peak (log-uniform)
    "truncated_fraction": 0.5,        # the ePSF stops at a radius of 9-16 px
}


def imperfect_psf_stamps(rng, cond, x, y, shape=FRAME_SHAPE, errors=PSF_ERRORS):
    """
    The PSF a user would give for stars at ``x, y``: 33x33 stamps, each centred on
    the centre of the star's reference pixel, sum 1, with the errors of
    ``errors`` (drawn from ``rng``: one set per frame).
    """
    n = np.size(x)
    size = _stamps.STORED_PSF_SIZE
    if n == 0:
        return np.zeros((0, size, size), np.float32)
    if rng.uniform() < errors["constant_fraction"]:
        centre = _psf_at(cond, np.array([shape[1] / 2]), np.array([shape[0] / 2]), shape)
        params = {k: (np.repeat(v, n) if np.ndim(v) else v) for k, v in centre.items()}
    else:
        params = _psf_at(cond, np.asarray(x, float), np.asarray(y, float), shape)
    params = dict(params)
    params["fwhm"] = params["fwhm"] * (1 + rng.normal(0, rng.uniform(*errors["fwhm_error"])))
    params["ellipticity"] = np.clip(params["ellipticity"]
                                    + rng.normal(0, errors["ellipticity_error"]), 0.0, 0.5)
    params["truncation"] = np.full(n, TRUNCATION_FWHM)
    offset = rng.normal(0, _loguniform(rng, *errors["centring_error"]), 2)
    ref_x = _stamps.reference_pixel(x).astype(float)
    ref_y = _stamps.reference_pixel(y).astype(float)
    psf, _, _ = render_psf_stamps(params, ref_x + offset[0], ref_y + offset[1],
                                  half_size=size // 2)
    peak = psf.max(axis=(1, 2), keepdims=True)
    photons = _loguniform(rng, *errors["photons"])
    floor = _loguniform(rng, *errors["floor"]) * peak
    psf = psf + rng.normal(0, 1, psf.shape) * np.sqrt(np.clip(psf, 0, None) / photons + floor**2)
    if rng.uniform() < errors["truncated_fraction"]:
        g = np.arange(size) - size // 2
        psf = psf * (np.hypot(g[:, None], g[None, :]) <= rng.uniform(9, 16))
    return (psf / psf.sum(axis=(1, 2), keepdims=True)).astype(np.float32)


def simulate_frame(frame_id, seed, preset="generic", families=None, shape=FRAME_SHAPE,
                   return_frame=False, with_psf=False):
    """
    Simulate one frame, detect, match, and cut stamps.

    Returns
    -------
    stamps : (n, 34, 34) float32
    meta : structured array of `META_DTYPE`
    psf : (n, 33, 33) float32, only with ``with_psf=True``
        The imperfect PSF given to the network (`imperfect_psf_stamps`), drawn
        from a second generator so the frames are those made without it.
    frame : dict, only with ``return_frame=True``
        ``image`` (ADU), ``background`` and ``rms`` (the estimates used),
        ``truth`` (x, y, flux in ADU, flux_e, and the per-star PSF parameters
        ``psf``), ``detections`` (sep's object array), ``match`` (truth index per
        detection, -1 if none) and the observing conditions ``cond``.
    """
    import sep  # training-only dependency

    rng = np.random.default_rng(seed)
    cond = _draw_frame(rng, preset, families or preset_families(preset))
    ny, nx = shape
    n_stars = min(rng.poisson(cond["stars_per_beam"] / cond["fwhm0"] ** 2 * nx * ny), 8000)
    margin = 20
    x = rng.uniform(-margin, nx + margin, n_stars)
    y = rng.uniform(-margin, ny + margin, n_stars)
    psf = _psf_at(cond, x, y, shape)
    sig_area = 4 * np.pi * (psf["fwhm"] / FWHM_PER_SIGMA) ** 2
    bg_var_e = cond["sky"] + cond["read_noise"] ** 2
    # Fluxes from S/N ~ 1 (undetectable) up to the brightest unsaturated stars.
    f_lo = 1.0 * np.sqrt(sig_area.mean() * bg_var_e)
    f_hi = 3e8
    u = rng.uniform(0, 1, n_stars)
    s = cond["flux_slope"]
    flux_e = f_lo * (1 - u * (1 - (f_hi / f_lo) ** -s)) ** (-1.0 / s)
    # Faint stars do not need their far wings (their truth is the rendered flux anyway).
    approx_snr = flux_e / np.sqrt(sig_area * bg_var_e + flux_e)
    psf["truncation"] = np.where(approx_snr < 2, 2.5, TRUNCATION_FWHM)
    source_e = render_sources(shape, x, y, flux_e, psf)
    if cond["galaxy_density"] > 0:
        n_gal = rng.poisson(cond["galaxy_density"] * nx * ny)
        gx, gy = rng.uniform(0, nx, n_gal), rng.uniform(0, ny, n_gal)
        gal = {"family": PSF_FAMILIES.index("moffat"), "beta": rng.uniform(1.2, 2.5, n_gal),
               "fwhm": np.minimum(cond["fwhm0"] * rng.uniform(1.5, 5, n_gal), 20.0),
               "ellipticity": rng.uniform(0, 0.6, n_gal), "angle": rng.uniform(0, np.pi, n_gal),
               "truncation": np.full(n_gal, 3.0)}
        gflux = f_lo * _loguniform(rng, 3, 3e3, n_gal)
        source_e += render_sources(shape, gx, gy, gflux, gal)
    yy, xx = np.mgrid[0:ny, 0:nx]
    g = cond["sky_gradient"]
    sky_e = cond["sky"] * (1 + g[0] * (xx / nx - 0.5) + g[1] * (yy / ny - 0.5))
    counts = rng.poisson(source_e + sky_e).astype(np.float64)
    counts += rng.normal(0.0, cond["read_noise"], shape)
    image = (counts / cond["gain"]).astype(np.float32)

    bkg, rms = estimate_background(image)
    sub = image - bkg
    objects = sep.extract(sub, 1.2, err=rms, minarea=4, deblend_cont=0.005)
    frame = {"image": image, "background": bkg, "rms": rms, "cond": cond,
             "truth": {"x": x, "y": y, "flux": flux_e / cond["gain"], "flux_e": flux_e,
                       "psf": psf},
             "detections": objects}
    empty = np.zeros((0, 34, 34), np.float32), np.zeros(0, META_DTYPE)
    if with_psf:
        empty = (*empty, np.zeros((0, _stamps.STORED_PSF_SIZE, _stamps.STORED_PSF_SIZE),
                                  np.float32))
    if return_frame:
        empty = (*empty, frame)
    if len(objects) == 0:
        frame["match"] = np.zeros(0, int)
        return empty
    det_x, det_y = objects["x"], objects["y"]
    # Match each detection to the star that contributes most light at its position.
    tree = cKDTree(np.column_stack([x, y]))
    radius = np.maximum(1.0, 0.6 * cond["fwhm0"])
    width2 = (0.5 * cond["fwhm0"]) ** 2
    match = np.full(len(objects), -1)
    for i, cand in enumerate(tree.query_ball_point(np.column_stack([det_x, det_y]), radius)):
        if cand:
            cand = np.asarray(cand)
            d2 = (x[cand] - det_x[i]) ** 2 + (y[cand] - det_y[i]) ** 2
            match[i] = cand[np.argmax(flux_e[cand] * np.exp(-0.5 * d2 / width2))]
    # A star claimed by two detections keeps the closest one.
    keep = match >= 0
    order = np.argsort((x[match] - det_x) ** 2 + (y[match] - det_y) ** 2)
    seen = set()
    for i in order:
        if keep[i]:
            if match[i] in seen:
                keep[i] = False
            seen.add(match[i])
    size = _stamps.STORED_STAMP_SIZE
    ref_x = _stamps.reference_pixel(det_x)
    ref_y = _stamps.reference_pixel(det_y)
    half = size // 2
    inside = (ref_x - half >= 0) & (ref_x + half - 1 < nx) & (ref_y - half >= 0) & (
        ref_y + half - 1 < ny)
    frame["match"] = np.where(keep, match, -1)
    sel = np.flatnonzero(keep & inside)
    if sel.size == 0:
        return empty
    stars = match[sel]
    stamps, _ = _stamps.cutout_stamps(sub, det_x[sel], det_y[sel], size=size)
    sx, sy = x[stars], y[stars]
    star_psf = {k: (v[stars] if np.ndim(v) else v) for k, v in psf.items()}
    # The bounds need the core, not the far wings: 3 FWHM keeps them within 1 % and is 3x cheaper.
    star_psf["truncation"] = np.full(stars.size, 3.0)
    sky_here = sky_e[np.clip(np.round(sy).astype(int), 0, ny - 1),
                     np.clip(np.round(sx).astype(int), 0, nx - 1)]
    bounds = fisher_bounds(star_psf, sx, sy, flux_e[stars], sky_here, cond["read_noise"])
    neighbours = tree.query_ball_point(np.column_stack([sx, sy]), 16.0)
    contamination = np.array([(flux_e[nb].sum() - flux_e[s_]) / flux_e[s_]
                              for nb, s_ in zip(neighbours, stars)])
    meta = np.zeros(sel.size, META_DTYPE)
    meta["frame"] = frame_id
    meta["true_dx"] = sx - ref_x[sel]
    meta["true_dy"] = sy - ref_y[sel]
    meta["det_dx"] = det_x[sel] - ref_x[sel]
    meta["det_dy"] = det_y[sel] - ref_y[sel]
    meta["flux"] = flux_e[stars] / cond["gain"]
    meta["rms"] = rms[ref_y[sel], ref_x[sel]]
    meta["gain"] = cond["gain"]
    meta["sky_e"] = sky_here
    meta["read_noise"] = cond["read_noise"]
    meta["snr"] = bounds["snr"]
    meta["crlb_flux"] = bounds["crlb_flux"] / cond["gain"]
    meta["crlb_x"] = bounds["crlb_x"]
    meta["crlb_y"] = bounds["crlb_y"]
    meta["contamination"] = contamination
    meta["fwhm"] = star_psf["fwhm"]
    meta["family"] = cond["family"]
    meta["beta"] = cond["beta"]
    meta["ellipticity"] = star_psf["ellipticity"]
    meta["x_frame"] = sx
    meta["y_frame"] = sy
    out = (stamps.astype(np.float32), meta)
    if with_psf:
        psf_rng = np.random.default_rng([seed, 1])
        out = (*out, imperfect_psf_stamps(psf_rng, cond, det_x[sel], det_y[sel], shape))
    if return_frame:
        return (*out, frame)
    return out


def frame_seeds(seed, n_frames):
    """Per-frame seeds of a data set (so any frame can be re-simulated in full)."""
    return np.random.SeedSequence(seed).generate_state(n_frames, dtype=np.uint32)


def _worker(args):
    frame_id, seed, preset, families, with_psf = args
    return frame_id, simulate_frame(frame_id, seed, preset, families, with_psf=with_psf)


class _ShardWriter:
    def __init__(self, out, split, shard_size):
        self.out, self.split, self.shard_size = out, split, shard_size
        self.stamps, self.meta, self.psf, self.shards, self.count = [], [], [], [], 0

    def add(self, stamps, meta, psf=None):
        self.stamps.append(stamps)
        self.meta.append(meta)
        if psf is not None:
            self.psf.append(psf)
        self.count += len(meta)
        if sum(len(m) for m in self.meta) >= self.shard_size:
            self.flush()

    def flush(self):
        if not self.meta:
            return
        name = f"{self.split}_{len(self.shards):04d}"
        np.save(self.out / f"{name}.stamps.npy", np.concatenate(self.stamps))
        np.save(self.out / f"{name}.meta.npy", np.concatenate(self.meta))
        if self.psf:
            np.save(self.out / f"{name}.psf.npy", np.concatenate(self.psf))
        self.shards.append(name)
        self.stamps, self.meta, self.psf = [], [], []


def write_dataset(out, n_frames, preset="generic", seed=0, families=None,
                  processes=None, shard_size=50_000, with_psf=True, log=print):
    """Simulate ``n_frames`` frames and write the sharded data set; returns the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = frame_seeds(seed, n_frames)
    families = tuple(families or preset_families(preset))
    tasks = [(i, int(seeds[i]), preset, families, with_psf) for i in range(n_frames)]
    writers = {s: _ShardWriter(out, s, shard_size) for s in SPLITS}
    processes = processes or os.cpu_count()
    start = time.time()
    progress = Progress(n_frames, "simulate", unit="frames", log=log)
    # Results are written in frame order so the data set is identical for a given seed.
    # spawn, not fork: a fork after PyTorch (or any OpenMP runtime) has started its threads
    # can deadlock the workers (as training/frames.py does).
    with mp.get_context("spawn").Pool(processes) as pool:
        for frame_id, result in pool.imap(_worker, tasks, chunksize=4):
            writers[split_of(frame_id)].add(*result)
            total = sum(w.count for w in writers.values())
            progress.update(note=f"{total} stamps, "
                                 f"{total / max(time.time() - start, 1e-9):.0f} stamps/s")
    for w in writers.values():
        w.flush()
    elapsed = time.time() - start
    index = {
        "preset": preset, "seed": seed, "n_frames": n_frames, "frame_shape": FRAME_SHAPE,
        "families": list(families), "stamp_size": _stamps.STORED_STAMP_SIZE,
        "meta_fields": [f for f, _ in META_FIELDS],
        "psf": bool(with_psf), "psf_errors": PSF_ERRORS if with_psf else None,
        "splits": {s: {"shards": w.shards, "count": w.count} for s, w in writers.items()},
        "seconds": elapsed, "stamps_per_second": sum(w.count for w in writers.values()) / elapsed,
        "processes": processes,
    }
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="generic", choices=sorted(PRESETS))
    parser.add_argument("--n-frames", type=int, default=3000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=None,
                        help="comma-separated PSF families to draw from (default: the "
                             "preset's; generic: gaussian, moffat, double_gaussian; broad: "
                             "those and airy)")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--no-psf", action="store_true",
                        help="do not store the PSF stamps (contract-2 data sets)")
    args = parser.parse_args(argv)
    index = write_dataset(args.out, args.n_frames, args.preset, args.seed,
                          args.families and args.families.split(","), args.processes,
                          args.shard_size, with_psf=not args.no_psf)
    print(json.dumps({s: v["count"] for s, v in index["splits"].items()}),
          f"{index['stamps_per_second']:.0f} stamps/s")


if __name__ == "__main__":
    main()
