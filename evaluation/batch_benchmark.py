"""
Throughput and memory of ``asidfe_phot.batch.measure_many`` (many frames on Dask) against
the number of workers, the number of sources and the frame's size.

    python -m evaluation.batch_benchmark [--n-frames 8] [--size 1024] [--n-sources 2000]
                                         [--workers 1,2] [--memory-sweep 4096]
                                         [--survey-frame] [--night 500] [--out DIR]

Writes ``--n-frames`` synthetic frames (a Moffat star field of
``asidfe_phot.datasets.make_star_field``, FITS with BUNIT and GAIN) and their
catalogues, then measures them:

* one after the other in this process with the single-image command
  (``asidfe-phot FRAME --catalog CAT --threads 1``), the reference without Dask;
* with ``measure_many`` on ``asidfe_phot.batch.local_cluster(N)`` (the cluster it
  starts by default: N single-threaded worker processes), for each N of
  ``--workers`` (a fresh cluster and output folder each time, so every frame is
  measured; the cluster's start is timed apart, and each worker has imported the
  package before the clock starts);
* ``--memory-sweep SIZE``: one SIZE x SIZE frame with 1,000 sources and one with
  10,000 (same sky, seed and PSF), each with ``measure_many`` on a fresh one-worker
  cluster, with the default PSF fit and with the network alone (``--psf none``),
  in batches of the default size and of 256 stamps: the worker's peak memory as
  the sources grow 10x;
* ``--survey-frame``: one survey-sized frame (10,560 x 10,560 px, 10,000 sources,
  as MeerLICHT's) end to end, with ``measure_many`` on one worker (one frame is one
  task, on one core) and with the single-image command ``--threads 2`` in its own
  process (both cores of a 2-core machine on the one frame).

Prints a table of frames/s, sources/s, frames per hour per worker, the median
time of one frame inside its worker (hashing, measuring and writing, from the
manifests; the reference: wall time / frames) and the peak resident memory of the
busiest worker process (its ``VmHWM`` in ``/proc``, read at the end: the exact
high-water mark of that process, not a sample), then what a night of ``--night``
frames takes per worker and on a cluster of W workers (W x the per-worker rate,
which holds while each worker has a core and the file system keeps up). Not a
test: the numbers depend on the machine and on what else runs on it (the load
average is printed).
"""

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The environment as the benchmark was started: Dask's nanny writes its worker settings
#: (one OpenMP thread, ...) into this process's os.environ, which a subprocess would inherit.
_START_ENV = dict(os.environ)


def _write_frames(folder, n_frames, size, n_sources, seed=0):
    """``n_frames`` FITS frames and their ECSV catalogues in ``folder``."""
    import numpy as np
    from astropy.io import fits
    from astropy.table import QTable

    from asidfe_phot.datasets import make_star_field

    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_frames):
        path = folder / f"frame{i:03d}.fits"
        cat = folder / f"frame{i:03d}.ecsv"
        if not (path.exists() and cat.exists()):
            image, truth, _ = make_star_field((size, size), n_sources, sky=200.0, gain=2.0,
                                              border=16, seed=seed + i)
            header = fits.Header()
            header["BUNIT"] = "adu"
            header["GAIN"] = 2.0
            fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(path,
                                                                             overwrite=True)
            QTable({"x": np.asarray(truth["x"]), "y": np.asarray(truth["y"])}).write(
                cat, format="ascii.ecsv", overwrite=True)
        frames.append(path)
    return frames


def _sequential(frames, out):
    """The single-image command on each frame in turn (this process): seconds."""
    from asidfe_phot import cli

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for frame in frames:
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main([str(frame), "--catalog", str(frame.with_suffix(".ecsv")),
                           "--threads", "1", "--overwrite", "--no-progress",
                           "--output", str(out / f"{frame.stem}.ecsv")])
        if rc != 0:
            msg = f"asidfe-phot failed on {frame} (exit status {rc})"
            raise RuntimeError(msg)
    return time.perf_counter() - start


