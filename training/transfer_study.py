"""
The paper's transfer-learning study (Stoppa et al. 2023, section 4.3, Table 2) on our data.

    python -m training.transfer_study --out runs/transfer [--samples 200000] [--quick]

Source: the shipped model. Target: simulated frames of a telescope none of our models saw
(the simulator's ``undersampled`` preset: FWHM 0.6-1.0 px, Airy patterns with an
obstruction or Gaussian cores; every shipped model was trained at FWHM >= 1 px). Modes, as
the paper's Table 2, plus our answer to its problem:

* ``direct``: the shipped network applied as it is, without the PSF;
* ``direct+psf``: the same network told the target's PSF (its PSF channel; the PSF the
  simulator hands the network, made imperfect as a real ePSF is);
* ``frozen``: the convolutions held fixed, the dense heads retrained (step 2, NLL);
* ``retrained``: all layers retrained from the shipped weights (step 2, NLL);
* ``scratch``: random initial weights, step 1 (Huber, means) then step 2 (NLL) on the same
  total budget.

Every mode sees the same stamps (the target's training split); all are compared on the
target's test split (frames none of them trained on), network outputs as they are (no model
card calibration, the same for all). Printed: Pearson r of x, y, flux against the truth and
the ConTEST verdict (`asidfe_phot.consistency.contest`, 5 %) on the held-out stamps; per
S/N bin, flux MARE, position MAE and the z-score std; training samples and CPU minutes.

Resumable: each mode's training continues from its checkpoint (``training.train``); a
finished mode is skipped. Results: ``OUT/study.json`` and ``OUT/study.rst``.

The paper's own target was real (ZTF frames labelled by DAOPHOT)::

    python -m training.transfer_study --target real --out runs/transfer_real [--samples 50000]
        [--reference sextractor|daophot]

Target: the real ESO NTT frame of ``shared/real``, labelled by its SourceExtractor + PSFEx
PSF-fit catalogue (`training.real_target`: the rows, the stamps cut as MLPhotometry prepares
the frame, the ePSF of ``psf_model="auto"`` for the PSF channel, a spatial train / test split,
the one flux scale between the catalogue and our fluxes). The same modes and table, against
the reference instead of a truth (S/N bins of the reference's S/N), with two more tables:
the ConTEST statistics and the verdict with the reference's own errors added, on all held-out
rows; Pearson r and ConTEST on the point-like rows alone.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot.consistency import contest

from . import real_target
from . import simulate as simulate_mod
from . import train as train_mod
from .data import StampSet

#: The study's recipe: the target data set and the training budget of each trained mode.
STUDY = {
    "source_model": "asidfe_tsmve_v5",
    "target": {"preset": "undersampled", "n_frames": 400, "seed": 21},
    "samples": 200_000, "scratch_step1_fraction": 0.5, "lr": 5e-4, "seed": 31,
    "eval_every": 50_000, "test_limit": 40_000, "contest_sample": 2_000,
}
QUICK = {**STUDY, "target": {**STUDY["target"], "n_frames": 6}, "samples": 1024,
         "eval_every": 512, "test_limit": 2_000, "contest_sample": 200}
#: The real target (`training.real_target`): a few hundred labelled stamps, so a small budget
#: (about 370 passes over the training stamps), run in full by every mode (no early stopping:
#: a 34-stamp validation split stops a network learning from random weights at its first
#: plateau); the checkpoint of the best validation NLL is the one evaluated.
REAL_STUDY = {**STUDY, "target": {"kind": "real", "frame": "eso_ntt_emmi/galaxies.fits",
                                  "catalogue": "eso_ntt_emmi/galaxies_sextractor_psffit_rerun.cat",
                                  "cut": None, "blocks": 4, "test_fraction": 0.4,
                                  "val_fraction": 0.2, "seed": 21},
              "samples": 50_000, "eval_every": 2_500, "test_limit": 10**6,
              "contest_sample": 10**6, "threads": 1, "patience": 10**6}
REAL_QUICK = {**REAL_STUDY, "target": {**REAL_STUDY["target"], "cut": [0, 512, 0, 1024]},
              "samples": 1024, "eval_every": 512}
#: The same frame labelled by DAOPHOT ALLSTAR instead (``--reference daophot``), as the
#: paper labelled ZTF.
DAOPHOT_TARGET = {"reference": "daophot",
                  "daophot": "eso_ntt_emmi/galaxies_iraf_daophot_allstar_rerun.txt"}
MODES = ("direct", "direct+psf", "frozen", "retrained", "scratch")
#: S/N bins of the per-bin table (evaluation.metrics.SNR_BINS; training may not import it).
SNR_EDGES = (3, 10, 30, 100, 300, 1000, np.inf)


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_mode(mode, data, out, config, source, log=print):
    """Train one mode (resumable); returns the weights to evaluate and its cost."""
    folder = Path(out) / mode
    samples = int(config["samples"])
    common = {"lr": config["lr"], "seed": config["seed"], "eval_every": config["eval_every"],
              "threads": config.get("threads"), "patience": config.get("patience", 8),
              "log": log}
    cost_file = folder / "cost.json"
    if (folder / "DONE").exists() or (folder / "step2" / "DONE").exists():
        cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
        return _weights(mode, folder), cost
    t0, c0 = time.time(), _cpu_seconds()
    if mode == "frozen":
        train_mod.train(data, "step2", folder, samples, init=source, freeze_parts=("conv",),
                        mean_lr_factor=1.0, **common)
    elif mode == "retrained":
        train_mod.train(data, "step2", folder, samples, init=source, mean_lr_factor=1.0,
                        **common)
    elif mode == "scratch":
        first = int(samples * config["scratch_step1_fraction"])
        train_mod.train(data, "step1", folder / "step1", first, **common)
        train_mod.train(data, "step2", folder / "step2", samples - first,
                        init=folder / "step1" / "best.pt", **common)
    cost = {"samples": samples, "wall_minutes": (time.time() - t0) / 60,
            "cpu_minutes": (_cpu_seconds() - c0) / 60}
    folder.mkdir(parents=True, exist_ok=True)
    cost_file.write_text(json.dumps(cost))
    return _weights(mode, folder), cost


def _weights(mode, folder):
    return folder / ("step2" if mode == "scratch" else "") / "best.pt"


def predict_physical(weights, test_set, psf_mode, limit):
    """Network outputs on the test stamps in physical units, and the truths."""
    model = train_mod.load_model(weights, in_channels=test_set.n_channels)
    n = min(limit, len(test_set))
    outputs, units = [], []
    import torch

    with torch.no_grad():
        for start in range(0, n, 2048):
            x, _, unit = test_set.batch(np.arange(start, min(start + 2048, n)),
                                        psf_mode=psf_mode)
            x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            outputs.append(model(x).numpy())
            units.append(unit)
    res = _stamps.decode_outputs(np.concatenate(outputs), np.concatenate(units))
    meta = test_set.meta[:n]
    truth = {"dx": meta["true_dx"].astype(float), "dy": meta["true_dy"].astype(float),
             "flux": meta["flux"].astype(float), "snr": meta["snr"].astype(float)}
    return res, truth


def mode_metrics(res, truth, config):
    """Pearson r, ConTEST and the per-S/N-bin table of one mode."""
    rng = np.random.default_rng(0)
    n = len(truth["flux"])
    pick = rng.choice(n, min(n, config["contest_sample"]), replace=False)
    summary = {}
    for key in ("dx", "dy", "flux"):
        value, err, true = res[key], res[f"{key}_err"], truth[key]
        good = np.isfinite(value) & np.isfinite(err) & (err > 0)
        summary[f"pearson_{key}"] = float(np.corrcoef(value[good], true[good])[0, 1])
        sub = pick[good[pick]]
        test = contest(value[sub], true[sub], err[sub])
        summary[f"contest_{key}"] = "Rejected" if test.rejected else "Not Rejected"
    bins = []
    snr = truth["snr"]
    for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:], strict=True):
        sel = (snr >= lo) & (snr < hi)
        if not sel.any():
            continue
        rel = res["flux"][sel] / truth["flux"][sel] - 1
        pos = np.hypot(res["dx"][sel] - truth["dx"][sel], res["dy"][sel] - truth["dy"][sel])
        z_flux = (res["flux"][sel] - truth["flux"][sel]) / res["flux_err"][sel]
        z_x = (res["dx"][sel] - truth["dx"][sel]) / res["dx_err"][sel]
        bins.append({"snr": f"{lo:g}-{hi:g}", "n": int(sel.sum()),
                     "flux_mare": float(np.nanmean(np.abs(rel))),
                     "position_mae": float(np.nanmean(pos) / np.sqrt(2)),
                     "z_std_flux": float(np.nanstd(z_flux)), "z_std_x": float(np.nanstd(z_x))})
    return summary, bins


def model_path_of(config):
    """The source model's directory."""
    from asidfe_phot.models import model_path

    return model_path(config["source_model"])


