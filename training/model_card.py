"""
Render a model directory's ``README.md`` (the human-readable model card) from its config.json.

    python -m training.model_card models/asidfe_tsmve_v5
"""

import argparse
import json
from pathlib import Path

_BIN_COLUMNS = (
    ("n", "N", "{:d}"),
    ("flux_mare_ml", "flux MARE ML", "{:.4f}"),
    ("flux_mare_mlpsf", "flux MARE ML, true PSF given", "{:.4f}"),
    ("flux_mare_mlauto", "flux MARE ML, psf_model=auto", "{:.4f}"),
    ("flux_mare_sep", "flux MARE sep AUTO", "{:.4f}"),
    ("flux_mare_aper", "flux MARE aperture", "{:.4f}"),
    ("flux_mare_sex", "flux MARE SExtractor AUTO", "{:.4f}"),
    ("flux_mare_psfex", "flux MARE SExtractor+PSFEx", "{:.4f}"),
    ("flux_mare_psf", "flux MARE true-PSF fit", "{:.4f}"),
    ("flux_zstd_ml", "flux z-std", "{:.2f}"),
    ("flux_cov68_ml", "flux 68% cov.", "{:.2f}"),
    ("x_zstd_ml", "x z-std", "{:.2f}"),
    ("y_zstd_ml", "y z-std", "{:.2f}"),
    ("x_cov68_ml", "x 68% cov.", "{:.2f}"),
    ("x_mae_ml", "x MAE (px)", "{:.4f}"),
    ("x_mae_init", "x MAE input (px)", "{:.4f}"),
    ("flux_rms_over_crlb_ml", "flux rms/CRLB", "{:.2f}"),
    ("x_rms_over_crlb_ml", "x rms/CRLB", "{:.2f}"),
)


