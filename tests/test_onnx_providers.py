"""Provider choice of the onnxruntime session: CUDA only where it really starts."""

import warnings

import onnxruntime as ort
import pytest

from asidfe_phot import _onnx
from asidfe_phot.exceptions import GPUProviderWarning, ModelError
from asidfe_phot.models import verify_model

CUDA, CPU = _onnx.CUDA, _onnx.CPU
_RealSession = ort.InferenceSession


@pytest.fixture
def model_file():
    model_dir, card = verify_model(None)
    return model_dir / card.get("file", "model.onnx")


class _FakeSession:
    """Stands in for onnxruntime.InferenceSession on a machine with onnxruntime-gpu."""

    created = []

    def __init__(self, path, sess_options=None, providers=None, gpu_works=True):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.providers_asked = providers
        # onnxruntime drops a provider it cannot start (no GPU) and keeps the rest.
        self._providers = [n for n in names if n != CUDA or gpu_works]
        self._real = _RealSession(path, sess_options=sess_options, providers=[CPU])
        _FakeSession.created.append(self)

    def get_providers(self):
        return self._providers

    def get_inputs(self):
        return self._real.get_inputs()

    def get_outputs(self):
        return self._real.get_outputs()

    def run(self, output_names, feeds):
        return self._real.run(output_names, feeds)


def _pretend_gpu_build(monkeypatch, gpu_works):
    _FakeSession.created = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda *a, **k: _FakeSession(*a, gpu_works=gpu_works, **k))


def test_cpu_build_uses_cpu(model_file):
    session = _onnx.create_session(model_file)
    assert session.get_providers() == [CPU]
    assert not _onnx.on_gpu(session)


def test_cuda_chosen_with_device_id_when_a_gpu_starts(monkeypatch, model_file):
    _pretend_gpu_build(monkeypatch, gpu_works=True)
    session = _onnx.create_session(model_file, device_id=1)
    assert session.providers_asked == [(CUDA, {"device_id": 1}), CPU]
    assert _onnx.on_gpu(session)


def test_no_visible_gpu_runs_on_cpu_quietly_by_default(monkeypatch, model_file):
    # Compiled in is not enough: without a GPU the session must not claim CUDA.
    _pretend_gpu_build(monkeypatch, gpu_works=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session = _onnx.create_session(model_file)
    assert session.get_providers() == [CPU]
    assert not _onnx.on_gpu(session)


def test_asked_for_cuda_without_gpu_warns(monkeypatch, model_file):
    _pretend_gpu_build(monkeypatch, gpu_works=False)
    with pytest.warns(GPUProviderWarning, match="could not start"):
        session = _onnx.create_session(model_file, providers=[CUDA, CPU])
    assert session.get_providers() == [CPU]


def test_cuda_failing_at_start_falls_back_to_cpu(monkeypatch, model_file):
    real = _RealSession

    def failing(path, sess_options=None, providers=None):
        if CUDA in [p[0] if isinstance(p, tuple) else p for p in providers]:
            msg = "CUDA failure 100: no CUDA-capable device is detected"
            raise RuntimeError(msg)
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", failing)
    session = _onnx.create_session(model_file)
    assert session.get_providers() == [CPU]


def test_gpu_gets_whole_batches_cpu_gets_chunks(monkeypatch, model_file):
    import numpy as np

    batch = np.zeros((_onnx.RUN_CHUNK + 10, 8, 32, 32), dtype=np.float32)
    for gpu_works, expected_calls in ((True, 1), (False, 2)):
        _pretend_gpu_build(monkeypatch, gpu_works=gpu_works)
        session = _onnx.create_session(model_file)
        calls = []
        real_run = session.run
        session.run = (lambda names, feeds, _r=real_run, _calls=calls:
                       _calls.append(1) or _r(names, feeds))
        n_channels = session.get_inputs()[0].shape[1]
        out = _onnx.run(session, batch[:, :n_channels])
        assert out.shape == (len(batch), 6)
        assert len(calls) == expected_calls


def test_clobbered_gpu_package_is_named_with_its_repair(monkeypatch, model_file):
    from importlib import metadata

    real_distribution = metadata.distribution

    def distribution(name):
        if name == "onnxruntime-gpu":
            return object()
        return real_distribution(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    monkeypatch.setattr(_onnx, "_warned_clobbered", False)
    with pytest.warns(GPUProviderWarning, match="force-reinstall"):
        session = _onnx.create_session(model_file)
    assert session.get_providers() == [CPU]
    with pytest.raises(ModelError, match="none of the providers"), \
            pytest.warns(GPUProviderWarning, match="force-reinstall"):
        monkeypatch.setattr(_onnx, "_warned_clobbered", False)
        _onnx.create_session(model_file, providers=[CUDA])


@pytest.mark.parametrize("device_id", [-1, 1.5, True, "0"])
def test_bad_device_id(model_file, device_id):
    with pytest.raises((ValueError, TypeError), match="device_id"):
        _onnx.create_session(model_file, device_id=device_id)
