"""
End-to-end speed and peak memory of MLPhotometry against classical photometry, in the same run.

    python -m evaluation.speed [--size 4096] [--n-sources 50000] [--psf-subset 1000]
                               [--methods network,ml,ml_nopsf,ml_bkg,aperture,psf,sep,sex]

Prints sources/second and peak memory for: the network alone (onnxruntime on
ready stamps, the ceiling), MLPhotometry end to end with the default psf_model="auto" and
with psf_model=None (image + table -> QTable,
background estimation included) and with the background given, photutils
``aperture_photometry``, photutils ``PSFPhotometry`` (on a subset, rate
extrapolated: it is too slow for all sources), sep (SourceExtractor as a
library: background, detection and FLUX_AUTO; and FLUX_AUTO alone on its
detections), and the SourceExtractor binary (FITS written, detection,
FLUX_AUTO and XWIN, ASCII catalogue read back), with ratios to MLPhotometry.
sep and SourceExtractor detect their own sources: their rates are per
detection.

Each method runs in its own Python process (the frame is handed over in a
``.npy`` file), so its memory is measured alone: "peak RSS" is the
process's maximum resident set size (``resource.getrusage(...).ru_maxrss``:
Python, the libraries, the frame and the method), "added" how far the
measured calls raised the resident size above what it was after loading and
setting up (imports, model session, frame; Linux: the peak mark is reset
through ``/proc/self/clear_refs`` first). For SourceExtractor the binary's
own peak (``RUSAGE_CHILDREN``) is reported in both. Not a test: numbers
depend on the machine.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Method keys, in print order.
METHODS = ("network", "ml", "ml_nopsf", "ml_bkg", "aperture", "psf", "sep", "sep_auto", "sex")
NAMES = {
    "network": "network alone (onnxruntime, ceiling)",
    "ml": "MLPhotometry end to end (psf auto)",
    "ml_nopsf": "MLPhotometry, psf_model=None",
    "ml_bkg": "MLPhotometry, background given",
    "aperture": "photutils aperture_photometry",
    "psf": "photutils PSFPhotometry ({m} sources)",
    "sep": "sep: background, detection, FLUX_AUTO",
    "sep_auto": "sep FLUX_AUTO on its detections",
    "sex": "SourceExtractor binary (AUTO, WIN)",
}
#: sep_auto comes out of the sep worker.
_WORKERS = ("network", "ml", "ml_nopsf", "ml_bkg", "aperture", "psf", "sep", "sex")


def _bare_session():
    """The default model's network alone, as MLPhotometry runs it (CPU), and its channels."""
    import onnxruntime as ort

    from asidfe_phot import _stamps
    from asidfe_phot.models import verify_model

    directory, card = verify_model(None)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(directory / card.get("file", "model.onnx")),
                                   sess_options=options, providers=["CPUExecutionProvider"])
    return session, _stamps.input_channels(card["contract"]["version"])


#: Stamps per network call, as MLPhotometry's (the fastest on CPU).
_CHUNK = 256


def _run_network(session, stamps):
    name = session.get_inputs()[0].name
    return [session.run(None, {name: stamps[i:i + _CHUNK]})[0]
            for i in range(0, len(stamps), _CHUNK)]


def _timed(fn, repeat=1):
    best = np.inf
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _maxrss_mb(who=resource.RUSAGE_SELF):
    """Lifetime peak resident set size (MB). Linux reports kilobytes, macOS bytes."""
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(who).ru_maxrss * scale


def _status_mb(key):
    """VmRSS / VmHWM from /proc/self/status (Linux), MB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _start_measure():
    """Reset the peak-RSS mark (Linux 4.0+) and return the resident size now (MB)."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    now = _status_mb("VmRSS")
    return now if now is not None else _maxrss_mb()


def _added_mb(before):
    """Growth of the peak resident size since `_start_measure` (MB)."""
    peak = _status_mb("VmHWM")
    if peak is None:
        peak = _maxrss_mb()
    return max(peak - before, 0.0)


