"""Tests of the mesh background estimator `asidfe_phot._background`."""

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.interpolate import RectBivariateSpline

from asidfe_phot import _background as bg
from asidfe_phot._background import estimate_background
from asidfe_phot.datasets import make_star_field


def sky_image(shape=(128, 128), level=500.0, slope=(0.25, -0.15), rms=10.0, seed=0):
    """Noisy sky: ``level`` plus a gradient (ADU/px; default ~6% and ~4% across 128 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    sky = level + slope[0] * xx + slope[1] * yy
    return (sky + rng.normal(0.0, rms, shape)).astype(np.float32), sky


def test_constant_plus_gradient():
    image, sky = sky_image()
    bkg, rms = estimate_background(image, box_size=32)
    assert bkg.shape == image.shape and rms.shape == image.shape
    assert bkg.dtype == np.float32 and rms.dtype == np.float32
    rel = np.abs(bkg - sky) / sky
    # The outer half-mesh is extrapolated flat and the 3x3 median filter biases edge meshes
    # of a gradient, so the worst pixels are off by ~2.5%; typical ones by ~0.3%.
    assert np.max(rel) < 0.03
    assert np.max(rel[16:-16, 16:-16]) < 0.015
    assert np.median(rel) < 0.005
    assert_allclose(np.median(rms), 10.0, rtol=0.03)
    assert np.all(np.abs(rms - 10.0) < 1.0)


def test_with_stars():
    image, truth, meta = make_star_field((128, 128), 25, flux_range=(500, 5e4), sky=300.0,
                                         sky_gradient=(0.1, -0.05), gain=1.0, read_noise=5.0,
                                         seed=5)
    bkg, rms = estimate_background(image, box_size=32)
    true_bkg = meta["background"]
    assert np.median(np.abs(bkg - true_bkg) / true_bkg) < 0.01
    assert np.max(np.abs(bkg - true_bkg)[16:-16, 16:-16] / true_bkg[16:-16, 16:-16]) < 0.02
    assert np.max(np.abs(bkg - true_bkg) / true_bkg) < 0.04
    assert_allclose(np.median(rms), np.sqrt(300.0 + 25.0), rtol=0.05)


def test_masked_pixels_ignored():
    image, sky = sky_image(seed=1)
    mask = np.zeros(image.shape, bool)
    mask[:64, :64] = True  # four whole meshes
    mask[100:110, 90:120] = True
    corrupted = image.copy()
    corrupted[mask] = 1e5
    corrupted[5, 5] = np.nan  # non-finite pixels are always ignored
    bkg, rms = estimate_background(corrupted, mask, box_size=32)
    assert np.all(np.isfinite(bkg)) and np.all(np.isfinite(rms))
    # Masked values do not matter at all ...
    clean_mask = mask.copy()
    clean_mask[5, 5] = True
    clean_bkg, clean_rms = estimate_background(image, clean_mask, box_size=32)
    np.testing.assert_array_equal(bkg, clean_bkg)
    np.testing.assert_array_equal(rms, clean_rms)
    # ... and the fully masked meshes take the global level (no gradient there).
    assert np.max(np.abs(bkg - sky) / sky) < 0.05
    assert np.all(np.abs(rms - 10.0) < 1.0)
    # Without the mask the corrupted block would dominate.
    bad_bkg, _ = estimate_background(np.nan_to_num(corrupted), box_size=32)
    assert np.max(np.abs(bad_bkg - sky) / sky) > 0.5


def test_fully_masked_mesh_takes_global_value():
    image, sky = sky_image(slope=(0.0, 0.0), seed=2)
    mask = np.zeros(image.shape, bool)
    mask[:32, :32] = True
    bkg, _ = estimate_background(image, mask, box_size=32)
    assert_allclose(bkg, 500.0, rtol=0.01)


def test_all_masked():
    image, _ = sky_image()
    with pytest.raises(ValueError, match="no usable pixels"):
        estimate_background(image, np.ones(image.shape, bool), box_size=32)
    with pytest.raises(ValueError, match="no usable pixels"):
        estimate_background(np.full((64, 64), np.nan), box_size=32)


@pytest.mark.parametrize("shape", [(64, 64), (40, 130), (130, 40), (100, 70)])
def test_shapes(shape):
    image, sky = sky_image(shape=shape, seed=3)
    bkg, rms = estimate_background(image, box_size=32)
    assert bkg.shape == shape and rms.shape == shape
    rel = np.abs(bkg - sky) / sky
    assert np.max(rel) < 0.04
    assert np.median(rel) < 0.01
    assert_allclose(np.median(rms), 10.0, rtol=0.06)


# The background is evaluated where it is used (stamps, pixels, samples), the mesh
# statistics a few mesh rows at a time. The training data were made with the mesh
# statistics below (the original implementation, kept here as the reference): they must not
# change.


def _reference_clipped_stats(samples, nsigma=3.0, maxiters=4):
    """The original `_clipped_stats` (one pass over all rows, float64 sort)."""
    s = np.sort(samples.astype(np.float64), axis=1)
    count = np.isfinite(s).sum(axis=1)
    rows = np.arange(s.shape[0])

    def quantile(q):
        return s[rows, np.clip(((count - 1) * q).astype(np.int64), 0, s.shape[1] - 1)]

    def median(s, lo, count):
        a = s[rows, np.clip(lo + (count - 1) // 2, 0, s.shape[1] - 1)]
        b = s[rows, np.clip(lo + count // 2, 0, s.shape[1] - 1)]
        return 0.5 * (a + b)

    centre = quantile(0.5)
    reach = 1e6 * (quantile(0.75) - quantile(0.25))
    with np.errstate(invalid="ignore"):
        far = (np.abs(s - centre[:, None]) > reach[:, None]) & (reach[:, None] > 0)
    if far.any():
        s = np.sort(np.where(far, np.nan, s), axis=1)
    s = s - np.where(np.isfinite(centre), centre, 0.0)[:, None]
    zero = np.nan_to_num(s)
    pad = np.zeros((s.shape[0], 1))
    cs = np.concatenate([pad, np.cumsum(zero, axis=1)], axis=1)
    cs2 = np.concatenate([pad, np.cumsum(zero**2, axis=1)], axis=1)
    lo = np.zeros(s.shape[0], dtype=np.int64)
    hi = np.isfinite(s).sum(axis=1)

    def stats(lo, hi):
        count = np.maximum(hi - lo, 1)
        mean = (cs[rows, hi] - cs[rows, lo]) / count
        var = np.maximum((cs2[rows, hi] - cs2[rows, lo]) / count - mean**2, 0.0)
        return median(s, lo, count), mean, np.sqrt(var)

    for _ in range(maxiters):
        med, _, std = stats(lo, hi)
        with np.errstate(invalid="ignore"):
            new_lo = (s < (med - nsigma * std)[:, None]).sum(axis=1)
            new_hi = (s <= (med + nsigma * std)[:, None]).sum(axis=1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, mean, std = stats(lo, hi)
    shift = np.where(np.isfinite(centre), centre, 0.0)
    med, mean = med + shift, mean + shift
    mode = 2.5 * med - 1.5 * mean
    return np.where(np.abs(mean - med) > 0.3 * std, med, mode), std


def _reference_meshes(data, mask, box, subsample=2):
    """The original mesh layout: the whole image padded with NaN, then cut into meshes."""
    data = np.asarray(data, dtype=np.float32)
    ny, nx = data.shape
    box = int(min(box, ny, nx))
    nby, nbx = -(-ny // box), -(-nx // box)
    padded = np.full((nby * box, nbx * box), np.nan, dtype=np.float32)
    padded[:ny, :nx] = data
    bad = ~np.isfinite(padded)
    if mask is not None:
        bad[:ny, :nx] |= mask
    padded[bad] = np.nan
    step = subsample if box >= 16 else 1
    meshes = padded.reshape(nby, box, nbx, box)[:, ::step, :, ::step]
    return meshes.transpose(0, 2, 1, 3).reshape(nby * nbx, -1), (nby, nbx)


def _hostile_image(shape=(150, 230), seed=4):
    """Noise with NaNs, infinities, int32 blank values, a huge block and masked pixels."""
    rng = np.random.default_rng(seed)
    image = (300 + rng.standard_cauchy(shape)).astype(np.float32)
    image[rng.random(shape) < 0.02] = np.nan
    image[5, 7] = np.inf
    image[::37, ::29] = -(2.0**31)
    image[60:70, 100:180] = 1e7
    image[:, 50] = np.round(image[:, 50])  # ties
    mask = rng.random(shape) < 0.05
    mask[:40, :40] = True
    return image, mask


def test_clipped_stats_are_unchanged():
    rng = np.random.default_rng(11)
    samples = rng.normal(300, 10, (700, 256)).astype(np.float32)
    samples[rng.random(samples.shape) < 0.1] = np.nan
    samples[::7, 3] = -(2.0**31)
    samples[::11, 5] = 1e30
    samples[::13, :200] = np.nan
    samples[::17] = np.round(samples[::17])
    samples[::19] = 0.0
    samples[::23, ::2] = -0.0
    new, reference = bg._clipped_stats(samples), _reference_clipped_stats(samples)
    np.testing.assert_array_equal(new[0], reference[0])
    np.testing.assert_array_equal(new[1], reference[1])


@pytest.mark.parametrize("box", [16, 31, 32, 64])
def test_mesh_statistics_are_unchanged(box, monkeypatch):
    image, mask = _hostile_image()
    monkeypatch.setattr(bg, "_BATCH_MESHES", 7)  # several strips and batches
    level, rms, used = bg.mesh_statistics(image, mask, box, filter_size=1)
    meshes, shape = _reference_meshes(image, mask, box)
    good = np.isfinite(meshes).sum(axis=1) >= max(10, meshes.shape[1] // 4)
    ref_level, ref_rms = np.full(good.size, np.nan), np.full(good.size, np.nan)
    ref_level[good], ref_rms[good] = _reference_clipped_stats(meshes[good])
    ref_level[~good], ref_rms[~good] = np.nanmedian(ref_level[good]), np.nanmedian(ref_rms[good])
    assert used == min(box, *image.shape)
    np.testing.assert_array_equal(level, ref_level.reshape(shape))
    np.testing.assert_array_equal(rms, ref_rms.reshape(shape))


@pytest.mark.parametrize("shape", [(150, 230), (40, 130), (130, 40), (20, 20)])
def test_the_map_is_fitpack_s_spline_everywhere_asked(shape):
    image, _ = sky_image(shape=shape, seed=6)
    level, _, box = bg.mesh_statistics(image, None, 32)
    background, _ = bg.mesh_maps(image, None, 32)
    whole = background.full()
    # The original evaluation: FITPACK on every pixel (np.interp for a mesh one wide).
    ny, nx = shape
    nby, nbx = level.shape
    yc, xc = (np.arange(nby) + 0.5) * box - 0.5, (np.arange(nbx) + 0.5) * box - 0.5
    if nby > 1 and nbx > 1:
        spline = RectBivariateSpline(yc, xc, level, kx=min(3, nby - 1), ky=min(3, nbx - 1))
        reference = spline(np.clip(np.arange(ny), yc[0], yc[-1]),
                           np.clip(np.arange(nx), xc[0], xc[-1]))
    elif nby > 1 or nbx > 1:
        along = np.interp(np.arange(max(ny, nx) if nby * nbx > 1 else 1),
                          yc if nby > 1 else xc, level.ravel())
        reference = np.broadcast_to(along[:, None] if nby > 1 else along[None, :], shape)
    else:
        reference = np.full(shape, level[0, 0])
    assert whole.dtype == np.float32
    assert_allclose(whole, reference.astype(np.float32), rtol=1e-6, atol=0)
    # Stamps (partly off the image: indices clipped as cutout_stamps does), pixels and
    # grids give the whole map's values.
    rng = np.random.default_rng(0)
    origin_y, origin_x = rng.integers(-5, ny, 30), rng.integers(-5, nx, 30)
    rows = np.clip(origin_y[:, None] + np.arange(9), 0, ny - 1)
    cols = np.clip(origin_x[:, None] + np.arange(11), 0, nx - 1)
    assert_allclose(background.stamps(rows, cols), whole[rows[:, :, None], cols[:, None, :]],
                    rtol=1e-6, atol=0)
    iy, ix = rng.integers(0, ny, 50), rng.integers(0, nx, 50)
    assert_allclose(background.at(iy, ix), whole[iy, ix], rtol=1e-6, atol=0)
    assert_allclose(background.grid(np.arange(1, ny, 3), np.arange(0, nx, 2)),
                    whole[1::3, ::2], rtol=1e-6, atol=0)
    for start in range(0, ny, 7):  # the low-pixel search's bound, per column (to rounding)
        bound = background.upper_bound(start, start + 7) * (1 + 1e-6)
        assert np.all(bound >= whole[start:start + 7].max(axis=0))


def test_the_prepared_image_is_not_copied(monkeypatch):
    """A float32 image is read in place; the background is never made whole for stamps."""
    import tracemalloc

    from asidfe_phot import _prepare
    from asidfe_phot._prepare import prepare
    from asidfe_phot._stamps import LazyImage, cutout_stamps
    from asidfe_phot._validation import coerce_data

    image, _ = sky_image(shape=(1024, 1024), seed=8)
    image[100, 200] = -1e6  # a dead pixel far below the sky
    # Fixed-size work arrays smaller than this small image's: the sigma clipping's batches,
    # the sample for the gain.
    monkeypatch.setattr(bg, "_BATCH_MESHES", 32)
    monkeypatch.setattr(_prepare, "GAIN_SAMPLE", 2**16)
    coerced = coerce_data(image, None, None, None)
    tracemalloc.start()
    prepared, info = prepare(coerced, None, None, None, 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.shares_memory(prepared.raw, image)
    # Its bad-pixel map (a byte a pixel) and samples; the original made ~6 float32 copies.
    assert peak < 0.75 * image.nbytes
    assert info["low_bad_pixels"] == 1 and prepared.bad[100, 200]
    # Stamps of the background-subtracted image, without the whole of it.
    view = prepared.stamp_view()
    assert isinstance(view.subtracted, LazyImage) and isinstance(view.rms, LazyImage)
    x, y = np.array([3.2, 200.0, 512.7, 1020.1]), np.array([1.0, 100.4, 600.0, 1015.5])
    stamps, inside = cutout_stamps(view.subtracted, x, y)
    rms, _ = cutout_stamps(view.rms, x, y, fill=1.0)
    assert prepared._subtracted is None
    assert_allclose(stamps, cutout_stamps(prepared.subtracted, x, y)[0], rtol=1e-6,
                    atol=1e-4)
    assert_allclose(rms, cutout_stamps(prepared.rms, x, y, fill=1.0)[0], rtol=1e-6, atol=0)
    assert stamps[1, 16, 16] == 0  # the dead pixel: bad, 0 in the subtracted image
    assert_allclose(prepared.background_at(x, y),
                    prepared.background[np.round(y).astype(int), np.round(x).astype(int)])


def test_low_pixels_are_found_without_the_whole_map():
    """The pixels far below the sky, found by bounds and a few evaluations, as on the map."""
    from asidfe_phot._prepare import _low_pixels

    image, _ = sky_image(shape=(300, 400), slope=(2.0, -1.5), seed=9)  # a steep sky
    rng = np.random.default_rng(9)
    dips = rng.random(image.shape) < 0.3  # pixels 0 to 200 below the sky (rms 10)
    image[dips] -= rng.uniform(0, 200, np.count_nonzero(dips)).astype(np.float32)
    bad = rng.random(image.shape) < 0.01
    background, _ = bg.mesh_maps(image, bad, 32)
    for threshold in (-100.0, -30.0, -1.0):
        rows, cols = _low_pixels(image, background, bad, threshold)
        expected = ((image - background.full()) < threshold) & ~bad
        assert 0 < rows.size < image.size
        found = np.zeros(image.shape, bool)
        found[rows, cols] = True
        np.testing.assert_array_equal(found, expected)


def test_an_image_without_bad_pixels_gets_no_mask(monkeypatch):
    """No bad pixel: no whole-image mask is made (a byte a pixel); one NaN: it is found."""
    import tracemalloc

    from asidfe_phot import _prepare
    from asidfe_phot._prepare import prepare
    from asidfe_phot._validation import coerce_data

    image, _ = sky_image(shape=(1024, 1024), seed=12)
    monkeypatch.setattr(bg, "_BATCH_MESHES", 8)  # small work arrays
    monkeypatch.setattr(_prepare, "GAIN_SAMPLE", 2**16)
    with_nan = image.copy()
    with_nan[700, 3] = np.nan
    peaks, results = [], []
    for data in (image, with_nan):
        coerced = coerce_data(data, None, None, None)
        tracemalloc.start()
        results.append(prepare(coerced, None, None, None, 64))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    (clean, info), (holed, _) = results
    assert clean.bad is None and "low_bad_pixels" not in info
    assert np.array_equal(np.argwhere(holed.bad), [[700, 3]])
    assert peaks[1] - peaks[0] > 0.9 * image.size  # the mask, made only when needed


def test_threads_do_not_change_the_numbers(monkeypatch):
    """Strips and tiles measured side by side give the same numbers, bit for bit."""
    monkeypatch.setattr(bg, "_BATCH_MESHES", 16)  # several strips of mesh rows
    image, _ = sky_image(shape=(300, 520), seed=13)
    image[40:90, 100:130] = np.nan
    from asidfe_phot._prepare import _low_pixels, _nonfinite

    one = bg.mesh_statistics(image, box_size=32, threads=1)
    background, _ = bg.mesh_maps(image, None, 32)
    low = _low_pixels(image, background, None, -5.0, threads=1)
    assert 0 < low[0].size < image.size / 2
    for threads in (3, None):
        many = bg.mesh_statistics(image, box_size=32, threads=threads)
        np.testing.assert_array_equal(many[0], one[0])
        np.testing.assert_array_equal(many[1], one[1])
        np.testing.assert_array_equal(_low_pixels(image, background, None, -5.0, threads), low)
        np.testing.assert_array_equal(_nonfinite(image, threads), ~np.isfinite(image))
