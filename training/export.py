"""
Export trained weights to ONNX with a model card (``config.json``) and check parity.

    python -m training.export --weights runs/v5/step2/best.pt \
        --out models/asidfe_tsmve_v5 --name asidfe_tsmve --version 5 \
        --card-extra runs/v5/card_extra.json
"""

import argparse
import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

from asidfe_phot import _stamps
from asidfe_phot.models import file_sha256

from .model import LOGVAR_MAX, LOGVAR_MIN, TSMVE, shared_convs_of

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "stamps", "outputs"


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _channels(model):
    return int(model.mean.convs[0].in_channels)


def export_onnx(model, path):
    """Write ``model`` as an opset-17 ONNX graph with a dynamic batch axis."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(2, _channels(model), _stamps.STAMP_SIZE, _stamps.STAMP_SIZE)
    # The legacy exporter is chosen on purpose: it writes a clean opset-17 graph, where
    # dynamo silently writes opset 18. Its deprecation notices (torch's own and those of
    # the TorchScript internals it calls) are expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(model, (dummy,), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _constant_pads(graph, name):
    """The pads of a Pad node whose pads input is a Constant (None if computed)."""
    import onnx

    for node in graph.node:
        if node.output[0] == name and node.op_type == "Constant":
            return onnx.numpy_helper.to_array(node.attribute[0].t).tolist()
    return None


def fuse_pad_into_conv(path):
    """
    Fold the explicit zero ``Pad`` before each ``Conv`` into the Conv's own ``pads``.

    ``F.pad`` (used because it trains faster on CPU than ``padding='same'``) exports
    as a Pad fed by a computed subgraph that onnxruntime cannot fuse, which costs
    several times the Conv itself. The Conv's asymmetric ``pads`` attribute does the
    same zero padding. Nodes left without consumers are removed.
    """
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    consumers = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    # The trace computes the pads; evaluate them once with onnxruntime's reference.
    import onnxruntime as ort

    pad_nodes = [n for n in graph.node if n.op_type == "Pad"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for n in pad_nodes:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(n.input[1],
                                                                     onnx.TensorProto.INT64,
                                                                     None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    dummy = np.zeros((1, _stamps.N_INPUT_CHANNELS, _stamps.STAMP_SIZE, _stamps.STAMP_SIZE),
                     np.float32)
    values = sess.run(None, {graph.input[0].name: dummy})
    for pad, pads in zip(pad_nodes, values):
        mode = next((onnx.helper.get_attribute_value(a) for a in pad.attribute
                     if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or not users or any(u.op_type != "Conv" for u in users):
            continue
        pads = [int(v) for v in pads]
        rank = len(pads) // 2
        if any(pads[:2]) or any(pads[rank:rank + 2]):  # padding of batch/channel axes
            continue
        spatial = pads[2:rank] + pads[rank + 2:]
        for conv in users:
            for attr in list(conv.attribute):
                if attr.name in ("pads", "auto_pad"):
                    conv.attribute.remove(attr)
            conv.attribute.append(onnx.helper.make_attribute("pads", spatial))
            conv.input[0] = pad.input[0]
    # Drop nodes that no longer feed an output.
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def parity(model, path, n=64, seed=0):
    """Max absolute and relative difference between torch and onnxruntime outputs."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, _channels(model), _stamps.STAMP_SIZE,
                          _stamps.STAMP_SIZE)).astype(np.float32)
    x[:, 0] += 3 * np.exp(-0.5 * ((np.arange(32) - 16) ** 2)[None, :] / 4)[None]
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: x})[0]
    diff = np.abs(got - ref)
    return {"max_abs_diff": float(diff.max()),
            "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-3)).max())}


def export(weights, out, name, version, card_extra=None):
    """Export ``weights`` into the model directory ``out``; returns the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state["model"] if "model" in state else state
    channels = int(state["mean.convs.0.weight"].shape[1])
    model = TSMVE(in_channels=channels, shared_convs=shared_convs_of(state))
    model.load_state_dict(state)
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path)
    fuse_pad_into_conv(onnx_path)
    check = parity(model, onnx_path)
    if check["max_rel_diff"] > 1e-4 and check["max_abs_diff"] > 1e-4:
        msg = f"ONNX parity check failed: {check}"
        raise RuntimeError(msg)
    card = {
        "name": name, "version": int(version), "file": "model.onnx",
        "sha256": file_sha256(onnx_path), "opset": OPSET,
        "input": {"name": INPUT_NAME, "shape": ["batch", channels,
                                                _stamps.STAMP_SIZE, _stamps.STAMP_SIZE]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 6]},
        "contract": _stamps.contract(channels),
        "logvar_bounds": [LOGVAR_MIN, LOGVAR_MAX],
        "architecture": {"conv_blocks": 3, "channels": 32, "kernel": 4,
                         "shared_convs": model.shared_convs},
        "parity": check,
        "training_commit": _git_commit(),
    }
    if card_extra:
        # Entries computed here (checksum, parity, contract) always win over stale ones.
        card.update({k: v for k, v in card_extra.items() if k not in card})
    (out / "config.json").write_text(json.dumps(card, indent=2, default=float) + "\n")
    return card


def update_card(model_dir, entries):
    """Merge ``entries`` into a model card (the sha256 is of model.onnx, so it stays valid)."""
    path = Path(model_dir) / "config.json"
    card = json.loads(path.read_text())
    card.update(entries)
    # Atomic: an interrupted update leaves the old card, never half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=float) + "\n")
    tmp.replace(path)
    return card


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="asidfe_tsmve")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--card-extra", default=None, help="JSON file merged into the card")
    parser.add_argument("--keep-card", action="store_true",
                        help="re-export: keep the recipe, history and metrics of OUT's card")
    args = parser.parse_args(argv)
    extra = json.loads(Path(args.card_extra).read_text()) if args.card_extra else {}
    if args.keep_card:
        extra = json.loads((Path(args.out) / "config.json").read_text()) | extra
    card = export(args.weights, args.out, args.name, args.version, extra)
    print(json.dumps({k: card[k] for k in ("name", "version", "sha256", "parity")}))


if __name__ == "__main__":
    main()
