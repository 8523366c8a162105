"""onnxruntime session handling (the only module that touches onnxruntime)."""

import warnings

import numpy as np

from asidfe_phot import _stamps
from asidfe_phot.exceptions import GPUProviderWarning, ModelError

__all__ = []  # private module


#: The GPU provider chosen by default when onnxruntime-gpu is installed and a GPU is visible.
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: The repair for an onnxruntime-gpu whose files the CPU package overwrote (both write the
#: same ``onnxruntime`` module; the one installed last wins).
GPU_REPAIR = 'pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.19"'
_warned_clobbered = False


def default_providers(device_id=None):
    """CUDA (on ``device_id``) then CPU when onnxruntime offers CUDA, else CPU."""
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        return [(CUDA, {"device_id": int(device_id or 0)}), CPU]
    _warn_if_gpu_package_clobbered()
    return [CPU]


def _warn_if_gpu_package_clobbered():
    """Say so when onnxruntime-gpu is installed but the module loaded has no CUDA provider."""
    global _warned_clobbered
    from importlib import metadata

    try:
        metadata.distribution("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return
    if _warned_clobbered:
        return
    _warned_clobbered = True
    msg = ("onnxruntime-gpu is installed but the onnxruntime module loaded has no CUDA "
           "provider (the CPU package 'onnxruntime' was installed after it and overwrote its "
           f"files): running on CPU. Repair with: {GPU_REPAIR}")
    warnings.warn(msg, GPUProviderWarning, stacklevel=2)


def _provider_names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def create_session(path, providers=None, threads=None, n_channels=_stamps.N_INPUT_CHANNELS,
                   device_id=None):
    """An inference session for ``path``, checked against the stamp contract.

    ``threads``: onnxruntime's intra-op threads (None: its default, all cores);
    1 when several processes share the cores. ``device_id``: the GPU of the CUDA provider
    (default 0); it applies to a CUDA provider named without options.

    The default providers are CUDA then CPU when onnxruntime-gpu is installed; the session
    keeps CUDA only when it could really start it (a visible GPU and the CUDA libraries):
    otherwise it runs on CPU, as a plain onnxruntime would.
    """
    import onnxruntime as ort

    if device_id is not None and (isinstance(device_id, bool) or int(device_id) != device_id
                                  or device_id < 0):
        msg = f"device_id must be a non-negative integer or None, got {device_id!r}"
        raise ValueError(msg)
    requested = providers is not None
    if providers is None:
        providers = default_providers(device_id)
    elif isinstance(providers, str):    # one provider's name, not its letters
        providers = [providers]
    else:
        providers = list(providers)
    if device_id is not None:
        providers = [(p, {"device_id": int(device_id)}) if p == CUDA else p for p in providers]
    names = _provider_names(providers)
    unknown = [n for n in names if n not in ort.get_all_providers()]
    if unknown or not set(names) & set(ort.get_available_providers()):
        what = f"unknown onnxruntime providers {unknown}" if unknown else (
            f"none of the providers {names} is available here")
        msg = f"{what}; available: {ort.get_available_providers()}"
        if CUDA in names and CUDA not in ort.get_available_providers():
            _warn_if_gpu_package_clobbered()
        raise ModelError(msg)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several private exception types
        if CUDA not in names or CPU not in names:
            msg = f"could not load ONNX model {path}: {exc}"
            raise ModelError(msg) from exc
        # The CUDA provider is compiled in but could not start (no visible GPU, a missing
        # CUDA or cuDNN library): the CPU in the list takes over.
        session = create_session(path, [CPU], threads, n_channels)
    if requested and CUDA in names and CUDA not in session.get_providers():
        msg = (f"{CUDA} was asked for but could not start here (no visible GPU, or the CUDA "
               "and cuDNN libraries onnxruntime-gpu needs are missing): running on "
               f"{session.get_providers()}")
        warnings.warn(msg, GPUProviderWarning, stacklevel=2)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = [int(n_channels), _stamps.STAMP_SIZE, _stamps.STAMP_SIZE]
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != expected or len(outputs) != 1 \
            or outputs[0].shape[-1] != 2 * len(_stamps.TARGET_NAMES):
        msg = (f"ONNX model {path} does not follow the contract: one input (batch, "
               f"{', '.join(map(str, expected))}) and one output (batch, 6)")
        raise ModelError(msg)
    return session


#: Stamps per onnxruntime call on CPU: measured fastest (larger batches fall out of cache).
#: A GPU gets the whole batch (``batch_size``) in one call.
RUN_CHUNK = 256


def on_gpu(session):
    """Whether the session's first (preferred) provider is not the CPU."""
    return session.get_providers()[0] != CPU


def run(session, inputs):
    """Network outputs (n, 6) for inputs (n, channels, 32, 32)."""
    name = session.get_inputs()[0].name
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if len(inputs) <= RUN_CHUNK or on_gpu(session):
        return session.run(None, {name: inputs})[0]
    return np.concatenate([session.run(None, {name: inputs[i:i + RUN_CHUNK]})[0]
                           for i in range(0, len(inputs), RUN_CHUNK)])
