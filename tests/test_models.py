"""Tests of the model registry and its integrity checks."""

import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from astropy.table import QTable

from asidfe_phot import MLPhotometry
from asidfe_phot.exceptions import ModelError
from asidfe_phot.models import DEFAULT_MODEL, list_models, load_model_card, model_path, verify_model

MODEL = "asidfe_tsmve_v5"
REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(name="model_copy")
def fixture_model_copy(tmp_path):
    """A private, writable copy of the default model directory."""
    dest = tmp_path / "model"
    shutil.copytree(model_path(MODEL), dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def edit_card(directory, **changes):
    path = directory / "config.json"
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))
    return card


def test_list_models():
    models = list_models()
    assert MODEL in models
    assert DEFAULT_MODEL in models
    assert models == sorted(models)


def test_verify_default_model():
    directory, card = verify_model()
    assert directory == model_path(MODEL)
    assert card["sha256"] == sha256(directory / "model.onnx")
    assert card["contract"]["stamp_size"] == 32
    assert load_model_card(MODEL) == card


def test_packaged_model_sha256_matches_card():
    entry = resources.files("asidfe_phot._model_files") / MODEL
    onnx = entry / "model.onnx"
    assert onnx.is_file()
    card = json.loads((entry / "config.json").read_text())
    digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert digest == card["sha256"]
    if (REPO_MODELS / MODEL / "model.onnx").is_file():  # source checkout: same bytes
        assert sha256(REPO_MODELS / MODEL / "model.onnx") == digest


def test_model_directory_copy_works(model_copy):
    directory, card = verify_model(model_copy)
    assert directory == model_copy
    phot = MLPhotometry(model=model_copy)
    ref = MLPhotometry()
    image = np.random.default_rng(0).normal(100.0, 5.0, (48, 48)).astype(np.float32)
    image[20:23, 20:23] += 300.0
    init = QTable({"x": [21.0], "y": [21.0]})
    a = phot(image, gain=1.0, init_params=init)
    b = ref(image, gain=1.0, init_params=init)
    np.testing.assert_array_equal(a["flux_fit"], b["flux_fit"])


def test_corrupted_model(model_copy):
    onnx = model_copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verify_model(model_copy)
    with pytest.raises(ModelError, match="corrupt or was replaced: sha256"):
        MLPhotometry(model=model_copy)


def test_truncated_model(model_copy):
    onnx = model_copy / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(ModelError, match="sha256"):
        MLPhotometry(model=model_copy)


@pytest.mark.parametrize("name", ["model.onnx", "config.json"])
def test_missing_file(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ModelError, match=f"has no {name}"):
        verify_model(model_copy)


def test_unknown_model():
    with pytest.raises(ModelError, match="neither a model directory nor a shipped model"):
        model_path("does_not_exist_v9")


def test_wrong_contract(model_copy):
    card = json.loads((model_copy / "config.json").read_text())
    edit_card(model_copy, contract=dict(card["contract"], stamp_size=64))
    with pytest.raises(ModelError, match="trained with stamp_size=64"):
        verify_model(model_copy)
    edit_card(model_copy, contract=dict(card["contract"], core_floor=10.0))
    with pytest.raises(ModelError, match="core_floor"):
        MLPhotometry(model=model_copy)
    # A model of an older contract (v1: no version key) is refused with a clear message.
    edit_card(model_copy, contract={k: v for k, v in card["contract"].items() if k != "version"})
    with pytest.raises(ModelError, match="trained with version=None"):
        MLPhotometry(model=model_copy)


@pytest.mark.parametrize("key", ["sha256", "contract", "name", "version"])
def test_card_missing_key(model_copy, key):
    path = model_copy / "config.json"
    card = json.loads(path.read_text())
    del card[key]
    path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=f"lacks '{key}'"):
        verify_model(model_copy)


def test_card_invalid_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        verify_model(model_copy)


def test_not_an_onnx_file(model_copy):
    # Checksum consistent with the card, but the bytes are no ONNX model.
    onnx = model_copy / "model.onnx"
    onnx.write_bytes(b"this is not an onnx model")
    edit_card(model_copy, sha256=sha256(onnx))
    with pytest.raises(ModelError, match="could not load ONNX model"):
        MLPhotometry(model=model_copy)


@pytest.mark.parametrize(("in_shape", "out_shape"), [(["batch", 1, 32, 32], ["batch", 6]),
                                                     (["batch", 2, 16, 16], ["batch", 6]),
                                                     (["batch", 2, 32, 32], ["batch", 4])])
