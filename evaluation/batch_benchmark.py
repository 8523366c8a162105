"""
Throughput of ``asidfe_phot.batch.measure_many`` (many frames on Dask) against the number
of workers.

    python -m evaluation.batch_benchmark [--n-frames 8] [--size 1024] [--n-sources 2000]
                                         [--workers 1,2] [--survey-frame] [--out DIR]

Writes ``--n-frames`` synthetic frames (a Moffat star field of
``asidfe_phot.datasets.make_star_field``, FITS with BUNIT and GAIN) and their
catalogues, then measures them:

* one after the other in this process with the single-image command
  (``asidfe-phot FRAME --catalog CAT --threads 1``), the reference without Dask;
* with ``measure_many`` on a ``distributed.LocalCluster`` of N single-threaded
  worker processes, for each N of ``--workers`` (a fresh output folder each time, so
  every frame is measured; the cluster's start is timed apart, and each worker has
  imported the package before the clock starts);
* ``--survey-frame``: also one survey-sized frame (10,560 x 10,560 px, 10,000
  sources, as MeerLICHT's) with ``measure_many`` on one worker, end to end.

Prints a table of frames/s, sources/s, frames per hour per worker, the median
time of one frame inside its worker (hashing, measuring and writing, from the
manifests; the reference: wall time / frames) and the largest peak resident memory
of a worker process (sampled), and the extrapolation to a cluster (frames per hour = workers
x the per-worker rate, which holds while the file system keeps up). Not a test: the
numbers depend on the machine and on what else runs on it (the load average is
printed).
"""

import argparse
import contextlib
import io
import os
import shutil
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


class _PeakRSS:
    """
    The largest resident memory of the worker processes, sampled every 0.2 s (psutil, which
    ``distributed`` needs). Not ``getrusage``'s ``ru_maxrss``: a worker process is forked
    from this one, whose peak, on Linux, it inherits through ``execve``.
    """

    def __init__(self, client):
        import psutil

        self._procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for proc in self._procs:
                with contextlib.suppress(Exception):    # a worker that has gone
                    self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _on_cluster(frames, out, workers):
    """
    ``measure_many`` on a fresh LocalCluster: (start-up s, batch s, sources, result,
    the largest peak RSS of a worker process in MB).
    """
    from distributed import Client, LocalCluster

    from asidfe_phot.batch import measure_many

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(_warm_up)
        startup = time.perf_counter() - start
        with _PeakRSS(client) as rss:
            result = measure_many(frames, out, catalogs="{parent}/{stem}.ecsv", client=client,
                                  progress=False)
        peak = rss.peak_mb
    if not result.ok:
        msg = f"batch failed: {[r.error for r in result.failed]} {result.combined_error}"
        raise RuntimeError(msg)
    return startup, result.seconds, result.sources_measured, result, peak


def _row(label, workers, n_frames, sources, seconds, per_frame, peak=None):
    per_hour = 3600.0 * n_frames / seconds
    peak = f"{peak:,.0f}" if peak is not None else "-"
    return (f"| {label:<34} | {workers:>7} | {n_frames:>6} | {sources:>8} | {seconds:>8.1f} | "
            f"{n_frames / seconds:>8.3f} | {sources / seconds:>9,.0f} | "
            f"{per_hour / workers:>15,.0f} | {per_frame:>11.2f} | {peak:>14} |")


def _median_frame_seconds(result):
    import numpy as np

    return float(np.median([r.seconds for r in result.frames]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024, help="frame side, px")
    parser.add_argument("--n-sources", type=int, default=2000, help="sources per frame")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--survey-frame", action="store_true",
                        help="also one 10,560 x 10,560 frame with 10,000 sources")
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
    header = ("| run                                | workers | frames |  sources |   wall s | "
              "frames/s | sources/s | frames/h/worker | s/frame med | worker peak MB |")
    rows = []
    seconds = _sequential(frames, scratch / "single")
    rows.append(_row("single-image command, one by one", 1, args.n_frames, n_sources, seconds,
                     seconds / args.n_frames))
    startups = {}
    for workers in counts:
        startup, seconds, sources, result, peak = _on_cluster(
            frames, scratch / f"batch_{workers}", workers)
        startups[workers] = startup
        rows.append(_row("measure_many (LocalCluster)", workers, args.n_frames, sources,
                         seconds, _median_frame_seconds(result), peak))
    if args.survey_frame:
        big = _write_frames(scratch / "frames_10560_10000", 1, 10560, 10000)
        startup, seconds, sources, result, peak = _on_cluster(big, scratch / "batch_survey", 1)
        startups["survey"] = startup
        rows.append(_row("10,560^2 frame, measure_many", 1, 1, sources, seconds,
                         _median_frame_seconds(result), peak))
    print()
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    print("\n".join(rows))
    print()
    print("cluster start-up (s, not in the wall times): "
          + ", ".join(f"{k} worker(s) {v:.1f}" if isinstance(k, int) else f"{k} {v:.1f}"
                      for k, v in startups.items()))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("A cluster of W such workers: about W x frames/h/worker, while the shared file "
          "system keeps up.")


if __name__ == "__main__":
    main()
