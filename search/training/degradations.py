"""Image degradations: the ONE place listing their types and parameters (training and benchmarks use it).

`TRAIN_DEGRADATIONS` teach the `lite-quality` scorer (an original photo ranks above its degraded copies);
`HELD_OUT_DEGRADATIONS` measure it: types never used in training (motion and lens blur, impulse and
speckle noise, pixelation, posterisation, palette quantisation, vignetting, haze, chromatic aberration,
JPEG 2000, gamma curves, brightness shifts, pasted colour blocks) and other strengths of trained types
(greyscale, strong saturation and sharpening, stronger blur, noise, JPEG and contrast). Benchmarks also
use `degrade` to put degraded copies of gallery photos into galleries.

`text_overlay` (captions, watermarks, date stamps) was added to training for issue 17: a local corruption
(foreign structure stamped on the content) that the list lacked. It is not a held-out type: its strokes are
thin anti-aliased glyphs with an outline, not solid squares (colour_blocks), and it changes no global tone
(vignette, haze, gamma, brightness). uneven_light gained a milder and a stronger strength (0.35, 0.85).

Within a type, strengths are listed from mild to strong (training also ranks a milder copy above a
stronger one). Every degradation keeps the image size (a crop is resized back), returns RGB, and is
deterministic given a seed. Spatial strengths (blur sigma, block size, shifts) are in pixels of a
256-px short side and scale with the image, so a degradation looks the same on 227-px and 512-px photos.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

REFERENCE_SIDE = 256  # spatial strengths are in pixels of an image whose short side is this


@dataclass(frozen=True)
class Degradation:
    name: str                  # type, e.g. "motion_blur" (benchmarks report accuracy per type)
    strength: float            # the type's parameter (its meaning is in the function's docstring)
    function: Callable[[Image.Image, float, np.random.Generator], Image.Image]  # (RGB, strength, rng) -> RGB, same size

    @property
    def id(self) -> str:
        """`name:strength`, e.g. "jpeg:15" (unique across both lists)."""
        return f"{self.name}:{self.strength:g}"

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        im = image.convert("RGB")
        out = self.function(im, self.strength, np.random.default_rng(seed)).convert("RGB")
        if out.size != im.size:
            raise RuntimeError(f"degradation {self.id} changed the size {im.size} -> {out.size}")
        return out


# ---------------------------------------------------------------- helpers
def _px(im: Image.Image, v: float) -> float:
    """`v` pixels of a REFERENCE_SIDE image, in this image's pixels."""
    return v * min(im.size) / REFERENCE_SIDE


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, np.float32)


def _img(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _convolve(im: Image.Image, kernel: np.ndarray) -> Image.Image:
    from scipy.ndimage import convolve

    a = _arr(im)
    k = (kernel / kernel.sum()).astype(np.float32)
    return _img(np.stack([convolve(a[..., c], k, mode="reflect") for c in range(3)], -1))


def _encode(im: Image.Image, **kwargs) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, **kwargs)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _luma(a: np.ndarray) -> np.ndarray:
    return a @ np.array([0.299, 0.587, 0.114], np.float32)


# ---------------------------------------------------------------- degradation functions
def gaussian_blur(im, sigma, rng):
    """Gaussian blur, sigma in reference pixels."""
    return im.filter(ImageFilter.GaussianBlur(_px(im, sigma)))


def downscale(im, factor, rng):
    """Resolution loss: shrink by `factor` (box filter), bicubic back up."""
    small = im.resize((max(1, round(im.width / factor)), max(1, round(im.height / factor))), Image.BOX)
    return small.resize(im.size, Image.BICUBIC)


