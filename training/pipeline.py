"""
Regenerate a shipped model from nothing, in one command:
simulate -> step 1 -> step 2 [-> step 2 restarted] [-> simulate broad PSFs -> step 2 on
both mixed] -> export -> flux-bias correction and sigma calibration -> ensemble baseline, all
recorded in the model card.

The test metrics are measured by the evaluation, which depends on this package and not
the other way round (``evaluation`` -> ``training`` -> ``asidfe_phot``)::

    python -m evaluation.synthetic --model DIR --data runs/v3/data --out runs/v3/evaluation \
        --write-card [--card-key test_metrics_broad --data runs/v3/data_broad ...]

    python -m training.pipeline --out runs/v4       # v4's recipe: runs/v4/model/asidfe_tsmve_v4
    python -m training.pipeline --quick --out /tmp/quick        # minutes, tiny data (CI)

The PSF-conditioned model (contract 3, the shipped v5) continues v4 (`PSF_STAGE`). v4 no
longer ships: pass its model directory (the run above, or restored from git history as
`models/CHANGELOG.md` says) with ``--init``:

    python -m training.pipeline --psf-stage --init runs/v4/model/asidfe_tsmve_v4 \
        --out runs/v5 --model-dir models/asidfe_tsmve_v5

Every stage is resumable: rerunning the command skips finished stages
(their ``DONE`` markers) and continues an interrupted training from its
last checkpoint. The shipped recipe is the default configuration below.
"""

import argparse
import json
import os
import time
from pathlib import Path

from . import export as export_mod
from . import simulate as simulate_mod
from . import train as train_mod

#: The recipe of the shipped model (recorded in its card).
FULL = {
    "preset": "generic", "n_frames": 3800, "seed": 1,
    "families": ["gaussian", "moffat", "double_gaussian"],
    "step1_samples": 900_000, "step2_samples": 1_000_000,
    # Step 2 stops at 750 k samples of its 1 M-sample rate schedule (the rate is not yet at
    # its floor there).
    "step2_stop_at": 750_000,
    # Step 2 again from those weights on a fresh rate schedule, the means at the full rate
    # (their variances are right by then), so the NLL weights the bright sources' means.
    "step2_restart_samples": 1_000_000, "step2_restart_lr": 5e-4,
    "step2_restart_mean_lr_factor": 1.0,
    # Step 2 once more on the generic data mixed with a second data set of broader PSF
    # shapes (undersampled, Airy with obstruction, beta down to 1.5, strong asymmetry), so the
    # model holds on PSFs beyond the generic families.
    "broad": {"preset": "broad", "n_frames": 1600, "seed": 2,
              "families": ["gaussian", "moffat", "double_gaussian", "airy"]},
    "step2_mixed_samples": 1_000_000, "step2_mixed_lr": 5e-4, "step2_mixed_mean_lr_factor": 1.0,
    # Equal-budget TS-MVE vs deep-ensemble comparison (smaller than the shipped run).
    "compare_samples": 100_000, "ensemble_members": 3,
    "eval_every": 250_000, "eval_frames": 60, "calibration_frames": 300, "bias_fields": 40,
    "eval_methods": "all",  # SourceExtractor ones skipped when the binaries are missing
}
QUICK = {
    "preset": "generic", "n_frames": 10, "seed": 1,
    "families": ["gaussian", "moffat", "double_gaussian"],
    "broad": {"preset": "broad", "n_frames": 10, "seed": 2,
              "families": ["gaussian", "moffat", "double_gaussian", "airy"]},
    "step1_samples": 2048, "step2_samples": 2048, "step2_restart_samples": 1024,
    "step2_mixed_samples": 1024,
    "compare_samples": 1024, "ensemble_members": 2,
    "eval_every": 1024, "eval_frames": 2, "calibration_frames": 2, "bias_fields": 2,
    "eval_methods": "ml,sep,aper",
}


