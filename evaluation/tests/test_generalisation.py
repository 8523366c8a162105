"""The held-out PSF family study (evaluation.generalisation), on a tiny data set."""

import pytest

from training import simulate


@pytest.fixture(scope="module", name="dataset")
def fixture_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    simulate.write_dataset(out, 10, seed=3, processes=1, log=lambda *a: None)
    return out


def test_generalisation_run(dataset, tmp_path):
    from evaluation import generalisation
    from training.train import train

    train(dataset, "step1", tmp_path / "ref", 64, eval_every=10_000, batch_size=32,
          log=lambda *a: None)
    result = generalisation.run(dataset, "gaussian", tmp_path / "ref" / "best.pt",
                                tmp_path / "held", samples=64, log=lambda *a: None)
    assert (tmp_path / "held" / "step2" / "DONE").exists()
    assert set(result["scores"]) == {"held-out (gaussian)", "seen (moffat, double_gaussian)"}
    for by_model in result["scores"].values():
        assert set(by_model) == {"trained without it", "trained on all families"}
    assert (tmp_path / "held" / "generalisation.rst").exists()
