"""
A batch of frames with one instance
===================================

`~asidfe_phot.MLPhotometry` loads and checks the network once, when it is
made, and keeps nothing from one call to the next: one instance measures
any number of frames, in a loop or from several threads. This example
measures six simulated frames of one night (the seeing changes from frame
to frame) and stacks the results into one table.
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import QTable, vstack

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_star_field

# %%
# The frames
# ----------
# 320x320 px each, 200 stars, seeing from 2.5 to 4.5 px FWHM; each comes
# with its catalogue (true positions off by 0.3 px).

rng = np.random.default_rng(0)
frames = []
for k, fwhm in enumerate(np.linspace(2.5, 4.5, 6)):
    image, truth, meta = make_star_field((320, 320), 200,
                                         psf={"family": "moffat", "fwhm": fwhm, "beta": 3.0},
                                         flux_range=(1e3, 3e5), sky=250.0, gain=2.0,
                                         read_noise=5.0, border=16, seed=10 + k)
    init = QTable({"id": truth["id"], "x": truth["x"] + rng.normal(0, 0.3, len(truth)),
                   "y": truth["y"] + rng.normal(0, 0.3, len(truth))})
    frames.append((f"frame_{k}", fwhm, image, init, truth))

# %%
# One instance, many calls
# ------------------------
# The instance is made once (the ONNX session is the costly part); each call
# gets its frame, catalogue and gain. The default ``psf_model="auto"``
# builds each frame's ePSF from that frame's own isolated stars (and
# quietly measures a frame with fewer than 10 of them with the network
# alone: ``meta["psf_used"]`` says which).

t0 = time.perf_counter()
phot = MLPhotometry(model="asidfe_tsmve_v5")
print(f"instance made in {time.perf_counter() - t0:.2f} s: {phot!r}")

tables, seconds = [], []
for name, fwhm, image, init, truth in frames:
    t0 = time.perf_counter()
    tbl = phot(image, init_params=init, gain=2.0)
    seconds.append(time.perf_counter() - t0)
    tbl["frame"] = name
    tbl["flux_true"] = truth["flux"]
    tables.append(tbl)
    print(f"{name}: FWHM {fwhm:.1f} px, {len(tbl)} sources in {seconds[-1]:.2f} s, "
          f"ePSF used: {tbl.meta['psf_used']}")

# The frames' meta (dates, PSF stars...) differ; the stacked table keeps the first's.
catalogue = vstack(tables, metadata_conflicts="silent")
print(f"{len(catalogue)} rows from {len(frames)} frames, "
      f"{len(catalogue) / sum(seconds):.0f} sources/s")

# %%
# Per frame, the median relative flux error of the unflagged stars brighter
# than 10,000 ADU and their flux z-score spread (1 for calibrated sigmas,
# below 1 for conservative ones; :doc:`/performance` has it per S/N bin on
# many frames):

names = [f[0] for f in frames]
fwhms = [f[1] for f in frames]
mare, zstd = [], []
for name in names:
    rows = catalogue[(catalogue["frame"] == name) & (catalogue["flags"] == 0)
                     & (catalogue["flux_true"] > 1e4)]
    rel = np.asarray(rows["flux_fit"] / rows["flux_true"] - 1)
    mare.append(np.median(np.abs(rel)))
    zstd.append(np.std(np.asarray((rows["flux_fit"] - rows["flux_true"]) / rows["flux_err"])))

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
ax0.plot(fwhms, mare, "o-")
ax0.set(xlabel="seeing FWHM (px)", ylabel="median |flux_fit / true - 1|",
        title="flux error per frame")
ax1.plot(fwhms, zstd, "o-")
ax1.axhline(1, color="k", ls="--", lw=0.8)
ax1.set(xlabel="seeing FWHM (px)", ylabel="std of flux z-scores", title="calibration per frame")
plt.show()

# %%
# Many frames, many cores
# -----------------------
# The network uses all cores by default. To spread frames over processes
# instead (one frame per process), make one instance per process with
# ``threads=1`` so the processes do not compete for the cores. A batch mode
# that hands frames to Dask workers is planned; this loop is what to use
# until then.
