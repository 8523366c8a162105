"""Batches of network inputs and targets from the sharded stamp data set."""

import json
from pathlib import Path

import numpy as np

from asidfe_phot import _stamps

_STORED = _stamps.STORED_STAMP_SIZE
_SIZE = _stamps.STAMP_SIZE
_PSF = _stamps.STORED_PSF_SIZE
#: Fraction of training stamps shown without their PSF, so one network serves both modes.
NO_PSF_FRACTION = 0.25


class StampSet:
    """
    One split of one or several data sets written by `training.simulate`, held in memory.

    Parameters
    ----------
    root : path or sequence of paths
        Data set directories (each with ``index.json``); several are concatenated
        (e.g. the generic recipe and one with broader PSF shapes).
    split : {'train', 'val', 'test'}
    limit : int, optional
        Use only the first ``limit`` stamps (quick runs, equal-budget comparisons),
        counted after the family filter; with several data sets, an equal share of
        each.
    exclude_families : sequence of str, optional
        Leave out the stamps of these PSF families (generalisation checks).
    n_channels : {3, 2}
        Input channels of the network (3: with the PSF channel, which needs data sets
        written with their PSF stamps; 2: contract-2 models).
    no_psf_fraction : float
        With augmentation, the fraction of stamps whose PSF channel is zeroed ("not
        known"). Without augmentation, stamps with an even index get their PSF and odd
        ones do not (see ``psf_mode`` of `batch`).
    """

    def __init__(self, root, split, limit=None, exclude_families=(),
                 n_channels=_stamps.N_INPUT_CHANNELS, no_psf_fraction=NO_PSF_FRACTION):
        from asidfe_phot.datasets import PSF_FAMILIES

        roots = [Path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]
        excluded = [PSF_FAMILIES.index(f) for f in exclude_families]
        share = None if limit is None else max(1, limit // len(roots))
        # Which rows of which shard, first; then one array filled in place (no second copy
        # of several GB from a concatenation).
        parts = []
        for r in roots:
            index = json.loads((r / "index.json").read_text())
            total = 0
            for name in index["splits"][split]["shards"]:
                if share is not None and total >= share:
                    break
                m = np.load(r / f"{name}.meta.npy")
                keep = np.flatnonzero(~np.isin(m["family"], excluded))
                if share is not None:
                    keep = keep[:share - total]
                parts.append((r / f"{name}.stamps.npy", m, keep))
                total += len(keep)
        n = sum(len(keep) for _, _, keep in parts)
        self.n_channels = int(n_channels)
        self.no_psf_fraction = float(no_psf_fraction)
        self.stamps = np.empty((n, _STORED, _STORED), np.float32)
        self.psf = np.empty((n, _PSF, _PSF), np.float32) if self.n_channels == 3 else None
        start = 0
        for path, m, keep in parts:
            s = np.load(path, mmap_mode="r")
            self.stamps[start:start + len(keep)] = s[keep] if len(keep) < len(m) else s
            if self.psf is not None:
                psf_path = Path(str(path).replace(".stamps.npy", ".psf.npy"))
                if not psf_path.exists():
                    msg = (f"{psf_path} is missing: a 3-channel network needs data sets "
                           "written with their PSF stamps (training.simulate without --no-psf)")
                    raise FileNotFoundError(msg)
                p = np.load(psf_path, mmap_mode="r")
                self.psf[start:start + len(keep)] = p[keep] if len(keep) < len(m) else p
            start += len(keep)
        self.meta = (np.concatenate([m[keep] for _, m, keep in parts]) if parts
                     else np.zeros(0))

    def __len__(self):
        return len(self.meta)

    def batch(self, idx, rng=None, psf_mode="alternate"):
        """
        Inputs and targets for stamps ``idx``.

        With ``rng``: random 32x32 crops of the 34x34 stamps and random flips /
        transposes (targets and PSF transformed alike), and the PSF channel zeroed
        for a random ``no_psf_fraction``. Without: the central crop, and the PSF
        as ``psf_mode`` says: ``"alternate"`` (even indices with, odd without),
        ``"with"`` or ``"without"``.

        Returns
        -------
        inputs : (n, n_channels, 32, 32) float32
        targets : (n, 3) float32
        scale : (n,) float64
        """
        n = len(idx)
        meta = self.meta[idx]
        if rng is None:
            cx = cy = np.ones(n, dtype=np.int64)
        else:
            cx, cy = rng.integers(0, _STORED - _SIZE + 1, (2, n))
        ar = np.arange(_SIZE)
        rows = (cy[:, None] + ar)[:, :, None]
        cols = (cx[:, None] + ar)[:, None, :]
        data = self.stamps[idx[:, None, None], rows, cols]
        psf = None
        if self.psf is not None:
            # The PSF is centred on the crop's reference pixel whatever the crop (the PSF
            # varies slowly): the odd-sized stored stamp keeps its centre under flips.
            psf = self.psf[idx]
        # Truth position in crop pixel-index coordinates.
        px = meta["true_dx"] + _STORED // 2 - cx
        py = meta["true_dy"] + _STORED // 2 - cy
        if rng is not None:
            flip_x, flip_y, swap = rng.integers(0, 2, (3, n)).astype(bool)
            data = np.where(flip_x[:, None, None], data[:, :, ::-1], data)
            px = np.where(flip_x, _SIZE - 1 - px, px)
            data = np.where(flip_y[:, None, None], data[:, ::-1, :], data)
            py = np.where(flip_y, _SIZE - 1 - py, py)
            data = np.where(swap[:, None, None], data.transpose(0, 2, 1), data)
            px, py = np.where(swap, py, px), np.where(swap, px, py)
            if psf is not None:
                psf = np.where(flip_x[:, None, None], psf[:, :, ::-1], psf)
                psf = np.where(flip_y[:, None, None], psf[:, ::-1, :], psf)
                psf = np.where(swap[:, None, None], psf.transpose(0, 2, 1), psf)
                drop = rng.uniform(size=n) < self.no_psf_fraction
        elif psf is not None:
            drop = {"alternate": idx % 2 == 1, "with": np.zeros(n, bool),
                    "without": np.ones(n, bool)}[psf_mode]
        if psf is not None:
            psf = np.where(drop[:, None, None], np.float32(0), psf[:, :_SIZE, :_SIZE])
        # The error map a user would pass: background rms plus the source's Poisson noise.
        error = _stamps.total_error(data, meta["rms"][:, None, None], meta["gain"][:, None, None])
        valid = np.ones(data.shape, dtype=bool)
        inputs, scale = _stamps.encode_inputs(data, error, valid, psf_stamps=psf,
                                              n_channels=self.n_channels)
        ref = _SIZE // 2
        targets = _stamps.encode_targets(px - ref, py - ref, meta["flux"], scale)
        return inputs, targets, scale
