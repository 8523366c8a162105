"""The tailoring benefit benchmark on a tiny simulated frame of an unseen PSF."""

from evaluation import tailoring
from training import tailor


def test_quick_tailoring_benchmark_on_an_unseen_psf(tmp_path):
    results = tailoring.run(tmp_path, ["coma"], tailor.QUICK, n_stars=120,
                            log=lambda *a: None)
    entry = results["coma"]
    assert entry["method"] == "the frame's own stars against truth"
    assert entry["shipped"] and entry["tailored"]
    for row in entry["shipped"] + entry["tailored"]:
        assert row["n"] >= 10 and row["flux_mare"] >= 0
    table = (tmp_path / "tailoring.rst").read_text()
    assert "coma" in table and "tailored MARE" in table

