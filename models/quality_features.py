"""Interpretable image-quality statistics: the input of the `lite-quality` aesthetic scorer.

Two views of each image:
* an *analysis* view resized to a 256-px short side (so a small or upscaled image shows its lost detail,
  and statistics compare across image sizes): natural-scene statistics (BRISQUE's MSCN coefficients and
  their neighbour products, at two scales), sharpness, noise, exposure, contrast, colour, haze, vignetting;
* a *native* centre crop (at most 320 px, on the 8-px grid) where pixel-level traces survive: JPEG
  blockiness, flat runs and missing grey levels (posterisation, palettes, pixelation), impulse noise.

Distortions move natural-scene statistics in characteristic ways (blur makes MSCN coefficients peakier,
noise makes them Gaussian, ...), which is why a ranker on them carries over to distortions it never saw.
About 4 ms per image on one core.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 256    # short side of the analysis view
MAX_LONG_SIDE = 320    # longer analysis views are squeezed to this (bounds the cost)
NATIVE_CROP = 320      # native-resolution crop side (a multiple of 8: keeps the JPEG grid)
EPS = 1e-6

# ---------------------------------------------------------------- generalised Gaussian fits (BRISQUE)
_ALPHAS = np.arange(0.2, 10.0, 0.001)
_G1, _G2, _G3 = (np.array([math.gamma(k / a) for a in _ALPHAS]) for k in (1, 2, 3))
_GGD_RATIO = _G1 * _G3 / _G2**2          # E[x^2] / E[|x|]^2 as a function of the shape; decreasing
_AGGD_RATIO = _G2**2 / (_G1 * _G3)       # its inverse, for the asymmetric fit; increasing


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """Shape and variance of a zero-mean generalised Gaussian, by moment matching."""
    m2, m1 = float(np.mean(x * x)), float(np.mean(np.abs(x)))
    rho = m2 / max(m1 * m1, EPS)
    i = int(np.clip(np.searchsorted(-_GGD_RATIO, -rho), 0, len(_ALPHAS) - 1))
    return float(_ALPHAS[i]), m2


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian: (shape, mean, left variance, right variance)."""
    x2 = x * x
    n_left, n_right = int(np.count_nonzero(x < 0)), int(np.count_nonzero(x > 0))
    sum_right = float(np.sum(x2, where=x > 0))
    sl = math.sqrt((float(x2.sum()) - sum_right) / n_left) if n_left else EPS
    sr = math.sqrt(sum_right / n_right) if n_right else EPS
    g = sl / max(sr, EPS)
    r = float(np.mean(np.abs(x))) ** 2 / max(float(x2.mean()), EPS)
    big_r = r * (g**3 + 1) * (g + 1) / (g * g + 1) ** 2
    i = int(np.clip(np.searchsorted(_AGGD_RATIO, big_r), 0, len(_ALPHAS) - 1))
    eta = (sr - sl) * _G2[i] / _G1[i] * math.sqrt(_G1[i] / _G3[i])
    return float(_ALPHAS[i]), float(eta), sl * sl, sr * sr


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap binomial filter (a Gaussian of sigma 1), edges reflected; cheaper than scipy's."""
    p = np.pad(x, 2, mode="reflect")
    p = p[:-4] + 4 * p[1:-3] + 6 * p[2:-2] + 4 * p[3:-1] + p[4:]
    return (p[:, :-4] + 4 * p[:, 1:-3] + 6 * p[:, 2:-2] + 4 * p[:, 3:-1] + p[:, 4:]) * (1 / 256)


def _mscn(g: np.ndarray) -> np.ndarray:
    """Mean-subtracted, contrast-normalised coefficients of grey 0..1 (BRISQUE, with a sigma-1 window)."""
    mu = _blur(g)
    sigma = np.sqrt(np.abs(_blur(g * g) - mu * mu))
    return (g - mu) / (sigma + 1 / 255)


def _nss(g: np.ndarray) -> list[float]:
    """10 BRISQUE features of one scale: MSCN shape and variance, AGGD fits of horizontal/vertical products."""
    m = _mscn(g)
    out = list(ggd_fit(m))
    for a, b in ((m[:, :-1], m[:, 1:]), (m[:-1], m[1:])):  # (diagonal neighbours add little, cost as much)
        out += aggd_fit((a * b).ravel())
    return out


# ---------------------------------------------------------------- the two views
def analysis_view(image: Image.Image) -> np.ndarray:
    """The whole frame as (3, H, W) float32 planes 0..1: short side ANALYSIS_SIDE, the long side squeezed
    to at most MAX_LONG_SIDE (a 3:2 photo by 0.83; cropping instead would lose the corners)."""
    w, h = image.size
    s = ANALYSIS_SIDE / min(w, h)
    size = (min(MAX_LONG_SIDE, max(ANALYSIS_SIDE, round(w * s))), min(MAX_LONG_SIDE, max(ANALYSIS_SIDE, round(h * s))))
    # planes, not interleaved pixels: numpy is several times faster on contiguous channels
    return np.stack([np.asarray(band) for band in image.resize(size, Image.BICUBIC).split()]).astype(np.float32) / 255


