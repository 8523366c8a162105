"""asidfe_phot.tailor without PyTorch: a clear message naming the install."""

import sys

import pytest

from asidfe_phot import cli, tailor


@pytest.fixture(name="no_torch")
def fixture_no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch -> ImportError


def test_tailor_model_without_torch_names_the_extra(no_torch, tmp_path):
    with pytest.raises(ImportError, match=r"asidfe_phot\[train\]"):
        tailor.tailor_model(tmp_path / "image.fits", tmp_path / "out")


def test_cli_tailor_without_torch(no_torch, tmp_path, capsys):
    rc = cli.main(["tailor", str(tmp_path / "image.fits"), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "asidfe_phot[train]" in capsys.readouterr().err
