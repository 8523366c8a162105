"""
SmoothGrad saliency maps of a TS-MVE model (paper Sect. 3.2.4, Figs. 10-11).

    python -m evaluation.saliency --weights models/asidfe_tsmve_v5 --out saliency.png \
        [--data runs/data_v1]

SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825): the gradient of one
output with respect to the input, averaged over ``n_samples`` copies of the
input with Gaussian noise of standard deviation ``noise_level * (max - min)``
of the input added; it removes most of the speckle of a single gradient.
Figure: per stamp, the data channel, then |SmoothGrad| of the means of
x, y, flux (Fig. 10) and of their log-variances, i.e. sigma_x, sigma_y,
sigma_flux (Fig. 11); the gradient of log sigma is half that of the
log-variance, so the maps are the same up to a factor 2.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from asidfe_phot import _stamps

OUTPUT_NAMES = ("x", "y", "flux", "sigma_x", "sigma_y", "sigma_flux")


def smoothgrad(model, inputs, output_index, *, n_samples=50, noise_level=0.15, seed=0,
               magnitude=True, channel=None):
    """
    SmoothGrad saliency of one model output.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (n, C, H, W) float32 inputs to (n, k) outputs (TS-MVE: means
        then log-variances); put in eval mode here.
    inputs : array or tensor, shape (n, C, H, W)
    output_index : int
        Which output column (0-2 means of dx, dy, flux/unit; 3-5 their
        log-variances).
    n_samples : int, optional
        Noisy copies per input.
    noise_level : float, optional
        Noise sigma as a fraction of each stamp-channel's (max - min).
        0 gives the plain gradient (Simonyan et al. 2013).
    seed : int, optional
    magnitude : bool, optional
        Return the mean absolute gradient (as in the paper's figures);
        False returns the signed mean gradient.
    channel : int, optional
        Return only this input channel's map.

    Returns
    -------
    numpy.ndarray
        (n, C, H, W), or (n, H, W) with ``channel``.
    """
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    if x.ndim != 4:
        msg = f"inputs must have shape (n, C, H, W), got {tuple(x.shape)}"
        raise ValueError(msg)
    if int(n_samples) < 1:
        msg = f"n_samples must be a positive integer, got {n_samples!r}"
        raise ValueError(msg)
    model.eval()
    gen = torch.Generator().manual_seed(int(seed))
    span = (x.amax(dim=(2, 3), keepdim=True) - x.amin(dim=(2, 3), keepdim=True))
    sigma = noise_level * span
    total = torch.zeros_like(x)
    for _ in range(int(n_samples)):
        noisy = (x + sigma * torch.randn(x.shape, generator=gen)).requires_grad_(True)
        out = model(noisy)
        if not 0 <= output_index < out.shape[1]:
            msg = f"output_index must be in [0, {out.shape[1]}), got {output_index}"
            raise ValueError(msg)
        (grad,) = torch.autograd.grad(out[:, output_index].sum(), noisy)
        total += grad.abs() if magnitude else grad
    result = (total / int(n_samples)).numpy()
    return result if channel is None else result[:, channel]


def simulated_stamps(n=3, seed=0):
    """A few network-ready stamps of simulated stars (bright to faint, sub-pixel offsets)."""
    from asidfe_phot.datasets import make_star_field

    size = 128
    pos = np.linspace(24, size - 24, n) + 0.3
    image, truth, meta = make_star_field(
        (size, size), positions=(pos, pos[::-1] - 0.2), fluxes=np.geomspace(2e5, 3e3, n),
        psf={"family": "moffat", "fwhm": 3.0, "beta": 3.0}, sky=200.0, gain=2.0, seed=seed)
    sub = image - meta["background"]
    data, inside = _stamps.cutout_stamps(sub, truth["x"], truth["y"])
    rms = np.sqrt(meta["background"] * 2.0 + 25.0) / 2.0
    error = _stamps.total_error(data, _stamps.cutout_stamps(rms, truth["x"], truth["y"])[0], 2.0)
    inputs, _ = _stamps.encode_inputs(data, error, inside)
    return inputs


def load_model(weights=None):
    """A TSMVE with the given weights (see `training.train.load_model`), else random."""
    from training.model import TSMVE
    from training.train import load_model as load_weights

    return TSMVE().eval() if weights is None else load_weights(weights)


def plot_saliency(model, inputs, path=None, *, n_samples=50, noise_level=0.15, seed=0,
                  title=None):
    """Figs. 10-11 in one figure: rows = stamps; columns = data, 3 means, 3 sigmas."""
    import matplotlib

    matplotlib.use("agg")
    from matplotlib.figure import Figure

    maps = [smoothgrad(model, inputs, k, n_samples=n_samples, noise_level=noise_level,
                       seed=seed).sum(axis=1) for k in range(len(OUTPUT_NAMES))]
    n = len(inputs)
    fig = Figure(figsize=(2.0 * (1 + len(OUTPUT_NAMES)), 2.1 * n + 0.5))
    axes = np.atleast_2d(fig.subplots(n, 1 + len(OUTPUT_NAMES)))
    for i in range(n):
        axes[i, 0].imshow(inputs[i, 0], origin="lower", cmap="gray")
        axes[i, 0].set_title("stamp (network input)" if i == 0 else "", fontsize=8)
        for k, name in enumerate(OUTPUT_NAMES):
            ax = axes[i, k + 1]
            ax.imshow(maps[k][i], origin="lower", cmap="inferno")
            if i == 0:
                ax.set_title(f"SmoothGrad {name}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or "SmoothGrad saliency: means (Fig. 10) and uncertainties (Fig. 11)",
                 fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None,
                        help="a checkpoint (.pt) or an exported model (its directory or "
                             "model.onnx); default random")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--data", default=None, help="data set dir: use its test stamps")
    parser.add_argument("--n-stamps", type=int, default=3)
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--noise-level", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.weights)
    if args.data:
        from training.data import StampSet

        stamps = StampSet(args.data, "test", limit=2000)
        order = np.argsort(stamps.meta["snr"])[::-1]
        pick = order[np.linspace(0, len(order) - 1, args.n_stamps).astype(int)]
        inputs, _, _ = stamps.batch(pick)
    else:
        inputs = simulated_stamps(args.n_stamps, args.seed)
    name = "random" if args.weights is None else Path(args.weights).name
    if name == "model.onnx":
        name = Path(args.weights).parent.name
    title = f"SmoothGrad, weights {name}"
    plot_saliency(model, inputs, args.out, n_samples=args.n_samples,
                  noise_level=args.noise_level, seed=args.seed, title=title)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
