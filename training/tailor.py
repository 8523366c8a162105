"""
A model tailored to one telescope's frame: the shipped network fine-tuned on stars injected
into that frame, its sigmas calibrated on more of them.

    python -m training.tailor IMAGE.fits --out DIR [--hdu N] [--gain G] [--psf FILE.psf]
        [--stamps 20000] [--samples 150000] [--seed 0] [--loss nll|robust_nll] [--quick]
    asidfe-phot tailor IMAGE.fits --out DIR ...          (the same, from an installed package)

The paper (Stoppa et al. 2023, section 4.3) found that a model trained on a synthetic data
set tailored to the target telescope beats any transfer of another telescope's model. What
its pipeline products gave it, this measures from the frame itself:

1. **The frame**: its background and rms map (the package's mesh estimate), its gain
   (``gain=``, the header's GAIN, else sky / rms^2 as `~asidfe_phot.MLPhotometry` takes
   it), the read noise that the rms leaves beyond the sky's photon noise, its ePSF (as
   ``psf_model="auto"`` builds it, or a PSFEx ``.psf``), and its sources' density and
   luminosity function (a DAOStarFinder pass, as ``asidfe-phot --find``).
2. **The tailored set**: rounds of stars with that PSF and Poisson noise injected into the
   frame itself (`asidfe_phot.artificial_stars`: away from the frame's sources and from
   each other, S/N log-uniform in 3-3000), so they sit on the frame's real sky, noise,
   galaxies and neighbours. Each round is detected as a user's run is, and a 34x34 stamp
   is cut around each detected injected star with its truth, written in the simulator's
   data set layout (``training.simulate``): rounds split 60/20/20 as frames are.
3. **Fine-tuning**: step 2 (both branches, every layer) from the parent model's
   weights, on the tailored training split, resumable. The loss is the Gaussian NLL with
   Huber's tails beyond 3 sigma (`training.model.robust_gaussian_nll`; ``--loss nll``:
   the plain one): a real frame gives the odd star that a neighbour or a detection a
   pixel off makes wrong by tens of sigma, and under the plain Gaussian loss those few
   set every variance (see the performance page's EY UMa).
4. **Export and calibration** (`training.tailor_calibration`): ONNX + card; the
   flux-bias corrections and the sigma calibrations (the network alone, the network given
   the PSF, the PSF mode) and the PSF mode's margin, fitted on the frame's own artificial
   stars (other seeds than the training set's), as the shipped card's are on simulations.
5. **Before and after**: an artificial-star test (new seed) with the parent model and with
   the tailored one, per S/N bin and star by star, in the card (``tailored_validation``).

The model directory works as ``MLPhotometry(model=DIR)`` and ``--model DIR``; its card
records the parent model, the image (name, HDU, sha256), what was measured, the recipe and
the before/after metrics.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot.artificial_stars import SNR_RANGE, flux_for_snr, inject_stars, place_stars

from . import simulate as simulate_mod
from .tailor_calibration import ast_results, bins_json, calibrate_on_frame, paired_ratios

#: The tailoring recipe (recorded in the card). On 2 CPU cores a 1024² frame takes about
#: 5 minutes (the NTT frame: 5.4 from scratch): the set, 150 k samples of step 2 (about
#: 3 minutes), three calibration and two before/after artificial-star runs. A larger
#: frame adds time in those runs (each round measures the whole frame); the training's
#: budget is fixed.
TAILOR = {
    "stamps": 20_000, "stars_per_round": 300, "samples": 150_000, "lr": 3e-4,
    "eval_every": 25_000, "calibration_stars": 1500, "validation_stars": 1000, "seed": 0,
    "snr_range": list(SNR_RANGE), "loss": "robust_nll",
}
QUICK = {**TAILOR, "stamps": 300, "stars_per_round": 60, "samples": 1024, "eval_every": 512,
         "calibration_stars": 150, "validation_stars": 100}
#: Injected stars stay this many FWHM from each other in the tailored set (closer than an
#: artificial-star test's 5: the set wants many stars per round; the network's stamps see
#: the neighbours, as in crowded fields).
SPACING_FWHM = 3.0


def measure_frame(data, *, gain=None, saturation=None, psf_model="auto", mask=None,
                  error=None, parent=None):
    """
    What the frame says about its telescope: the `_Frame` (image, background-subtracted
    image, noise, gain, ePSF), the finder, the frame's sources and a summary for the card.
    """
    # The artificial-star machinery of the package prepares a frame exactly as
    # MLPhotometry and `asidfe-phot ast` do (private, as the _stamps contract is).
    from asidfe_phot import MLPhotometry, _ast
    from asidfe_phot._detection import make_finder

    phot = MLPhotometry(model=parent, psf_model=psf_model)
    frame = _ast._Frame(data, mask, error, gain, saturation, None, phot, psf_model)
    if frame.gain is None:
        msg = ("no gain is known (no gain=, no GAIN in the header, and the image's sky "
               "level does not give one): the injected stars' photon noise needs it; pass "
               "the gain in electrons per data unit")
        raise ValueError(msg)
    fwhm = float(frame.sampler.fwhm)
    finder, threshold = make_finder(frame.image, fwhm, _ast.DEFAULT_THRESHOLD)
    found = finder(frame.subtracted, mask=frame.bad)
    n_found = 0 if found is None else len(found)
    x, y = _ast._detections(finder, frame.subtracted, frame.bad)
    sky = np.nanmedian(frame.image - frame.subtracted)
    rms = float(np.nanmedian(frame.noise))
    # The rms beyond the sky's photon noise, in electrons: the read noise (and dark).
    read_noise = float(np.sqrt(max((rms * frame.gain) ** 2 - max(sky, 0) * frame.gain, 0)))
    fluxes = np.asarray(found["flux"], dtype=float) if n_found else np.zeros(0)
    fluxes = fluxes[np.isfinite(fluxes) & (fluxes > 0)]
    edges = np.arange(np.floor(np.log10(fluxes.min())) if fluxes.size else 0,
                      (np.ceil(np.log10(fluxes.max())) if fluxes.size else 1) + 0.25, 0.25)
    counts, _ = np.histogram(np.log10(fluxes), edges) if fluxes.size else (np.zeros(0), None)
    area = frame.image.size - int(np.count_nonzero(frame.bad))
    conditions = {
        "shape": list(frame.image.shape), "sky": float(sky), "rms": rms,
        "gain": float(frame.gain), "gain_source": frame.gain_note if gain is None else "given",
        "read_noise_e": read_noise, "psf": {k: v for k, v in frame.meta.items()},
        "psf_fwhm": fwhm, "n_sources": int(n_found),
        "sources_per_mpx": float(n_found / max(area, 1) * 1e6),
        "finder": f"DAOStarFinder(fwhm={fwhm:.3g}, threshold={threshold:.6g})",
        "luminosity_function": {"log10_flux_edges": [float(e) for e in edges],
                                "counts": [int(c) for c in counts],
                                "flux": "DAOStarFinder's flux (peak-based), data units"},
    }
    return frame, finder, (x, y), conditions


def _stamp_meta(frame, round_id, x, y, det_x, det_y, flux, snr):
    """Rows of the simulator's META_DTYPE for stamps cut at the detections."""
    ref_x = _stamps.reference_pixel(det_x)
    ref_y = _stamps.reference_pixel(det_y)
    meta = np.zeros(x.size, dtype=simulate_mod.META_DTYPE)
    iy = np.clip(np.round(y).astype(int), 0, frame.image.shape[0] - 1)
    ix = np.clip(np.round(x).astype(int), 0, frame.image.shape[1] - 1)
    sky = (frame.image - frame.subtracted)[iy, ix]
    meta["frame"] = round_id
    meta["true_dx"], meta["true_dy"] = x - ref_x, y - ref_y
    meta["det_dx"], meta["det_dy"] = det_x - ref_x, det_y - ref_y
    meta["flux"] = flux
    meta["rms"] = frame.noise[iy, ix]
    meta["gain"] = frame.gain
    meta["sky_e"] = sky * frame.gain
    meta["read_noise"] = np.nan
    meta["snr"] = snr
    for name in ("crlb_flux", "crlb_x", "crlb_y", "contamination", "beta", "ellipticity"):
        meta[name] = np.nan
    meta["fwhm"] = frame.sampler.fwhm
    meta["family"] = -1        # the frame's own PSF, none of the simulator's families
    meta["x_frame"], meta["y_frame"] = x, y
    return meta, ref_x, ref_y


