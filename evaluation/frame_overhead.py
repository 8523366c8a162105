"""
Per-frame overhead of MLPhotometry: time per phase, the network's share and peak memory.

    python -m evaluation.frame_overhead [--cases big,small,mid] [--psf-model none|auto]
                                        [--repeat 1] [--cache DIR] [--json FILE]

Cases (each in its own process, so its memory is measured alone): ``big`` a survey-sized
10,560 x 10,560 float32 frame with 10,000 sources (MeerLICHT's), ``small`` 2048 x 2048
with 1,000, ``mid`` 4096 x 4096 with 50,000; ``WxN`` for any other (e.g. ``1024x2000``).
Frames are simulated with numpy (Gaussian stars of FWHM 3 px, log-uniform fluxes 300 to
1e6, a sky of 300 with a gradient, Gaussian noise of gain 2), float32, and the call is
``MLPhotometry(psf_model=None)(image, x=x, y=y)`` with everything else at its default
(background estimated, no gain given, ``aperture_correction="auto"``); ``--psf-model
auto`` adds the default PSF mode (an ePSF built from the frame, then a PSF fit per
source), whose costs are per source rather than per frame.

Phases are inclusive wall times of the package's internal functions, timed by wrapping
them (indented: inside the one above; a phase run on several threads is their sum, which
can exceed the phase above it); "network" is onnxruntime's own time, so
"network share" is the fraction of the call the network takes. "added" peak memory is how
far the call raised the process's peak resident size above what it was with the frame
loaded and the model session set up (Linux: the peak mark is reset through
``/proc/self/clear_refs``), in MB and in units of the frame's own size. The session is
warmed up and photutils imported first (once-per-process costs); ``--repeat 2`` keeps the
faster of two calls, whose first-call costs (imports on first use, the network's buffers
growing to a full batch) were paid by the first. Not a test: numbers depend on the machine
and on what else runs on it.

To measure another checkout of the package (e.g. an older commit in a git worktree), run
this file by its path, not with ``-m``, with that checkout first on the path::

    PYTHONPATH=/tmp/wt_before python evaluation/frame_overhead.py --cases big

(the report prints the package it measured).
"""

import argparse
import functools
import gc
import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

#: Named cases: (side in px, number of sources).
CASES = {"big": (10560, 10_000), "small": (2048, 1_000), "mid": (4096, 50_000)}

#: Timed functions, ``(module, attribute, label, depth)``: a missing one is skipped (so
#: the script measures older and newer versions of the package alike).
PHASES = (
    ("asidfe_phot.photometry", "coerce_data", "input checks and float32", 0),
    ("asidfe_phot.photometry", "prepare", "prepare (background, bad pixels, gain)", 0),
    ("asidfe_phot._prepare", "estimate_background", "mesh background", 1),
    ("asidfe_phot._prepare", "mesh_maps", "mesh background", 1),
    ("asidfe_phot._background", "_clipped_stats", "sigma clipping (all threads)", 2),
    ("asidfe_phot._background", "_interpolate_mesh", "interpolation to every pixel", 2),
    ("asidfe_phot._photutils_api", "source_inputs", "source inputs (local bkg, groups)", 0),
    ("asidfe_phot._psf_mode", "psf_sampler", "PSF model (auto ePSF)", 0),
    ("asidfe_phot._network", "measure", "stamps + network", 0),
    ("asidfe_phot._onnx", "run", "network (onnxruntime)", 1),
    ("asidfe_phot._background", "MeshMap.stamps", "background and rms in the stamps", 1),
    ("asidfe_phot._psf_mode", "fit_psf", "PSF fit", 0),
    ("asidfe_phot._aperture_correction", "apply", "aperture correction", 0),
    ("asidfe_phot._results", "assemble", "result table", 0),
)


class _Timer:
    def __init__(self):
        self.seconds = {}
        self.calls = {}

    def wrap(self, module, name, label):
        """Time ``module.name`` (``name`` may be ``Class.method``); False if it is missing."""
        owner = importlib.import_module(module)
        *path, name = name.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        fn = getattr(owner, name, None)
        if fn is None:
            return False

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)
        return True