def test_onnx_shape_not_following_contract(model_copy, in_shape, out_shape):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # A valid ONNX graph (global average pool + reshape) with the wrong input/output shapes.
    inp = helper.make_tensor_value_info("stamps", TensorProto.FLOAT, in_shape)
    out = helper.make_tensor_value_info("outputs", TensorProto.FLOAT, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, out_shape[1]])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["stamps"], ["pooled"]),
                               helper.make_node("Reshape", ["pooled", "shape"], ["outputs"])],
                              "wrong", [inp], [out], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = model_copy / "model.onnx"
    onnx.save(model, str(path))
    edit_card(model_copy, sha256=sha256(path))
    verify_model(model_copy)  # checksum and card are fine ...
    with pytest.raises(ModelError, match="does not follow the contract"):
        MLPhotometry(model=model_copy)  # ... but the graph is not


def test_int8_graph_offered_only_after_its_parity_check(model_copy):
    """precision='int8' needs the card's record of a passed parity check and a matching file."""
    from asidfe_phot.models import network_file

    card = load_model_card(model_copy)
    assert network_file(model_copy, card) == model_copy / "model.onnx"
    with pytest.raises(ValueError, match="precision must be one of"):
        network_file(model_copy, card, "fp16")
    if "int8" not in card:
        with pytest.raises(ModelError, match="has no int8 graph"):
            MLPhotometry(model=model_copy, precision="int8")
    # Stand-in int8 file: the fp32 bytes (the gate, not the quantization, is tested here).
    int8 = model_copy / "model_int8.onnx"
    shutil.copyfile(model_copy / "model.onnx", int8)
    record = {"file": int8.name, "sha256": sha256(int8), "passed": False,
              "worst_relative_change": 0.05, "tolerance": 0.02}
    edit_card(model_copy, int8=record)
    with pytest.raises(ModelError, match="failed its accuracy-parity check"):
        MLPhotometry(model=model_copy, precision="int8")
    edit_card(model_copy, int8={**record, "passed": True})
    phot = MLPhotometry(model=model_copy, precision="int8")
    assert phot.precision == "int8" and "precision=int8" in repr(phot)
    image = np.random.default_rng(1).normal(100.0, 5.0, (48, 48)).astype(np.float32)
    image[20:23, 20:23] += 300.0
    result = phot(image, gain=1.0, init_params=QTable({"x": [21.0], "y": [21.0]}))
    assert result.meta["precision"] == "int8"
    int8.write_bytes(int8.read_bytes()[:-10])
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        MLPhotometry(model=model_copy, precision="int8")


def test_faster_shipped_model_measures_as_the_default():
    """v6 (shared trunk) ships verified, measures bright stars as v5 does, and has no int8."""
    from asidfe_phot.datasets import make_star_field

    card = load_model_card("asidfe_tsmve_v6")
    assert card["architecture"]["shared_convs"] == 2
    assert card["int8"]["passed"] is False
    with pytest.raises(ModelError, match="failed its accuracy-parity check"):
        MLPhotometry(model="asidfe_tsmve_v6", precision="int8")
    n = 16
    ys, xs = np.divmod(np.arange(n), 4)
    positions = (24.0 + 20 * xs, 24.0 + 20 * ys)
    image, _, _ = make_star_field((108, 108), positions=positions, fluxes=np.full(n, 5e4),
                                  sky=100.0, gain=1.0, seed=4)
    init = QTable({"x": positions[0] + 0.3, "y": positions[1] - 0.2})
    flux = {}
    for name in ("asidfe_tsmve_v5", "asidfe_tsmve_v6"):
        tbl = MLPhotometry(model=name, psf_model=None)(image, init_params=init, gain=1.0)
        assert f"{tbl.meta['model_name']}_v{tbl.meta['model_version']}" == name
        flux[name] = np.asarray(tbl["flux_fit"], float)
        assert np.all(np.abs(flux[name] / 5e4 - 1) < 0.05)
    assert np.median(np.abs(flux["asidfe_tsmve_v6"] / flux["asidfe_tsmve_v5"] - 1)) < 0.01


def test_session_is_the_network_of_the_measurements():
    """MLPhotometry.session runs the network the measurements use (read-only)."""
    phot = MLPhotometry(psf_model=None)
    assert phot.session.get_providers() == phot.providers
    with pytest.raises(AttributeError):
        phot.session = None
