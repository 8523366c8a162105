"""
Static int8 quantization of an exported model, kept only when its accuracy matches fp32.

    python -m training.quantize --model models/asidfe_tsmve_v6 \
        --data runs/v6/data_generic,runs/v6/data_broad

onnxruntime's static QDQ quantization (per-channel int8 weights, uint8 activations),
calibrated on validation stamps. The parity check runs the fp32 and int8 graphs on the
same held-out test stamps and compares, per true-S/N bin, the flux MARE and the z-score
std of x, y and flux; the int8 file is written beside ``model.onnx`` as ``model_int8.onnx``
and recorded in the card (``int8``) with its checksum and every bin's figures. A model whose
int8 graph misses the tolerance in any bin keeps the record (``passed: false``) so the
miss is visible, and the package never selects it.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from asidfe_phot.artificial_stars import SNR_BINS
from asidfe_phot.models import file_sha256

from .data import StampSet
from .export import INPUT_NAME, update_card

INT8_FILE = "model_int8.onnx"
#: Largest relative change of a bin's flux MARE or z-score std that int8 may make.
TOLERANCE = 0.02
#: Bins with fewer test stamps are reported but not judged (their figures are noise).
MIN_BIN_STAMPS = 300


class _Stamps:
    """onnxruntime's calibration reader: batches of validation stamps."""

    def __init__(self, inputs, batch=256):
        self._batches = iter([{INPUT_NAME: inputs[i:i + batch]}
                              for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self._batches, None)


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, inputs, chunk=1024):
    return np.concatenate([session.run(None, {INPUT_NAME: inputs[i:i + chunk]})[0]
                           for i in range(0, len(inputs), chunk)])


def quantize_graph(src, dst, calibration_inputs):
    """Write the int8 QDQ graph of ``src`` to ``dst``, calibrated on ``calibration_inputs``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Stamps, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(str(pre), str(dst), Reader(calibration_inputs),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def bin_figures(outputs, targets, snr):
    """Per S/N bin: flux MARE and the z-score std of x, y and flux (network target units)."""
    rows = []
    err = outputs[:, :3] - targets
    z = err / np.exp(0.5 * outputs[:, 3:])
    rel = np.abs(err[:, 2] / targets[:, 2])
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        sel = (snr >= lo) & (snr < hi)
        row = {"snr_lo": float(lo), "snr_hi": float(hi), "n": int(sel.sum())}
        if sel.any():
            row["flux_mare"] = float(np.mean(rel[sel]))
            row.update({f"{k}_zstd": float(np.std(z[sel, i]))
                        for i, k in enumerate(("x", "y", "flux"))})
        rows.append(row)
    return rows


def parity(fp32_rows, int8_rows, tolerance=TOLERANCE, min_stamps=MIN_BIN_STAMPS):
    """Relative changes per judged bin and whether all are within ``tolerance``."""
    changes = []
    for a, b in zip(fp32_rows, int8_rows):
        if a["n"] < min_stamps:
            continue
        change = {k: abs(b[k] / a[k] - 1) for k in ("flux_mare", "x_zstd", "y_zstd", "flux_zstd")}
        changes.append({"snr_lo": a["snr_lo"], "snr_hi": a["snr_hi"], **change})
    worst = max((max(v for k, v in c.items() if not k.startswith("snr")) for c in changes),
                default=None)
    return {"worst_relative_change": worst, "bins_judged": len(changes),
            "passed": worst is not None and bool(worst <= tolerance), "changes": changes}


def quantize(model_dir, data, n_calibration=4096, n_parity=60_000, tolerance=TOLERANCE,
             seed=0, log=print):
    """Quantize ``model_dir``'s network and record the parity check in its card."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / "config.json").read_text())
    channels = int(card["input"]["shape"][1])
    val = StampSet(data, "val", limit=max(n_calibration, 8192), n_channels=channels)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(val), size=min(n_calibration, len(val)), replace=False))
    calibration_inputs = val.batch(pick)[0]
    del val
    dst = model_dir / INT8_FILE
    log(f"== int8: calibrating on {len(pick)} validation stamps")
    quantize_graph(model_dir / card["file"], dst, calibration_inputs)
    test = StampSet(data, "test", limit=n_parity, n_channels=channels)
    inputs, targets, _ = test.batch(np.arange(len(test)))
    snr = np.asarray(test.meta["snr"], dtype=float)
    fp32 = bin_figures(_run(_session(model_dir / card["file"]), inputs), targets, snr)
    int8 = bin_figures(_run(_session(dst), inputs), targets, snr)
    verdict = parity(fp32, int8, tolerance)
    record = {"file": INT8_FILE, "sha256": file_sha256(dst),
              "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 "
                        f"activations, MinMax calibration on {len(pick)} validation stamps "
                        f"(seed {seed})",
              "parity_stamps": int(len(test)), "tolerance": tolerance,
              "min_bin_stamps": MIN_BIN_STAMPS, **verdict, "fp32_bins": fp32, "int8_bins": int8}
    update_card(model_dir, {"int8": record})
    log(f"== int8 parity: worst relative change {verdict['worst_relative_change']} over "
        f"{verdict['bins_judged']} bins -> {'passed' if verdict['passed'] else 'FAILED'}")
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json, model.onnx)")
    parser.add_argument("--data", required=True, help="data set folders, comma-separated")
    parser.add_argument("--calibration-stamps", type=int, default=4096)
    parser.add_argument("--parity-stamps", type=int, default=60_000)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    record = quantize(args.model, args.data.split(","), args.calibration_stamps,
                      args.parity_stamps, args.tolerance, args.seed)
    print(json.dumps({k: record[k] for k in ("sha256", "worst_relative_change", "passed")}))


if __name__ == "__main__":
    main()