def _status_mb(key):
    """VmRSS / VmHWM of this process (Linux), MB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak():
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS")


def make_frame(size, n, seed=42, fwhm=3.0):
    """A float32 ``size`` x ``size`` frame of ``n`` Gaussian stars; their x, y."""
    rng = np.random.default_rng(seed)
    yy = np.arange(size, dtype=np.float32)[:, None]
    xx = np.arange(size, dtype=np.float32)[None, :]
    image = np.empty((size, size), np.float32)
    image[:] = 300.0 + 20.0 * (xx / size) - 10.0 * (yy / size)
    x = rng.uniform(3, size - 4, n)
    y = rng.uniform(3, size - 4, n)
    flux = np.exp(rng.uniform(np.log(300), np.log(1e6), n))
    s = fwhm / np.sqrt(8 * np.log(2))
    h = 12
    for xi, yi, fi in zip(x, y, flux):
        ix, iy = round(xi), round(yi)
        y0, y1 = max(iy - h, 0), min(iy + h + 1, size)
        x0, x1 = max(ix - h, 0), min(ix + h + 1, size)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - yi) / s) ** 2)
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - xi) / s) ** 2)
        image[y0:y1, x0:x1] += (fi / (2 * np.pi * s * s)) * gy[:, None] * gx[None, :]
    gain = 2.0
    for r0 in range(0, size, 1024):
        rows = image[r0:r0 + 1024]
        noise = np.sqrt(np.maximum(rows, 0) / gain)
        rows += noise * rng.standard_normal(rows.shape, dtype=np.float32)
    return image, x, y


def _case_shape(case):
    if case in CASES:
        return CASES[case]
    side, n = case.lower().split("x")
    return int(side), int(n)


def _frame(case, cache):
    size, n = _case_shape(case)
    if cache is not None:
        path = Path(cache) / f"frame_{size}_{n}.npz"
        if path.exists():
            d = np.load(path)
            return d["image"], d["x"], d["y"]
    image, x, y = make_frame(size, n)
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.savez(path, image=image, x=x, y=y)
    return image, x, y


def worker(case, psf_model, repeat, cache):
    """Measure one case in this process; a dict of numbers."""
    from asidfe_phot import MLPhotometry
    from asidfe_phot.exceptions import AsidfePhotWarning

    image, x, y = _frame(case, cache)
    kwargs = {} if psf_model == "auto" else {"psf_model": None}
    phot = MLPhotometry(providers=["CPUExecutionProvider"], **kwargs)
    timer = _Timer()
    labels = []
    for module, name, label, depth in PHASES:
        if timer.wrap(module, name, label) and label not in [lab for lab, _ in labels]:
            labels.append((label, depth))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AsidfePhotWarning)
        # Warm the session up on a small corner, and import what the aperture correction
        # uses: first-call costs are paid once per process, not per frame.
        phot(np.ascontiguousarray(image[:256, :256]), x=[128.0], y=[128.0])
        importlib.import_module("photutils.aperture")
        best = None
        for _ in range(repeat):
            timer.seconds.clear()
            timer.calls.clear()
            base = _reset_peak()
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            t0, c0 = time.perf_counter(), time.process_time()
            tbl = phot(image, x=x, y=y)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = _status_mb("VmHWM")
            if best is None or total < best["total"]:
                best = {"total": total, "cpu": cpu, "load": load, "phases": dict(timer.seconds),
                        "added_mb": None if peak is None or base is None else peak - base,
                        "peak_mb": peak}
    import asidfe_phot

    best.update(case=case, shape=list(image.shape), n=int(x.size),
                package=str(Path(asidfe_phot.__file__).parent), threads=os.cpu_count(),
                frame_mb=image.nbytes / 1024**2, labels=labels,
                psf_used=bool(tbl.meta.get("psf_used")),
                aperture_correction=tbl.meta.get("aperture_correction_note"),
                rows=len(tbl))
    return best


def report(r):
    """Print one case's numbers."""
    ny, nx = r["shape"]
    total = r["total"]
    print(f"\n{ny} x {nx} float32 ({r['frame_mb']:.0f} MB), {r['n']:,} sources: "
          f"{total:.2f} s end to end ({r['n'] / total:,.0f} sources/s), CPU {r['cpu']:.2f} s "
          f"({r['threads']} cores, load average {r['load'] or 0:.1f}); PSF used: {r['psf_used']}; "
          f"aperture correction: {r['aperture_correction']}; package {r['package']}")
    for label, depth in r["labels"]:
        if label in r["phases"]:
            sec = r["phases"][label]
            print(f"  {'  ' * depth}{label:{44 - 2 * depth}s} {sec:7.2f} s {sec / total:6.1%}")
    top = sum(r["phases"].get(label, 0.0) for label, depth in r["labels"] if depth == 0)
    print(f"  {'other':44s} {total - top:7.2f} s {(total - top) / total:6.1%}")
    net = r["phases"].get("network (onnxruntime)", np.nan)
    print(f"  network share {net / total:.1%}")
    if r["added_mb"] is not None:
        print(f"  peak memory: {r['peak_mb']:.0f} MB resident, {r['added_mb']:.0f} MB added by "
              f"the call = {r['added_mb'] / r['frame_mb']:.2f} x the frame")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="big,small,mid")
    parser.add_argument("--psf-model", choices=("auto", "none"), default="none")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", default=None, help="folder to keep the simulated frames in")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.psf_model, args.repeat, args.cache)))
        return
    results = []
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", case,
               "--psf-model", args.psf_model, "--repeat", str(args.repeat)]
        if args.cache:
            cmd += ["--cache", str(Path(args.cache).resolve())]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr.strip()[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
