"""
Many frames on Dask: each frame measured as ``asidfe-phot FRAME`` measures it.

`measure_many` measures a list of FITS frames on a Dask ``distributed`` cluster
(`local_cluster`, one single-threaded worker process per core, by default, or
the user's ``distributed.Client``) and writes, in one output folder:

* ``<stem>.ecsv`` per frame: the table the single-image command
  ``asidfe-phot FRAME --catalog CAT [options] --threads 1`` writes (the same
  code path, ``asidfe_phot.cli``), moved into place when complete;
* ``<stem>.json`` beside it: the manifest of that result (the content hash of
  its inputs, the row count, the time taken);
* ``asidfe_batch.fits``: every frame's rows in one FITS table with an ``image``
  column (the frame's path as given), and its manifest ``asidfe_batch.json``.

``<stem>`` is the frame's file name without its FITS suffix (``field.r.fits.fz``
gives ``field.r``). Frames whose stems clash (``a/x.fits`` and ``b/X.fits``;
compared without case, for case-insensitive file systems) or equal
``asidfe_batch`` get ``<stem>-<8 hex digits>`` instead, the digits starting the
sha256 of the frame's absolute path: the same path always gets the same name,
provided the same set of frames is given.

A rerun skips every frame whose manifest holds the same content hash (sha256 of
the frame's bytes, of its catalogue's bytes, of the options, of the model file
and of a ``--psf`` file) and whose table is still there, and rewrites the
combined table only when its list of frames changed: a rerun of a finished
batch writes nothing. A frame that cannot be measured (unreadable, corrupt,
no sources) is reported with its error, and the others complete.
`measure_many_delayed` gives the per-frame tasks as ``dask.delayed`` objects,
for graphs of one's own.

Needs Dask: ``pip install "asidfe_phot[batch]"``.
"""

import hashlib
import io
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asidfe_phot import cli as _cli
from asidfe_phot._batch_plan import (
    COMBINED_NAME,
    OPTIONS,
    _BatchInputError,
    _parse,
    _plan,
)

__all__ = ["measure_many", "measure_many_delayed", "write_combined", "local_cluster",
           "FrameResult", "BatchResult", "COMBINED_NAME", "OPTIONS"]

_INSTALL = 'pip install "asidfe_phot[batch]"'
_HTTP_ADDRESS = "127.0.0.1:0"
#: Version of the content hash: bump it when what the hash covers changes.
_HASH_VERSION = "asidfe-batch-2"


def _require_dask(distributed=True):
    """Import Dask (and ``distributed``), or say how to install them."""
    names = ("dask", "distributed") if distributed else ("dask",)
    for name in names:
        try:
            __import__(name)
        except ImportError as exc:
            msg = (f"asidfe_phot.batch needs {name}, which is not installed: "
                   f"{_INSTALL}")
            raise ImportError(msg, name=name) from exc


@dataclass
class FrameResult:
    """
    What became of one frame.

    Attributes
    ----------
    frame : str
        The frame's path, as given.
    key : str
        Its output name: the table is ``<key>.ecsv``, the manifest ``<key>.json``.
    table : str
        The table's path.
    status : str
        ``"done"`` (measured now), ``"skipped"`` (finished by an earlier run with
        the same inputs) or ``"failed"``.
    rows : int
        Sources in the table.
    seconds : float
        Time to measure and write it (0 when skipped or failed early).
    error : str or None
        For a failed frame, the error: ``"FITSReadError: ..."``.
    warnings : str
        Warnings the measurement printed, one per line.
    hash : str or None
        The content hash of its inputs (see `measure_many`).
    """

    frame: str
    key: str
    table: str
    status: str
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    warnings: str = ""
    hash: str | None = None


@dataclass
class BatchResult:
    """
    The outcome of `measure_many`: one `FrameResult` per frame, in the order given.

    Attributes
    ----------
    frames : list of `FrameResult`
    combined : str or None
        The combined table's path (None when no frame succeeded, or it failed).
    combined_error : str or None
        Why the combined table could not be written.
    seconds : float
        Wall-clock time of the whole batch (the cluster's start excluded).
    """

    frames: list
    combined: str | None = None
    combined_error: str | None = None
    seconds: float = 0.0

    def _with(self, status):
        return [r for r in self.frames if r.status == status]

    @property
    def done(self):
        """Frames measured by this run."""
        return self._with("done")

    @property
    def skipped(self):
        """Frames finished by an earlier run with the same inputs."""
        return self._with("skipped")

    @property
    def failed(self):
        """Frames that could not be measured."""
        return self._with("failed")

    @property
    def ok(self):
        """Whether every frame and the combined table succeeded."""
        return not self.failed and self.combined_error is None

    @property
    def sources_measured(self):
        """Sources measured by this run (skipped frames not counted)."""
        return sum(r.rows for r in self.done)

    def __str__(self):
        rate = self.sources_measured / self.seconds if self.seconds > 0 else 0.0
        text = (f"{len(self.frames)} frame(s): {len(self.done)} measured, "
                f"{len(self.skipped)} skipped (finished before), {len(self.failed)} failed; "
                f"{self.sources_measured} sources in {self.seconds:.1f} s ({rate:,.0f} "
                "sources/s)")
        return text