def _pixstack(image):
    """Pixel stack of sep and SourceExtractor (the same for both): a quarter of the frame."""
    return max(300_000, image.size // 4)


def worker(method, inputs, batch_size, repeat, psf_subset):
    """Set up, measure one method, return its numbers (run in a fresh process)."""
    from astropy.table import Table

    from asidfe_phot.exceptions import AsidfePhotWarning

    d = np.load(inputs)
    image, background, noise = d["image"], d["background"], d["noise"]
    x, y = d["x"], d["y"]
    n = x.size
    gain = 2.0
    extra = {}
    if method in ("network", "ml", "ml_nopsf", "ml_bkg"):
        from asidfe_phot import MLPhotometry, _stamps

        # The default psf_model="auto" (ePSF + PSF fit), except ml_nopsf: the network alone.
        phot = MLPhotometry(batch_size=batch_size,
                            psf_model=None if method == "ml_nopsf" else "auto")
        init = Table({"x": x, "y": y})
        if method == "network":
            session, channels = _bare_session()
            rng = np.random.default_rng(0)
            ready = rng.normal(0, 1, (batch_size, channels, _stamps.STAMP_SIZE,
                                      _stamps.STAMP_SIZE)).astype(np.float32)
            _run_network(session, ready[:8])
            base = _start_measure()
            t, _ = _timed(lambda: [_run_network(session, ready) for _ in range(5)], 1)
            n = 5 * batch_size
        else:
            bkg = background if method == "ml_bkg" else None

            def run():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", AsidfePhotWarning)
                    return phot(image, init_params=init, gain=gain, background=bkg)

            base = _start_measure()
            t, tbl = _timed(run, repeat)
            extra = {"rows": len(tbl), "flagged": int(np.count_nonzero(tbl["flags"]))}
    elif method == "aperture":
        from photutils.aperture import CircularAperture, aperture_photometry

        sub = image - background
        apertures = CircularAperture(np.column_stack([x, y]), r=4.5)
        base = _start_measure()
        t, _ = _timed(lambda: aperture_photometry(sub, apertures, error=noise), repeat)
    elif method == "psf":
        from photutils.psf import CircularGaussianPRF, PSFPhotometry

        sub = image - background
        n = min(psf_subset, n)
        psfphot = PSFPhotometry(CircularGaussianPRF(fwhm=3.0), fit_shape=(7, 7),
                                aperture_radius=4)
        init = Table({"x": x[:n], "y": y[:n]})
        base = _start_measure()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, _ = _timed(lambda: psfphot(sub, error=noise, init_params=init), 1)
    elif method == "sep":
        import sep

        sys.path.insert(0, str(ROOT))
        from evaluation.baselines import _sep_flux_auto

        data = np.ascontiguousarray(image, dtype=np.float64)
        sep.set_extract_pixstack(_pixstack(data))
        sep.set_sub_object_limit(4096)

        def run():
            bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
            sub = data - bkg.back()
            rms = bkg.rms()
            objects, segmap = sep.extract(sub, 1.5, err=rms, minarea=5, deblend_cont=0.005,
                                          segmentation_map=True)
            t0 = time.perf_counter()
            # The evaluation's FLUX_AUTO: neighbours masked through the segmentation map.
            _sep_flux_auto(sub, objects, rms, gain, segmap=segmap,
                           seg_id=np.arange(1, len(objects) + 1))
            return objects, time.perf_counter() - t0

        base = _start_measure()
        t, (objects, t_auto) = _timed(run, repeat)
        n = len(objects)
        extra = {"detections": n, "auto_seconds": t_auto}
    elif method == "sex":
        sys.path.insert(0, str(ROOT))
        from evaluation import reference_tools as rt

        config = {"GAIN": gain, "DETECT_THRESH": 1.5, "DETECT_MINAREA": 5,
                  "DEBLEND_MINCONT": 0.005, "MEMORY_OBJSTACK": 60_000,
                  "MEMORY_PIXSTACK": _pixstack(image), "MEMORY_BUFSIZE": 4096,
                  "SATUR_LEVEL": 1e20}
        base = _start_measure()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t, tbl = _timed(lambda: rt.run_source_extractor(image, config=config, seeing_fwhm=3.0),
                        repeat)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        n = len(tbl)
        child = _maxrss_mb(resource.RUSAGE_CHILDREN)
        extra = {"detections": n, "binary_peak_rss_mb": child,
                 "binary_cpu_seconds": ((cpu1.ru_utime + cpu1.ru_stime)
                                        - (cpu0.ru_utime + cpu0.ru_stime)) / repeat,
                 "python_peak_rss_mb": _maxrss_mb()}
        return {"seconds": t, "n": n, "peak_mb": child, "added_mb": child, **extra}
    else:
        msg = f"unknown method {method}"
        raise ValueError(msg)
    return {"seconds": t, "n": n, "peak_mb": _maxrss_mb(), "added_mb": _added_mb(base),
            **extra}


def _run_worker(method, inputs, args):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--inputs",
           str(inputs), "--batch-size", str(args.batch_size), "--repeat", str(args.repeat),
           "--psf-subset", str(args.psf_subset)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{method}: failed\n{proc.stderr.strip()[-1500:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n-sources", type=int, default=50_000)
    parser.add_argument("--psf-subset", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--methods", default=",".join(_WORKERS),
                        help=f"comma-separated subset of {','.join(_WORKERS)}")
    parser.add_argument("--rst", default=None,
                        help="also write the table as reStructuredText (the docs' speed.rst)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.batch_size, args.repeat,
                                args.psf_subset), default=float))
        return

    import shutil

    import onnxruntime as ort

    from asidfe_phot.datasets import make_star_field

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(_WORKERS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    if "ml" not in methods:
        parser.error("'ml' is the reference of the ratios: keep it in --methods")
    if "sex" in methods and not (shutil.which("source-extractor") or shutil.which("sex")):
        print("SourceExtractor not installed (apt-get install -y source-extractor): skipped")
        methods.remove("sex")
    shape = (args.size, args.size)
    t0 = time.perf_counter()
    image, truth, meta = make_star_field(shape, args.n_sources,
                                         psf={"family": "moffat", "fwhm": 3.0, "beta": 3.0},
                                         flux_range=(300, 1e6), sky=300.0, gain=2.0,
                                         border=2, seed=42)
    print(f"simulated {shape[0]}x{shape[1]} with {args.n_sources} sources in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, onnxruntime "
          f"{ort.__version__}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="asidfe_speed_") as tmp:
        inputs = Path(tmp) / "frame.npz"
        np.savez(inputs, image=image, background=np.asarray(meta["background"]),
                 noise=np.asarray(meta["noise"]), x=np.asarray(truth["x"]),
                 y=np.asarray(truth["y"]))
        del image, truth, meta
        for m in methods:
            res = _run_worker(m, inputs, args)
            if res is not None:
                results[m] = res
    if "sep" in results:
        r = results["sep"]
        results["sep_auto"] = {"seconds": r["auto_seconds"], "n": r["n"],
                               "peak_mb": r["peak_mb"], "added_mb": r["added_mb"]}
    if "ml" not in results:
        print("MLPhotometry failed: no ratios")
        return
    ml_rate = results["ml"]["n"] / results["ml"]["seconds"]
    print()
    print(f"{'method':42s} {'sources/s':>10s} {'ratio to ML':>12s} {'peak RSS MB':>12s} "
          f"{'added MB':>9s}")
    for m in METHODS:
        if m not in results:
            continue
        r = results[m]
        rate = r["n"] / r["seconds"]
        name = NAMES[m].format(m=r["n"])
        print(f"{name:42s} {rate:10.0f} {rate / ml_rate:12.3f} {r['peak_mb']:12.0f} "
              f"{r['added_mb']:9.0f}")
    print()
    ml = results["ml"]
    notes = [f"MLPhotometry end to end: {ml['n']} rows, {ml.get('flagged', 0)} flagged"]
    if "network" in results:
        net_rate = results["network"]["n"] / results["network"]["seconds"]
        notes.append(f"{ml_rate / net_rate:.1%} of the network-alone ceiling")
    if "psf" in results:
        notes.append(f"{ml_rate / (results['psf']['n'] / results['psf']['seconds']):.0f}x "
                     "PSFPhotometry")
    print("; ".join(notes))
    if "sex" in results:
        s = results["sex"]
        print(f"SourceExtractor: {s['detections']} detections, binary CPU "
              f"{s['binary_cpu_seconds']:.1f} s of {s['seconds']:.1f} s wall (the rest: FITS "
              f"and catalogue I/O); binary peak RSS {s['binary_peak_rss_mb']:.0f} MB, the "
              f"Python side {s['python_peak_rss_mb']:.0f} MB")
    if "sep" in results:
        print(f"sep: {results['sep']['detections']} detections")
    print("peak RSS: the whole process (Python, libraries, frame, method); added: its rise "
          "during the measured calls")
    if args.rst:
        write_rst(args, results, ml_rate, notes, ort.__version__)


def write_rst(args, results, ml_rate, notes, ort_version):
    """The printed table as reStructuredText, with how it was made."""
    from astropy.table import Table

    rows = []
    for m in METHODS:
        if m in results:
            r = results[m]
            rate = r["n"] / r["seconds"]
            rows.append({"method": NAMES[m].format(m=r["n"]), "sources/s": f"{rate:.0f}",
                         "ratio to MLPhotometry": f"{rate / ml_rate:.3g}",
                         "peak RSS (MB)": f"{r['peak_mb']:.0f}",
                         "added (MB)": f"{r['added_mb']:.0f}"})
    path = Path(args.rst)
    Table(rows=rows).write(path, format="ascii.rst", overwrite=True)
    head = (f"Measured with ``python -m evaluation.speed --size {args.size} --n-sources "
            f"{args.n_sources}`` ({args.size}x{args.size} simulated frame, {args.n_sources:,} "
            f"Moffat stars, FWHM 3 px; {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, onnxruntime {ort_version} CPU), each method in its own "
            "process. sep and SourceExtractor detect their own sources: their rates are per "
            "detection. Peak RSS is the whole process; added, its rise during the measured "
            "calls.\n\n")
    path.write_text(head + path.read_text() + "\n" + "; ".join(notes) + ".\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
