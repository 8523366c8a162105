"""
The model registry: the ONNX models that ship with the package.

A model directory holds ``model.onnx`` and ``config.json`` (the model card:
version, sha256, training recipe, preprocessing contract, metrics). Loading
verifies the sha256 and the contract, so a corrupt, truncated or
incompatible file fails loudly instead of giving wrong numbers.
"""

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from asidfe_phot import _stamps
from asidfe_phot.exceptions import ModelError

__all__ = ["DEFAULT_MODEL", "PRECISIONS", "list_models", "model_path", "load_model_card",
           "verify_model", "network_file", "file_sha256"]

#: The model used when none is named.
DEFAULT_MODEL = "asidfe_tsmve_v5"

#: The network graphs a model directory may hold: ``model.onnx`` (fp32) and, when the
#: training's int8 quantization passed its accuracy-parity check, ``model_int8.onnx``.
PRECISIONS = ("fp32", "int8")

_CONTRACT_KEYS = ("version", "stamp_size", "core_size", "core_floor", "input_gain")


def _registry_root():
    try:
        return resources.files("asidfe_phot._model_files")
    except ModuleNotFoundError:
        # A source checkout imported without installing it (e.g. by the training and
        # evaluation tests): the registry is the models/ folder beside the package.
        return Path(__file__).resolve().parents[1] / "models"


def list_models():
    """Names of the models shipped with the package."""
    root = _registry_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file())


def _is_shipped(name):
    """Whether ``name`` (not a path) names a shipped model."""
    if os.sep in name or (os.altsep and os.altsep in name):
        return False
    try:
        return name in list_models()
    except ModuleNotFoundError:     # a source tree without the model registry mapped in
        return False


def model_path(model=None):
    """
    Directory of a model: a registry name, a path to a model directory, or None (default).

    Raises
    ------
    ModelError
        If no such model exists.
    """
    if model is None:
        model = DEFAULT_MODEL
    if not isinstance(model, (str, os.PathLike)):
        msg = (f"model must be a shipped model name or a model directory, got "
               f"{type(model).__name__} {model!r}; shipped models: {list_models()}")
        raise ModelError(msg)
    # A shipped name always means the shipped model, whatever the current directory
    # holds; a directory of the same name is used only when given as a path
    # (``pathlib.Path`` or a string with a separator, e.g. "./asidfe_tsmve_v5").
    if isinstance(model, str) and _is_shipped(model):
        directory = Path(str(_registry_root() / model))
    else:
        directory = Path(model)
        if not directory.is_dir():
            msg = (f"model {str(model)!r} is neither a model directory nor a shipped model; "
                   f"shipped models: {list_models()}")
            raise ModelError(msg)
    for name in ("config.json", "model.onnx"):
        if not (directory / name).is_file():
            msg = f"model directory {directory} has no {name}"
            raise ModelError(msg)
    return directory


def load_model_card(model=None):
    """The model card (``config.json``) of a model, as a dict."""
    path = model_path(model) / "config.json"
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        msg = f"model card {path} is not valid JSON: {exc}"
        raise ModelError(msg) from exc


def file_sha256(path):
    """Hex sha256 digest of a file (what model cards record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_model(model=None):
    """
    Check a model's file against its card: sha256 and preprocessing contract.

    Returns
    -------
    directory : `~pathlib.Path`
    card : dict

    Raises
    ------
    ModelError
        On a checksum mismatch, a missing card entry, or a contract that differs
        from this version of the package's preprocessing.
    """
    directory = model_path(model)
    card = load_model_card(directory)
    for key in ("sha256", "contract", "name", "version"):
        if key not in card:
            msg = f"model card {directory / 'config.json'} lacks {key!r}"
            raise ModelError(msg)
    digest = file_sha256(directory / "model.onnx")
    if digest != card["sha256"]:
        msg = (f"{directory / 'model.onnx'} is corrupt or was replaced: sha256 {digest} "
               f"differs from the model card's {card['sha256']}")
        raise ModelError(msg)
    ours = _stamps.contract()
    if card["contract"].get("version") in _stamps.SUPPORTED_CONTRACT_VERSIONS:
        # Contract 3 only adds the PSF channel: contract-2 models run with two channels.
        ours = {**ours, "version": card["contract"]["version"]}
    for key in _CONTRACT_KEYS:
        if card["contract"].get(key) != ours[key]:
            msg = (f"model {card['name']} was trained with {key}={card['contract'].get(key)!r} "
                   f"but this package preprocesses with {key}={ours[key]!r}")
            raise ModelError(msg)
    return directory, card


def network_file(directory, card, precision="fp32"):
    """
    The ONNX graph of a verified model (see `verify_model`) at ``precision``.

    ``"int8"`` is the statically quantized graph, offered only where the model card
    records that it passed the parity check against fp32 (flux MARE and z-score std
    per S/N bin on held-out test stamps); its sha256 is checked like the fp32 one's.

    Raises
    ------
    ValueError
        For a precision not in `PRECISIONS`.
    ModelError
        When the model has no int8 graph, its graph failed the parity check, or
        the file differs from its card.
    """
    if precision not in PRECISIONS:
        msg = f"precision must be one of {PRECISIONS}, got {precision!r}"
        raise ValueError(msg)
    directory = Path(directory)
    if precision == "fp32":
        return directory / card.get("file", "model.onnx")
    record = card.get("int8")
    name = f"{card['name']}_v{card['version']}"
    if not record:
        msg = f"model {name} has no int8 graph: use precision='fp32'"
        raise ModelError(msg)
    if not record.get("passed"):
        msg = (f"model {name}'s int8 graph failed its accuracy-parity check (worst relative "
               f"change {record.get('worst_relative_change')} against a tolerance of "
               f"{record.get('tolerance')}): use precision='fp32'")
        raise ModelError(msg)
    path = directory / record["file"]
    digest = file_sha256(path) if path.exists() else "missing"
    if digest != record["sha256"]:
        msg = (f"{path} is missing, corrupt or was replaced: sha256 {digest} differs from "
               f"the model card's {record['sha256']}")
        raise ModelError(msg)
    return path
