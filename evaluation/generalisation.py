"""
Generalisation check: train with one PSF family held out entirely, test on it.

    python -m evaluation.generalisation --data runs/data_v1 --hold-out moffat \
        --reference runs/v3/compare/step2/best.pt --out runs/v3/heldout

Trains TS-MVE (step 1 then step 2, ``--samples`` each) on the training
stamps of every PSF family but ``--hold-out``, then scores it and a
reference model trained on all families with the same budget (the pipeline's
equal-budget TS-MVE, ``compare/step2/best.pt``) on the test stamps of the
held-out family and of the others: flux MARE, position MAE and z-score
spreads per S/N bin (raw network sigmas, no post-hoc calibration, as both
models are uncalibrated). Writes ``generalisation.json`` and an RST table.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot.datasets import PSF_FAMILIES
from evaluation.metrics import SNR_BINS, calibration, mae, mare, snr_bins
from training import train as train_mod
from training.data import StampSet


def predict(weights, stamps):
    """Decoded predictions of a checkpoint on a StampSet (central crops, no calibration)."""
    outputs, _, unit = train_mod.predict(train_mod.load_model(weights), stamps)
    return _stamps.decode_outputs(outputs.numpy(), unit)


def score(pred, meta, bins=SNR_BINS):
    """Per S/N bin: flux MARE, position MAE and the std of the x, y, flux z-scores."""
    rows = []
    truth = {"dx": meta["true_dx"], "dy": meta["true_dy"], "flux": meta["flux"]}
    for lo, hi, k in snr_bins(meta["snr"], bins):
        row = {"snr_lo": lo, "snr_hi": None if not np.isfinite(hi) else hi, "n": int(k.sum())}
        if k.sum():
            row["flux_mare"] = mare(pred["flux"][k], truth["flux"][k])
            row["pos_mae"] = mae(np.hypot(pred["dx"][k] - truth["dx"][k],
                                          pred["dy"][k] - truth["dy"][k]))
            for t in ("dx", "dy", "flux"):
                row[f"{t}_zstd"] = calibration(pred[t][k] - truth[t][k],
                                               pred[f"{t}_err"][k])["zstd"]
        rows.append(row)
    return rows


def run(data, hold_out, reference, out, samples=100_000, test_limit=60_000, log=print):
    if hold_out not in PSF_FAMILIES:
        msg = f"hold_out must be one of {PSF_FAMILIES}, got {hold_out!r}"
        raise ValueError(msg)
    out = Path(out)
    every = max(samples // 2, 256)
    for stage, init in (("step1", None), ("step2", out / "step1" / "best.pt")):
        if not (out / stage / "DONE").exists():
            train_mod.train(data, stage, out / stage, samples, init=init, eval_every=every,
                            exclude_families=[hold_out], log=log)
    # The data set's own families (PSF_FAMILIES may hold more than it was drawn from).
    families = json.loads((Path(data) / "index.json").read_text())["families"]
    others = [f for f in families if f != hold_out]
    test_sets = {f"held-out ({hold_out})": StampSet(data, "test", test_limit, others),
                 f"seen ({', '.join(others)})": StampSet(data, "test", test_limit, [hold_out])}
    result = {"hold_out": hold_out, "samples_per_step": samples,
              "reference": str(reference), "scores": {}}
    for name, stamps in test_sets.items():
        result["scores"][name] = {
            "trained without it": score(predict(out / "step2" / "best.pt", stamps), stamps.meta),
            "trained on all families": score(predict(reference, stamps), stamps.meta)}
    (out / "generalisation.json").write_text(json.dumps(result, indent=1))
    write_rst(result, out / "generalisation.rst")
    log(json.dumps(result))
    return result


def write_rst(result, path):
    from astropy.table import Table

    rows = []
    for test_name, by_model in result["scores"].items():
        for model_name, bins in by_model.items():
            for b in bins:
                if not b["n"]:
                    continue
                hi = b["snr_hi"]
                rows.append({"test stamps": test_name, "model": model_name,
                             "S/N": f"{b['snr_lo']:g}-{hi:g}" if hi else f">{b['snr_lo']:g}",
                             "N": b["n"], "flux MARE": f"{b['flux_mare']:.4f}",
                             "pos MAE": f"{b['pos_mae']:.4f}",
                             "x z-std": f"{b['dx_zstd']:.2f}",
                             "flux z-std": f"{b['flux_zstd']:.2f}"})
    Table(rows=rows).write(path, format="ascii.rst", overwrite=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--hold-out", required=True, choices=PSF_FAMILIES)
    parser.add_argument("--reference", required=True,
                        help="weights trained on all families with the same budget")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=float, default=100_000)
    parser.add_argument("--card", default=None,
                        help="record the result in this model directory's card (generalisation)")
    args = parser.parse_args(argv)
    result = run(args.data, args.hold_out, args.reference, args.out, int(args.samples))
    if args.card:
        from training.export import update_card

        update_card(args.card, {"generalisation": result})


if __name__ == "__main__":
    main()
