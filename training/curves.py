"""
Training curves (paper Figs. 4, 7-9): loss and validation MSE, MAE and NLL per evaluation.

    python -m training.curves --model models/asidfe_tsmve_v5 --out training_curves.png
    python -m training.curves --runs runs/v3/compare --out compare_curves.png

``--model`` draws the stages recorded in a model card's ``history`` one
after the other (step 1, step 2, step 2 continued) on a common axis of
training samples; ``--runs`` draws every run folder's ``history.json``
under a directory (the TS-MVE vs ensemble comparison: TS-MVE step 1 and
step 2, each MVE member) from zero. The pipeline writes both.
"""

import argparse
import json
from pathlib import Path

import numpy as np

#: Panels: (history key, axis label).
PANELS = (("train_loss", "training loss (Huber in step 1, NLL after)"),
          ("val_mse", "validation MSE"), ("val_mae", "validation MAE"),
          ("val_nll", "validation NLL"))


def read_runs(directory):
    """``{run name: history}`` of every ``<directory>/<run>/history.json``, sorted by name."""
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(Path(directory).glob("*/history.json"))}


def plot_curves(histories, path, *, consecutive=False, title=None):
    """
    One line per run in each of the `PANELS`; returns the figure.

    ``consecutive``: the runs continue each other (a model's stages), so each
    starts where the previous one ended on the samples axis.
    """
    import matplotlib

    matplotlib.use("agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, len(PANELS))
    offset = 0
    for k, (name, history) in enumerate(histories.items()):
        if not history:
            continue
        samples = offset + np.array([h["samples"] for h in history], dtype=float)
        # A run's final evaluation can follow the previous one by a few steps: its
        # training loss is an average over those few batches only, so it is not drawn.
        gaps = np.diff(samples, prepend=samples[0] - (samples[1] - samples[0]
                                                      if len(samples) > 1 else 1))
        short = gaps < 0.1 * np.median(gaps)
        for ax, (key, _) in zip(axes, PANELS):
            values = np.array([h.get(key, np.nan) for h in history], dtype=float)
            if key == "train_loss":
                values[short] = np.nan
            if np.any(np.isfinite(values)):
                ax.plot(samples, values, marker="o", ms=3, color=f"C{k}", label=name)
        if consecutive:
            offset = samples[-1]
    for ax, (_, label) in zip(axes, PANELS):
        ax.set(xlabel="training samples", ylabel=label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model directory: its card's history")
    source.add_argument("--runs", help="a directory of run folders with history.json")
    parser.add_argument("--out", required=True, help="output PNG")
    args = parser.parse_args(argv)
    if args.model:
        card = json.loads((Path(args.model) / "config.json").read_text())
        plot_curves(card["history"], args.out, consecutive=True,
                    title=f"{card['name']}_v{card['version']}: training stages")
    else:
        plot_curves(read_runs(args.runs), args.out, title=f"runs in {Path(args.runs).name}/")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