#: The PSF-conditioned model (asidfe_tsmve_v5): v4's weights widened by a PSF input channel
#: with zero weights (so it starts as v4), then both TS-MVE steps on data sets that carry
#: each stamp's imperfect PSF (training.simulate.PSF_ERRORS), a quarter shown without it.
#: ``init`` names the parent model (recorded in the card as ``parent_model``); its weights
#: come from ``run_psf_stage(init=...)`` when it does not ship.
PSF_STAGE = {
    "init": "asidfe_tsmve_v4",
    "data": [{"preset": "generic", "n_frames": 1200, "seed": 11,
              "families": ["gaussian", "moffat", "double_gaussian"]},
             {"preset": "broad", "n_frames": 800, "seed": 12,
              "families": ["gaussian", "moffat", "double_gaussian", "airy"]}],
    "step1_samples": 800_000, "step1_lr": 5e-4, "step1_seed": 5,
    "step2_samples": 1_200_000, "step2_lr": 5e-4, "step2_seed": 6,
    "eval_every": 200_000, "calibration_frames": 150, "bias_fields": 20,
}
#: The faster shared-trunk model (asidfe_tsmve_v6, issue 16): v5's weights with the variance
#: branch reading the mean branch's features after two of its three conv blocks
#: (`training.model.TSMVE` ``shared_convs``), so the mean branch starts exactly as v5's;
#: then both TS-MVE steps on v5's data sets (same recipes and seeds): a short step 1
#: (Huber, means) and step 2 (NLL), whose variance blocks learn from the shared features.
FAST_STAGE = {
    **PSF_STAGE,
    "init": "asidfe_tsmve_v5", "shared_convs": 2,
    "step1_samples": 200_000, "step1_lr": 1e-4, "step1_seed": 7, "step1_presets": ["generic"],
    "step2_samples": 600_000, "step2_lr": 5e-4, "step2_seed": 8,
    # The int8 graph beside the fp32 one, kept usable only if it passes the parity check.
    "int8": {"calibration_stamps": 4096, "parity_stamps": 60_000},
}
QUICK_PSF_STAGE = {
    **PSF_STAGE,
    "data": [{**d, "n_frames": 6} for d in PSF_STAGE["data"]],
    "step1_samples": 1024, "step2_samples": 1024, "eval_every": 512,
    "calibration_frames": 2, "bias_fields": 2,
}
QUICK_FAST_STAGE = {**QUICK_PSF_STAGE, "init": "asidfe_tsmve_v5", "shared_convs": 2,
                    "int8": {"calibration_stamps": 256, "parity_stamps": 2000}}


def run_psf_stage(out, config, model_dir=None, name="asidfe_tsmve", version=5, log=print,
                  init=None):
    """
    The PSF-conditioned model from v4 (`PSF_STAGE`), or the shared-trunk one from
    v5 (`FAST_STAGE`), in one resumable command.

    ``init``: the parent's weights (a model directory, its ``model.onnx`` or a checkpoint);
    default: the shipped model that ``config["init"]`` names.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    t0 = time.time()
    def data_set(d):
        folder = out / f"data_{d['preset']}"
        if not (folder / "index.json").exists():
            log(f"== simulate ({d['preset']}, with PSF stamps)")
            simulate_mod.write_dataset(folder, d["n_frames"], d["preset"], d["seed"],
                                       families=d["families"], with_psf=True, log=log)
        return folder

    init = Path(init) if init is not None else _shipped_parent(config["init"])
    common = {"eval_every": config["eval_every"], "log": log,
              "shared_convs": config.get("shared_convs")}
    # Step 1 may use some of the data sets only (``step1_presets``): the mean branch's
    # short fine-tune can start while the others are still being simulated.
    step1_presets = config.get("step1_presets")
    step1_sets = [data_set(d) for d in config["data"]
                  if step1_presets is None or d["preset"] in step1_presets]
    if not _stage_done(out / "step1"):
        log(f"== step 1 (Huber, mean branch), from {config['init']}")
        train_mod.train(step1_sets, "step1", out / "step1", config["step1_samples"], init=init,
                        lr=config["step1_lr"], seed=config["step1_seed"], **common)
    data_sets = [data_set(d) for d in config["data"]]
    if not _stage_done(out / "step2"):
        log("== step 2 (Gaussian NLL, both branches)")
        train_mod.train(data_sets, "step2", out / "step2", config["step2_samples"],
                        init=out / "step1" / "best.pt", lr=config["step2_lr"],
                        seed=config["step2_seed"], **common)
    stages = {k: json.loads((out / k / "history.json").read_text()) for k in ("step1", "step2")
              if (out / k / "history.json").exists()}
    from . import curves

    curves.plot_curves(stages, out / "training_curves.png", consecutive=True,
                       title=f"{name}_v{version}: TS-MVE stages from {config['init']}")
    indexes = [json.loads((d / "index.json").read_text()) for d in data_sets]
    card_extra = {"training_data": [_recipe(i) | {"psf_errors": i.get("psf_errors")}
                                    for i in indexes],
                  "training_config": config, "history": stages,
                  "parent_model": config["init"]}
    model_dir = Path(model_dir) if model_dir else out / "model" / f"{name}_v{version}"
    log("== export")
    export_mod.export(out / "step2" / "best.pt", model_dir, name, version, card_extra)
    log("== calibrate (validation frames, without and with the PSF)")
    from . import calibrate as calibrate_mod

    calibrate_mod.calibrate(model_dir, data_sets, n_frames=config["calibration_frames"],
                            jobs=os.cpu_count(), log=log, bias_fields=config["bias_fields"],
                            with_psf=True)
    if config.get("int8"):
        from . import quantize as quantize_mod

        quantize_mod.quantize(model_dir, data_sets, config["int8"]["calibration_stamps"],
                              config["int8"]["parity_stamps"], log=log)
    log(f"== done in {time.time() - t0:.0f} s: {model_dir}")
    return export_mod.update_card(model_dir, {})


def _shipped_parent(name):
    """The directory of the shipped model ``name``, or a ModelError saying how to get it."""
    from asidfe_phot.exceptions import ModelError
    from asidfe_phot.models import model_path

    try:
        return model_path(name)
    except ModelError as exc:
        msg = (f"the PSF stage starts from {name}'s weights, which do not ship with this "
               "version: pass its model directory with --init (restore it from git history, "
               "see models/CHANGELOG.md, or train it with the FULL recipe)")
        raise ModelError(msg) from exc


def _recipe(index):
    """A data set's simulator recipe, counts and command, for the model card."""
    return ({k: index[k] for k in ("preset", "seed", "n_frames", "frame_shape", "families")}
            | {"counts": {s: v["count"] for s, v in index["splits"].items()},
               "command": f"python -m training.simulate --preset {index['preset']} "
                          f"--n-frames {index['n_frames']} --seed {index['seed']} "
                          f"--families {','.join(index['families'])} --out DIR"})


