"""
Replace aperture photometry on a real frame
===========================================

A typical photutils script, a background from
`~photutils.background.Background2D`, sources from
`~photutils.detection.DAOStarFinder` and fluxes from
`~photutils.aperture.aperture_photometry`, next to the same script with
`~asidfe_phot.MLPhotometry`, on the package's demo frame (a real ESO NTT
R-band image of 256x256 pixels, sky not subtracted).

Both methods measure the *same* background-subtracted image with the *same*
error map: the sky is subtracted once, by the script, and
`~asidfe_phot.MLPhotometry` is told so with ``background=0`` (without it, it
would estimate and subtract a background of its own from an image that has
none left).
"""

import matplotlib.pyplot as plt
import numpy as np
from astropy.visualization import simple_norm
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.background import Background2D
from photutils.detection import DAOStarFinder
from photutils.utils import calc_total_error

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import load_demo_image

data, header, _ = load_demo_image()

# %%
# The part both scripts share
# ---------------------------
# The file's sky has not been subtracted, so its level over its variance
# gives the effective gain (electrons per ADU), which the error map needs for
# the sources' own Poisson noise.

bkg = Background2D(data, 64)
data_sub = data - bkg.background
gain = np.median(bkg.background) / bkg.background_rms_median**2
error = calc_total_error(data_sub, bkg.background_rms, gain)

finder = DAOStarFinder(fwhm=3.0, threshold=5 * bkg.background_rms_median)
sources = finder(data_sub)
print(f"{len(sources)} sources found; effective gain {gain:.2f} e-/ADU")

# %%
# Before: apertures
# -----------------

positions = np.transpose([sources["x_centroid"], sources["y_centroid"]])
apertures = CircularAperture(positions, r=6.0)
ap_tbl = aperture_photometry(data_sub, apertures, error=error)

# %%
# After: the network
# ------------------
# The finder's table goes in as it is (``x_centroid``, ``y_centroid`` are
# among the position names photutils accepts). The network is chosen with
# ``model=``; every other option is a keyword too.

phot = MLPhotometry(model="asidfe_tsmve_v5")
tbl = phot(data_sub, init_params=sources, error=error, background=0)
for name in ("x_fit", "y_fit", "flux_fit", "flux_err"):
    tbl[name].info.format = ".2f"
print(tbl["id", "x_fit", "y_fit", "flux_fit", "flux_err", "flags"][:5])

# %%
# The two sets of fluxes
# ----------------------
# A 6 px aperture holds most, not all, of a star's light, and any
# neighbour's light that falls inside it; ``flux_fit`` is the network's
# estimate of the source's total flux. Most objects of this frame are
# galaxies: the network measures them as if they were point sources, which
# is what the flags (and the scatter at the faint end) say. ``flux_err`` is
# the uncertainty of the total flux, with the fitted centre and the
# neighbours in it, so it is larger than the aperture sum's pixel noise.

good = tbl["flags"] == 0
ratio = np.asarray(tbl["flux_fit"] / ap_tbl["aperture_sum"])
err_ratio = np.asarray(tbl["flux_err"] / ap_tbl["aperture_sum_err"])
print(f"unflagged rows: {good.sum()} of {len(tbl)}")
print(f"median flux_fit / aperture_sum (unflagged): {np.median(ratio[good]):.3f}")
print(f"median flux_err / aperture_sum_err (unflagged): {np.median(err_ratio[good]):.2f}")

fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 4.3), layout="constrained")
norm = simple_norm(data_sub, "asinh", vmin=-2 * bkg.background_rms_median,
                   vmax=np.percentile(data_sub, 99.8), asinh_a=0.05)
ax0.imshow(data_sub, origin="lower", cmap="Greys_r", norm=norm)
apertures.plot(ax=ax0, color="tab:orange", lw=0.8)
ax0.plot(tbl["x_fit"][good], tbl["y_fit"][good], "+", color="tab:blue", ms=6)
ax0.plot(tbl["x_fit"][~good], tbl["y_fit"][~good], "x", color="tab:red", ms=5)
ax0.set_title("apertures (orange), ML centres (+; x flagged)")

flux_ap = np.asarray(ap_tbl["aperture_sum"])
for sel, colour, label in ((good, "tab:blue", "flags == 0"), (~good, "tab:red", "flagged")):
    ax1.errorbar(flux_ap[sel], np.asarray(tbl["flux_fit"])[sel],
                 xerr=np.asarray(ap_tbl["aperture_sum_err"])[sel],
                 yerr=np.asarray(tbl["flux_err"])[sel], fmt="o", ms=3, color=colour,
                 label=label)
    ax2.plot(flux_ap[sel], ratio[sel], "o", ms=3, color=colour, label=label)
lims = np.array([np.nanmin(flux_ap[flux_ap > 0]), np.nanmax(flux_ap)])
ax1.plot(lims, lims, "k--", lw=0.8)
ax1.set(xscale="log", yscale="log", xlabel="aperture_sum, r = 6 px (ADU)",
        ylabel="flux_fit (ADU)", title="fluxes")
ax1.legend()
ax2.axhline(1, color="k", lw=0.8, ls="--")
ax2.set(xscale="log", ylim=(0, 3), xlabel="aperture_sum (ADU)",
        ylabel="flux_fit / aperture_sum", title="ratio")
plt.show()