def run(out, config, log=print):
    """All modes, resumable; returns the study's results (also in ``OUT/study.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = config["target"]
    source = model_path_of(config)
    real = target.get("kind") == "real"
    if real:
        data = out / "data_real"
        if not real_target.is_ready(data):
            log(f"== label the real target ({target['frame']}, {target['catalogue']})")
            real_target.write_dataset(data, target, source, predict_physical, log=log)
    else:
        data = out / f"data_{target['preset']}"
        if not (data / "index.json").exists():
            log(f"== simulate the target ({target['preset']}, {target['n_frames']} frames)")
            simulate_mod.write_dataset(data, target["n_frames"], target["preset"],
                                       target["seed"], with_psf=True, log=log)
    test_set = StampSet(data, "test", limit=config["test_limit"])
    n_train = StampSet(data, "train").meta.size
    results = {"config": config, "n_train_stamps": int(n_train),
               "n_test_stamps": len(test_set), "modes": {}}
    if real:
        index = json.loads((data / "index.json").read_text())
        results["reference"] = {k: index[k] for k in (
            "flux_scale", "flux_scale_rows", "flux_scale_rule", "n_rows",
            "n_dropped_near_test", "n_point", "conditions")}
        results["reference"]["counts"] = {s: v["count"] for s, v in index["splits"].items()}
    for mode in MODES:
        log(f"== {mode}")
        if mode.startswith("direct"):
            weights, cost = source, {"samples": 0, "cpu_minutes": 0.0, "wall_minutes": 0.0}
        else:
            weights, cost = train_mode(mode, data, out, config, source, log=log)
        psf_mode = "without" if mode == "direct" else "with"
        res, truth = predict_physical(weights, test_set, psf_mode, config["test_limit"])
        summary, bins = mode_metrics(res, truth, config)
        if real:
            summary.update(real_target.reference_metrics(res, truth, data))
        results["modes"][mode] = {**summary, **cost, "bins": bins}
        (out / "study.json").write_text(json.dumps(results, indent=1))
    (out / "study.rst").write_text(report(results))
    return results


def report(results):
    """``study.rst``: the tables of `rst_tables`, and the real target's `real_target.rst_table`."""
    text = rst_tables(results)
    if "reference" in results:
        text += "\n" + real_target.rst_table(results)
    return text