def _stage_done(path):
    return (Path(path) / "DONE").exists()


def run(out, config, model_dir=None, name="asidfe_tsmve", version=4, log=print):
    """Run the whole pipeline into ``out``; returns the model card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    data = out / "data"
    t0 = time.time()
    if not (data / "index.json").exists():
        log("== simulate")
        simulate_mod.write_dataset(data, config["n_frames"], config["preset"], config["seed"],
                                   families=config["families"], log=log)
    index = json.loads((data / "index.json").read_text())
    common = {"eval_every": config["eval_every"], "log": log}
    stages = {}
    if not _stage_done(out / "step1"):
        log("== step 1 (Huber, mean branch)")
        train_mod.train(data, "step1", out / "step1", config["step1_samples"], **common)
    if not _stage_done(out / "step2"):
        log("== step 2 (Gaussian NLL, both branches)")
        train_mod.train(data, "step2", out / "step2", config["step2_samples"],
                        init=out / "step1" / "best.pt",
                        stop_after=config.get("step2_stop_at"), **common)
    final = out / "step2"
    if config.get("step2_restart_samples"):
        # Step 2 again on a fresh rate schedule, from step 2's best weights.
        final = out / "step2_restart"
        if not _stage_done(final):
            log("== step 2, restarted on a fresh rate schedule")
            train_mod.train(data, "step2", final, config["step2_restart_samples"],
                            init=out / "step2" / "best.pt",
                            lr=config.get("step2_restart_lr", 1e-3),
                            mean_lr_factor=config.get("step2_restart_mean_lr_factor"),
                            stop_after=config.get("step2_restart_stop_at"), **common)
    broad = None
    if config.get("broad"):
        broad = out / "data_broad"
        if not (broad / "index.json").exists():
            log("== simulate (broad PSF shapes)")
            b = config["broad"]
            simulate_mod.write_dataset(broad, b["n_frames"], b["preset"], b["seed"],
                                       families=b["families"], log=log)
    if broad is not None and config.get("step2_mixed_samples"):
        previous, final = final, out / "step2_mixed"
        if not _stage_done(final):
            log("== step 2 on generic + broad PSF shapes mixed")
            train_mod.train([data, broad], "step2", final, config["step2_mixed_samples"],
                            init=previous / "best.pt", lr=config.get("step2_mixed_lr", 1e-3),
                            mean_lr_factor=config.get("step2_mixed_mean_lr_factor"),
                            **common)
    for stage in ("step1", "step2", "step2_restart", "step2_mixed"):
        if (out / stage / "history.json").exists():
            stages[stage] = json.loads((out / stage / "history.json").read_text())
    from . import curves

    curves.plot_curves(stages, out / "training_curves.png", consecutive=True,
                       title=f"{name}_v{version}: training stages")
    card_extra = {"training_data": _recipe(index), "training_config": config,
                  "history": stages}
    data_sets = [data]
    if broad is not None:
        card_extra["training_data_broad"] = _recipe(json.loads((broad / "index.json").read_text()))
        data_sets.append(broad)
    model_dir = Path(model_dir) if model_dir else out / "model" / f"{name}_v{version}"
    log("== export")
    card = export_mod.export(final / "best.pt", model_dir, name, version, card_extra)
    log("== calibrate sigmas (validation frames)")
    from . import calibrate as calibrate_mod

    calibrate_mod.calibrate(model_dir, data_sets, n_frames=config["calibration_frames"],
                            jobs=os.cpu_count(), log=log,
                            bias_fields=config.get("bias_fields", 0))
    # The baseline comparison comes last: the shipped model does not depend on it.
    log("== TS-MVE vs deep ensemble (equal, smaller budget)")
    comparison = compare_with_ensemble(data, out / "compare", config, log=log)
    card = export_mod.update_card(model_dir, {"ensemble_comparison": comparison})
    log(f"== done in {time.time() - t0:.0f} s: {model_dir}")
    return card


def compare_with_ensemble(data, out, config, log=print):
    """
    TS-MVE vs a deep ensemble of plain MVE networks at an equal, small budget.

    TS-MVE gets ``compare_samples`` in step 1 and again in step 2; each
    ensemble member gets twice ``compare_samples`` of NLL training from
    scratch (the same number of samples as the whole TS-MVE run). Validation
    MSE, MAE and NLL of the ensemble use the mixture mean and variance.
    """
    import torch

    from .data import StampSet
    from .model import gaussian_nll

    out = Path(out)
    b = config["compare_samples"]
    every = max(b // 2, 256)
    if not _stage_done(out / "step1"):
        train_mod.train(data, "step1", out / "step1", b, eval_every=every, log=log)
    if not _stage_done(out / "step2"):
        train_mod.train(data, "step2", out / "step2", b, init=out / "step1" / "best.pt",
                        eval_every=every, log=log)
    for k in range(config["ensemble_members"]):
        member = out / f"mve{k}"
        if not _stage_done(member):
            train_mod.train(data, "mve", member, 2 * b, seed=100 + k, eval_every=every, log=log)

    val = StampSet(data, "val", limit=50_000)

    def predict(path):
        return train_mod.predict(train_mod.load_model(path), val)[0]

    def scores(outputs):
        err = outputs[:, :3] - targets
        return {"mse": float((err**2).mean()), "mae": float(err.abs().mean()),
                "nll": float(gaussian_nll(outputs, targets))}

    ts, targets, _ = train_mod.predict(train_mod.load_model(out / "step2" / "best.pt"), val)
    members = [predict(out / f"mve{k}" / "best.pt") for k in range(config["ensemble_members"])]
    means = torch.stack([m[:, :3] for m in members])
    variances = torch.stack([torch.exp(m[:, 3:]) for m in members])
    mix_mean = means.mean(0)
    mix_var = (variances + means**2).mean(0) - mix_mean**2
    ensemble = torch.cat([mix_mean, torch.log(mix_var.clamp_min(1e-12))], dim=1)
    result = {"budget": {"tsmve_step1": b, "tsmve_step2": b, "ensemble_member": 2 * b,
                         "members": config["ensemble_members"]},
              "validation_stamps": len(val), "tsmve": scores(ts), "ensemble": scores(ensemble),
              "members": [scores(m) for m in members]}
    result["tsmve_wins"] = {k: result["tsmve"][k] < result["ensemble"][k]
                            for k in ("mse", "mae", "nll")}
    (out / "comparison.json").write_text(json.dumps(result, indent=2))
    from . import curves

    curves.plot_curves(curves.read_runs(out), out / "curves.png",
                       title="TS-MVE (step1, step2) and the MVE members (mve*)")
    log(json.dumps(result))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end run (minutes)")
    parser.add_argument("--preset", default=None, choices=sorted(simulate_mod.PRESETS))
    parser.add_argument("--families", default=None,
                        help="comma-separated PSF families (hold one out for generalisation)")
    parser.add_argument("--model-dir", default=None, help="where to write the exported model")
    parser.add_argument("--version", type=int, default=4)
    parser.add_argument("--psf-stage", action="store_true",
                        help="make the PSF-conditioned model from v4 (PSF_STAGE)")
    parser.add_argument("--init", default=None,
                        help="--psf-stage: the parent's model directory or checkpoint (v4, which "
                             "no longer ships: see models/CHANGELOG.md)")
    parser.add_argument("--fast-stage", action="store_true",
                        help="make the shared-trunk model from v5 (FAST_STAGE)")
    args = parser.parse_args(argv)
    if args.fast_stage:
        run_psf_stage(args.out, QUICK_FAST_STAGE if args.quick else FAST_STAGE, args.model_dir,
                      version=6 if args.version == 4 else args.version, init=args.init)
        return
    if args.psf_stage:
        run_psf_stage(args.out, QUICK_PSF_STAGE if args.quick else PSF_STAGE, args.model_dir,
                      version=5 if args.version == 4 else args.version, init=args.init)
        return
    config = dict(QUICK if args.quick else FULL)
    if args.preset:
        config["preset"] = args.preset
    if args.families:
        config["families"] = args.families.split(",")
    run(args.out, config, args.model_dir, version=args.version)


if __name__ == "__main__":
    main()
