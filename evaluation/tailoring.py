"""
Does a model tailored to a frame beat the shipped one there? Before and after, per S/N bin.

    python -m evaluation.tailoring --out runs/tailoring [--frames ntt,airy_spikes,coma] [--quick]
        [--loss nll|robust_nll]

Frames:

* ``ntt``, ``m51``, ``eyuma``, ``ukidss``: the real frames of ``shared/real``. No truth:
  the comparison is the artificial-star test that `training.tailor` runs after training
  (stars of the frame's PSF injected with a seed the training and calibration never used;
  the card's ``tailored_validation``). ``ntt`` uses the ePSF of ``psf_model="auto"``; the
  others have too few stars for one and use `evaluation.injection`'s PSF (a Moffat fitted
  to their bright stars), gain and saturation.
* ``donut``, ``coma``, ``trailed``, ``airy_spikes``: simulated 1024x1024 frames
  (`evaluation.unseen_psfs`) with PSF shapes no shipped model was trained on. The model is
  tailored on the frame (``psf_model="auto"``: the ePSF it builds), then both models
  measure the frame's own stars, whose truths are known (input positions: truth + N(0,
  0.3 px)), with ``psf_model="auto"``.

Printed and written to ``OUT/tailoring.rst``: per frame and S/N bin, flux MARE, median
bias and z-score std of the flux (found, unflagged stars), for the shipped and the tailored
model, and the tailoring time.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from asidfe_phot import MLPhotometry
from asidfe_phot.models import DEFAULT_MODEL
from evaluation import injection, real_data_dir
from evaluation.unseen_psfs import bin_rows, star_field
from training import tailor as tailor_mod

#: Real frames: the ePSF of psf_model="auto" where the frame has the stars for one (ntt),
#: else the PSF, gain and saturation of `evaluation.injection`'s frame (a Moffat fitted
#: to its few bright stars; the gain from the header or as assumed there).
REAL = ("ntt", "m51", "eyuma", "ukidss")
SIMULATED = ("airy_spikes", "coma", "trailed", "donut")


def _frame_file(name, out, n_stars, seed):
    if name in REAL:
        return real_data_dir() / injection.FRAMES[name]["file"], None
    path = out / f"{name}.fits"
    image, truth = star_field(name, n_stars, seed=seed)
    if not path.exists():
        fits.PrimaryHDU(image, header=fits.Header({"GAIN": 1.0})).writeto(path)
    return path, truth


def truth_bins(image, truth, model, seed):
    """Per S/N bin metrics of ``model`` on the frame's own stars (psf_model='auto')."""
    rng = np.random.default_rng(seed)
    init = Table({"x": truth["x"] + rng.normal(0, 0.3, len(truth)),
                  "y": truth["y"] + rng.normal(0, 0.3, len(truth))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = MLPhotometry(model=model)(image, init_params=init, gain=1.0)
    return bin_rows(tbl, truth)


def card_bins(card, label):
    """The card's before/after artificial-star statistics in the same layout."""
    rows = []
    for b in card["tailored_validation"][label]:
        if b.get("n_good", 0) < 10:
            continue
        rows.append({"snr_bin": b["snr_bin"], "n": int(b["n_good"]),
                     "flux_mare": float("nan"), "flux_bias": b["flux_bias"],
                     "flux_scatter": b["flux_scatter"], "zstd_flux": b["zstd_flux"]})
    return rows


def run(out, frames, config, n_stars=800, seed=0, log=print):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in frames:
        log(f"== {name}")
        path, truth = _frame_file(name, out, n_stars, seed)
        t0 = time.time()
        options = {}
        if name in REAL and name != "ntt":
            spec, frame = injection.FRAMES[name], injection.load_frame(name)
            options = {"hdu": spec["hdu"], "gain": frame["gain"], "psf_model": frame["psf"],
                       "saturation": spec["saturation"]}
        card = tailor_mod.tailor(path, out / name, config=config, log=log, **options)
        entry = {"tailor_minutes": card.get("tailor_minutes", (time.time() - t0) / 60)}
        if truth is None:
            entry["method"] = "artificial stars (card's tailored_validation)"
            entry["shipped"] = card_bins(card, "parent")
            entry["tailored"] = card_bins(card, "tailored")
        else:
            image = fits.getdata(path)
            entry["method"] = "the frame's own stars against truth"
            entry["shipped"] = truth_bins(image, truth, DEFAULT_MODEL, seed + 1)
            entry["tailored"] = truth_bins(image, truth, out / name / "model", seed + 1)
        results[name] = entry
        (out / "tailoring.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "tailoring.rst").write_text(rst_table(results))
    return results


def rst_table(results):
    lines = []
    for name, entry in results.items():
        lines += [f"**{name}** ({entry['method']}; tailoring took "
                  f"{entry['tailor_minutes']:.1f} min)", ""]
        rule = "========== ===== ============ ============ ========== ============ " \
               "============ =========="
        error = "MARE" if entry["shipped"] and np.isfinite(entry["shipped"][0]["flux_mare"]) \
            else "scatter"
        lines += [rule, f"S/N        n     shipped {error:<5}     bias shipped z  "
                  f"tailored {error:<5}   tailored bias tailored z", rule]
        tailored = {t["snr_bin"]: t for t in entry["tailored"]}
        for s in entry["shipped"]:
            t = tailored.get(s["snr_bin"])
            if t is None:
                continue
            key = "flux_mare" if error == "MARE" else "flux_scatter"
            lines.append(f"{s['snr_bin']:<10} {s['n']:<5} {s[key]:<12.4f} "
                         f"{s['flux_bias']:<+12.4f} {s['zstd_flux']:<10.2f} "
                         f"{t[key]:<12.4f} {t['flux_bias']:<+12.4f} "
                         f"{t['zstd_flux']:<10.2f}")
        lines += [rule, ""]
    lines.append("MARE: mean |f / f_true - 1|; scatter: 1.4826 MAD of f / f_true - 1 (artificial "
                 "stars); bias: median f / f_true - 1; z: std of (f - f_true) / flux_err.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", default="ntt,airy_spikes,coma")
    parser.add_argument("--n-stars", type=int, default=800)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loss", choices=("nll", "robust_nll"), default="robust_nll",
                        help="the tailoring's step-2 loss (training.tailor --loss)")
    args = parser.parse_args(argv)
    config = {**(tailor_mod.QUICK if args.quick else tailor_mod.TAILOR), "loss": args.loss}
    results = run(args.out, args.frames.split(","), config, n_stars=args.n_stars)
    print(rst_table(results))


if __name__ == "__main__":
    main()
