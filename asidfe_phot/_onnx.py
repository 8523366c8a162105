"""onnxruntime session handling (the only module that touches onnxruntime)."""

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot.exceptions import ModelError

__all__ = []  # private module


def default_providers():
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path, providers=None, threads=None, n_channels=_stamps.N_INPUT_CHANNELS):
    """An inference session for ``path``, checked against the stamp contract.

    ``threads``: onnxruntime's intra-op threads (None: its default, all cores);
    1 when several processes share the cores.
    """
    import onnxruntime as ort

    if providers is None:
        providers = default_providers()
    elif isinstance(providers, str):    # one provider's name, not its letters
        providers = [providers]
    else:
        providers = list(providers)
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    unknown = [n for n in names if n not in ort.get_all_providers()]
    if unknown or not set(names) & set(ort.get_available_providers()):
        what = f"unknown onnxruntime providers {unknown}" if unknown else (
            f"none of the providers {names} is available here")
        msg = f"{what}; available: {ort.get_available_providers()}"
        raise ModelError(msg)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several private exception types
        msg = f"could not load ONNX model {path}: {exc}"
        raise ModelError(msg) from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = [int(n_channels), _stamps.STAMP_SIZE, _stamps.STAMP_SIZE]
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != expected or len(outputs) != 1 \
            or outputs[0].shape[-1] != 2 * len(_stamps.TARGET_NAMES):
        msg = (f"ONNX model {path} does not follow the contract: one input (batch, "
               f"{', '.join(map(str, expected))}) and one output (batch, 6)")
        raise ModelError(msg)
    return session


#: Stamps per onnxruntime call: measured fastest on CPU (larger batches fall out of cache).
RUN_CHUNK = 256


def run(session, inputs):
    """Network outputs (n, 6) for inputs (n, channels, 32, 32)."""
    name = session.get_inputs()[0].name
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if len(inputs) <= RUN_CHUNK:
        return session.run(None, {name: inputs})[0]
    return np.concatenate([session.run(None, {name: inputs[i:i + RUN_CHUNK]})[0]
                           for i in range(0, len(inputs), RUN_CHUNK)])
