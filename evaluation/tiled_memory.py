"""
Peak memory against frame size: the whole frame in memory against `asidfe_phot.tiles`
(a FITS file read one tile at a time through its HDU's ``section``).

    python -m evaluation.tiled_memory [--sizes 2048,4096,8192] [--tile 2048] [--psf auto]

Frames of the benchmark recipe (`evaluation.batch_benchmark`: ``make_star_field``, sky
200, gain 2, 10,000 sources per 4096^2, i.e. a fixed density) are written once under
``runs/batch_benchmark``. Each case runs in a fresh process (its peak resident memory,
``VmHWM``, is its own), from reading the file to the finished table. Printed per case:
seconds, peak memory, the frame's size in memory (float32), and the median |flux / true
flux - 1| (MdRE) of the sources both runs measured unflagged.
"""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DENSITY = 10_000 / 4096**2

_WORKER = r"""
import json, sys, time, warnings
import numpy as np
from astropy.io import fits
from astropy.table import Table
warnings.simplefilter("ignore")
frame, mode, tile, psf = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from asidfe_phot import MLPhotometry
from asidfe_phot.io import read_image
from asidfe_phot.tiles import measure_tiled
cat = Table.read(frame.replace(".fits", ".ecsv"))
phot = MLPhotometry(psf_model=None if psf == "none" else psf)
start = time.perf_counter()
if mode == "whole":
    data, header, _ = read_image(frame)
    table = phot(data, init_params=cat, gain=2.0)
else:
    with fits.open(frame, memmap=False) as hdul:  # section: reads each tile from the file
        table = measure_tiled(phot, hdul[0].section, cat, tile=tile, gain=2.0)
seconds = time.perf_counter() - start
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
np.save(sys.argv[5], np.c_[np.asarray(table["flux_fit"], float), np.asarray(table["flags"])])
print(json.dumps({"seconds": seconds, "peak_mb": peak, "n": len(table)}))
"""


def _run(frame, mode, tile, psf, out):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run([sys.executable, "-c", _WORKER, str(frame), mode, str(tile), psf,
                           str(out)], capture_output=True, text=True, check=True, env=env,
                          cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    import numpy as np
    from astropy.table import Table

    from evaluation.batch_benchmark import _write_frames

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2048,4096,8192")
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--psf", default="auto", help='"auto" or "none"')
    parser.add_argument("--out", default=str(ROOT / "runs" / "batch_benchmark"))
    args = parser.parse_args(argv)
    print(f"psf_model={args.psf}, tile {args.tile} px; {os.cpu_count()} CPU cores, load "
          f"average before {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'frame':>12} {'sources':>8} {'image MB':>9} | {'whole: s':>9} {'peak MB':>8} "
          f"{'MdRE':>7} | {'tiled: s':>9} {'peak MB':>8} {'MdRE':>7} {'tiles':>6}")
    for size in (int(s) for s in args.sizes.split(",")):
        n = int(round(DENSITY * size * size))
        frame = _write_frames(Path(args.out) / f"frames_{size}_{n}", 1, size, n)[0]
        truth = Table.read(frame.with_suffix(".ecsv"))
        runs = {}
        for mode in ("whole", "tiled"):
            result_file = Path(args.out) / f"tiled_memory_{size}_{mode}.npy"
            runs[mode] = _run(frame, mode, args.tile, args.psf, result_file)
            runs[mode]["values"] = np.load(result_file)
        ok = ((runs["whole"]["values"][:, 1] == 0) & (runs["tiled"]["values"][:, 1] == 0)
              & np.isfinite(runs["whole"]["values"][:, 0]))
        true_flux = _true_flux(frame, truth)
        cells = []
        for mode in ("whole", "tiled"):
            mare = np.median(np.abs(runs[mode]["values"][ok, 0] / true_flux[ok] - 1))
            cells.append(f"{runs[mode]['seconds']:>9.1f} {runs[mode]['peak_mb']:>8.0f} "
                         f"{mare:>7.4f}")
        tiles = math.ceil(size / args.tile) ** 2
        print(f"{size:>7,}^2 {n:>8,} {size * size * 4 / 2**20:>9.0f} | {cells[0]} | {cells[1]} "
              f"{tiles:>6}")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _true_flux(frame, truth):
    """The frame's true fluxes (its recipe rerun once, then kept next to the frame)."""
    import numpy as np

    from asidfe_phot.datasets import make_star_field

    cached = frame.with_suffix(".flux.npy")
    if not cached.exists():
        size, n = (int(v) for v in frame.parent.name.split("_")[1:3])
        _, full_truth, _ = make_star_field((size, size), n, sky=200.0, gain=2.0, border=16,
                                           seed=0)
        if not np.allclose(np.asarray(full_truth["x"]), np.asarray(truth["x"])):
            msg = f"{frame} is not the recipe's frame (positions differ)"
            raise RuntimeError(msg)
        np.save(cached, np.asarray(full_truth["flux"], float))
    return np.load(cached)


if __name__ == "__main__":
    main()
