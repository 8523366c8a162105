"""
Train the TS-MVE network (step 1: Huber on the means; step 2: Gaussian NLL on
both branches) or a plain MVE baseline member (NLL from scratch).

    python -m training.train --data runs/data_v1 --stage step1 --out runs/v3/step1 --samples 3e6
    python -m training.train --data runs/data_v1 --stage step2 --init runs/v3/step1/best.pt \
        --out runs/v3/step2 --samples 2e6

Resumable: rerunning the same command continues from ``OUT/last.pt``.
``--init`` starts from given weights (a checkpoint, or an exported model such as the shipped
``models/asidfe_tsmve_v5``) and ``--freeze`` holds layers fixed (transfer learning).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from asidfe_phot import _stamps
from asidfe_phot._progress import Progress

from .data import StampSet
from .model import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    N_CONVS,
    TSMVE,
    gaussian_nll,
    huber,
    robust_gaussian_nll,
    share_trunk,
    shared_convs_of,
    sigma_head_parameters,
    widen_inputs,
)

STAGES = ("step1", "step2", "mve")


def _metrics(outputs, targets, with_variance):
    n = targets.shape[1]
    err = outputs[:, :n] - targets
    out = {"mse": float((err**2).mean()), "mae": float(err.abs().mean()),
           "huber": float(huber(outputs, targets))}
    if with_variance:
        out["nll"] = float(gaussian_nll(outputs, targets))
    return out


def load_model(weights, device="cpu", in_channels=None, shared_convs=None):
    """
    A `TSMVE` with the given weights, in eval mode.

    ``in_channels``: build the network with this many inputs (default: as the
    weights have); more than the weights have widens them with zero weights
    (`widen_inputs`: a contract-2 model warm-starts a PSF-conditioned one).
    ``shared_convs``: the architecture to build (default: the weights'); a
    two-branch model asked for a shared trunk keeps its means exactly
    (`share_trunk`: the warm start of the faster architecture).

    ``weights``: a training checkpoint (``.pt``, as written by `train`), or
    an exported model (its ``model.onnx`` or model directory): the ONNX
    initializers carry the module's parameter names, so the shipped weights
    can be fine-tuned without the torch checkpoint they came from.
    """
    path = Path(weights)
    if path.is_dir():
        path = path / "model.onnx"
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(path)).graph
        state = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy())
                 for init in graph.initializer}
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    first = state.get("mean.convs.0.weight")
    # A state of another architecture keeps the default and fails in the strict load below.
    stored = (int(first.shape[1]) if first is not None and first.ndim == 4
              else _stamps.N_INPUT_CHANNELS)
    in_channels = stored if in_channels is None else int(in_channels)
    if in_channels > stored:
        state = widen_inputs(state, in_channels)
    # No variance-branch convolution at all: another architecture, for the strict load below.
    stored_shared = min(shared_convs_of(state), N_CONVS - 1)
    shared_convs = stored_shared if shared_convs is None else int(shared_convs)
    if shared_convs != stored_shared:
        state = share_trunk(state, shared_convs)
    model = TSMVE(in_channels=in_channels, shared_convs=shared_convs)
    # strict: a renamed or missing parameter must fail loudly, not start from random weights.
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device=device, memory_format=torch.channels_last)


def predict(model, dataset, batch_size=2048, limit=None, with_variance=True):
    """
    Raw outputs of ``model`` on (the first ``limit`` stamps of) a `StampSet`.

    Central crops, no augmentation. Returns torch tensors ``(outputs,
    targets)`` and the numpy flux units: outputs are (n, 6) (means, then
    log-variances) or, without variances, the mean branch's (n, 3) alone
    (half the cost).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = len(dataset) if limit is None else min(limit, len(dataset))
    forward = model if with_variance else model.mean
    outs, tgts, units = [], [], []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x, t, unit = dataset.batch(np.arange(start, min(start + batch_size, n)))
            x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            outs.append(forward(x).cpu())
            tgts.append(torch.from_numpy(t))
            units.append(unit)
    model.train(was_training)
    return torch.cat(outs), torch.cat(tgts), np.concatenate(units)


def evaluate(model, dataset, batch_size=1024, with_variance=True, limit=None):
    """Validation metrics over (up to ``limit`` of) ``dataset``, central crops, no augmentation."""
    outputs, targets, _ = predict(model, dataset, batch_size, limit, with_variance)
    return _metrics(outputs, targets, with_variance)


def _start_variances_at_residuals(model, val_set, n=8192):
    """Start step 2 with each log-variance at the step-1 residual variance of its target."""
    idx = np.arange(min(n, len(val_set)))
    x, t, _ = val_set.batch(idx)
    device = next(model.parameters()).device
    with torch.no_grad():
        mean = model.mean(torch.from_numpy(x).to(device)).cpu()
        var = ((mean - torch.from_numpy(t)) ** 2).mean(dim=0)
        for k, head in enumerate(model.logvar.heads):
            last_layer = head[-1]
            last_layer.weight.mul_(0.01)
            target = torch.log(var[k].clamp_min(1e-8))
            frac = (target - LOGVAR_MIN) / (LOGVAR_MAX - LOGVAR_MIN)
            last_layer.bias.fill_(float(torch.logit(frac.clamp(1e-4, 1 - 1e-4))))


def freeze(model, what):
    """Hold parts fixed: 'conv' (both branches' conv blocks) or 'mean' (the whole mean branch)."""
    for part in what:
        if part == "conv":
            params = list(model.mean.convs.parameters()) + list(model.logvar.convs.parameters())
        elif part == "mean":
            params = list(model.mean.parameters())
        else:
            msg = f"freeze: unknown part {part!r}; use 'conv' or 'mean'"
            raise ValueError(msg)
        for p in params:
            p.requires_grad_(False)


def train(data, stage, out, samples, *, init=None, freeze_parts=(), seed=0, batch_size=256,
          lr=1e-3, eval_every=250_000, val_limit=50_000, patience=8, train_limit=None,
          threads=None, device="cpu", checkpoint_seconds=300, max_steps=None,
          exclude_families=(), stop_after=None, mean_lr_factor=None, shared_convs=None,
          loss="nll", log=print):
    """Train one network; returns its history. See the module docstring."""
    if stage not in STAGES:
        msg = f"stage must be one of {STAGES}, got {stage!r}"
        raise ValueError(msg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_set = StampSet(data, "train", limit=train_limit, exclude_families=exclude_families)
    val_set = StampSet(data, "val", limit=val_limit, exclude_families=exclude_families)
    init_model = (load_model(init, in_channels=train_set.n_channels, shared_convs=shared_convs)
                  if init is not None else None)
    if shared_convs is None:
        shared_convs = init_model.shared_convs if init_model is not None else 0
    model = TSMVE(in_channels=train_set.n_channels, shared_convs=shared_convs).to(
        device=device, memory_format=torch.channels_last)
    init_stage = None
    if init is not None:
        model.load_state_dict(init_model.state_dict())
        # An exported model is a finished step 2; a checkpoint records its stage.
        init_stage = (torch.load(init, map_location="cpu", weights_only=True).get("stage")
                      if Path(init).suffix == ".pt" else "step2")
    freeze(model, freeze_parts)
    with_variance = stage != "step1"
    last = out / "last.pt"
    # Only a fresh step 2 on step-1 weights resets the variance heads; fine-tuning a
    # finished model (transfer learning) keeps its variances.
    if stage == "step2" and init_stage == "step1" and not last.exists():
        _start_variances_at_residuals(model, val_set)
    if stage == "step1":
        params = [p for p in model.mean.parameters() if p.requires_grad]
        groups = [{"params": params}]
    else:
        decayed = {id(p) for p in sigma_head_parameters(model)}
        mean_ids = {id(p) for p in model.mean.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        # Step 2 refines the step-1 means gently (a tenth of the rate), so the early,
        # still-wrong variances cannot undo them (the instability TS-MVE exists to avoid).
        # Continuing a finished step 2, whose variances are right, may use the full rate.
        if mean_lr_factor is None:
            mean_lr_factor = 0.1 if stage == "step2" else 1.0
        mean_lr = lr * mean_lr_factor
        groups = [{"params": [p for p in trainable if id(p) in mean_ids], "lr": mean_lr},
                  {"params": [p for p in trainable
                              if id(p) not in mean_ids and id(p) not in decayed]},
                  {"params": [p for p in trainable if id(p) in decayed], "weight_decay": 1e-3}]
        groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.Adam(groups, lr=lr)
    total_steps = max(1, int(samples) // batch_size)
    # stop_after ends the run early (as finished) while keeping the rate schedule of `samples`.
    last_step = total_steps if stop_after is None else min(total_steps,
                                                           max(1, int(stop_after) // batch_size))
    # Constant rate for 40 % of the budget, then exponential decay to a tenth.
    def rate(step):
        frac = step / total_steps
        return 1.0 if frac < 0.4 else math.exp(math.log(0.1) * (frac - 0.4) / 0.6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    state = {"step": 0, "history": [], "best": math.inf, "bad_evals": 0}
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        log(f"resumed at step {state['step']}")
    rng = np.random.default_rng(seed)
    if last.exists() and "rng" in ckpt:
        # Resuming continues the same batch sequence: interrupted = uninterrupted run.
        rng.bit_generator.state = ckpt["rng"]
    if loss not in ("nll", "robust_nll"):
        msg = f"loss must be 'nll' or 'robust_nll', got {loss!r}"
        raise ValueError(msg)
    # Step 1 is always Huber on the means; step 2 the Gaussian NLL, or its robust form
    # (`robust_gaussian_nll`) for sets made from real frames (training.tailor).
    loss_fn = (huber if not with_variance
               else robust_gaussian_nll if loss == "robust_nll" else gaussian_nll)
    # Step 1 trains the mean branch alone: running the variance branch would double the cost.
    forward = model if with_variance else model.mean
    steps_per_eval = max(1, eval_every // batch_size)
    model.train()
    t_last_ckpt = t0 = time.time()
    running = []

    def save(path):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "stage": stage,
                    "rng": rng.bit_generator.state}, path)

    # max_steps splits a long training into several runs (each resumes from last.pt).
    stop_at = last_step if max_steps is None else min(last_step, state["step"] + max_steps)
    progress = Progress(stop_at, f"train {stage}", unit="steps", log=log, initial=state["step"])
    while state["step"] < stop_at and state["bad_evals"] < patience:
        idx = rng.integers(0, len(train_set), batch_size)
        x, t, _ = train_set.batch(idx, rng)
        x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        outputs = forward(x)
        loss = loss_fn(outputs, torch.from_numpy(t).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        running.append(loss.item())
        progress.update(note=f"loss {running[-1]:.4g}")
        if state["step"] % steps_per_eval == 0 or state["step"] == last_step:
            metrics = evaluate(model, val_set, with_variance=with_variance)
            key = metrics["nll"] if with_variance else metrics["huber"]
            entry = {"step": state["step"], "samples": state["step"] * batch_size,
                     "train_loss": float(np.mean(running)), "lr": scheduler.get_last_lr()[0],
                     "seconds": time.time() - t0,
                     **{f"val_{k}": v for k, v in metrics.items()}}
            running = []
            state["history"].append(entry)
            if key < state["best"]:
                state["best"], state["bad_evals"] = key, 0
                torch.save({"model": model.state_dict(), "stage": stage}, out / "best.pt")
            else:
                state["bad_evals"] += 1
            (out / "history.json").write_text(json.dumps(state["history"], indent=1))
            log(json.dumps(entry))
            save(last)
            t_last_ckpt = time.time()
        elif time.time() - t_last_ckpt > checkpoint_seconds:
            save(last)
            t_last_ckpt = time.time()
    save(last)
    if state["step"] < last_step and state["bad_evals"] < patience:
        return state["history"]  # paused by max_steps: not done
    if not (out / "best.pt").exists():
        torch.save({"model": model.state_dict(), "stage": stage}, out / "best.pt")
    (out / "DONE").write_text(json.dumps({"step": state["step"], "best": state["best"]}))
    return state["history"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="data set folder; several, comma-separated, are mixed")
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=float, default=3e6, help="training budget in stamps")
    parser.add_argument("--init", default=None,
                        help="start from these weights: a checkpoint (.pt) or an exported "
                             "model (model.onnx or its directory)")
    parser.add_argument("--freeze", default="", help="comma-separated: conv, mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250_000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (never required)")
    parser.add_argument("--exclude-families", default="",
                        help="comma-separated PSF families to leave out (generalisation)")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="end (as finished) after this many samples, keeping the learning-"
                             "rate schedule of --samples")
    parser.add_argument("--mean-lr-factor", type=float, default=None,
                        help="rate of the mean branch relative to --lr in step 2 (default 0.1)")
    parser.add_argument("--shared-convs", type=int, default=None,
                        help="conv blocks the variance branch shares with the mean branch "
                             "(default: as --init, else 0)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps (resume later with the same command)")
    args = parser.parse_args(argv)
    train(args.data.split(","), args.stage, args.out, args.samples, init=args.init,
          freeze_parts=[p for p in args.freeze.split(",") if p], seed=args.seed,
          batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
          train_limit=args.train_limit, threads=args.threads, max_steps=args.max_steps,
          device=args.device, stop_after=args.stop_after, mean_lr_factor=args.mean_lr_factor,
          shared_convs=args.shared_convs,
          exclude_families=[f for f in args.exclude_families.split(",") if f])


if __name__ == "__main__":
    main()