def motion_blur(im, length, rng):
    """Linear motion blur of `length` reference pixels at a random angle."""
    n = max(3, int(round(_px(im, length))) | 1)
    angle = rng.uniform(0, np.pi)
    k = np.zeros((n, n), np.float32)
    t = np.linspace(-(n - 1) / 2, (n - 1) / 2, 4 * n)
    k[np.rint(n // 2 + t * np.sin(angle)).astype(int), np.rint(n // 2 + t * np.cos(angle)).astype(int)] = 1
    return _convolve(im, k)


def lens_blur(im, radius, rng):
    """Defocus: a uniform disk kernel of `radius` reference pixels."""
    r = max(1.0, _px(im, radius))
    n = int(np.ceil(r))
    y, x = np.mgrid[-n : n + 1, -n : n + 1]
    return _convolve(im, (x**2 + y**2 <= r**2).astype(np.float32))


def gaussian_noise(im, sigma, rng):
    """Additive white noise, independent per channel, std `sigma` (0..255 scale)."""
    return _img(_arr(im) + rng.normal(0, sigma, (im.height, im.width, 3)))


def grain(im, sigma, rng):
    """Luma-only white noise of std `sigma` (0..255), the same in all channels, like film grain."""
    return _img(_arr(im) + rng.normal(0, sigma, (im.height, im.width, 1)))


def chroma_noise(im, sigma, rng):
    """Colour-only noise: opponent-channel noise of std `sigma` (0..255) that leaves the luma alone."""
    n1, n2 = rng.normal(0, sigma, (2, im.height, im.width, 1)).astype(np.float32)
    # (R, G, B) shifts along the two opponent axes; each has zero luma (0.299, 0.587, 0.114)
    u = np.array([1.0, -0.509, 0.0], np.float32)
    v = np.array([0.0, -0.194, 1.0], np.float32)
    return _img(_arr(im) + n1 * u + n2 * v)


def median_smooth(im, size, rng):
    """Over-denoised look: a median filter of `size` reference pixels (flat patches, lost texture)."""
    n = max(3, int(round(_px(im, size))) | 1)
    return im.filter(ImageFilter.MedianFilter(n))


def speckle_noise(im, sigma, rng):
    """Multiplicative noise: x * (1 + N(0, sigma)), as from a poor sensor at low light."""
    return _img(_arr(im) * (1 + rng.normal(0, sigma, (im.height, im.width, 1))))


def salt_pepper(im, fraction, rng):
    """Impulse noise: `fraction` of pixels set to black or white."""
    a = _arr(im).copy()
    hit = rng.random(a.shape[:2]) < fraction
    a[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)[:, None]
    return _img(a)


def jpeg(im, quality, rng):
    """JPEG compression at `quality` (1..95), 4:2:0 chroma subsampling."""
    return _encode(im, format="JPEG", quality=int(quality), subsampling=2)


def jpeg2000(im, rate, rng):
    """JPEG 2000 compression at compression ratio `rate` (ringing and blur instead of blocks)."""
    return _encode(im, format="JPEG2000", quality_mode="rates", quality_layers=[rate])


def pixelate(im, block, rng):
    """Mosaic of `block`-reference-pixel squares (nearest-neighbour upscale)."""
    b = max(2.0, _px(im, block))
    small = im.resize((max(1, round(im.width / b)), max(1, round(im.height / b))), Image.BOX)
    return small.resize(im.size, Image.NEAREST)


def posterize(im, bits, rng):
    """Keep `bits` bits per channel (banding)."""
    from PIL import ImageOps

    return ImageOps.posterize(im, int(bits))


def quantize_colours(im, colours, rng):
    """A palette of `colours` colours (median cut, no dithering): flat areas and false contours."""
    return im.quantize(int(colours), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")


def exposure(im, gain, rng):
    """Linear exposure change: multiply by `gain` (< 1 underexposed, > 1 overexposed, clipped)."""
    return _img(_arr(im) * gain)


def gamma(im, g, rng):
    """Tone curve x ** g on 0..1 (g > 1 darkens the mid-tones, g < 1 washes them out)."""
    return _img(255.0 * (_arr(im) / 255.0) ** g)


def colour_cast(im, magnitude, rng):
    """Add `magnitude` (0..255) along a random hue direction, as a wrong white balance."""
    angle = rng.uniform(0, 2 * np.pi)
    # hue direction in RGB: a unit vector orthogonal to grey
    u, v = np.array([1, -1, 0]) / np.sqrt(2), np.array([1, 1, -2]) / np.sqrt(6)
    shift = magnitude * (np.cos(angle) * u + np.sin(angle) * v)
    return _img(_arr(im) + shift.astype(np.float32))


def contrast(im, factor, rng):
    """Scale contrast around the mean grey by `factor` (< 1 flat, > 1 harsh and clipped)."""
    return ImageEnhance.Contrast(im).enhance(factor)


def saturation(im, factor, rng):
    """Scale saturation by `factor` (0: greyscale, > 1: garish)."""
    return ImageEnhance.Color(im).enhance(factor)


def sharpen(im, amount, rng):
    """Unsharp mask with `amount` (x100 %), radius 2 reference pixels: halos and grain when strong."""
    return im.filter(ImageFilter.UnsharpMask(_px(im, 2.0), int(amount * 100), 0))


def brightness_shift(im, offset, rng):
    """Add `offset` (0..255) to every channel: lifted, milky blacks (> 0) or crushed shadows (< 0)."""
    return _img(_arr(im) + offset)


def colour_blocks(im, count, rng):
    """`count` solid squares of random colours (side 8 % of the short side) pasted at random places."""
    a = _arr(im).copy()
    side = max(2, round(0.08 * min(im.size)))
    for _ in range(int(count)):
        x, y = int(rng.integers(0, im.width - side + 1)), int(rng.integers(0, im.height - side + 1))
        a[y : y + side, x : x + side] = rng.integers(0, 256, 3)
    return _img(a)


def crop(im, area, rng):
    """A random off-centre crop keeping `area` of the image, resized back (cut subject, lost detail)."""
    s = np.sqrt(area)
    w, h = max(1, round(im.width * s)), max(1, round(im.height * s))
    # pick a corner region: the crop is off-centre, as a careless framing is
    x = int(rng.choice([0, im.width - w])) if rng.random() < 0.8 else int(rng.integers(0, im.width - w + 1))
    y = int(rng.choice([0, im.height - h])) if rng.random() < 0.8 else int(rng.integers(0, im.height - h + 1))
    return im.crop((x, y, x + w, y + h)).resize(im.size, Image.BICUBIC)


def uneven_light(im, strength, rng):
    """Light falling off across the frame: brightness from 1 down to 1 - strength along a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0 : im.height, 0 : im.width].astype(np.float32)
    t = (x / im.width - 0.5) * np.cos(angle) + (y / im.height - 0.5) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _img(_arr(im) * (1 - strength * t)[..., None])


_WORDS = ("sample", "photo", "copyright", "stock", "preview", "2019", "holiday", "IMG 0412", "do not copy",
          "www", "draft", "proof", "camera", "12:45", "summer", "archive")


def text_overlay(im, count, rng):
    """`count` captions stamped on the picture (a watermark, date stamp or meme text): words from a fixed list
    in a random colour and a contrasting outline, text height 9 % of the short side, at random places."""
    from PIL import ImageDraw, ImageFont

    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(8, round(0.09 * min(im.size)))
    font = ImageFont.load_default(size=size)
    for _ in range(int(count)):
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        outline = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
        x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font, stroke_width=max(1, size // 10))
        x = int(rng.integers(0, max(1, im.width - (x1 - x0))))
        y = int(rng.integers(0, max(1, im.height - (y1 - y0))))
        draw.text((x - x0, y - y0), word, fill=colour, font=font, stroke_width=max(1, size // 10), stroke_fill=outline)
    return out


def vignette(im, strength, rng):
    """Darken towards the corners: brightness 1 - strength * (r / r_corner) ** 2."""
    y, x = np.mgrid[0 : im.height, 0 : im.width].astype(np.float32)
    r2 = ((x - im.width / 2) / (im.width / 2)) ** 2 + ((y - im.height / 2) / (im.height / 2)) ** 2
    return _img(_arr(im) * (1 - strength * r2 / 2)[..., None])


def haze(im, density, rng):
    """Fog: blend towards a bright grey-blue veil, more at the top of the frame (farther away)."""
    y = np.linspace(1.0, 0.6, im.height, dtype=np.float32)[:, None, None]
    t = density * y
    veil = np.array([215, 220, 228], np.float32)
    return _img(_arr(im) * (1 - t) + veil * t)


def chromatic_aberration(im, shift, rng):
    """Red and blue planes shifted `shift` reference pixels in opposite directions (colour fringes)."""
    a = _arr(im).copy()
    d = max(1, round(_px(im, shift)))
    a[..., 0] = np.roll(a[..., 0], d, axis=1)
    a[..., 2] = np.roll(a[..., 2], -d, axis=1)
    return _img(a)


# ---------------------------------------------------------------- the two lists
def _make(function: Callable, name: str, *strengths: float) -> list[Degradation]:
    return [Degradation(name, float(s), function) for s in strengths]


TRAIN_DEGRADATIONS: tuple[Degradation, ...] = tuple(
    _make(gaussian_blur, "gaussian_blur", 1.2, 2.5)
    + _make(downscale, "downscale", 3.0)
    + _make(median_smooth, "median_smooth", 3, 5)
    + _make(gaussian_noise, "gaussian_noise", 10, 25)
    + _make(grain, "grain", 8, 18)
    + _make(chroma_noise, "chroma_noise", 15)
    + _make(jpeg, "jpeg", 35, 15)
    + _make(exposure, "underexposure", 0.55, 0.35)
    + _make(exposure, "overexposure", 1.6, 2.2)
    + _make(uneven_light, "uneven_light", 0.35, 0.6, 0.85)
    + _make(colour_cast, "colour_cast", 25, 45)
    + _make(contrast, "low_contrast", 0.55, 0.35)
    + _make(contrast, "high_contrast", 1.8)
    + _make(saturation, "desaturate", 0.4)
    + _make(saturation, "oversaturate", 2.0)
    + _make(sharpen, "sharpen", 2.0)
    + _make(crop, "crop", 0.45, 0.25)
    # added for issue 17: a kind of local corruption the list lacked (foreign structure stamped on the content)
    + _make(text_overlay, "text_overlay", 1, 3)
)

HELD_OUT_DEGRADATIONS: tuple[Degradation, ...] = tuple(
    # types never seen in training
    _make(motion_blur, "motion_blur", 8, 16)
    + _make(lens_blur, "lens_blur", 2, 4)
    + _make(speckle_noise, "speckle_noise", 0.15, 0.3)
    + _make(salt_pepper, "salt_pepper", 0.01, 0.04)
    + _make(pixelate, "pixelate", 4, 8)
    + _make(posterize, "posterize", 3, 2)
    + _make(quantize_colours, "quantize_colours", 24, 8)
    + _make(jpeg2000, "jpeg2000", 60, 150)
    + _make(vignette, "vignette", 0.6, 0.9)
    + _make(haze, "haze", 0.35, 0.55)
    + _make(chromatic_aberration, "chromatic_aberration", 2, 4)
    + _make(gamma, "gamma", 0.45, 2.4)
    + _make(brightness_shift, "brightness_shift", 50, -50)
    + _make(colour_blocks, "colour_blocks", 3, 8)
    # trained types at strengths never seen in training
    + _make(gaussian_blur, "gaussian_blur", 4.0)
    + _make(gaussian_noise, "gaussian_noise", 40)
    + _make(jpeg, "jpeg", 8)
    + _make(contrast, "high_contrast", 2.6)
    + _make(saturation, "greyscale", 0.0)
    + _make(saturation, "oversaturate", 3.5)
    + _make(sharpen, "sharpen", 5.0)
)

ALL_DEGRADATIONS: tuple[Degradation, ...] = TRAIN_DEGRADATIONS + HELD_OUT_DEGRADATIONS


def get_degradation(key: str) -> Degradation:
    """By id ("jpeg:15") or by a type name that has a single strength ("vignette" does not: 2 strengths)."""
    by_id = {d.id: d for d in ALL_DEGRADATIONS}
    if key in by_id:
        return by_id[key]
    named = [d for d in ALL_DEGRADATIONS if d.name == key]
    if len(named) == 1:
        return named[0]
    if named:
        raise ValueError(f"degradation type {key!r} has several strengths; give one of "
                         f"{', '.join(d.id for d in named)}")
    raise ValueError(f"unknown degradation {key!r}; known: {', '.join(by_id)}")


def degrade(image: Image.Image, degradation: str | Degradation, seed: int = 0) -> Image.Image:
    """A degraded RGB copy of `image` (same size), deterministic given `seed`."""
    d = degradation if isinstance(degradation, Degradation) else get_degradation(degradation)
    return d(image, seed)
