"""
Are the uncertainties calibrated?
=================================

`~asidfe_phot.MLPhotometry` predicts a 1-sigma uncertainty for every flux and
position. On a simulated frame the truth is known, so the z-scores
``(measured - true) / sigma`` can be checked: for calibrated uncertainties
their standard deviation is 1 and 68 % of them lie within +-1. This example
measures it on one frame the network never saw (the numbers printed are this
run's, not quoted); the performance page does it on 60 frames per S/N bin.
"""

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import QTable

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_star_field
from asidfe_phot.visualization import plot_calibration

# %%
# A frame with known truths
# -------------------------
# 512x512 px, 900 Moffat stars (FWHM 3.5 px) over a sky of 300 electrons
# per pixel, gain 1.5 electrons per ADU, read noise 6 electrons. The input
# positions are the true ones off by 0.3 px, as a detector's would be, and
# only stars a detector would find (true S/N above 5) are measured.

image, truth, meta = make_star_field((512, 512), 900, psf={"family": "moffat", "fwhm": 3.5,
                                                           "beta": 2.5},
                                     flux_range=(500, 5e5), sky=300.0, gain=1.5,
                                     read_noise=6.0, border=16, seed=7)
noise_area = np.pi * 3.5**2
snr = truth["flux"] / np.sqrt(truth["flux"] / meta["gain"]
                              + noise_area * np.median(meta["noise"]) ** 2)
truth = truth[snr > 5]
rng = np.random.default_rng(2)
init = QTable({"id": truth["id"], "x": truth["x"] + rng.normal(0, 0.3, len(truth)),
               "y": truth["y"] + rng.normal(0, 0.3, len(truth))})

# %%
# Measure
# -------
# The sky is left in the image and the gain is given, so the network knows
# every pixel's noise, the stars' own Poisson noise included. The PSF is
# not given: ``psf_model="auto"`` (the default) builds one from the image's
# isolated stars, and its sigma calibration is the one for that mode.

phot = MLPhotometry(model="asidfe_tsmve_v5")
tbl = phot(image, init_params=init, gain=meta["gain"])
print(f"{len(tbl)} stars; PSF used: {tbl.meta['psf_used']}; "
      f"unflagged: {(tbl['flags'] == 0).sum()}")

# %%
# The z-scores
# ------------
# `~asidfe_phot.visualization.plot_calibration` draws the histograms of z
# against N(0, 1) and the coverage of central intervals against their
# nominal probability; it leaves flagged rows out.

tbl["x_true"] = truth["x"]
tbl["y_true"] = truth["y"]
tbl["flux_true"] = truth["flux"]
fig = plot_calibration(tbl, ["x_fit", "y_fit", "flux_fit"], ["x_true", "y_true", "flux_true"],
                       ["x_err", "y_err", "flux_err"], labels=["x", "y", "flux"],
                       fig=plt.figure(figsize=(11, 4.2)))
plt.show()

# %%
# The numbers behind the figure, per quantity and in two S/N ranges
# (unflagged rows). A z std below 1 (or more than 68 % within 1 sigma) means
# conservative sigmas, above 1 sigmas too small; a median z away from 0 is
# a bias of the values, not of the sigmas.

good = np.asarray(tbl["flags"] == 0)
snr_good = np.asarray(snr[snr > 5])
for name in ("x", "y", "flux"):
    z = np.asarray((tbl[f"{name}_fit"] - tbl[f"{name}_true"]) / tbl[f"{name}_err"])
    for label, sel in (("S/N 5-50", good & (snr_good < 50)), ("S/N > 50", good & (snr_good >= 50))):
        print(f"{name:4s} {label:9s} N = {sel.sum():4d}  z std {np.std(z[sel]):.2f}  "
              f"within 1 sigma {np.mean(np.abs(z[sel]) < 1):.2f}")
