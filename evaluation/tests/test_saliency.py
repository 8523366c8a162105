"""Tests of evaluation.saliency (SmoothGrad): deterministic, tiny models."""

import numpy as np
import pytest
import torch
from torch import nn

from evaluation.saliency import plot_saliency, simulated_stamps, smoothgrad
from training.model import TSMVE


class _Window(nn.Module):
    """dx output = sum of the data channel times a Gaussian window at the stamp centre."""

    def __init__(self):
        super().__init__()
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        self.register_buffer("w", torch.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 8.0))

    def forward(self, x):
        dx = (x[:, 0] * self.w * (torch.arange(32.0) - 16)).sum(dim=(1, 2)) / 100
        out = torch.zeros(x.shape[0], 6)
        out[:, 0] = dx
        return out + 0 * x.sum()


def test_smoothgrad_of_dx_is_concentrated_near_the_star():
    inputs = simulated_stamps(1, seed=0)
    sal = smoothgrad(_Window(), inputs, 0, n_samples=8, channel=0)[0]
    assert sal.shape == (32, 32)
    yy, xx = np.mgrid[:32, :32]
    near = np.hypot(xx - 16, yy - 16) <= 5
    assert sal[near].sum() > 0.9 * sal.sum()


def test_smoothgrad_tsmve_shapes_finite_and_deterministic():
    torch.manual_seed(0)
    model = TSMVE()
    inputs = simulated_stamps(2, seed=1)
    a = smoothgrad(model, inputs, 3, n_samples=3, seed=5)
    b = smoothgrad(model, inputs, 3, n_samples=3, seed=5)
    assert a.shape == (2, 3, 32, 32)
    assert np.all(np.isfinite(a)) and np.all(a >= 0)
    np.testing.assert_array_equal(a, b)
    signed = smoothgrad(model, inputs, 0, n_samples=2, magnitude=False, noise_level=0.0)
    assert (signed < 0).any()


def test_smoothgrad_bad_input():
    model = TSMVE()
    with pytest.raises(ValueError, match="shape"):
        smoothgrad(model, np.zeros((2, 32, 32)), 0)
    with pytest.raises(ValueError, match="output_index"):
        smoothgrad(model, np.zeros((1, 3, 32, 32)), 9, n_samples=1)


def test_plot_saliency(tmp_path):
    torch.manual_seed(0)
    inputs = simulated_stamps(2, seed=2)
    fig = plot_saliency(TSMVE(), inputs, tmp_path / "sal.png", n_samples=2)
    assert (tmp_path / "sal.png").exists()
    assert len(fig.axes) == 2 * 7