def _fmt(fmt, value):
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def metrics_table(bins):
    """Markdown table of per-S/N-bin metrics (the columns some bin has)."""
    columns = [c for c in _BIN_COLUMNS if any(b.get(c[0]) is not None for b in bins)]
    head = "| S/N | " + " | ".join(label for _, label, _ in columns) + " |"
    sep = "|" + "---|" * (len(columns) + 1)
    lines = [head, sep]
    for b in bins:
        hi = b["snr_hi"]
        rng = f"{b['snr_lo']:g}-{hi:g}" if hi is not None and hi != float("inf") else \
            f">{b['snr_lo']:g}"
        lines.append(f"| {rng} | " + " | ".join(_fmt(fmt, b.get(key))
                                               for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def calibration_lines(cal):
    """The sigma calibration factors as a markdown table."""
    core = "log10_core_snr" in cal
    variable = ("the stamp's core S/N (its central 5x5 sum over that sum's noise)" if core
                else "the predicted flux S/N")
    lines = ["## Sigma calibration", "",
             f"Predicted sigmas are multiplied by these factors, interpolated in log10 of "
             f"{variable} ({cal.get('method', '')}); fitted on the "
             f"{cal.get('fitted_on', 'validation split')}.", "",
             "| log10 S/N | x | y | flux |", "|---|---|---|---|"]
    for k, knot in enumerate(cal["log10_core_snr" if core else "log10_snr"]):
        lines.append(f"| {knot:.2f} | {cal['dx'][k]:.3f} | {cal['dy'][k]:.3f} | "
                     f"{cal['flux'][k]:.3f} |")
    return lines + [""]


def generalisation_lines(gen):
    """Held-out PSF family scores as a markdown table."""
    lines = ["## Generalisation to a held-out PSF family", "",
             f"`{gen['hold_out']}` left out of training entirely; both models trained with "
             f"{gen['samples_per_step']:,} samples per step (raw sigmas, no calibration).", "",
             *([gen["note"][:1].upper() + gen["note"][1:] + ".", ""] if gen.get("note") else []),
             "| test stamps | model | S/N | N | flux MARE | pos MAE | flux z-std |",
             "|---|---|---|---|---|---|---|"]
    for test_name, by_model in gen["scores"].items():
        for model_name, bins in by_model.items():
            for b in bins:
                if b["n"]:
                    hi = b["snr_hi"]
                    rng = f"{b['snr_lo']:g}-{hi:g}" if hi else f">{b['snr_lo']:g}"
                    lines.append(f"| {test_name} | {model_name} | {rng} | {b['n']} | "
                                 f"{b['flux_mare']:.4f} | {b['pos_mae']:.4f} | "
                                 f"{b['flux_zstd']:.2f} |")
    return lines + [""]


def _data_lines(card):
    """The training data sets: one dict (v4 and older, plus ``training_data_broad``) or a list."""
    sets = card.get("training_data", {})
    if isinstance(sets, dict):
        sets = [sets] + ([card["training_data_broad"]] if card.get("training_data_broad")
                         else [])
    lines = []
    for d in sets:
        lines.append(f"- simulator preset `{d.get('preset')}`, seed {d.get('seed')}, "
                     f"{d.get('n_frames')} frames of {d.get('frame_shape')} px, PSF families "
                     f"{d.get('families')}; stamps per split: {d.get('counts')}")
        if d.get("psf_errors"):
            lines.append(f"  - with each stamp's imperfect PSF (the PSF channel): "
                         f"`{json.dumps(d['psf_errors'])}`")
    return lines


def render(card):
    data = card.get("training_data", {})
    broad = card.get("training_data_broad") or (isinstance(data, list) and len(data) > 1)
    config = card.get("training_config", {})
    psf_stage = "parent_model" in card
    # The parent's weights (--init) need not ship: the pipeline takes its directory.
    regenerate = (f"python -m training.pipeline --psf-stage --init PARENT_DIR "
                  f"--out runs/v{card['version']} "
                  f"--model-dir models/{card['name']}_v{card['version']}" if psf_stage else
                  f"python -m training.pipeline --out runs/v{card['version']} "
                  f"--model-dir models/{card['name']}_v{card['version']}")
    lines = [
        f"# {card['name']} v{card['version']}",
        "",
        "TS-MVE network (Stoppa et al. 2023): flux, sub-pixel position and their 1-sigma "
        "uncertainties from 32x32 stamps (how well calibrated: see the z-std and coverage "
        "columns below). Generated by `training/model_card.py` from `config.json`; do not "
        "edit by hand.",
        "",
        f"- file: `{card['file']}`, sha256 `{card['sha256']}`, ONNX opset {card['opset']}",
        f"- torch vs onnxruntime parity: {card.get('parity')}",
        f"- training commit: `{card.get('training_commit')}`",
        "",
        "## Input contract",
        "",
        "```json",
        json.dumps(card["contract"], indent=2),
        "```",
        "",
        "## Training data and recipe",
        "",
        *_data_lines(card),
        *([f"- parent model: `{card['parent_model']}` (its weights, widened by the PSF "
           "channel with zero weights, start the training; `PARENT_DIR` below is its model "
           "directory)"] if psf_stage else []),
        f"- regenerate: `{regenerate}`",
        f"- configuration: `{json.dumps(config)}`",
        "",
    ]
    for stage, hist in card.get("history", {}).items():
        if hist:
            last = hist[-1]
            best_key = "val_nll" if "val_nll" in last else "val_huber"
            best = min(hist, key=lambda h: h[best_key])
            lines.append(f"- {stage}: {last['samples']:,} samples, best {best_key} "
                         f"{best[best_key]:.4f} at {best['samples']:,}; val MSE "
                         f"{best['val_mse']:.4f}, MAE {best['val_mae']:.4f}")
    lines.append("")
    if "test_metrics" in card:
        lines += ["## Accuracy on held-out test frames (by frame)", "",
                  "Detector (sep) positions as input; MARE = mean absolute relative error of "
                  "the total flux; z-std = std of (prediction - truth) / sigma; CRLB = "
                  "Cramér–Rao bound of a fit with the true PSF (isolated star).", "",
                  metrics_table(card["test_metrics"]), ""]
    if "test_metrics_broad" in card:
        lines += ["## Accuracy on the test frames of the broad-PSF recipe", "",
                  "PSF shapes beyond the generic ones (Airy with obstruction, FWHM down to "
                  "1 px, Moffat beta down to 1.5, strong asymmetry); same columns.", "",
                  metrics_table(card["test_metrics_broad"]), ""]
    if "flux_bias_correction" in card:
        b = card["flux_bias_correction"]
        lines += ["## Flux-bias correction", "",
                  "Fluxes (and their sigmas) are multiplied by these factors, interpolated in "
                  f"log10 core S/N ({b.get('method', '')}); fitted on {b.get('fitted_on', '')}.",
                  "", "| log10 core S/N | factor |", "|---|---|",
                  *(f"| {k:.2f} | {f:.3f} |" for k, f in zip(b["log10_core_snr"], b["factor"])),
                  ""]
    if "sigma_calibration" in card:
        lines += calibration_lines(card["sigma_calibration"])
    for key, what in (("sigma_calibration_psf", "with `psf_model` (a given PSF)"),
                      ("sigma_calibration_auto", 'with `psf_model="auto"`')):
        if key in card:
            cal = calibration_lines(card[key])
            cal[0] = f"## Sigma calibration {what}"
            lines += cal
    if card.get("network_psf_calibration"):
        cal = calibration_lines(card["network_psf_calibration"]["sigma_calibration"])
        cal[0] = "## Sigma calibration of the network given the PSF (before the PSF fit)"
        lines += cal
    if card.get("psf_mode_network_margin") is not None:
        lines += ["## The PSF mode's choice", "",
                  "The PSF fit's value is taken unless its error exceeds "
                  f"{card['psf_mode_network_margin']:g} times the network's.", ""]
    if "generalisation" in card:
        lines += generalisation_lines(card["generalisation"])
    if "ensemble_comparison" in card:
        c = card["ensemble_comparison"]
        lines += ["## TS-MVE vs deep ensemble of MVE networks (validation, equal small budget)",
                  "", f"Budget: {c['budget']}; {c['validation_stamps']} validation stamps.", "",
                  "| model | MSE | MAE | NLL |", "|---|---|---|---|",
                  f"| TS-MVE | {c['tsmve']['mse']:.4f} | {c['tsmve']['mae']:.4f} | "
                  f"{c['tsmve']['nll']:.4f} |",
                  f"| ensemble | {c['ensemble']['mse']:.4f} | {c['ensemble']['mae']:.4f} | "
                  f"{c['ensemble']['nll']:.4f} |", "",
                  f"TS-MVE wins: {c['tsmve_wins']}", ""]
    lines += ["## Known limits", "",
              *(["- Trained on simulated point sources: Gaussian, Moffat (beta 1.5-6), "
                 "double-Gaussian and obstructed Airy PSFs, FWHM 1-8 px, ellipticity up to "
                 "0.3 and asymmetric components. Extended sources, saturated stars and PSFs "
                 "far from these (e.g. defocused donuts) are outside the training domain."]
                if broad else
                ["- Trained on simulated point sources (Gaussian, Moffat, double-Gaussian "
                 "PSFs, FWHM 1.5-8 px, mild ellipticity/asymmetry). Extended sources, "
                 "saturated or undersampled (FWHM < 1.5 px) stars are outside the training "
                 "domain."]),
              "- Light beyond the 32x32 stamp: `MLPhotometry(aperture_correction=\"auto\")` "
              "measures and applies a per-image correction on the image's bright isolated "
              "stars (without a PSF model); with one, the model's own normalisation counts.",
              *(["- The PSF channel was trained with ePSF-like errors (FWHM up to 4 %, centring "
                 "up to 0.05 px, one PSF for a varying frame); a PSF much further off is caught "
                 "by the fit's chi^2 (`psf_profile_error` > 0.25: not used)."]
                if psf_stage else []),
              "- The sigma is calibrated only if the sources' Poisson noise is known to the "
              "network (error map, gain, or an unsubtracted sky); see the NO_SOURCE_NOISE flag.",
              ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    card = json.loads((model_dir / "config.json").read_text())
    (model_dir / "README.md").write_text(render(card))
    print(f"wrote {model_dir / 'README.md'}")


if __name__ == "__main__":
    main()
