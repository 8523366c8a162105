"""
Figures of a simulated data set for the docs (paper Figs. 1-2) and its summary numbers.

    python -m evaluation.plot_dataset --data runs/data_v1 --out docs/_static/simulator

Writes ``snr_histogram.png`` (number of stamps vs optimal S/N per split),
``stamps.png`` (random stamps in S/N bins, detector and true positions
marked) and ``summary.json`` (counts, S/N percentiles, FWHM, crowding).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from training.data import StampSet

SNR_ROWS = ((3, 5), (5, 10), (10, 30), (30, 100), (100, 1000), (1000, np.inf))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-row", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = json.loads((Path(args.data) / "index.json").read_text())
    metas = {s: np.concatenate([np.load(Path(args.data) / f"{name}.meta.npy")
                                for name in index["splits"][s]["shards"]])
             for s in ("train", "val", "test")}

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.logspace(0, 5, 51)
    for split, meta in metas.items():
        ax.hist(meta["snr"], bins=bins, histtype="step", label=f"{split} ({len(meta):,})")
    ax.set(xscale="log", yscale="log", xlabel="optimal S/N", ylabel="stamps",
           title="Simulated stamps per S/N (detected and matched)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "snr_histogram.png", dpi=110)
    plt.close(fig)

    test = StampSet(args.data, "test", limit=200_000)
    rng = np.random.default_rng(args.seed)
    fig, axes = plt.subplots(len(SNR_ROWS), args.per_row,
                             figsize=(1.4 * args.per_row, 1.5 * len(SNR_ROWS)))
    for row, (lo, hi) in enumerate(SNR_ROWS):
        pool = np.flatnonzero((test.meta["snr"] >= lo) & (test.meta["snr"] < hi))
        pick = rng.choice(pool, min(args.per_row, pool.size), replace=False) if pool.size else []
        for col in range(args.per_row):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(pick):
                continue
            k = pick[col]
            stamp = test.stamps[k]
            m = test.meta[k]
            ref = stamp.shape[0] // 2
            ax.imshow(np.arcsinh(stamp / m["rms"]), origin="lower", cmap="gray")
            ax.plot(ref + m["true_dx"], ref + m["true_dy"], "r+", ms=6)
            ax.plot(ref + m["det_dx"], ref + m["det_dy"], "cx", ms=4)
            if col == 0:
                ax.set_ylabel(f"S/N {lo}-{hi:g}", fontsize=8)
    fig.suptitle("Random 34x34 test stamps (asinh of S/N per pixel); + truth, x detector",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "stamps.png", dpi=100)
    plt.close(fig)

    allm = np.concatenate(list(metas.values()))
    summary = {
        "counts": {s: len(m) for s, m in metas.items()},
        "frames": index["n_frames"], "seconds": index.get("seconds"),
        "stamps_per_second": index.get("stamps_per_second"),
        "processes": index.get("processes"),
        "snr_percentiles": dict(zip(("1", "10", "50", "90", "99"),
                                    np.percentile(allm["snr"], [1, 10, 50, 90, 99]).round(1)
                                    .tolist())),
        "fraction_snr_above_1000": float(np.mean(allm["snr"] > 1000)),
        "fwhm_range": [float(allm["fwhm"].min()), float(allm["fwhm"].max())],
        "median_contamination": float(np.median(allm["contamination"])),
        "detector_offset_rms_px": float(np.sqrt(np.mean((allm["det_dx"] - allm["true_dx"]) ** 2
                                                        + (allm["det_dy"] - allm["true_dy"]) ** 2
                                                        ))),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