def rst_tables(results):
    """
    The paper's Table 2 layout, then the per-S/N-bin metrics (against the truth, or on the
    real target against the reference, binned by the reference's S/N).
    """
    lines = ["========== ========= ========= ========== ============= =========== ======",
             "Mode       Pearson x Pearson y Pearson f  ConTEST x/y/f Samples     CPU min",
             "========== ========= ========= ========== ============= =========== ======"]
    short = {"Rejected": "R", "Not Rejected": "NR"}
    for mode, m in results["modes"].items():
        verdict = "/".join(short[m[f"contest_{k}"]] for k in ("dx", "dy", "flux"))
        lines.append(f"{mode:<10} {m['pearson_dx']:<9.3f} {m['pearson_dy']:<9.3f} "
                     f"{m['pearson_flux']:<10.4f} {verdict:<13} {m['samples']:<11d} "
                     f"{m['cpu_minutes']:<6.1f}")
    lines.append(lines[0])
    if "reference" in results:
        caption = ("Per S/N bin of the reference (FLUX_PSF / FLUXERR_PSF), against the "
                   "reference: n, then per mode flux MARE / position MAE px / z std flux / "
                   "z std x (z from the network's errors alone; '-' for a bin of one row):")
    else:
        caption = "Per S/N bin (flux MARE / position MAE px / z std flux / z std x):"
    lines += ["", caption, ""]
    modes = list(results["modes"])
    header = "======== ====== " + " ".join("=" * 27 for _ in modes)
    lines += [header, "S/N      n      " + " ".join(f"{m:<27}" for m in modes), header]
    snrs = [b["snr"] for b in results["modes"][modes[0]]["bins"]]
    for snr in snrs:
        cells = []
        for mode in modes:
            b = next(b for b in results["modes"][mode]["bins"] if b["snr"] == snr)
            # The std of a single z is 0 by construction, not a calibration.
            z = (f"{b['z_std_flux']:.2f}/{b['z_std_x']:.2f}" if b["n"] > 1 else "-/-")
            cells.append(f"{b['flux_mare']:.3f}/{b['position_mae']:.3f}/{z}".ljust(27))
        count = results["modes"][modes[0]]["bins"][snrs.index(snr)]["n"]
        lines.append(f"{snr:<8} {count:<6d} " + " ".join(cells))
    lines.append(header)
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=float, default=None,
                        help=f"training budget per mode (default {STUDY['samples']})")
    parser.add_argument("--quick", action="store_true", help="tiny data and budget (tests)")
    parser.add_argument("--target", choices=("simulated", "real"), default="simulated",
                        help="the simulated undersampled telescope (default) or the real NTT "
                             "frame labelled by its SourceExtractor PSF-fit catalogue")
    parser.add_argument("--reference", choices=("sextractor", "daophot"),
                        default="sextractor",
                        help="the real target's labels: SourceExtractor + PSFEx PSF fits "
                             "(default) or IRAF DAOPHOT ALLSTAR")
    args = parser.parse_args(argv)
    configs = {"simulated": (STUDY, QUICK), "real": (REAL_STUDY, REAL_QUICK)}[args.target]
    config = dict(configs[1] if args.quick else configs[0])
    if args.reference == "daophot":
        if args.target != "real":
            parser.error("--reference daophot labels the real target: add --target real")
        config["target"] = {**config["target"], **DAOPHOT_TARGET}
    if args.samples:
        config["samples"] = int(args.samples)
    run(args.out, config)
    print((Path(args.out) / "study.rst").read_text())


if __name__ == "__main__":
    main()
