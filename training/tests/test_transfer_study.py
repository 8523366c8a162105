"""The transfer-learning study on tiny data: every mode trains, is measured and tabulated."""

import json

from training import transfer_study


def test_quick_study_runs_every_mode_and_resumes(tmp_path):
    out = tmp_path / "study"
    results = transfer_study.run(out, transfer_study.QUICK, log=lambda *a: None)
    assert list(results["modes"]) == list(transfer_study.MODES)
    for mode, m in results["modes"].items():
        trained = not mode.startswith("direct")
        assert (m["samples"] > 0) == trained
        assert m["contest_flux"] in ("Rejected", "Not Rejected")
        assert -1 <= m["pearson_flux"] <= 1
        assert m["bins"] and all(b["n"] > 0 for b in m["bins"])
    # The weights differ between modes: frozen keeps the shipped convolutions, the others not.
    import torch

    frozen = torch.load(out / "frozen" / "best.pt", weights_only=True)["model"]
    retrained = torch.load(out / "retrained" / "best.pt", weights_only=True)["model"]
    source = transfer_study.train_mod.load_model(
        transfer_study.model_path_of(transfer_study.QUICK)).state_dict()
    conv = "mean.convs.0.weight"
    assert torch.equal(frozen[conv], source[conv])
    assert not torch.equal(retrained[conv], source[conv])
    table = (out / "study.rst").read_text()
    for mode in transfer_study.MODES:
        assert mode in table
    # A rerun trains nothing again (every mode is finished) and gives the same table.
    before = json.loads((out / "study.json").read_text())
    again = transfer_study.run(out, transfer_study.QUICK, log=lambda *a: None)
    assert again["modes"]["retrained"]["pearson_flux"] == before["modes"]["retrained"][
        "pearson_flux"]
