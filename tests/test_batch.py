"""Tests of many frames on Dask: asidfe_phot.batch and ``asidfe-phot batch``."""

import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from asidfe_phot import _batch_plan, batch, cli
from asidfe_phot.datasets import make_test_image

distributed = pytest.importorskip("distributed")

#: Meta entries that differ between two runs of the same command (timings).
_RUN_DEPENDENT = {"date", "psf_time_s"}


@pytest.fixture(name="client", scope="module")
def fixture_client():
    """A local cluster of two single-threaded worker processes, shared by the module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as client:
        yield client


def _write_frame(path, seed, cat=None):
    """A 128x128 frame of six Gaussian-like stars (BUNIT adu, GAIN 2) and its catalogue."""
    image, truth = make_test_image(shape=(128, 128), n_sources=6, seed=seed)
    header = fits.Header()
    header["BUNIT"] = "adu"
    header["GAIN"] = 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(path)
    cat = cat or path.with_suffix(".ecsv")
    truth.write(cat, format="ascii.ecsv")
    return path, cat


@pytest.fixture(name="frames")
def fixture_frames(tmp_path):
    """Three frames in tmp_path/frames, each with ``<stem>.ecsv`` beside it."""
    return [_write_frame(tmp_path / "frames" / f"f{i}.fits", seed=i)[0] for i in range(3)]


def _snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def _assert_same_table(tbl, ref):
    assert tbl.colnames == ref.colnames
    for name in ref.colnames:
        np.testing.assert_array_equal(np.asarray(tbl[name]), np.asarray(ref[name]),
                                      err_msg=name)
        assert getattr(tbl[name], "unit", None) == getattr(ref[name], "unit", None)
    keys = set(ref.meta) - _RUN_DEPENDENT
    assert set(tbl.meta) - _RUN_DEPENDENT == keys
    assert {k: repr(tbl.meta[k]) for k in keys} == {k: repr(ref.meta[k]) for k in keys}


def test_same_tables_as_the_single_image_command(frames, tmp_path, client, capsys):
    out = tmp_path / "out"
    result = batch.measure_many(frames, out, catalogs=str(tmp_path / "frames" / "{stem}.ecsv"),
                                client=client, progress=False)
    assert result.ok, [r.error for r in result.failed]
    assert [r.status for r in result.frames] == ["done"] * 3
    combined = QTable.read(result.combined)
    assert combined.colnames[0] == "image"
    for frame, res in zip(frames, result.frames):
        ref_path = tmp_path / f"{frame.stem}_single.ecsv"
        rc = cli.main([str(frame), "--catalog", str(frame.with_suffix(".ecsv")),
                       "--threads", "1", "--output", str(ref_path)])
        assert rc == 0, capsys.readouterr().err
        ref = QTable.read(ref_path)
        tbl = QTable.read(out / f"{frame.stem}.ecsv")
        assert res.table == str(out / f"{frame.stem}.ecsv") and res.rows == len(ref) == 6
        _assert_same_table(tbl, ref)
        rows = combined[combined["image"] == str(frame)]
        np.testing.assert_array_equal(rows["flux_fit"], ref["flux_fit"])
    assert len(combined) == 18
    # No temporary file is left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"f{i}.{ext}" for i in range(3) for ext in ("ecsv", "json")]
        + ["asidfe_batch.fits", "asidfe_batch.json"])


def test_corrupt_frame_is_reported_and_the_rest_complete(frames, tmp_path, client, capsys):
    bad = tmp_path / "frames" / "bad.fits"
    bad.write_bytes(frames[0].read_bytes()[:4000])      # a truncated FITS file
    (tmp_path / "frames" / "bad.ecsv").write_bytes(frames[0].with_suffix(".ecsv").read_bytes())
    out = tmp_path / "out"
    argv = ["batch", *map(str, [frames[0], bad, *frames[1:]]), "--out", str(out), "--catalogs",
            str(tmp_path / "frames" / "{stem}.ecsv"), "--scheduler", client.scheduler.address]
    rc = cli.main(argv)
    stdout, stderr = capsys.readouterr()
    assert rc == 1
    assert "1 of 4 frame(s) failed" in stderr
    assert f"{bad}: FITSReadError" in stderr and "truncated or corrupt" in stderr
    assert "sources/s" in stderr                        # the progress report
    assert "3 measured" in stdout
    for frame in frames:
        assert len(QTable.read(out / f"{frame.stem}.ecsv")) == 6
    assert not (out / "bad.ecsv").exists() and not (out / "bad.json").exists()
    combined = QTable.read(out / "asidfe_batch.fits")
    assert sorted(set(combined["image"])) == sorted(map(str, frames))
    # A missing catalogue fails its frame alike; the others are skipped (finished).
    (tmp_path / "frames" / "bad.ecsv").unlink()
    bad.write_bytes(frames[0].read_bytes())
    rc = cli.main(argv)
    stdout, stderr = capsys.readouterr()
    assert rc == 1
    assert "catalogue file not found" in stderr and "3 skipped" in stdout


def test_rerun_writes_nothing_new(frames, tmp_path, client):
    out = tmp_path / "out"
    pattern = str(tmp_path / "frames" / "{stem}.ecsv")
    first = batch.measure_many(frames, out, catalogs=pattern, client=client, progress=False)
    assert first.ok and len(first.done) == 3
    before = _snapshot(out)
    again = batch.measure_many(frames, out, catalogs=pattern, client=client, progress=False)
    assert again.ok and len(again.skipped) == 3 and again.sources_measured == 0
    assert [r.rows for r in again.frames] == [6, 6, 6]
    assert _snapshot(out) == before
    # A changed catalogue redoes that frame only (and the combined table).
    cat = frames[1].with_suffix(".ecsv")
    QTable.read(cat)[:4].write(cat, overwrite=True)
    third = batch.measure_many(frames, out, catalogs=pattern, client=client, progress=False)
    assert [r.status for r in third.frames] == ["skipped", "done", "skipped"]
    assert third.frames[1].rows == 4
    after = _snapshot(out)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["asidfe_batch.fits", "asidfe_batch.json", "f1.ecsv", "f1.json"]
    # So do changed options.
    fourth = batch.measure_many(frames, out, catalogs=pattern, client=client, progress=False,
                                options={"aperture_correction": False})
    assert [r.status for r in fourth.frames] == ["done"] * 3


def test_clashing_stems_do_not_overwrite_each_other(tmp_path, client):
    a, _ = _write_frame(tmp_path / "a" / "x.fits", seed=1)
    b, _ = _write_frame(tmp_path / "b" / "x.fits", seed=2)
    c, _ = _write_frame(tmp_path / "c" / "asidfe_batch.fits", seed=3)
    out = tmp_path / "out"
    result = batch.measure_many([a, b, c], out, catalogs="{parent}/{stem}.ecsv", client=client,
                                progress=False)
    assert result.ok
    keys = [r.key for r in result.frames]
    assert keys == [f"x-{_batch_plan._path_digest(a)}", f"x-{_batch_plan._path_digest(b)}",
                    f"asidfe_batch-{_batch_plan._path_digest(c)}"]
    assert len(set(keys)) == 3
    for frame, key in zip((a, b, c), keys):
        assert QTable.read(out / f"{key}.ecsv").meta["image"] == str(frame)
    # Deterministic: the same frames get the same names, in any order.
    assert _batch_plan._keys([str(b), str(a), str(c)]) == [keys[1], keys[0], keys[2]]
    assert _batch_plan._keys(["x.fits", "y.fits.fz", "z.fits"]) == ["x", "y", "z"]


def test_delayed_tasks(frames, tmp_path, client):
    out = tmp_path / "out"
    tasks = batch.measure_many_delayed(frames, out, catalogs=str(tmp_path / "frames" /
                                                                 "{stem}.ecsv"))
    results = client.gather(client.compute(tasks))
    assert [r.status for r in results] == ["done"] * 3
    assert not (out / "asidfe_batch.fits").exists()
    path = batch.write_combined(results, out)
    assert len(QTable.read(path)) == 18


@pytest.mark.parametrize(("extra", "message"), [
    (["--find", "--catalogs", "x"], "not allowed with argument"),
    (["--find", "--gain", "-1"], "--gain must be a positive number"),
    (["--catalogs", "{stem}.ecsv", "--aperture-correction", "maybe"],
     "auto, on, off or a positive factor"),
    (["--find", "--model", "no_such_model"], "no_such_model"),
    (["--find", "--workers", "0"], "--workers must be a positive integer"),
])
def test_input_errors_exit_2_before_any_work(frames, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = cli.main(["batch", *map(str, frames), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_output_over_an_input_is_refused(frames, tmp_path):
    # Catalogues named as the outputs, in the output folder: refused before any work.
    with pytest.raises(ValueError, match="would replace an input"):
        batch.measure_many(frames, tmp_path / "frames", catalogs="{parent}/{stem}.ecsv")
    with pytest.raises(ValueError, match="given twice"):
        batch.measure_many([frames[0], frames[0]], tmp_path / "out", find=True)
    with pytest.raises(ValueError, match="one per frame"):
        batch.measure_many(frames, tmp_path / "out", catalogs=["a.ecsv"])
    with pytest.raises(ValueError, match="unknown option"):
        batch.measure_many(frames, tmp_path / "out", find=True, options={"threads": 4})
    with pytest.raises(ValueError, match="not both"):
        batch.measure_many(frames, tmp_path / "out", find=True, workers=2, client=object())


def test_without_dask_the_error_says_what_to_install(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install \"asidfe_phot\[batch\]\""):
        batch.measure_many(frames, tmp_path / "out", find=True)
    rc = cli.main(["batch", str(frames[0]), "--out", str(tmp_path / "out"), "--find"])
    assert rc == 2


def test_a_psf_file_is_in_the_content_hash(frames, tmp_path):
    # Its path alone is in the options: a changed file must redo the frames.
    psf = tmp_path / "field.psf"
    psf.write_bytes(b"first")
    options = {"psf": str(psf)}
    spec = batch._plan(frames[:1], tmp_path / "out", None, True, options)[0]
    psf.write_bytes(b"second")
    again = batch._plan(frames[:1], tmp_path / "out", None, True, options)[0]
    assert spec.argv == again.argv and spec.psf_sha256 != again.psf_sha256
    assert batch._content_hash(spec, "f", None) != batch._content_hash(again, "f", None)
    psf.unlink()
    with pytest.raises(ValueError, match="PSF file not found"):
        batch.measure_many(frames, tmp_path / "out", find=True, options=options)


def test_local_cluster_workers_keep_glibc_malloc_trimming(monkeypatch):
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ (frames measured ~20 % slower); the
    # one-thread settings for OpenMP and BLAS stay.
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with batch.local_cluster(1) as cluster, distributed.Client(cluster) as client:
        env = next(iter(client.run(lambda: dict(__import__("os").environ)).values()))
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    assert env.get("OMP_NUM_THREADS") == "1"
    with pytest.raises(ValueError, match="positive integer"):
        batch.local_cluster(0)


def test_a_crashed_worker_loses_no_finished_result(frames, tmp_path):
    # The worker process dies (os._exit) on f1 once: the nanny starts a fresh one, which
    # measures f1 again. A frame finished before the crash is not measured again, even
    # when Dask reruns its task (its result was still in the dead worker): "skipped".
    def crash_on_f1():
        import os

        from asidfe_phot import batch as worker_batch

        measure = worker_batch._run_single

        def run_single(spec):
            if spec.key == "f1":
                os._exit(1)
            return measure(spec)

        worker_batch._run_single = run_single

    out = tmp_path / "out"
    pattern = str(tmp_path / "frames" / "{stem}.ecsv")
    with batch.local_cluster(1) as cluster, distributed.Client(cluster) as client:
        client.run(crash_on_f1)
        worker = set(client.scheduler_info()["workers"])
        result = batch.measure_many(frames, out, catalogs=pattern, client=client,
                                    progress=False)
        assert set(client.scheduler_info()["workers"]) != worker     # it did crash
        assert result.ok, [r.error for r in result.failed]
        assert result.frames[1].status == "done"
        assert {r.status for r in result.frames} <= {"done", "skipped"}
        before = _snapshot(out)
        again = batch.measure_many(frames, out, catalogs=pattern, client=client,
                                   progress=False)
    assert [r.status for r in again.frames] == ["skipped"] * 3
    assert _snapshot(out) == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
