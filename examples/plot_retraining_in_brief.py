"""
Retraining in brief
===================

The whole path from simulated frames to a model directory that
`~asidfe_phot.MLPhotometry` loads, in a few seconds: simulate a handful of
frames, fine-tune the shipped network's dense heads on them (its convolution
blocks held fixed, as in transfer learning), export it to ONNX with its card,
and measure an image with it. A real run uses the same functions with
thousands of frames and millions of samples (:doc:`/user_guide/retraining`);
this one is far too small to improve anything, and it is not meant to.

The training code lives in ``training/`` in the source repository, not in
the installed package, and needs PyTorch (the ``train`` extra): run this from
the root of a source checkout.
"""

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from asidfe_phot import MLPhotometry
from asidfe_phot.datasets import make_test_image
from asidfe_phot.models import model_path
from training import export, simulate, train

work = Path(tempfile.mkdtemp(prefix="asidfe_retrain_"))

# %%
# 1. Simulate
# -----------
# Four frames of the ``generic`` recipe (the shipped model's), split by frame
# into training, validation and test stamps; each stamp stores the detector's
# position, the truth and the PSF the network is told.

index = simulate.write_dataset(work / "data", 4, preset="generic", seed=3, processes=2,
                               log=lambda *args: None)
print({split: info["count"] for split, info in index["splits"].items()})

# %%
# 2. Fine-tune
# ------------
# Step 2 of TS-MVE (Gaussian negative log-likelihood, means and variances)
# started from the shipped model's weights, with the convolution blocks
# frozen, for 1024 samples.

history = train.train([work / "data"], "step2", work / "fine_tune", 1024,
                      init=model_path("asidfe_tsmve_v5"),
                      freeze_parts=("conv",), lr=2e-4, eval_every=256, val_limit=1000,
                      log=lambda *args: None)
for row in history:
    print(f"{row['samples']:5d} samples: validation NLL {row['val_nll']:.3f}, "
          f"MAE {row['val_mae']:.4f}")

# %%
# 3. Export
# ---------
# ONNX (opset 17) and the card (``config.json``: sha256, preprocessing
# contract, parity with PyTorch). The directory can be used at once. It has
# no sigma calibration yet: ``python -m training.calibrate`` fits one on
# validation frames, as for the shipped model.

model_dir = work / "my_tsmve_v1"
card = export.export(work / "fine_tune" / "best.pt", model_dir, "my_tsmve", 1)
print(f"{model_dir.name}: sha256 {card['sha256'][:12]}..., contract {card['contract']['version']}, "
      f"parity {card['parity']['max_abs_diff']:.1e}")

# %%
# 4. Use it
# ---------
# Both networks on the same small image, with the network alone
# (``psf_model=None``) and the raw sigmas of each (``sigma_calibration=False``)
# so that they compare like with like.

image, truth = make_test_image(shape=(128, 128), n_sources=20, seed=4)
results = {}
for label, model in (("shipped v5", "asidfe_tsmve_v5"), ("fine-tuned", model_dir)):
    phot = MLPhotometry(model=model, psf_model=None, sigma_calibration=False)
    results[label] = phot(image, init_params=truth, gain=2.0)

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
ax0.plot([r["samples"] for r in history], [r["val_nll"] for r in history], "o-")
ax0.set(xlabel="training samples", ylabel="validation NLL", title="fine-tuning")
flux = np.asarray(truth["flux"])
for label, tbl in results.items():
    ax1.plot(flux, np.asarray(tbl["flux_fit"]) / flux, "o", ms=4, label=label)
ax1.axhline(1, color="k", lw=0.8, ls="--")
ax1.set(xscale="log", xlabel="true flux (ADU)", ylabel="flux_fit / true", title="one image")
ax1.legend()
plt.show()