# --- One frame (worker side) -----------------------------------------------------------------

def _content_hash(spec, frame_sha256, catalog_sha256):
    text = json.dumps([_HASH_VERSION, frame_sha256, catalog_sha256, list(spec.argv),
                       spec.model_sha256, spec.psf_sha256])
    return hashlib.sha256(text.encode()).hexdigest()


def _read_manifest(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_text(path, text):
    _cli._write_atomically(path, True, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _measure_frame(spec):
    """
    Measure one frame unless an earlier run did (same content hash); never raises for
    the frame's own problems: a failed frame is a `FrameResult` with its error.
    """
    from asidfe_phot.models import file_sha256

    start = time.perf_counter()
    result = FrameResult(spec.frame, spec.key, spec.table, "failed")
    try:
        # A missing file is left to the command, whose message names it.
        frame_sha256, catalog_sha256 = (
            file_sha256(path) if path is not None and os.path.isfile(path) else None
            for path in (spec.frame, spec.catalog))
        result.hash = _content_hash(spec, frame_sha256, catalog_sha256)
        before = _read_manifest(spec.manifest)
        if (before is not None and before.get("hash") == result.hash
                and os.path.isfile(spec.table)
                and os.path.getsize(spec.table) == before.get("table_bytes")):
            result.status, result.rows = "skipped", int(before.get("rows", 0))
            return result
        result.rows, result.warnings = _run_single(spec)
        result.seconds = time.perf_counter() - start
        _write_text(spec.manifest, json.dumps({
            "frame": spec.frame, "catalog": spec.catalog, "table": os.path.basename(spec.table),
            "hash": result.hash, "frame_sha256": frame_sha256,
            "catalog_sha256": catalog_sha256, "model_sha256": spec.model_sha256,
            "psf_sha256": spec.psf_sha256,
            "options": list(spec.argv), "rows": result.rows,
            "table_bytes": os.path.getsize(spec.table), "seconds": round(result.seconds, 3),
            "asidfe_phot": _version(), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }, indent=1) + "\n")
        result.status = "done"
    except Exception as exc:  # noqa: BLE001 - any failure of one frame is reported, not raised
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _version():
    from asidfe_phot import __version__

    return __version__


def _run_single(spec):
    """The single-image command on one frame; its table moved to ``spec.table``."""
    fd, tmp = tempfile.mkstemp(dir=spec.out_dir, prefix=f".{spec.key}.", suffix=".ecsv")
    os.close(fd)
    try:
        args = _parse(spec.command(tmp))
        stdout, stderr = io.StringIO(), io.StringIO()
        job, results = _cli._measure(args, stdout, stderr)
        _cli._write_outputs(args, job, results, stdout)
        os.replace(tmp, spec.table)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return sum(len(tbl) for tbl, _ in results), stderr.getvalue()


# --- Many frames -----------------------------------------------------------------------------

def measure_many_delayed(frames, out_dir, *, catalogs=None, find=False, options=None):
    """
    One ``dask.delayed`` task per frame, for users who build their own Dask graphs.

    Takes the arguments of `measure_many` (but no cluster): the inputs are checked
    and ``out_dir`` created now; computing a task measures its frame and writes its
    table and manifest, and gives a `FrameResult`. `write_combined` then writes the
    combined table.

    Returns
    -------
    list of ``dask.delayed.Delayed``
        In the order of ``frames``.

    Examples
    --------
    With a ``distributed.Client`` (futures) or any Dask scheduler::

        tasks = measure_many_delayed(frames, "out", catalogs="cats/{stem}.ecsv")
        futures = client.compute(tasks)                 # or dask.compute(*tasks)
        results = client.gather(futures)
        write_combined(results, "out")
    """
    _require_dask(distributed=False)
    return _delayed(_plan(frames, out_dir, catalogs, find, options))


def _delayed(specs):
    import dask

    task = dask.delayed(_measure_frame, pure=False)
    return [task(spec, dask_key_name=f"asidfe-frame-{spec.key}-{uuid.uuid4().hex[:8]}")
            for spec in specs]


def measure_many(frames, out_dir, *, catalogs=None, find=False, options=None, client=None,
                 workers=None, progress=True, stream=None, log=None):
    """
    Measure many FITS frames on Dask, each as the single-image command would.

    Every frame's table is what ``asidfe-phot FRAME --catalog CAT [options]
    --threads 1`` (or ``--find``) writes: the same code path (``asidfe_phot.cli``),
    with one onnxruntime thread per task. It goes to ``out_dir/<stem>.ecsv``
    (see the module's description for clashing names) with a manifest
    ``<stem>.json``, both moved into place as soon as the frame is done, so
    a worker that dies later loses nothing finished. At the end the frames'
    rows go to one FITS table, ``out_dir/asidfe_batch.fits``, with an ``image``
    column (the frame's path as given) and the columns every frame's table has.

    Parameters
    ----------
    frames : list of str or path-like
        FITS frames. On a remote cluster, paths every worker can read (absolute
        paths on a shared file system).
    out_dir : str or path-like
        Output folder, created if missing. An output that would be an input is
        refused before any work.
    catalogs : str or list, optional
        The positions: a pattern with the fields ``{stem}`` (the frame's name
        without its FITS suffix), ``{name}`` (its file name) and ``{parent}``
        (its folder), e.g. ``"cats/{stem}.ecsv"``, or one catalogue per frame.
        Any catalogue ``asidfe-phot --catalog`` reads.
    find : bool, optional
        Find the sources with DAOStarFinder instead (``--find``). Exactly one of
        ``catalogs`` and ``find`` is required.
    options : dict, optional
        The single-image command's options for every frame, by the names in
        `OPTIONS` (``{"hdu": 1, "gain": 1.9, "aperture_correction": "off",
        "psf": "none", "model": "asidfe_tsmve_v4"}``), with the values the
        command takes (lists for ``hdu`` and ``providers``; booleans for
        ``aperture_correction`` mean on and off).
    client : ``distributed.Client``, optional
        The cluster to run on. Default: `local_cluster` (``workers`` processes
        with one thread each), closed at the end.
    workers : int, optional
        Worker processes of the default cluster (default: one per core); not
        with ``client``.
    progress : bool, optional
        Report progress on ``stream`` (default stderr): frames done and sources
        measured per second.
    stream : file-like, optional
        Where the progress goes.
    log : callable, optional
        Called with one line of text per finished frame (e.g. ``print``).

    Returns
    -------
    `BatchResult`
        Per frame a `FrameResult` (``"done"``, ``"skipped"`` or ``"failed"``
        with its error), and the combined table's path. It does not raise for
        failed frames: check `BatchResult.ok`.

    Raises
    ------
    ImportError
        Without Dask (``pip install "asidfe_phot[batch]"``).
    ValueError
        Before any work, for bad arguments (a frame given twice, an output that
        is an input, an unknown option or model, both ``workers`` and ``client``).
    """
    _require_dask()
    from distributed import Client, as_completed

    from asidfe_phot._progress import Progress

    if workers is not None and (int(workers) != workers or workers < 1):
        msg = f"workers must be a positive integer, got {workers!r}"
        raise _BatchInputError(msg)
    if workers is not None and client is not None:
        msg = "give workers (for a local cluster) or client, not both"
        raise _BatchInputError(msg)
    specs = _plan(frames, out_dir, catalogs, find, options)
    tasks = _delayed(specs)
    own = []
    if client is None:
        cluster = local_cluster(workers)
        client = Client(cluster)
        own = [client, cluster]
    start = time.perf_counter()
    results = [None] * len(tasks)
    measured, futures = 0, []
    try:
        futures = client.compute(tasks)
        index = {future.key: i for i, future in enumerate(futures)}
        with Progress(len(tasks), "asidfe-phot batch", unit="frames", stream=stream,
                      enabled=progress) as bar:
            for future in as_completed(futures):
                i = index[future.key]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: report, go on
                    result = FrameResult(specs[i].frame, specs[i].key, specs[i].table,
                                         "failed", error=f"{type(exc).__name__}: {exc}")
                future.release()
                results[i] = result
                if result.status == "done":
                    measured += result.rows
                if log is not None:
                    log(_frame_line(result))
                elapsed = time.perf_counter() - start
                bar.update(note=f"{measured} sources, {measured / max(elapsed, 1e-9):,.0f} "
                                "sources/s")
    finally:
        left = [f for f in futures if not f.done()]
        if left and not own:    # interrupted on the user's cluster: stop what is left
            client.cancel(left)
        for thing in own:
            thing.close()
    batch = BatchResult(results)
    try:
        batch.combined = write_combined(results, specs[0].out_dir)
    except Exception as exc:  # noqa: BLE001 - the frames' tables stand; say why, exit nonzero
        batch.combined_error = f"{type(exc).__name__}: {exc}"
    batch.seconds = time.perf_counter() - start
    return batch


def local_cluster(workers=None):
    """
    The local Dask cluster `measure_many` starts when given no client.

    ``workers`` single-threaded worker processes (default: one per core), the
    scheduler's HTTP server (dashboard, if bokeh is installed) on a free port of
    127.0.0.1. Unlike Dask's default, its workers keep glibc's own
    ``MALLOC_TRIM_THRESHOLD_``: Dask's nanny sets it to 64 KiB, which makes every
    freed large array go back to the system and the next one be faulted in
    afresh; the frames measured about 20 % slower than with the single-image
    command (``evaluation.batch_benchmark``). Dask's one thread for OpenMP and
    the BLAS libraries stays.

    Parameters
    ----------
    workers : int, optional

    Returns
    -------
    ``distributed.LocalCluster``
        Close it (or use it in a ``with`` block) when done.
    """
    _require_dask()
    import dask
    from distributed import LocalCluster

    if workers is not None and (int(workers) != workers or workers < 1):
        msg = f"workers must be a positive integer, got {workers!r}"
        raise _BatchInputError(msg)
    # None drops the variable from what the nanny sets before it spawns a worker.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        # The scheduler's HTTP server on a free local port: Dask's default, 8787, is
        # taken by any other cluster running on the machine (a warning).
        return LocalCluster(n_workers=int(workers or _cores()), threads_per_worker=1,
                            processes=True, dashboard_address=_HTTP_ADDRESS)


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def _frame_line(result):
    if result.status == "done":
        notes = "".join(f"\n  {line}" for line in result.warnings.splitlines())
        return (f"{result.frame}: {result.rows} sources in {result.seconds:.2f} s -> "
                f"{result.table}{notes}")
    if result.status == "skipped":
        return f"{result.frame}: unchanged since an earlier run, kept {result.table}"
    return f"{result.frame}: FAILED: {result.error}"


def write_combined(results, out_dir):
    """
    Write the successful frames' rows as one FITS table, ``out_dir/asidfe_batch.fits``.

    Rows are in the order of ``results``, each with the frame's path (as given) in
    an ``image`` column first; the columns are those every frame's table has, and
    ``meta`` keeps the entries equal in every frame (the rest stays in each
    frame's table). Its manifest ``asidfe_batch.json`` lists the frames and their
    content hashes: when they are unchanged and the table is there, nothing is
    written.

    Parameters
    ----------
    results : list of `FrameResult`
        As computed by `measure_many_delayed`'s tasks; failed frames are left out.
    out_dir : str or path-like

    Returns
    -------
    str or None
        The table's path; None when no frame succeeded.
    """
    from astropy.table import QTable, vstack

    good = [r for r in results if r.status in ("done", "skipped")]
    if not good:
        return None
    out_dir = Path(out_dir)
    path, manifest = out_dir / f"{COMBINED_NAME}.fits", out_dir / f"{COMBINED_NAME}.json"
    listing = [[r.frame, r.key, r.hash] for r in good]
    before = _read_manifest(manifest)
    if path.is_file() and before is not None and before.get("frames") == listing:
        return str(path)
    tables = []
    for result in good:
        tbl = QTable.read(result.table, format="ascii.ecsv")
        tbl.add_column([result.frame] * len(tbl), name="image", index=0)
        tables.append(tbl)
    common = [c for c in tables[0].colnames if all(c in t.colnames for t in tables)]
    combined = vstack([t[common] for t in tables], metadata_conflicts="silent")
    meta = {"n_frames": len(tables)}
    for key in dict.fromkeys(k for t in tables for k in t.meta):
        values = [t.meta.get(key) for t in tables]
        if key not in ("image", "comments") and all(repr(v) == repr(values[0])
                                                    for v in values):
            meta[key] = values[0]
    combined.meta = meta
    _cli._write_table(combined, path, "fits", overwrite=True)
    _write_text(manifest, json.dumps({"table": path.name, "rows": len(combined),
                                      "frames": listing}, indent=1) + "\n")
    return str(path)
