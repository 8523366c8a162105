"""The TS-MVE network (Stoppa et al. 2023, Figs. 3, 5, 6) in PyTorch."""

import torch
import torch.nn.functional as F
from torch import nn

from asidfe_phot import _stamps

#: Bounds of the predicted log-variances (in target units: px^2 and (flux/unit)^2).
LOGVAR_MIN, LOGVAR_MAX = -16.0, 6.0


#: Conv blocks from the stamp to the heads (each halves the size: 32 -> 4 px).
N_CONVS = 3


class Branch(nn.Module):
    """
    Conv blocks (4x4, 32 channels, ELU, 2x2 max-pool), then one MLP head per target.

    ``n_convs`` blocks on an ``input_size``-px input: a full branch has three on the
    stamp; a branch on a shared trunk's features has the blocks the trunk left.
    """

    def __init__(self, in_channels=_stamps.N_INPUT_CHANNELS, channels=32,
                 n_targets=3, stamp_size=_stamps.STAMP_SIZE,
                 hidden=(128, 64, 32), n_convs=N_CONVS):
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(in_channels if i == 0 else channels, channels, kernel_size=4)
            for i in range(n_convs)])
        n_flat = channels * (stamp_size // 2**n_convs) ** 2
        layers = []
        for _ in range(n_targets):
            dims = (n_flat, *hidden)
            mlp = []
            for a, b in zip(dims[:-1], dims[1:]):
                mlp += [nn.Linear(a, b), nn.ELU()]
            mlp.append(nn.Linear(dims[-1], 1))
            layers.append(nn.Sequential(*mlp))
        self.heads = nn.ModuleList(layers)

    def blocks(self, x, start=0, stop=None):
        for conv in self.convs[start:stop]:
            # 'same' padding for an even kernel, written out: faster on CPU than padding='same'.
            x = F.max_pool2d(F.elu(conv(F.pad(x, (1, 2, 1, 2)))), 2)
        return x

    def features(self, x):
        return torch.flatten(self.blocks(x), 1)

    def predict(self, trunk, start):
        """The heads on the features of block ``start`` onwards (``trunk``: block start-1's)."""
        z = torch.flatten(self.blocks(trunk, start), 1)
        return torch.cat([head(z) for head in self.heads], dim=1)

    def forward(self, x):
        return self.predict(x, 0)


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
    Two branches: means and log-variances.

    ``forward`` returns (n, 6): the means of (dx, dy, flux/unit) then their
    bounded log-variances. The same class serves the plain MVE baseline
    (trained with the NLL from scratch).

    ``shared_convs``: the variance branch reads the mean branch's features after
    this many conv blocks instead of computing its own from the stamp (0: two
    independent branches, as in the paper; up to v5). The first two blocks are
    most of the cost (the second alone 60 %), so sharing them runs the network
    about 1.7x faster; the mean branch is unchanged, so step 1 (Huber on the means)
    is the same, and step 2 trains the variance blocks on the shared features.
    """

    def __init__(self, shared_convs=0, **kwargs):
        super().__init__()
        if not 0 <= shared_convs < N_CONVS:
            msg = f"shared_convs must be in [0, {N_CONVS - 1}], got {shared_convs}"
            raise ValueError(msg)
        self.shared_convs = int(shared_convs)
        self.mean = Branch(**kwargs)
        if shared_convs:
            channels = kwargs.get("channels", 32)
            size = kwargs.get("stamp_size", _stamps.STAMP_SIZE) // 2**shared_convs
            self.logvar = Branch(**{**kwargs, "in_channels": channels, "stamp_size": size,
                                    "n_convs": N_CONVS - shared_convs})
        else:
            self.logvar = Branch(**kwargs)

    def bounded_logvar(self, raw):
        return LOGVAR_MIN + (LOGVAR_MAX - LOGVAR_MIN) * torch.sigmoid(raw)

    def forward(self, x):
        if not self.shared_convs:
            return torch.cat([self.mean(x), self.bounded_logvar(self.logvar(x))], dim=1)
        trunk = self.mean.blocks(x, 0, self.shared_convs)
        return torch.cat([self.mean.predict(trunk, self.shared_convs),
                          self.bounded_logvar(self.logvar(trunk))], dim=1)


def shared_convs_of(state):
    """The ``shared_convs`` of the architecture a state dict was saved from."""
    n_logvar = sum(1 for k in state if k.startswith("logvar.convs.") and k.endswith(".weight"))
    return N_CONVS - n_logvar


def share_trunk(state, shared_convs):
    """
    A two-branch state dict turned into a shared-trunk one: the mean branch is
    kept whole (its outputs do not change) and the variance branch keeps its last
    blocks and heads, to be retrained by step 2 on the trunk's features.
    """
    if shared_convs_of(state) != 0:
        msg = "share_trunk takes the state of a two-branch model (shared_convs=0)"
        raise ValueError(msg)
    out = {k: v for k, v in state.items() if not k.startswith("logvar.convs.")}
    for i in range(shared_convs, N_CONVS):
        for kind in ("weight", "bias"):
            out[f"logvar.convs.{i - shared_convs}.{kind}"] = state[f"logvar.convs.{i}.{kind}"]
    return out


def gaussian_nll(outputs, targets):
    """Gaussian negative log-likelihood (paper eq. 1), summed over targets, mean over the batch."""
    n = targets.shape[1]
    mean, logvar = outputs[:, :n], outputs[:, n:]
    return 0.5 * (logvar + (targets - mean) ** 2 * torch.exp(-logvar)).sum(dim=1).mean()


#: z-score beyond which `robust_gaussian_nll` grows linearly, not quadratically.
ROBUST_NLL_Z = 3.0


def robust_gaussian_nll(outputs, targets, z_max=ROBUST_NLL_Z):
    """
    `gaussian_nll` with Huber's tails in the z-score: ``z^2 / 2`` within ``z_max``,
    ``z_max |z| - z_max^2 / 2`` beyond. Stamps from real frames hold the odd star that a
    neighbour or a detection one pixel off makes wrong by tens of sigma; under the
    Gaussian loss a handful of them set every variance (on EY UMa, 25 of 12,158 stamps
    made all flux sigmas ~8x too large). The bulk keeps the Gaussian likelihood.
    """
    n = targets.shape[1]
    mean, logvar = outputs[:, :n], outputs[:, n:]
    z = (targets - mean) * torch.exp(-0.5 * logvar)
    size = z.abs()
    tail = torch.where(size < z_max, 0.5 * z**2, z_max * size - 0.5 * z_max**2)
    return (0.5 * logvar + tail).sum(dim=1).mean()


def huber(outputs, targets, delta=1.0):
    n = targets.shape[1]
    return F.huber_loss(outputs[:, :n], targets, delta=delta, reduction="none").sum(dim=1).mean()


def sigma_head_parameters(model):
    """Weights of the variance branch's dense layers (L2-regularised, as in the paper's code)."""
    return [p for name, p in model.logvar.heads.named_parameters() if name.endswith("weight")]