def native_view(image: Image.Image) -> np.ndarray:
    """(3, h, w) int32 planes 0..255 of a centre crop of at most NATIVE_CROP px, starting on the 8-px grid."""
    w, h = image.size
    left, top = max(0, (w - NATIVE_CROP) // 2) // 8 * 8, max(0, (h - NATIVE_CROP) // 2) // 8 * 8
    crop = image.crop((left, top, min(w, left + NATIVE_CROP), min(h, top + NATIVE_CROP)))
    return np.stack([np.asarray(band) for band in crop.split()]).astype(np.int32)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _half(x: np.ndarray) -> np.ndarray:
    """2x2 box downsampling."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return 0.25 * (x[:h:2, :w:2] + x[1:h:2, :w:2] + x[:h:2, 1:w:2] + x[1:h:2, 1:w:2])


def _laplacian(g: np.ndarray) -> np.ndarray:
    return g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]


def _noise_sigma(g: np.ndarray, block: int = 8) -> tuple[float, float]:
    """Immerkaer's noise estimate (a Laplacian-difference kernel cancels smooth structure): over the
    whole image, and in its flattest blocks (10th percentile of `block`-px block means), where texture
    cannot pass for noise."""
    d = g[:, :-2] - 2 * g[:, 1:-1] + g[:, 2:]
    r = np.abs(d[:-2] - 2 * d[1:-1] + d[2:])
    k = math.sqrt(math.pi / 2) / 6
    h, w = r.shape[0] // block * block, r.shape[1] // block * block
    blocks = r[:h, :w].reshape(h // block, block, w // block, block).mean((1, 3))
    flat = float(np.percentile(blocks, 10)) if blocks.size else float(r.mean())
    return k * float(r.mean()), k * flat


def _log(x: float) -> float:
    return math.log(max(x, EPS))


def _analysis_stats(rgb: np.ndarray, g: np.ndarray, g2: np.ndarray) -> list[float]:
    from scipy.ndimage import minimum_filter, uniform_filter

    lap1, lap2 = float(_laplacian(g).var()), float(_laplacian(g2).var())
    gx, gy = np.diff(g, axis=1)[:-1], np.diff(g, axis=0)[:, :-1]
    grad = np.abs(gx) + np.abs(gy)
    sub = (slice(None, None, 2), slice(None, None, 2))  # percentiles on every 4th pixel: same values, 4x faster
    g_p = np.percentile(g[sub], [1, 5, 25, 50, 75, 95, 99])
    grad_p = np.percentile(grad[sub], [90, 99])
    std = float(g.std())
    hist = np.bincount((g[sub] * 63.99).astype(np.int32).ravel(), minlength=64) / g[sub].size
    entropy = -float(np.sum(hist[hist > 0] * np.log(hist[hist > 0])))
    # colour: Hasler-Suesstrunk opponent axes, saturation, and a cast (mean chroma against its spread)
    r, gg, b = rgb
    rg, yb = r - gg, 0.5 * (r + gg) - b
    chroma_spread = math.hypot(float(rg.std()), float(yb.std()))
    cast = math.hypot(float(rg.mean()), float(yb.mean()))
    mx, mn = np.maximum(np.maximum(r, gg), b), np.minimum(np.minimum(r, gg), b)
    sat = (mx - mn) / (mx + EPS)
    sat_p95 = float(np.percentile(sat[sub], 95))
    clip_lo, clip_hi = float(np.mean(mx <= 2 / 255)), float(np.mean(mn >= 253 / 255))
    clip_channel = float(np.mean((mn <= 1 / 255) | (mx >= 254 / 255)))
    # colour fringes: chroma edges that are not luma edges (chromatic aberration, colour noise)
    fringe = float(np.mean(np.abs(np.diff(rg, axis=1))) / (np.mean(np.abs(gx)) + EPS))
    # haze: the dark channel (min over colours and a window) is near 0 in clear outdoor photos
    dark = minimum_filter(_half(mn), 4)
    dark_p10 = float(np.percentile(dark, 10))
    # uneven light and vignetting: corners and a 3x3 grid of the frame against its centre
    h, w = g.shape
    ch, cw = h // 5, w // 5
    corners = np.mean([g[:ch, :cw].mean(), g[:ch, -cw:].mean(), g[-ch:, :cw].mean(), g[-ch:, -cw:].mean()])
    centre = g[2 * ch : 3 * ch, 2 * cw : 3 * cw].mean()
    cells = np.log(g[: h // 3 * 3, : w // 3 * 3].reshape(3, h // 3, 3, w // 3).mean((1, 3)).ravel() + 0.01)
    border = np.delete(cells, 4)
    # local contrast: spread of local standard deviations (5-px windows at half size)
    local_sd = np.sqrt(np.abs(uniform_filter(g2 * g2, 5) - uniform_filter(g2, 5) ** 2))
    sd_p = np.percentile(local_sd, [10, 90])
    return [
        _log(lap1), _log(lap2), _log(lap1) - _log(lap2),
        _log(float(grad_p[0])), _log(float(grad_p[1]) / (std + EPS)),
        *(_log(v) for v in _noise_sigma(g)), _log(_noise_sigma(g2)[0]),
        std, *g_p.tolist(), float(g_p[6] - g_p[0]), entropy, float(g.mean()),
        clip_lo, clip_hi, clip_channel,
        chroma_spread, cast, cast / (chroma_spread + 0.02), float(rg.mean()), float(yb.mean()),
        float(sat.mean()), sat_p95, float(sat.std()),
        fringe, float(dark.mean()), dark_p10,
        _log(float(corners) + 0.01) - _log(float(centre) + 0.01), float(border.min() - cells[4]),
        float(border.mean() - cells[4]), float(border.max() - border.min()),
        float(local_sd.mean()), float(sd_p[0]), float(sd_p[1]),
    ]


def _native_stats(rgb: np.ndarray) -> list[float]:
    r, g, b = rgb
    grey = r + g + b                                                    # exact integer grey, 0..765
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    # JPEG blockiness: steps across the 8-px grid against steps inside blocks
    col_mean, row_mean = dx.mean(0), dy.mean(1)
    on_x = col_mean[7::8].mean() if col_mean.size > 8 else 0.0
    on_y = row_mean[7::8].mean() if row_mean.size > 8 else 0.0
    block = _log(float(on_x + on_y) + 0.5) - _log(float(col_mean.mean() + row_mean.mean()) + 0.5)
    # flat runs (pixelation, palettes, posterisation): exactly equal neighbours in all channels
    packed = (r << 16) | (g << 8) | b
    same = float(np.mean(packed[:, 1:] == packed[:, :-1]))
    # missing grey levels: occupancy of the histogram between the 1st and 99th percentiles
    counts = np.bincount((grey[::2, ::2] // 3).ravel(), minlength=256)
    cdf = np.cumsum(counts) / max(1, counts.sum())
    lo, hi = int(np.searchsorted(cdf, 0.01)), int(np.searchsorted(cdf, 0.99))
    occupancy = float((counts[lo : hi + 1] > 0).mean()) if hi > lo else 0.0
    # colours in use per pixel (palettes and posterisation have few)
    colours = np.unique(packed[::3, ::3]).size / max(1, packed[::3, ::3].size)
    # impulse noise: pixels far from both horizontal neighbours, in the same direction
    c, left, right = grey[:, 1:-1], grey[:, :-2], grey[:, 2:]
    impulse = float(np.mean((np.minimum(np.abs(c - left), np.abs(c - right)) > 300) & ((c - left) * (c - right) > 0)))
    noise, flat_noise = _noise_sigma(grey.astype(np.float32) / 765)
    return [block, same, occupancy, _log(colours), impulse, _log(noise), _log(flat_noise)]


def _patch_stats(rgb_native: np.ndarray, rgb: np.ndarray, g: np.ndarray) -> list[float]:
    """Generic statistics of three kinds the older ones describe poorly.

    * Colour-uniform patches (native view, 8x8 on the pixel grid): the share whose every channel spans at
      most 3 grey levels, among those that are not clipped (not near black or white). Camera photos almost
      never have them (sensor noise and texture); flat fills, palettes, pixel blocks, strong compression and
      over-smoothing do. As log(share + 1e-3); also the share of those flat patches that border a strong
      edge (a flat area pasted against the content rather than a smooth sky fading into it).
    * The illumination field: a quadratic surface a + b x + c y + d x^2 + e y^2 fitted to the log luminance
      of a 6x6 grid of the frame (x, y in -1..1): the strength of its tilt (light falling off across the
      frame) and its curvature (d + e: brighter or darker towards the edges than the content explains),
      and the fit's residual (how much of the brightness layout is content rather than a smooth field).
    * Local (Weber) contrast: local standard deviation over local mean (9-px windows of the analysis view),
      its 25th / 50th / 75th percentiles, and its median in the darkest and in the brightest quarter of the
      windows (a veil of light or a lifted black level lowers it in the dark parts most). Also the saturation
      median and the share of near-grey pixels.
    """
    from scipy.ndimage import uniform_filter

    # colour-uniform patches
    c, h, w = rgb_native.shape
    h8, w8 = h // 8 * 8, w // 8 * 8
    if h8 and w8:
        blocks = rgb_native[:, :h8, :w8].reshape(c, h8 // 8, 8, w8 // 8, 8)
        span = (blocks.max((2, 4)) - blocks.min((2, 4))).max(0)            # (h8/8, w8/8)
        mean = blocks.mean((0, 2, 4))
        unclipped = (mean > 8) & (mean < 247)
        flat = (span <= 3) & unclipped
        flat_share = float(flat.sum()) / max(1, int(unclipped.sum()))
        # edge next to a flat patch: a neighbouring patch whose mean differs by > 24 levels
        m = blocks.mean((2, 4))                                            # (3, H, W)
        jump = np.zeros(flat.shape, bool)
        dx = np.abs(np.diff(m, axis=2)).max(0) > 24
        dy = np.abs(np.diff(m, axis=1)).max(0) > 24
        jump[:, :-1] |= dx
        jump[:, 1:] |= dx
        jump[:-1] |= dy
        jump[1:] |= dy
        edged = float((flat & jump).sum()) / max(1, int(unclipped.sum()))
    else:
        flat_share = edged = 0.0
    # illumination field
    n = 6
    hh, ww = g.shape[0] // n * n, g.shape[1] // n * n
    cells = np.log(g[:hh, :ww].reshape(n, hh // n, n, ww // n).mean((1, 3)) + 0.02).ravel()
    t = np.linspace(-1, 1, n)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    x, y = xx.ravel(), yy.ravel()
    design = np.stack([np.ones_like(x), x, y, x * x, y * y], 1)
    coef, *_ = np.linalg.lstsq(design, cells, rcond=None)
    resid = float(np.std(cells - design @ coef))
    # local Weber contrast
    mu = uniform_filter(g, 9)
    sd = np.sqrt(np.abs(uniform_filter(g * g, 9) - mu * mu))
    weber = (sd / (mu + 0.05))[::3, ::3].ravel()
    mus = mu[::3, ::3].ravel()
    q25, q75 = np.percentile(mus, [25, 75])
    wp = np.percentile(weber, [25, 50, 75])
    dark = float(np.median(weber[mus <= q25])) if np.any(mus <= q25) else float(wp[1])
    bright = float(np.median(weber[mus >= q75])) if np.any(mus >= q75) else float(wp[1])
    mx, mn = rgb.max(0)[::2, ::2], rgb.min(0)[::2, ::2]
    sat = (mx - mn) / (mx + EPS)
    return [
        _log(flat_share + 1e-3), _log(edged + 1e-3),
        float(math.hypot(coef[1], coef[2])), float(coef[3] + coef[4]), resid,
        *(_log(float(v) + 1e-3) for v in wp), _log(dark + 1e-3), _log(bright + 1e-3),
        float(np.median(sat)), float(np.mean(sat < 0.05)),
    ]


FEATURE_NAMES: tuple[str, ...] = (
    *(f"nss{s}_{n}" for s in (1, 2) for n in (
        "alpha", "var", *(f"{o}_{p}" for o in ("h", "v") for p in ("alpha", "eta", "vl", "vr")))),
    "log_lap1", "log_lap2", "lap_ratio", "log_grad_p90", "log_grad_p99_rel",
    "log_noise1", "log_noise1_flat", "log_noise2",
    "std", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "range", "entropy", "mean",
    "clip_lo", "clip_hi", "clip_channel", "chroma_spread", "cast", "cast_rel", "rg_mean", "yb_mean",
    "sat_mean", "sat_p95", "sat_std", "fringe", "dark_mean", "dark_p10", "vignette", "grid_min_rel",
    "grid_border_rel", "grid_border_range",
    "local_sd_mean", "local_sd_p10", "local_sd_p90",
    "native_blockiness", "native_flat", "native_occupancy", "native_log_colours", "native_impulse",
    "native_log_noise", "native_log_noise_flat",
    "patch_log_flat", "patch_log_flat_edged", "light_tilt", "light_curvature", "light_residual",
    "weber_log_p25", "weber_log_p50", "weber_log_p75", "weber_log_dark", "weber_log_bright",
    "sat_median", "grey_share",
)


def quality_features(image: Image.Image) -> np.ndarray:
    """One image (any mode) -> (len(FEATURE_NAMES),) float32."""
    image = image.convert("RGB")
    rgb = analysis_view(image)
    g = _grey(rgb)
    g2 = _half(g)
    native = native_view(image)
    feats = _nss(g) + _nss(g2) + _analysis_stats(rgb, g, g2) + _native_stats(native) + _patch_stats(native, rgb, g)
    return np.asarray(feats, np.float32)