def write_tailored_set(frame, finder, sources, out, config, log=print):
    """Rounds of stars injected into the frame, detected, cut as stamps; returns the index."""
    from asidfe_phot import _ast
    from asidfe_phot import _thresholds as _t
    from asidfe_phot.artificial_stars import optimal_snr

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config["seed"])
    fwhm = frame.sampler.fwhm
    radius = max(fwhm, 1.5)
    writers = {s: simulate_mod._ShardWriter(out, s, 50_000) for s in simulate_mod.SPLITS}
    lo, hi = config["snr_range"]
    total, round_id, start, empty = 0, 0, time.time(), 0
    while total < config["stamps"] and empty < 5:
        x, y, _ = place_stars(frame.image.shape, config["stars_per_round"],
                              min_separation=2.0 * fwhm, spacing=SPACING_FWHM * fwhm,
                              avoid=sources, bad=frame.bad, rng=rng)
        if not x.size:
            empty += 1
            continue
        target = np.exp(rng.uniform(np.log(lo), np.log(hi), x.size))
        flux = flux_for_snr(frame.sampler, x, y, target, frame.noise, gain=frame.gain)
        image, _ = inject_stars(frame.image, frame.sampler, x, y, flux, gain=frame.gain,
                                rng=rng, saturation=frame.saturation)
        subtracted, bad = frame.subtracted_of(image, frame.saturation)
        det_x, det_y = _ast._detections(finder, subtracted, bad)
        index, _ = _ast.match(x, y, det_x, det_y, radius)
        # A star with a saturated or masked pixel in its core is SATURATED/CORE_MASKED at
        # inference, and its zeroed core cannot give its flux: it would only teach noise.
        unusable = np.zeros(image.shape, bool) if bad is None else np.asarray(bad, bool)
        if frame.saturation is not None:
            unusable = unusable | (image >= frame.saturation)
        core_bad, _ = _stamps.cutout_stamps(unusable, x, y, 2 * _t.CORE_RADIUS + 1, fill=True)
        keep = (index >= 0) & ~core_bad.any(axis=(1, 2))
        if not keep.any():
            empty += 1
            continue
        snr = optimal_snr(frame.sampler, x[keep], y[keep], flux[keep], frame.noise,
                          gain=frame.gain)
        meta, ref_x, ref_y = _stamp_meta(frame, round_id, x[keep], y[keep],
                                         det_x[index[keep]], det_y[index[keep]], flux[keep],
                                         snr)
        stamps, _ = _stamps.cutout_stamps(np.where(bad, 0.0, subtracted), ref_x + 0.0,
                                          ref_y + 0.0, _stamps.STORED_STAMP_SIZE, fill=0.0)
        psf = frame.sampler.stamps(ref_x, ref_y, _stamps.STORED_PSF_SIZE)
        writers[simulate_mod.split_of(round_id)].add(stamps.astype(np.float32), meta,
                                                     psf.astype(np.float32))
        total += int(keep.sum())
        round_id += 1
        if round_id % 10 == 0:
            log(f"tailored set: round {round_id}, {total} stamps "
                f"({total / (time.time() - start):.0f}/s)")
    for w in writers.values():
        w.flush()
    counts = {s: w.count for s, w in writers.items()}
    if min(counts.values()) == 0:
        msg = (f"the frame took too few injected stars ({counts}): it is too small or too "
               "crowded for a tailored set")
        raise ValueError(msg)
    index = {
        "preset": "tailored", "seed": config["seed"], "n_frames": round_id,
        "frame_shape": list(frame.image.shape), "families": [],
        "stamp_size": _stamps.STORED_STAMP_SIZE,
        "meta_fields": [f for f, _ in simulate_mod.META_FIELDS], "psf": True,
        "psf_errors": None,
        "splits": {s: {"shards": w.shards, "count": w.count} for s, w in writers.items()},
        "seconds": time.time() - start,
    }
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def tailor(image, out, *, hdu=None, gain=None, saturation=None, psf_model="auto",
           parent=None, config=None, log=print):
    """
    Tailor the shipped (or ``parent``) model to the frame ``image`` (a FITS path); writes
    ``out/model`` (usable as ``MLPhotometry(model=...)``) and returns its card.
    Resumable: finished steps (the set, the training) are kept.
    """
    from asidfe_phot.io import header_float, read_image
    from asidfe_phot.models import DEFAULT_MODEL, file_sha256, model_path

    from . import export as export_mod
    from . import train as train_mod

    config = dict(config or TAILOR)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model_dir = out / "model"
    # A resumed run adds its minutes to those already spent (the set, the training).
    previous_card = model_dir / "config.json"
    spent = (json.loads(previous_card.read_text()).get("tailor_minutes", 0.0)
             if previous_card.exists() else 0.0)
    data, header, used_hdu = read_image(image, hdu)
    if gain is None:
        gain = header_float(header, "GAIN")
    if saturation is None:
        saturation = header_float(header, "SATURATE")
    parent_dir = model_path(parent or DEFAULT_MODEL)
    parent_card = json.loads((parent_dir / "config.json").read_text())
    if parent_card["contract"]["version"] < 3:
        msg = "tailoring needs a PSF-conditioned parent model (contract 3, e.g. asidfe_tsmve_v5)"
        raise ValueError(msg)
    _claim_folder(out, {
        "image_sha256": file_sha256(Path(image)), "hdu": used_hdu, "gain": gain,
        "saturation": saturation, "parent_sha256": parent_card["sha256"],
        "psf_model": (str(psf_model) if isinstance(psf_model, str | Path)
                      else type(psf_model).__name__), "config": config})
    if (out / "DONE").exists():
        log(f"== already tailored: {model_dir}")
        return json.loads(previous_card.read_text())
    log("== measure the frame")
    frame, finder, sources, conditions = measure_frame(
        data, gain=gain, saturation=saturation, psf_model=psf_model, parent=parent_dir)
    log(f"   {conditions['n_sources']} sources, FWHM {conditions['psf_fwhm']:.2f} px, gain "
        f"{conditions['gain']:.3g} ({conditions['gain_source']}), read noise "
        f"{conditions['read_noise_e']:.1f} e-")
    data_dir = out / "data"
    if not (data_dir / "index.json").exists():
        log("== the tailored set (stars injected into the frame)")
        write_tailored_set(frame, finder, sources, data_dir, config, log=log)
    index = json.loads((data_dir / "index.json").read_text())
    step = out / "step2"
    if not (step / "DONE").exists():
        log(f"== fine-tune (step 2 from {parent_card['name']}_v{parent_card['version']})")
        train_mod.train(data_dir, "step2", step, config["samples"], init=parent_dir,
                        lr=config["lr"], mean_lr_factor=1.0, seed=config["seed"],
                        eval_every=config["eval_every"], loss=config.get("loss", "nll"),
                        log=log)
    history = json.loads((step / "history.json").read_text())
    name = f"{parent_card['name']}_v{parent_card['version']}_tailored"
    image_path = Path(image)
    card_extra = {
        "parent_model": f"{parent_card['name']}_v{parent_card['version']}",
        "parent_sha256": parent_card["sha256"],
        "tailored_to": {"image": image_path.name, "hdu": used_hdu,
                        "sha256": file_sha256(image_path), "conditions": conditions},
        "training_data": {"recipe": "stars injected into the tailored frame",
                          "counts": {s: v["count"] for s, v in index["splits"].items()},
                          "rounds": index["n_frames"]},
        "training_config": config, "history": {"tailor_step2": history},
        "regenerate": (f"python -m training.tailor {image_path.name} --out DIR"
                       + (f" --hdu {hdu}" if hdu is not None else "")
                       + (f" --gain {gain}" if gain is not None else "")),
    }
    common = {"gain": gain, "saturation": saturation, "mask": None, "error": None}
    if not (out / "CALIBRATED").exists():
        log("== export")
        export_mod.export(step / "best.pt", model_dir, name, parent_card["version"], card_extra)
        calibrate_on_frame(model_dir, data, config, psf_model=psf_model, log=log,
                           parent_card=parent_card, **common)
        (out / "CALIBRATED").touch()
    log("== before and after: artificial stars (a new seed)")
    seed = config["seed"] + 2000
    validation = {}
    stars = {}
    for label, model in (("parent", parent_dir), ("tailored", model_dir)):
        stars[label], bins = ast_results(data, model, psf_model, config["validation_stars"],
                                          seed, frame_psf=psf_model, **common)
        validation[label] = bins_json(bins)
    # The same stars for both models (one seed): compared star by star.
    validation["paired_flux_error_ratio"] = paired_ratios(stars["parent"], stars["tailored"])
    card = export_mod.update_card(model_dir, {
        "tailored_validation": {
            "method": (f"asidfe_phot.artificial_stars.artificial_star_test, "
                       f"{config['validation_stars']} stars, seed {seed}, psf_model="
                       f"{psf_model if isinstance(psf_model, str) else type(psf_model).__name__}"),
            **validation},
        "tailor_minutes": spent + (time.time() - t0) / 60})
    (out / "DONE").touch()
    log(f"== done in {(time.time() - t0) / 60:.1f} min: {model_dir}")
    return card