def _warm_up():
    import asidfe_phot.batch
    import asidfe_phot.photometry  # noqa: F401

    return asidfe_phot.batch.__name__


def _peak_rss_mb():
    """This process's peak resident memory (``VmHWM``, Linux), in MB; None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _on_cluster(frames, out, workers, options=None):
    """
    ``measure_many`` on a fresh LocalCluster: (start-up s, batch s, sources, result,
    the largest peak resident memory of a worker process in MB, or None).
    """
    from distributed import Client

    from asidfe_phot.batch import local_cluster, measure_many

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    # The cluster measure_many starts by default (its settings), started here to time apart.
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(_warm_up)
        startup = time.perf_counter() - start
        result = measure_many(frames, out, catalogs="{parent}/{stem}.ecsv", client=client,
                              options=options, progress=False)
        # Worker processes are spawned (fork + exec), so VmHWM is theirs alone.
        peaks = [p for p in client.run(_peak_rss_mb).values() if p is not None]
        peak = max(peaks) if peaks else None
    if not result.ok:
        msg = f"batch failed: {[r.error for r in result.failed]} {result.combined_error}"
        raise RuntimeError(msg)
    return startup, result.seconds, result.sources_measured, result, peak


def _row(label, workers, n_frames, sources, seconds, per_frame, peak=None):
    per_hour = 3600.0 * n_frames / seconds
    peak = f"{peak:,.0f}" if peak is not None else "-"
    return (f"| {label:<40} | {workers:>7} | {n_frames:>6} | {sources:>8} | {seconds:>8.1f} | "
            f"{n_frames / seconds:>8.3f} | {sources / seconds:>9,.0f} | "
            f"{per_hour / workers:>15,.0f} | {per_frame:>11.2f} | {peak:>14} |")


def _median_frame_seconds(result):
    import numpy as np

    return float(np.median([r.seconds for r in result.frames]))


def _single_process(frame, out, threads):
    """
    The single-image command on ``frame`` in a process of its own, under ``/usr/bin/time``
    when there is one: (seconds, rows, peak resident memory in MB or None). The peak is
    ``time``'s, of its child: a child forked from this process would start its high-water
    mark at this process's.
    """
    from astropy.table import QTable

    out.mkdir(parents=True, exist_ok=True)
    table = out / f"{frame.stem}_threads{threads}.ecsv"
    command = [sys.executable, "-c", "import sys; from asidfe_phot.cli import main; "
               "sys.exit(main(sys.argv[1:]))", str(frame), "--catalog",
               str(frame.with_suffix(".ecsv")), "--threads", str(threads), "--overwrite",
               "--no-progress", "--rows", "0", "--output", str(table)]
    timer, report = Path("/usr/bin/time"), out / "time.txt"     # GNU time: %M is in KiB
    if timer.exists():
        command = [str(timer), "-f", "%M", "-o", str(report), *command]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=_START_ENV)
    seconds = time.perf_counter() - start
    peak = int(report.read_text().split()[-1]) / 1024.0 if timer.exists() else None
    return seconds, len(QTable.read(table)), peak


def _table(rows):
    header = (f"| {'run':<40} | workers | frames |  sources |   wall s | frames/s | sources/s | "
              "frames/h/worker | s/frame med | worker peak MB |")
    lines = [header, "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"]
    return "\n".join([*lines, *rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="frame side, px")
    parser.add_argument("--n-sources", type=int, default=2000, help="sources per frame")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--memory-sweep", type=int, default=None, metavar="SIZE",
                        help="also one SIZE x SIZE frame with 1,000 and one with 10,000 "
                             "sources, one worker each: peak memory against sources")
    parser.add_argument("--survey-frame", action="store_true",
                        help="also one 10,560 x 10,560 frame with 10,000 sources")
    parser.add_argument("--night", type=int, default=500,
                        help="frames in a night, for the extrapolation (default 500)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "batch_benchmark"),
                        help="scratch folder (frames are kept and reused)")
    args = parser.parse_args(argv)
    scratch = Path(args.out)
    counts = [int(w) for w in args.workers.split(",")]
    frames = _write_frames(scratch / f"frames_{args.size}_{args.n_sources}", args.n_frames,
                           args.size, args.n_sources)
    n_sources = args.n_frames * args.n_sources
    print(f"{args.n_frames} frames of {args.size}x{args.size} px, {args.n_sources} sources "
          f"each; {os.cpu_count()} CPU cores, load average before "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    seconds = _sequential(frames, scratch / "single")
    rows.append(_row("single-image command, one by one", 1, args.n_frames, n_sources, seconds,
                     seconds / args.n_frames))
    startups, per_hour = {}, {}
    for workers in counts:
        startup, seconds, sources, result, peak = _on_cluster(
            frames, scratch / f"batch_{workers}", workers)
        startups[workers] = startup
        per_hour[f"{args.size}^2, {args.n_sources} sources, {workers} worker(s)"] = (
            3600.0 * args.n_frames / seconds / workers)
        rows.append(_row("measure_many (LocalCluster)", workers, args.n_frames, sources,
                         seconds, _median_frame_seconds(result), peak))
    if args.memory_sweep:
        # With the default PSF fit; the network alone (--psf none), in batches of the
        # default 2,048 stamps and of 256 (1,000 sources are one batch of 1,000 at the
        # default: the stamps' working set grows up to --batch-size, then stays).
        for psf, batch_size in ((None, None), ("none", None), ("none", 256)):
            for n in (1000, 10000):
                sweep = _write_frames(scratch / f"frames_{args.memory_sweep}_{n}", 1,
                                      args.memory_sweep, n)
                startup, seconds, sources, result, peak = _on_cluster(
                    sweep, scratch / f"batch_sweep_{n}_{psf}_{batch_size}", 1,
                    options={"psf": psf, "batch_size": batch_size})
                label = (f"{args.memory_sweep:,}^2, {n:,} src" + (", psf none" if psf else "")
                         + (f", batch {batch_size}" if batch_size else ""))
                startups[label] = startup
                rows.append(_row(label, 1, 1, sources, seconds,
                                 _median_frame_seconds(result), peak))
    if args.survey_frame:
        big = _write_frames(scratch / "frames_10560_10000", 1, 10560, 10000)
        startup, seconds, sources, result, peak = _on_cluster(big, scratch / "batch_survey", 1)
        startups["survey"] = startup
        per_hour["10,560^2, 10,000 sources, 1 worker"] = 3600.0 / seconds
        rows.append(_row("10,560^2 frame, measure_many", 1, 1, sources, seconds,
                         _median_frame_seconds(result), peak))
        seconds, sources, peak = _single_process(big[0], scratch / "single_survey", 2)
        rows.append(_row("10,560^2 frame, asidfe-phot -t 2", 1, 1, sources, seconds,
                         seconds, peak))
    print()
    print(_table(rows))
    print()
    print("cluster start-up (s, not in the wall times): "
          + ", ".join(f"{k} worker(s) {v:.1f}" if isinstance(k, int) else f"{k} {v:.1f}"
                      for k, v in startups.items()))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"A night of {args.night} frames, at the measured frames/h/worker; a cluster of W "
          "such workers takes 1/W of the time while each worker has a core and the shared "
          "file system keeps up:")
    for label, rate in per_hour.items():
        hours = args.night / rate
        print(f"  {label}: {rate:,.0f} frames/h/worker -> {hours:.1f} worker-hours; "
              f"{hours / 8 * 60:.0f} min on 8 workers, {hours / 64 * 60:.1f} min on 64")


if __name__ == "__main__":
    main()
