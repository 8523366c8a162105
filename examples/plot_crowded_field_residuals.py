"""
A crowded field and its residual image
======================================

A simulated crowded field (Moffat PSF, FWHM 3 px, about 0.2 stars per FWHM²)
measured with its PSF given: the network sees the PSF, its estimates start a
joint PSF fit of all sources, and
`~asidfe_phot.MLPhotometry.make_residual_image` subtracts the fitted sources
from the image, as photutils' `~photutils.psf.PSFPhotometry` does. What is
left shows what the catalogue missed or got wrong.
"""

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from astropy.visualization import simple_norm
from photutils.psf import ImagePSF, MoffatPSF

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_star_field
from asidfe_phot.flags import BLENDED

# %%
# The field
# ---------
# 1200 stars on 220x220 px, kept 16 px (half a stamp) from the edges; fluxes
# follow a power law from 300 to 300,000 electrons, so most are faint. The
# input catalogue holds the stars a detector would find (true S/N above 5
# here), at positions 0.3 px off.

# The PSF, as a photutils image model (4x oversampled, 31x31 px): the
# simulator renders the stars with it, and the measurement is given it.
fwhm, beta, oversampling = 3.0, 3.0, 4
alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
grid = (np.arange(31 * oversampling) - (31 * oversampling - 1) / 2) / oversampling
psf_data = MoffatPSF(alpha=alpha, beta=beta)(grid[None, :], grid[:, None])
psf = ImagePSF(psf_data * oversampling**2 / psf_data.sum(), oversampling=oversampling)

image, truth, meta = make_star_field((220, 220), 1200, psf=psf, flux_range=(300, 3e5),
                                     sky=200.0, gain=2.0, read_noise=5.0, border=16, seed=3)
area = np.pi * fwhm**2                      # about the noise area of a point source
snr = truth["flux"] / np.sqrt(truth["flux"] / meta["gain"] + area * np.median(meta["noise"])**2)
rng = np.random.default_rng(1)
catalogue = truth[snr > 5]
init = Table({"id": catalogue["id"],
              "x": catalogue["x"] + rng.normal(0, 0.3, len(catalogue)),
              "y": catalogue["y"] + rng.normal(0, 0.3, len(catalogue))})
print(f"{len(truth)} stars, {len(init)} in the catalogue; "
      f"{len(truth) * fwhm**2 / image.size:.2f} stars per FWHM²")

# %%
# Measure
# -------
# The PSF is given as a photutils model, as a PSFEx model or an earlier
# ePSF would be. ``psf_model="auto"`` (the default) builds an ePSF from the
# image's own bright, *isolated* stars: this field has fewer than the 10 it
# needs, so "auto" would measure it with the network alone. The gain
# (electrons per ADU) lets the network know each star's own Poisson noise.

phot = MLPhotometry(psf_model=psf, model="asidfe_tsmve_v5")
tbl = phot(image, init_params=init, gain=meta["gain"])

ratio = np.asarray(tbl["flux_fit"]) / np.asarray(catalogue["flux"])
good = np.asarray(tbl["flags"] == 0)
bright = np.asarray(snr[snr > 5] > 30)
print(f"unflagged rows: {good.sum()} of {len(tbl)} (most flags: BLENDED)")
for label, sel in (("S/N 5-30", ~bright), ("S/N > 30", bright)):
    print(f"{label}: median |flux_fit / true - 1| = {np.median(np.abs(ratio[sel] - 1)):.3f} "
          f"({sel.sum()} stars, flagged included)")

# %%
# Image, model and residual
# -------------------------
# ``make_residual_image`` takes the image as it was given, so its
# background is subtracted first to leave the sources' residuals alone. The
# residual, in units of the pixel noise, is mostly noise. The faint stars
# left out of the catalogue (black dots) remain. Circles mark the rows
# flagged ``BLENDED``: a neighbour within the core that the measurement
# could not separate, so those fluxes, and the model there, are not to be
# trusted.

background = meta["background"]
noise = meta["noise"]
model = phot.make_model_image(image.shape)
residual = phot.make_residual_image(image - background)
blended = (np.asarray(tbl["flags"]) & BLENDED) != 0

fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained", sharey=True)
norm = simple_norm(image - background, "asinh", vmin=-3 * np.median(noise),
                   vmax=np.percentile(image - background, 99.5), asinh_a=0.05)
for ax, im, title in zip(axes[:2], (image - background, model),
                         ("image - background", "model image (PSF fit)")):
    ax.imshow(im, origin="lower", cmap="Greys_r", norm=norm)
    ax.set_title(title)
shown = axes[2].imshow(residual / noise, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5)
axes[2].set_title("residual / pixel noise")
missed = truth[snr <= 5]
axes[2].plot(missed["x"], missed["y"], ".", color="k", ms=1.5)
axes[2].plot(tbl["x_fit"][blended], tbl["y_fit"][blended], "o", mfc="none", mec="tab:green",
             ms=7, mew=0.8)
fig.colorbar(shown, ax=axes[2], shrink=0.8)
plt.show()

# %%
# The residual pixels against the noise
# -------------------------------------
# Within 2 px of each measured star, ``residual / noise`` next to a standard
# normal, for the unflagged rows and for the ``BLENDED`` ones.

yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]


def near(rows):
    """Pixels within 2 px of the fitted centres of ``rows``."""
    mask = np.zeros(image.shape, bool)
    for x, y in zip(tbl["x_fit"][rows], tbl["y_fit"][rows]):
        mask |= (xx - x) ** 2 + (yy - y) ** 2 < 4
    return mask


fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
bins = np.linspace(-8, 8, 65)
for rows, label in ((good, "unflagged rows"), (blended, "BLENDED rows")):
    z = (residual / noise)[near(rows)]
    print(f"{label}: {rows.sum()} rows, residual / noise std {np.std(z):.2f}, "
          f"robust std {1.4826 * np.median(np.abs(z - np.median(z))):.2f}")
    ax.hist(z, bins=bins, density=True, histtype="step", label=label)
zgrid = np.linspace(-8, 8, 200)
ax.plot(zgrid, np.exp(-zgrid**2 / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
ax.set(yscale="log", ylim=(1e-4, 1), xlabel="residual / pixel noise", ylabel="density")
ax.legend()
plt.show()
