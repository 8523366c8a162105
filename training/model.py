"""The TS-MVE network (Stoppa et al. 2023, Figs. 3, 5, 6) in PyTorch."""

import torch
import torch.nn.functional as F
from torch import nn

from asidfe_phot import _stamps

#: Bounds of the predicted log-variances (in target units: px^2 and (flux/unit)^2).
LOGVAR_MIN, LOGVAR_MAX = -16.0, 6.0


class Branch(nn.Module):
    """Three conv blocks (4x4, 32 channels, ELU, 2x2 max-pool), then one MLP head per target."""

    def __init__(self, in_channels=_stamps.N_INPUT_CHANNELS, channels=32,
                 n_targets=3, stamp_size=_stamps.STAMP_SIZE,
                 hidden=(128, 64, 32)):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size=4)
            for i in range(3)])
        n_flat = channels * (stamp_size // 8) ** 2
        layers = []
        for _ in range(n_targets):
            dims = (n_flat, *hidden)
            mlp = []
            for a, b in zip(dims[:-1], dims[1:]):
                mlp += [nn.Linear(a, b), nn.ELU()]
            mlp.append(nn.Linear(dims[-1], 1))
            layers.append(nn.Sequential(*mlp))
        self.heads = nn.ModuleList(layers)

    def features(self, x):
        for conv in self.convs:
            # 'same' padding for an even kernel, written out: faster on CPU than padding='same'.
            x = F.max_pool2d(F.elu(conv(F.pad(x, (1, 2, 1, 2)))), 2)
        return torch.flatten(x, 1)

    def forward(self, x):
        z = self.features(x)
        return torch.cat([head(z) for head in self.heads], dim=1)


def widen_inputs(state, in_channels=_stamps.N_INPUT_CHANNELS):
    """
    A state dict whose first convolutions take ``in_channels`` inputs, the added
    ones with zero weights: a contract-2 network becomes a contract-3 one that
    computes exactly what it did (the warm start of the PSF-conditioned model).
    """
    state = dict(state)
    for key in ("mean.convs.0.weight", "logvar.convs.0.weight"):
        w = state[key]
        if w.shape[1] < in_channels:
            pad = torch.zeros((w.shape[0], in_channels - w.shape[1], *w.shape[2:]), dtype=w.dtype)
            state[key] = torch.cat([w, pad], dim=1)
    return state


class TSMVE(nn.Module):
    """
    Two identical branches: means and log-variances.

    ``forward`` returns (n, 6): the means of (dx, dy, flux/unit) then their
    bounded log-variances. The same class serves the plain MVE baseline
    (trained with the NLL from scratch).
    """

    def __init__(self, **kwargs):
        super().__init__()
        self.mean = Branch(**kwargs)
        self.logvar = Branch(**kwargs)

    def bounded_logvar(self, raw):
        return LOGVAR_MIN + (LOGVAR_MAX - LOGVAR_MIN) * torch.sigmoid(raw)

    def forward(self, x):
        return torch.cat([self.mean(x), self.bounded_logvar(self.logvar(x))], dim=1)


def gaussian_nll(outputs, targets):
    """Gaussian negative log-likelihood (paper eq. 1), summed over targets, mean over the batch."""
    n = targets.shape[1]
    mean, logvar = outputs[:, :n], outputs[:, n:]
    return 0.5 * (logvar + (targets - mean) ** 2 * torch.exp(-logvar)).sum(dim=1).mean()


def huber(outputs, targets, delta=1.0):
    n = targets.shape[1]
    return F.huber_loss(outputs[:, :n], targets, delta=delta, reduction="none").sum(dim=1).mean()


def sigma_head_parameters(model):
    """Weights of the variance branch's dense layers (L2-regularised, as in the paper's code)."""
    return [p for name, p in model.logvar.heads.named_parameters() if name.endswith("weight")]
