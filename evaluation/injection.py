"""
Artificial-star injection benchmark on real frames: MLPhotometry against the true-PSF fit.

    python -m evaluation.injection --out runs/inject_real [--model DIR] [--frames ntt,m51,eyuma]
        [--n-stars N] [--seed S] [--psf none|auto|true] [--aperture-correction auto|on|off]
    python -m evaluation.injection --compare v4=runs/a,v5=runs/b --out table.rst

Stars of known PSF, flux and position are added to real frames (``shared/real``), which
keep their sky, noise, galaxies and neighbours. Per frame:

* PSF. ``ntt``: the constant component of its PSFEx model at 1/4 px (it fits the frame's
  SPREAD_MODEL stars as well as a Moffat does; FWHM 2.07 px). Others: a circular Moffat,
  the median of pixel-integrated fits to the bright, isolated, unsaturated stars (M51,
  eyuma, UKIDSS have 8, 13, 3: too few for `~photutils.psf.EPSFBuilder`). Clipped at 0
  and shifted so that its first moment is its centre; stamps are that
  `~photutils.psf.ImagePSF` at pixel centres (integer = pixel centre) normalised to 1.
  Truth: the injected total and the PSF's centroid (the first moment of the pixel values
  differs from it by aliasing: up to 0.02 px for ntt, 0.09 px for undersampled eyuma).
* Gain (e-/ADU), for the stars' Poisson noise and given to every method: header GAIN,
  else ``sky / rms**2`` where the sky is photon-limited (ntt), else assumed (``FRAMES``).
* Noise: pixel-to-pixel, from the Laplacian (``1.25 sigma**2`` for white noise) on a 32 px
  mesh; a mesh rms of the data is inflated by galaxies and nebulae (17 against 2 ADU on
  M51). S/N: optimal with the true PSF, ``sqrt(sum((F p)**2 / (sigma**2 + F p / gain)))``.
* Stars: S/N log-uniform in 3-3000 (flux solved from it), >= 20 px from the edges, >= 8 px
  apart, in ``--rounds`` independent rounds into the original frame so they crowd each
  other less than the frame does. Inputs: truth + N(0, 0.3 px) per axis. ``frame_snr``:
  S/N of the PSF-weighted signal the frame already had there; ``clean``: below 3.

Methods, at the same inputs: ``ml`` MLPhotometry (defaults, ``gain``); ``psf`` photutils
`~photutils.psf.PSFPhotometry` with the true PSF (fit box ~2.5 FWHM, x, y within 2 px,
errors from `~photutils.utils.calc_total_error`); ``aper`` a 1.5 FWHM aperture at sep's
windowed centroid, clipped annulus (3-5 FWHM) sky, divided by the true encircled energy;
``auto`` sep FLUX_AUTO of the detection within 2 px. The classical methods use the data
minus MLPhotometry's own mesh background.

Outputs in ``--out``: ``inject_results.ecsv`` (per star), ``inject_metrics.ecsv`` (per
frame, subset and S/N bin), ``inject_metrics.rst``, ``inject_metrics.png``. MARE: mean
``|f / f_true - 1|``; bias: median ``f / f_true - 1``; position MAE: mean ``|x - x_true|``
over x and y; z: ``(v - v_true) / v_err`` of MLPhotometry.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits
from astropy.stats import SigmaClip, gaussian_fwhm_to_sigma
from astropy.table import QTable, Table, vstack
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture
from photutils.aperture import aperture_photometry as aperture_sum
from photutils.background import Background2D
from photutils.detection import DAOStarFinder
from photutils.psf import ImagePSF, PSFPhotometry
from photutils.utils import calc_total_error
from scipy import ndimage
from scipy.optimize import least_squares

from asidfe_phot._progress import Progress
from asidfe_phot.background import estimate_background
from asidfe_phot.datasets import render_psf_stamps
from asidfe_phot.io import header_float, read_image
from evaluation import real_data_dir
from evaluation.baselines import _sep_flux_auto, segmentation_ids
from evaluation.metrics import bin_label, calibration, mae, mare, median_bias, snr_bins
from evaluation.reference_tools import true_image_psf
from evaluation.report import rst_text

REAL = real_data_dir()
#: file, HDU, FWHM guess (px), saturation (ADU, for the PSF stars), gain (None: header GAIN,
#: else sky / rms^2), PSF (a PSFEx file or 'moffat'), default stars (all rounds together).
FRAMES = {
    "ntt": {"file": "eso_ntt_emmi/galaxies.fits", "hdu": None, "fwhm": 2.6, "saturation": 5e4,
            "gain": None, "psf": "eso_ntt_emmi/galaxies_psfex_rerun.psf", "n_stars": 650},
    # No GAIN; bias-subtracted, read-noise dominated: sky / rms^2 (0.3) is meaningless. The
    # photon transfer of the pixel noise across M51 gives 4-11; 4 is assumed.
    "m51": {"file": "misc/iraf_devpix_m51_kpno_512x512.fits", "hdu": None, "fwhm": 3.0,
            "saturation": 1.9e4, "gain": 4.0, "psf": "moffat", "n_stars": 300},
    # No GAIN and a bias pedestal (sky / rms^2 = 430): 1.5 is assumed (a common CCD value).
    "eyuma": {"file": "misc/msum_0p4m_r_eyuma_256x256.fit.gz", "hdu": None, "fwhm": 1.3,
              "saturation": 6e4, "gain": 1.5, "psf": "moffat", "n_stars": 200},
    "ukidss": {"file": "misc/ukidss_wfcam_K_taurus_300x300.fits", "hdu": 1, "fwhm": 3.8,
               "saturation": 5e4, "gain": None, "psf": "moffat", "n_stars": 200},
}
SNR_RANGE = (3.0, 3000.0)
EDGE, MIN_SEP, POS_SCATTER = 20, 8.0, 0.3
OVERSAMPLING = 4
MAX_HALF = 15           # PSF stamps are at most 31 x 31 px (fits inside the 20 px edge)
METHODS = ("ml", "psf", "aper", "auto")


# --- the frame: noise, gain, PSF ------------------------------------------------------------

def pixel_noise(data, box=32):
    """Pixel-to-pixel noise map: clipped std of the Laplacian on a mesh, / sqrt(1.25)."""
    kernel = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]])
    lap = ndimage.convolve(np.asarray(data, dtype=np.float64), kernel, mode="reflect")
    bkg = Background2D(lap, box, filter_size=3, sigma_clip=SigmaClip(3.0))
    return np.asarray(bkg.background_rms / np.sqrt(1.25), dtype=np.float32)


def frame_gain(spec, data, header):
    if spec["gain"] is not None:
        return float(spec["gain"]), "assumed (see FRAMES)"
    gain = header_float(header, "GAIN")
    if gain is not None:
        return gain, "header GAIN"
    bkg, rms = estimate_background(data, None, 64)
    return float(np.median(bkg) / np.median(rms) ** 2), "sky / rms^2 (as MLPhotometry derives)"


def finish_psf(fine, o=OVERSAMPLING):
    """ImagePSF from an oversampled ePSF image: >= 0, first moment at its centre, sum o^2."""
    fine = np.clip(np.asarray(fine, dtype=np.float64), 0, None)
    yy, xx = np.indices(fine.shape)
    centre = (np.array(fine.shape) - 1) / 2
    for _ in range(4):
        moment = np.array([(fine * yy).sum(), (fine * xx).sum()]) / fine.sum() - centre
        fine = np.clip(ndimage.shift(fine, -moment, order=3, mode="constant"), 0, None)
    fine *= o**2 / fine.sum()
    fwhm = 2 * np.sqrt(np.count_nonzero(fine >= fine.max() / 2) / np.pi) / o
    return ImagePSF(fine, oversampling=o), float(fwhm)


def psfex_psf(path, o=OVERSAMPLING):
    """The constant PSFEx component (the PSF at the context's zero point) at 1/o px."""
    with fits.open(path) as hdul:
        comp = np.asarray(hdul[1].data["PSF_MASK"][0][0], dtype=np.float64)
        samp = float(hdul[1].header["PSF_SAMP"])
    c = comp.shape[0] // 2          # PSFEx's centre sample
    half = min(int(c * samp), MAX_HALF)
    u = np.arange(-half * o, half * o + 1) / o / samp + c
    # PSFEx models the pixel-convolved PSF: image pixels are interpolated, not integrated.
    fine = ndimage.map_coordinates(comp, np.meshgrid(u, u, indexing="ij"), order=3, mode="constant")
    return fine, f"PSFEx component 0 (PSF_SAMP {samp:.3f} px) resampled to 1/{o} px"


def psf_stars(sub, raw, rms, fwhm, saturation):
    """Bright (peak > 30 rms), unsaturated, isolated, not compact: DAOStarFinder positions."""
    cat = DAOStarFinder(threshold=5 * np.median(rms), fwhm=fwhm)(sub)
    xc, yc = ("x_centroid", "y_centroid") if "x_centroid" in cat.colnames else ("xcentroid",
                                                                                "ycentroid")
    x, y, f = (np.asarray(cat[c], dtype=float) for c in (xc, yc, "flux"))
    half = int(np.ceil(4 * fwhm))
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    # Isolated: no detection holding 2 % of its flux within 1.5 stamp half-widths.
    isolated = ~((d < 1.5 * half) & (f[None, :] > 0.02 * f[:, None])).any(axis=1)
    ny, nx = sub.shape
    inside = (x > half + 2) & (y > half + 2) & (x < nx - half - 3) & (y < ny - half - 3)
    xi, yi = np.clip(np.rint(x).astype(int), 2, nx - 3), np.clip(np.rint(y).astype(int), 2, ny - 3)
    peak = np.array([raw[b - 2:b + 3, a - 2:a + 3].max() for a, b in zip(xi, yi)])
    # Hot pixels and cosmic rays (eyuma has many): one pixel holding most of the 3x3 sum.
    box = np.array([sub[b - 1:b + 2, a - 1:a + 2] for a, b in zip(xi, yi)])
    compact = box.max(axis=(1, 2)) > 0.6 * box.sum(axis=(1, 2))
    ok = isolated & inside & ~compact & (peak < 0.7 * saturation) & (
        np.asarray(cat["peak"]) > 30 * np.median(rms))
    return x[ok], y[ok], 2 * half + 1


def moffat_psf(sub, x, y, size, fwhm):
    """Circular Moffat: median FWHM and beta of pixel-integrated fits to the stars."""
    h = size // 2
    fits_ = []
    for a, b in zip(x, y):
        ia, ib = int(round(a)), int(round(b))
        st = np.asarray(sub[ib - h:ib + h + 1, ia - h:ia + h + 1], dtype=np.float64)

        def resid(p, st=st):
            model = render_psf_stamps({"family": "moffat", "fwhm": p[3], "beta": p[4]}, p[1:2],
                                      p[2:3], half_size=h)[0][0]
            return (p[0] * model + p[5] - st).ravel()

        # Offsets within +-0.5 px keep the rendered stamp on the star's central pixel.
        start = [max(st.sum(), st.max()), *np.clip([a - ia, b - ib], -0.49, 0.49), fwhm, 3, 0]
        r = least_squares(resid, start,
                          bounds=([0, -0.499, -0.499, 0.3, 1.1, -np.inf],
                                  [np.inf, 0.499, 0.499, 5 * fwhm, 30, np.inf]))
        fits_.append(r.x[3:5])
    fw, beta = np.median(np.array(fits_), axis=0)
    params = {"family": "moffat", "fwhm": fw, "beta": beta, "truncation": MAX_HALF / fw}
    model = true_image_psf(params, oversampling=OVERSAMPLING, half_size=MAX_HALF)
    # Offset 0 is at index MAX_HALF * o: keep the symmetric part.
    n = 2 * MAX_HALF * OVERSAMPLING + 1
    return model.data[:n, :n], (f"Moffat fit (median of {len(fits_)} stars, pixel-integrated): "
                                f"FWHM {fw:.2f} px, beta {beta:.2f}")


def load_frame(name, cutout=None):
    """Data, noise map, gain and true PSF of one frame (``cutout``: numpy slices, for tests)."""
    spec = FRAMES[name]
    data, header, _ = read_image(REAL / spec["file"], spec["hdu"])
    gain, gain_note = frame_gain(spec, data, header)
    if cutout is not None:
        data = np.ascontiguousarray(data[cutout])
    bkg, rms = estimate_background(data, None, 64)
    if spec["psf"] == "moffat":
        x, y, size = psf_stars(data - bkg, data, rms, spec["fwhm"], spec["saturation"])
        fine, note = moffat_psf(data - bkg, x, y, size, spec["fwhm"])
    else:
        fine, note = psfex_psf(REAL / spec["psf"])
    psf, fwhm = finish_psf(fine)
    return {"name": name, "data": data, "noise": pixel_noise(data), "sub0": data - bkg,
            "gain": gain, "gain_note": gain_note, "psf": psf, "fwhm": fwhm, "psf_note": note,
            "half": (psf.data.shape[0] - 1) // (2 * OVERSAMPLING)}


# --- injection -------------------------------------------------------------------------------

def render(psf, x, y, half):
    """ImagePSF at the pixel centres around each star: stamps / sums, x0, y0, sums."""
    x0, y0 = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    g = np.arange(-half, half + 1)
    xx, yy = np.broadcast_arrays(x0[:, None, None] + g, y0[:, None, None] + g[:, None])
    st = psf.evaluate(xx, yy, 1.0, x[:, None, None], y[:, None, None])
    sums = st.sum(axis=(1, 2))
    return st / sums[:, None, None], x0, y0, sums


def cut(image, x0, y0, half):
    return np.stack([image[b - half:b + half + 1, a - half:a + half + 1] for a, b in zip(x0, y0)])


def snr_of(flux, p, var, gain):
    """Optimal S/N with the true PSF p (stamps summing to 1) and background variance var."""
    f = np.asarray(flux)[:, None, None]
    return np.sqrt(((f * p) ** 2 / (var + f * np.clip(p, 0, None) / gain)).sum(axis=(1, 2)))


def flux_for_snr(target, p, var, gain):
    """Flux reaching ``target`` S/N (monotonic in flux): bisection in log flux."""
    lo, hi = np.full(target.size, -6.0), np.full(target.size, 14.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        low = snr_of(10**mid, p, var, gain) < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return 10 ** ((lo + hi) / 2)


def positions(rng, shape, n):
    """n uniform positions >= EDGE px from the edges and >= MIN_SEP px apart."""
    xy = np.empty((0, 2))
    for _ in range(200 * n):
        new = rng.uniform(EDGE, np.array(shape[::-1]) - 1 - EDGE)
        if np.all(np.hypot(*(xy - new).T) >= MIN_SEP):
            xy = np.vstack([xy, new])
            if len(xy) == n:
                break
    return xy[:, 0], xy[:, 1]


def inject(frame, n, rng):
    """One round: the frame plus n noisy stars, and their truth table."""
    half, gain = frame["half"], frame["gain"]
    x, y = positions(rng, frame["data"].shape, n)
    p, x0, y0, _ = render(frame["psf"], x, y, half)
    var = cut(frame["noise"], x0, y0, half).astype(np.float64) ** 2
    target = np.exp(rng.uniform(*np.log(SNR_RANGE), x.size))
    flux = flux_for_snr(target, p, var, gain)
    counts = flux[:, None, None] * p
    pos = np.clip(counts, 0, None)
    noisy = counts + rng.poisson(pos * gain) / gain - pos
    image = np.array(frame["data"], dtype=np.float64)
    for s, a, b in zip(noisy, x0, y0):
        image[b - half:b + half + 1, a - half:a + half + 1] += s
    # The S/N of what the frame already holds at each position, for the same PSF.
    p2 = (p**2).sum(axis=(1, 2))
    amp = (p * cut(frame["sub0"], x0, y0, half)).sum(axis=(1, 2)) / p2
    amp_err = np.sqrt((p**2 * var).sum(axis=(1, 2))) / p2
    truth = Table({"x_true": x, "y_true": y, "flux_true": flux,
                   "snr_true": snr_of(flux, p, var, gain),
                   "x_in": x + rng.normal(0, POS_SCATTER, x.size),
                   "y_in": y + rng.normal(0, POS_SCATTER, x.size),
                   "frame_snr": amp / amp_err, "local_noise": np.sqrt(var.mean(axis=(1, 2)))})
    truth["clean"] = np.abs(truth["frame_snr"]) < 3
    return image.astype(np.float32), truth


# --- measuring -------------------------------------------------------------------------------

def measure(frame, image, truth, phot):
    """Every method at the input positions of ``truth``; one output row per star, in order."""
    xin, yin = np.asarray(truth["x_in"]), np.asarray(truth["y_in"])
    gain, fwhm, psf = frame["gain"], frame["fwhm"], frame["psf"]
    out = Table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = phot(image, init_params=Table({"x": xin, "y": yin}), gain=gain)
    for c in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "flags"):
        out[f"{c.replace('_fit', '')}_ml"] = np.asarray(ml[c])
    out.meta["ml_aperture_correction"] = ml.meta.get("aperture_correction")

    bkg, _ = estimate_background(image, None, 64)
    sub = np.ascontiguousarray(image - bkg, dtype=np.float64)
    noise = frame["noise"].astype(np.float64)
    error = calc_total_error(sub, noise, gain)
    fit_shape = max(5, 2 * int(round(1.25 * fwhm)) + 1)
    # Positions bounded to +-2 px (MLPhotometry's max_shift): unbounded faint fits on M51 and
    # the UKIDSS nebula wander off by up to hundreds of px.
    fitter = PSFPhotometry(psf, fit_shape, aperture_radius=1.5 * fwhm, xy_bounds=(2.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fitter(sub, error=error, init_params=Table({"x": xin, "y": yin}))
    res.sort("id")      # photutils ids are 1..n in input order
    xf, yf = np.asarray(res["x_fit"], dtype=float), np.asarray(res["y_fit"], dtype=float)
    # The fitted model's total counts on the pixel grid (the ImagePSF sums to 1 +- 1 %).
    ok = np.isfinite(xf) & np.isfinite(yf)
    sums = np.ones(xf.size)
    sums[ok] = render(psf, xf[ok], yf[ok], frame["half"])[3]
    for c, v in (("x", xf), ("y", yf), ("flux", np.asarray(res["flux_fit"]) * sums),
                 ("x_err", res["x_err"]), ("y_err", res["y_err"]),
                 ("flux_err", np.asarray(res["flux_err"]) * sums), ("flags", res["flags"])):
        out[f"{c}_psf"] = np.asarray(v)

    # Aperture at sep's windowed centroid (kept within 1 px of the input), true-PSF EE.
    xw, yw, wflag = sep.winpos(sub, xin, yin, fwhm * gaussian_fwhm_to_sigma)
    bad = (wflag != 0) | ~np.isfinite(xw) | (np.hypot(xw - xin, yw - yin) > 1.0)
    xw, yw = np.where(bad, xin, xw), np.where(bad, yin, yw)
    radius = 1.5 * fwhm
    apers = CircularAperture(np.column_stack([xw, yw]), radius)
    annulus = CircularAnnulus(np.column_stack([xw, yw]), 3 * fwhm, 5 * fwhm)
    sky = np.nan_to_num(ApertureStats(sub, annulus).median)
    tbl = aperture_sum(sub, apers, error=error)
    centred = render(psf, np.array([0.0]), np.array([0.0]), frame["half"])[0]
    h = frame["half"]
    ee = float(aperture_sum(centred[0], CircularAperture((h, h), radius))["aperture_sum"][0])
    out["x_aper"], out["y_aper"] = xw, yw
    out["flux_aper"] = (np.asarray(tbl["aperture_sum"]) - sky * apers.area) / ee
    out["flux_err_aper"] = np.asarray(tbl["aperture_sum_err"]) / ee

    sep.set_extract_pixstack(10_000_000)
    sep.set_sub_object_limit(4096)
    objects, segmap = sep.extract(sub.astype(np.float32), 1.5, err=frame["noise"],
                                  segmentation_map=True, minarea=5, deblend_cont=0.005)
    ids, dist = segmentation_ids(objects, xin, yin)
    found = dist < 2.0
    out["flux_auto"] = np.full(xin.size, np.nan)
    out["flux_err_auto"] = np.full(xin.size, np.nan)
    if found.any():
        f, e = _sep_flux_auto(sub, objects[ids[found] - 1], noise, gain, segmap, ids[found])
        out["flux_auto"][found], out["flux_err_auto"][found] = f, e
    return out


# --- metrics and outputs ---------------------------------------------------------------------

def bin_metrics(tbl, frame, subset):
    rows = []
    for lo, hi, in_bin in snr_bins(tbl["snr_true"]):
        b = tbl[in_bin]
        if not len(b):
            continue
        row = {"frame": frame, "subset": subset, "snr_bin": bin_label(lo, hi),
               "snr_lo": lo, "snr_hi": hi, "n": len(b)}
        for m in METHODS:
            row[f"mare_{m}"] = mare(b[f"flux_{m}"], b["flux_true"])
            row[f"bias_{m}"] = median_bias(b[f"flux_{m}"], b["flux_true"])
        row["found_auto"] = np.isfinite(b["flux_auto"]).mean()
        for m in ("ml", "psf"):
            row[f"pos_mae_{m}"] = mae(np.concatenate([b[f"x_{m}"] - b["x_true"],
                                                      b[f"y_{m}"] - b["y_true"]]))
        for q, true in (("flux", "flux_true"), ("x", "x_true")):
            cal = calibration(b[f"{q}_ml"] - b[true], b[f"{q}_err_ml"])
            row[f"zstd_{q}_ml"], row[f"cov68_{q}_ml"] = cal["zstd"], cal["cov68"]
        row["flagged_ml"] = np.mean(np.asarray(b["flags_ml"]) != 0)
        rows.append(row)
    return rows


def metrics(results):
    rows = []
    groups = [(f, results[results["frame"] == f]) for f in dict.fromkeys(results["frame"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # a method with no value in a bin
        for name, tbl in [*groups, ("all", results)]:
            rows += bin_metrics(tbl, name, "all")
            rows += bin_metrics(tbl[tbl["clean"]], name, "clean")
    return QTable(rows=rows)


RST_COLUMNS = (("frame", "{}"), ("subset", "{}"), ("snr_bin", "{}"), ("n", "{}"),
               *((f"mare_{m}", "{:.3f}") for m in METHODS),
               *((f"bias_{m}", "{:+.3f}") for m in METHODS),
               ("pos_mae_ml", "{:.3f}"), ("pos_mae_psf", "{:.3f}"),
               ("zstd_flux_ml", "{:.2f}"), ("cov68_flux_ml", "{:.2f}"),
               ("zstd_x_ml", "{:.2f}"), ("cov68_x_ml", "{:.2f}"), ("flagged_ml", "{:.2f}"),
               ("found_auto", "{:.2f}"))


def rst_table(met, info):
    lines = ["Artificial stars injected into real frames", "=" * 42, "",
             "``python -m evaluation.injection`` (definitions in its docstring). Per S/N bin "
             "of the true-PSF S/N: flux MARE and median bias of ml (MLPhotometry), psf (fit "
             "with the true PSF), aper (1.5 FWHM aperture), auto (sep FLUX_AUTO; found: "
             "fraction detected); position MAE (px); ml z-score std and 68 % coverage; "
             "fraction of ml rows flagged. Rows: each frame, then all frames for all stars "
             "and for the clean ones (no 3-sigma signal of the frame under the star).", "",
             *(f"* ``{k}``: {v}" for k, v in info.items()), ""]
    sel = met[(met["subset"] == "all") | (met["frame"] == "all")]
    body = [[fmt.format(row[c]) if fmt == "{}" or np.isfinite(row[c]) else "n/a"
             for c, fmt in RST_COLUMNS] for row in sel]
    header = [c for c, _ in RST_COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    rule = "  ".join("=" * w for w in widths)
    lines += [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
    return "\n".join([*lines, rule, ""])


def plot(met, path):
    import matplotlib

    matplotlib.use("agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6))
    ax1, ax2 = fig.subplots(1, 2)
    sel = met[met["subset"] == "all"]
    mid = np.sqrt(sel["snr_lo"] * np.minimum(sel["snr_hi"], 3 * sel["snr_lo"]))
    for j, f in enumerate(dict.fromkeys(sel["frame"])):
        t, every = sel["frame"] == f, f == "all"
        style = ({"lw": 2, "marker": "o"} if every else
                 {"lw": 0.8, "ls": (":", "--", "-.", (0, (6, 2, 1, 2, 1, 2)))[j % 4]})
        for k, m in enumerate(METHODS if every else ("ml",)):
            ax1.plot(mid[t], sel[f"mare_{m}"][t], color=f"C{k}", label=f"{m}, {f}", **style)
        for q, c in (("flux", "C0"), ("x", "C3")):
            ax2.plot(mid[t], sel[f"zstd_{q}_ml"][t], color=c, label=f"{q}, {f}", **style)
    ax2.axhline(1, color="k", lw=0.8)
    ax1.set(xscale="log", yscale="log", xlabel="true-PSF S/N", ylabel="flux MARE",
            title="injected stars: flux MARE (thin: ml per frame)")
    ax2.set(xscale="log", yscale="log", xlabel="true-PSF S/N", ylabel="z-score std",
            title="MLPhotometry: std of (value - truth) / err")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_frame(name, phot, n_stars, rounds, rng, cutout=None, log=print):
    """Inject ``n_stars`` into frame ``name`` in ``rounds`` rounds; per-star results."""
    frame = load_frame(name, cutout)
    log(f"{name}: gain {frame['gain']:.3g} ({frame['gain_note']}); PSF {frame['psf_note']}, "
        f"FWHM {frame['fwhm']:.2f} px; median pixel noise {np.median(frame['noise']):.3g}")
    tables = []
    progress = Progress(rounds, f"  {name} rounds", log=log, every=0)
    for k, n in enumerate(np.diff(np.linspace(0, n_stars, rounds + 1).round().astype(int))):
        image, truth = inject(frame, int(n), rng)
        res, n = measure(frame, image, truth, phot), len(truth)
        apcorr = res.meta["ml_aperture_correction"]
        tables.append(Table({"frame": [name] * n, "round": np.full(n, k),
                             "ml_aperture_correction": np.full(n, apcorr), **truth.columns,
                             **res.columns}))
        progress.update(note=f"{len(truth)} stars, ML aperture correction {apcorr:.4f}")
    out = vstack(tables)
    out["id"] = np.arange(1, len(out) + 1)
    info = {"gain": f"{frame['gain']:.4g} ({frame['gain_note']})", "psf": frame["psf_note"],
            "fwhm": round(frame["fwhm"], 3)}
    return out, info


def compare(runs, subset="all"):
    """
    One RST table of several runs side by side (e.g. v4 and v5, without and with a PSF).

    ``runs``: ``{label: output folder of a run}``. Per S/N bin over all frames: flux
    MARE, median flux ratio - 1, position MAE and flux / x z-score std of each run's
    ML, then the true-PSF fit and sep FLUX_AUTO of the first run (the same stars).
    """
    tables = {label: Table.read(Path(folder) / "inject_metrics.ecsv")
              for label, folder in runs.items()}
    first = next(iter(tables.values()))
    rows = first[(first["frame"] == "all") & (first["subset"] == subset)]
    head = ["S/N", "N"]
    for label in tables:
        head += [f"{label} MARE", f"{label} bias", f"{label} pos", f"{label} z f/x"]
    head += ["true-PSF MARE", "true-PSF pos", "FLUX_AUTO MARE"]
    body = []
    for row in rows:
        line = [row["snr_bin"], str(row["n"])]
        for tbl in tables.values():
            r = tbl[(tbl["frame"] == "all") & (tbl["subset"] == subset)
                    & (tbl["snr_bin"] == row["snr_bin"])][0]
            line += [f"{r['mare_ml']:.3f}", f"{r['bias_ml']:+.3f}", f"{r['pos_mae_ml']:.3f}",
                     f"{r['zstd_flux_ml']:.2f}/{r['zstd_x_ml']:.2f}"]
        line += [f"{row['mare_psf']:.3f}", f"{row['pos_mae_psf']:.3f}",
                 "n/a" if not np.isfinite(row["mare_auto"]) else f"{row['mare_auto']:.3f}"]
        body.append(line)
    return rst_text(head, body)


def main(argv=None):
    from asidfe_phot import MLPhotometry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="model name or directory (default: shipped)")
    parser.add_argument("--frames", default=",".join(FRAMES),
                        help=f"comma-separated, of {', '.join(FRAMES)}")
    parser.add_argument("--n-stars", type=int, default=None,
                        help="stars per frame, all rounds together (default: per frame)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="independent injections per frame (stars split among them)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compare", default=None,
                        help="LABEL=DIR,...: print the runs in DIRs side by side (RST) and exit")
    parser.add_argument("--subset", default="all", help="with --compare: all or clean")
    parser.add_argument("--psf", default="none",
                        help="MLPhotometry's psf_model: none, auto (built from each frame), or "
                             "true (the injected PSF)")
    parser.add_argument("--aperture-correction", default="auto",
                        help="MLPhotometry's aperture_correction: auto, on or off")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.compare:
        runs = dict(item.split("=", 1) for item in args.compare.split(","))
        text = compare(runs, args.subset)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
        return
    out.mkdir(parents=True, exist_ok=True)
    apcorr = {"auto": "auto", "on": True, "off": False}[args.aperture_correction]
    phot = MLPhotometry(model=args.model, threads=1, aperture_correction=apcorr,
                        psf_model=None if args.psf == "none" else "auto")
    phot_psf_mode = args.psf
    start = time.perf_counter()
    tables, info = [], {"model": f"{phot.model_card['name']}_v{phot.model_card['version']}",
                        "seed": args.seed, "psf_model": args.psf,
                        "aperture_correction": args.aperture_correction}
    for name in args.frames.split(","):
        # One generator per frame: a frame's stars do not depend on the other frames run.
        rng = np.random.default_rng([args.seed, list(FRAMES).index(name)])
        n = args.n_stars or FRAMES[name]["n_stars"]
        if phot_psf_mode == "true":
            phot = MLPhotometry(model=args.model, threads=1, aperture_correction=apcorr,
                                psf_model=load_frame(name)["psf"])
        tbl, finfo = run_frame(name, phot, n, args.rounds, rng)
        tables.append(tbl)
        info.update({f"{name} {k}": v for k, v in finfo.items()})
    results = vstack(tables, metadata_conflicts="silent")
    met = metrics(results)
    for tbl, fname in ((results, "inject_results.ecsv"), (met, "inject_metrics.ecsv")):
        tbl.meta.update(info)
        tbl.write(out / fname, overwrite=True)
    (out / "inject_metrics.rst").write_text(rst_table(met, info))
    plot(met, out / "inject_metrics.png")
    print((out / "inject_metrics.rst").read_text())
    print(f"{len(results)} stars in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