def _claim_folder(out, job):
    """
    Record what ``out`` tailors (image, settings, parent, recipe), or check that a resumed
    run tailors the same: its set, training and calibrations are reused, so another image
    or recipe in the same folder would silently mix two tailorings.
    """
    path = out / "tailor_job.json"
    job = json.loads(json.dumps(job, default=float))
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(job) | set(before) if job.get(k) != before.get(k))
        if changed:
            msg = (f"{out} holds a tailoring with other {', '.join(changed)}; give a new "
                   "--out (or delete the folder to start again)")
            raise ValueError(msg)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(job, indent=2) + "\n")
    tmp.replace(path)


def comparison_table(card):
    """
    Before/after per S/N bin: completeness, flux bias and scatter, z std of the flux,
    and the paired ratio of the flux errors with its 95 % interval (`paired_ratios`).
    """
    validation = card["tailored_validation"]
    paired = validation.get("paired_flux_error_ratio", {})
    rows = ["S/N        n   | parent: compl.  bias    scatter  z_flux | tailored: compl.  "
            "bias    scatter  z_flux | paired t/p (95 %)"]
    for p, t in zip(validation["parent"], validation["tailored"], strict=True):
        cells = [f"{r['completeness']:>6.3f} {r['flux_bias']:>+8.4f} {r['flux_scatter']:>8.4f} "
                 f"{r['zstd_flux']:>7.2f}" for r in (p, t)]
        ratio = paired.get(p["snr_bin"])
        ratio = "" if ratio is None else f"{ratio[0]:.3f} [{ratio[1]:.2f}, {ratio[2]:.2f}]"
        rows.append(f"{p['snr_bin']:<9} {int(p['n_injected']):>4} |        {cells[0]} |"
                    f"          {cells[1]} | {ratio}".rstrip(" |"))
    return "\n".join(rows)


def main(argv=None, prog=None):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--out", required=True)
    parser.add_argument("--hdu", type=int, default=None)
    parser.add_argument("--gain", type=float, default=None)
    parser.add_argument("--saturation", type=float, default=None)
    parser.add_argument("--psf", default="auto", help='"auto" (ePSF) or a PSFEx .psf file')
    parser.add_argument("--model", default=None, help="parent model (default: the shipped)")
    parser.add_argument("--stamps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--loss", choices=("nll", "robust_nll"), default=None,
                        help="step 2's loss (default robust_nll: Gaussian NLL with Huber "
                             "tails in z; nll: the plain Gaussian NLL)")
    parser.add_argument("--quick", action="store_true", help="tiny set and budget (tests)")
    args = parser.parse_args(argv)
    config = dict(QUICK if args.quick else TAILOR)
    for key in ("stamps", "samples", "seed", "loss"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    card = tailor(args.image, args.out, hdu=args.hdu, gain=args.gain,
                  saturation=args.saturation, psf_model=args.psf, parent=args.model,
                  config=config)
    print(comparison_table(card))


if __name__ == "__main__":
    main()
