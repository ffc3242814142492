"""Draw the app's example queries into assets/examples/ and list them in assets/examples/examples.json.

    python assets/make_examples.py [OUT_DIR]

Deterministic (no randomness, PIL + numpy only): running it again rewrites the same pixels.
- Line drawings: black strokes on white, 512x512, about 7 px wide, as a visitor would draw them on the
  canvas. Each is drawn at twice the size and scaled down, so strokes are smooth like a brush's.
- A painting-like example: a package photo through an oil-paint filter (mode filter, posterise, ink edges).
- A low-res example: a package photo shrunk to 24 px wide and blown back up, blocky.
The two derived examples use sample photos that ship with scikit-image (see assets/README.md for licences).
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512          # output side, pixels
SCALE = 2           # drawn at SIZE * SCALE, then scaled down (anti-aliased strokes)
STROKE = 7          # stroke width at output size, pixels
SCRIPT = "assets/make_examples.py"

Point = tuple[float, float]


class Pen:
    """Round-capped black strokes on a white canvas, in output (512) coordinates."""

    def __init__(self, width: float = STROKE) -> None:
        self.image = Image.new("L", (SIZE * SCALE, SIZE * SCALE), 255)
        self.draw = ImageDraw.Draw(self.image)
        self.width = width

    def line(self, points: Sequence[Point], closed: bool = False, width: float | None = None) -> None:
        pts = [(x * SCALE, y * SCALE) for x, y in points]
        if closed:
            pts.append(pts[0])
        w = round((width or self.width) * SCALE)
        self.draw.line(pts, fill=0, width=w, joint="curve")
        r = w / 2
        for x, y in (pts[0], pts[-1]):  # round caps
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=0)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, rot: float = 0.0,
                start: float = 0.0, end: float = 360.0, width: float | None = None) -> None:
        """An ellipse (or its arc from `start` to `end` degrees), rotated by `rot` degrees."""
        self.line(ellipse_points(cx, cy, rx, ry, rot, start, end), closed=(end - start) >= 360, width=width)

    def shape(self, points: Sequence[Point]) -> None:
        """A closed outline over a white fill: hides what was drawn behind it."""
        self.draw.polygon([(x * SCALE, y * SCALE) for x, y in points], fill=255)
        self.line(points, closed=True)

    def dot(self, x: float, y: float, r: float) -> None:
        self.draw.ellipse(((x - r) * SCALE, (y - r) * SCALE, (x + r) * SCALE, (y + r) * SCALE), fill=0)

    def curve(self, *control: Point, width: float | None = None) -> None:
        """A Bezier curve through its control points (quadratic or cubic)."""
        self.line(bezier(control), width=width)

    def result(self) -> Image.Image:
        return self.image.resize((SIZE, SIZE), Image.LANCZOS)  # greyscale ("L"): black on white


def ellipse_points(cx: float, cy: float, rx: float, ry: float, rot: float = 0.0, start: float = 0.0,
                   end: float = 360.0, steps: int = 96) -> list[Point]:
    n = max(8, round(steps * (end - start) / 360))
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    pts = []
    for i in range(n + (0 if end - start >= 360 else 1)):
        a = math.radians(start + (end - start) * i / n)
        x, y = rx * math.cos(a), ry * math.sin(a)
        pts.append((cx + x * c - y * s, cy + x * s + y * c))
    return pts


def bezier(control: Sequence[Point], steps: int = 48) -> list[Point]:
    pts = []
    for i in range(steps + 1):
        t = i / steps
        p = list(control)
        while len(p) > 1:  # de Casteljau
            p = [((1 - t) * a[0] + t * b[0], (1 - t) * a[1] + t * b[1]) for a, b in zip(p, p[1:])]
        pts.append(p[0])
    return pts


# ---------------------------------------------------------------- the drawings
def house() -> Image.Image:
    p = Pen()
    p.line([(130, 250), (130, 440), (382, 440), (382, 250)])           # walls
    p.line([(105, 262), (256, 118), (407, 262)])                      # roof
    p.line([(318, 178), (318, 120), (352, 120), (352, 210)])           # chimney
    p.line([(226, 440), (226, 345), (286, 345), (286, 440)])           # door
    p.dot(274, 395, 5)                                                 # door knob
    p.line([(160, 290), (206, 290), (206, 336), (160, 336)], closed=True)  # windows
    p.line([(183, 290), (183, 336)])
    p.line([(160, 313), (206, 313)])
    p.line([(306, 290), (352, 290), (352, 336), (306, 336)], closed=True)
    p.line([(329, 290), (329, 336)])
    p.line([(306, 313), (352, 313)])
    p.line([(60, 440), (452, 440)])                                    # ground
    return p.result()


def cup() -> Image.Image:
    """A coffee cup on a saucer, seen a little from above, with a handle and steam."""
    p = Pen()
    p.ellipse(256, 412, 196, 46)                                       # saucer
    p.ellipse(256, 412, 120, 22, start=0, end=180)                     # the saucer's well
    left = bezier(((124, 232), (128, 340), (170, 414), (246, 416)))
    right = bezier(((368, 232), (364, 340), (322, 414), (246, 416)))
    rim_back = ellipse_points(246, 232, 122, 34, start=180, end=360)[::-1]
    p.shape(left + right[::-1] + rim_back)                             # body, over the saucer
    p.ellipse(246, 232, 122, 34)                                       # rim
    p.ellipse(246, 238, 102, 24, start=200, end=340, width=5)         # coffee surface
    p.curve((364, 262), (444, 246), (446, 348), (340, 362))            # handle, outer
    p.curve((360, 288), (410, 280), (412, 334), (348, 338))            # handle, inner
    for x in (196, 246, 296):                                          # steam
        p.curve((x, 182), (x - 26, 152), (x + 26, 124), (x, 94), width=6)
        p.curve((x, 94), (x - 18, 74), (x + 10, 60), (x + 2, 44), width=6)
    return p.result()


def bicycle() -> Image.Image:
    p = Pen()
    rear, front, crank = (138, 340), (374, 340), (248, 340)
    seat_top, head = (222, 214), (346, 214)
    for cx, cy in (rear, front):
        p.ellipse(cx, cy, 88, 88)                                      # tyres
        p.dot(cx, cy, 7)                                               # hubs
        for a in range(0, 180, 30):                                    # spokes
            dx, dy = 82 * math.cos(math.radians(a)), 82 * math.sin(math.radians(a))
            p.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], width=3)
    p.line([rear, crank, seat_top, rear])                              # chain stay, seat tube, seat stay
    p.line([seat_top, head, crank])                                    # top tube, down tube
    p.line([(340, 190), front])                                        # fork
    p.line([(340, 190), (336, 162), (372, 156)])                       # stem, handlebar
    p.line([seat_top, (216, 186)])                                     # seat post
    p.line([(190, 182), (246, 182)], width=10)                         # saddle
    p.ellipse(248, 340, 18, 18)                                        # chainring
    p.line([(248, 340), (266, 374)])                                   # crank arm
    p.line([(254, 376), (282, 376)], width=9)                          # pedal
    return p.result()


def cat_face() -> Image.Image:
    p = Pen()
    p.ellipse(256, 296, 170, 148, start=-28, end=208)                  # cheeks and chin
    p.line([(106, 226), (118, 72), (206, 160)])                        # left ear
    p.line([(406, 226), (394, 72), (306, 160)])                        # right ear
    p.curve((206, 160), (240, 148), (272, 148), (306, 160))            # top of the head
    p.line([(134, 190), (140, 112), (182, 168)], width=4)              # inner ears
    p.line([(378, 190), (372, 112), (330, 168)], width=4)
    for cx in (190, 322):                                              # eyes with slit pupils
        p.ellipse(cx, 262, 38, 26)
        p.line([(cx, 242), (cx, 282)], width=10)
    p.line([(240, 318), (272, 318), (256, 336)], closed=True)          # nose
    p.dot(256, 326, 8)
    p.curve((256, 336), (256, 362), (228, 370), (214, 352))            # mouth
    p.curve((256, 336), (256, 362), (284, 370), (298, 352))
    for y0, y1 in ((320, 300), (334, 334), (348, 368)):                # whiskers
        p.line([(196, y0), (60, y1)], width=4)
        p.line([(316, y0), (452, y1)], width=4)
    return p.result()


def rocket() -> Image.Image:
    """A tall rocket lifting off: flame and clouds of smoke below."""
    p = Pen()
    p.line([(226, 380), (226, 130)])                                   # body
    p.line([(286, 380), (286, 130)])
    p.curve((226, 130), (226, 80), (246, 50), (256, 36))               # nose
    p.curve((286, 130), (286, 80), (266, 50), (256, 36))
    p.line([(226, 150), (286, 150)], width=4)                          # stage seams
    p.line([(226, 330), (286, 330)], width=4)
    p.line([(226, 330), (196, 380), (226, 380)])                       # fins
    p.line([(286, 330), (316, 380), (286, 380)])
    p.curve((232, 384), (220, 430), (250, 440), (256, 480))            # flame
    p.curve((280, 384), (292, 430), (262, 440), (256, 480))
    for cx, cy, r in ((150, 470, 36), (200, 488, 30), (312, 488, 30), (362, 470, 36)):  # smoke
        p.ellipse(cx, cy, r, r * 0.8, start=150, end=390)
    return p.result()


def flower() -> Image.Image:
    p = Pen()
    cx, cy = 256, 188
    p.curve((256, 236), (248, 330), (266, 400), (256, 482))            # stem
    p.shape(bezier(((256, 380), (206, 332), (150, 336), (124, 350)))   # left leaf
            + bezier(((124, 350), (160, 384), (214, 394), (256, 380))))
    p.line([(256, 380), (170, 356)], width=4)
    p.shape(bezier(((258, 340), (300, 296), (356, 298), (388, 310)))   # right leaf
            + bezier(((388, 310), (360, 342), (306, 352), (258, 340))))
    p.line([(258, 340), (344, 318)], width=4)
    for i in range(8):                                                 # petals, each over the last
        a = i * 45 + 22.5
        ca, sa = math.cos(math.radians(a)), math.sin(math.radians(a))
        p.shape(ellipse_points(cx + 92 * ca, cy + 92 * sa, 62, 32, rot=a))
    p.shape(ellipse_points(cx, cy, 44, 44))                            # centre
    for dx, dy in ((-16, -10), (10, -16), (16, 10), (-10, 16), (0, 0)):
        p.dot(cx + dx, cy + dy, 4)
    return p.result()


def motorcycle() -> Image.Image:
    """A motorcycle seen from its left side, facing right."""
    p = Pen()
    rear, front = (130, 372), (392, 372)
    for cx, cy in (rear, front):
        p.ellipse(cx, cy, 72, 72)                                      # tyres
        p.ellipse(cx, cy, 46, 46, width=4)                             # rims
        p.dot(cx, cy, 9)                                               # hubs
    p.ellipse(392, 372, 86, 86, start=205, end=300)                    # front mudguard
    p.ellipse(130, 372, 86, 86, start=190, end=285)                    # rear mudguard
    p.line([(346, 186), front])                                        # front fork
    p.line([(322, 178), (346, 186), (366, 170)])                       # handlebar
    p.line([(360, 168), (388, 160)], width=11)                         # grip
    p.ellipse(378, 226, 14, 18)                                        # headlight
    p.line([(352, 228), (298, 300)])                                   # down tube
    p.line([(300, 292), (300, 350), (214, 350), (214, 284)], closed=True)  # engine
    for y in (304, 318, 332):                                          # engine fins
        p.line([(224, y), (290, y)], width=4)
    p.line([rear, (214, 340)])                                         # swing arm
    p.line([(214, 342), (160, 332)], width=8)                          # exhaust pipe
    p.line([(160, 330), (84, 314)], width=14)                          # silencer
    p.shape([(196, 240), (230, 206), (312, 204), (344, 232), (324, 266), (206, 272)])  # tank
    p.shape(bezier(((92, 250), (140, 232), (180, 236), (202, 240)))     # seat
            + [(206, 272)] + bezier(((206, 272), (150, 274), (100, 272), (92, 250))))
    return p.result()


# ---------------------------------------------------------------- derived from package photos
def package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{package} is not installed (needed for {package}/{rel})")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (r+1)x(r+1) window whose bottom-right corner is each pixel (edges padded)."""
    pad = np.pad(a, ((r + 1, 0), (r + 1, 0)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    c = pad.cumsum(0).cumsum(1)
    return (c[r + 1:, r + 1:] - c[:-r - 1, r + 1:] - c[r + 1:, :-r - 1] + c[:-r - 1, :-r - 1]) / (r + 1) ** 2


def kuwahara(rgb: np.ndarray, r: int) -> np.ndarray:
    """Kuwahara filter: each pixel takes the mean colour of the least varied of its four corner windows --
    flat, edge-preserving dabs of paint."""
    h, w = rgb.shape[:2]
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    mean_l, mean_l2, mean_c = box_mean(lum, r), box_mean(lum * lum, r), box_mean(rgb, r)
    var = mean_l2 - mean_l ** 2
    pv = np.pad(var, r, mode="edge")
    pc = np.pad(mean_c, ((r, r), (r, r), (0, 0)), mode="edge")
    # the four windows ending at (y, x), (y, x+r), (y+r, x), (y+r, x+r) cover the corners around a pixel
    offs = [(0, 0), (0, r), (r, 0), (r, r)]
    vs = np.stack([pv[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offs])
    cs = np.stack([pc[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offs])
    best = vs.argmin(0)
    return np.take_along_axis(cs, best[None, ..., None], 0)[0]


def oil_paint(photo: Image.Image, side: int = SIZE) -> Image.Image:
    """Flat, edge-preserving dabs of colour in a limited palette, like a quick oil painting of the photo."""
    im = photo.convert("RGB")
    im = im.resize((side, round(side * im.height / im.width)), Image.LANCZOS)
    arr = np.asarray(im, np.float64)
    for r in (6, 4):
        arr = kuwahara(arr, r)
    arr = np.round(arr / 24) * 24                                      # a limited palette
    im = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).filter(ImageFilter.ModeFilter(5))
    arr = np.asarray(im, np.float64)
    mean = arr.mean(axis=(0, 1), keepdims=True)                        # a little more saturated
    arr = np.clip(mean + (arr - mean) * 1.2, 0, 255)
    return Image.fromarray(arr.round().astype(np.uint8))


def low_res(photo: Image.Image, side: int = 24, out: int = SIZE) -> Image.Image:
    """The photo `side` pixels wide, blown back up to `out` wide with blocky pixels."""
    im = photo.convert("RGB")
    h = max(1, round(side * im.height / im.width))
    small = im.resize((side, h), Image.BOX)
    return small.resize((out, round(out * h / side)), Image.NEAREST)


# ---------------------------------------------------------------- the manifest
DRAWN = f"drawn by {SCRIPT}"
CHELSEA = ("skimage", "data/chelsea.png", "CC0 by the photographer, Stefan van der Walt (scikit-image sample data)")
ROCKET = ("skimage", "data/rocket.jpg", "public domain, SpaceX (scikit-image sample data)")
COFFEE = ("skimage", "data/coffee.png", "CC0 by the photographer, Rachel Michetti (scikit-image sample data)")

# file, kind, text, caption, how to make it (a drawing, or (source photo, filter))
EXAMPLES: list[tuple[str, str, str | None, str, Callable[[], Image.Image] | tuple]] = [
    ("cup.png", "sketch", None, "A sketch of a coffee cup", cup),
    ("rocket.png", "sketch", None, "A sketch of a rocket", rocket),
    ("cat.png", "sketch", None, "A sketch of a cat's face", cat_face),
    ("flower.png", "sketch", None, "A sketch of a flower", flower),
    ("motorcycle.png", "sketch+text", "a red motorcycle", "A sketch of a motorcycle, with the text "
     "\"a red motorcycle\"", motorcycle),
    ("house.png", "sketch", None, "A sketch of a house", house),
    ("bicycle.png", "sketch", None, "A sketch of a bicycle", bicycle),
    ("cat-painting.png", "painting", None, "A painting-like picture of a cat (an oil-paint filter over a "
     "photo)", (CHELSEA, oil_paint)),
    ("coffee-lowres.png", "lowres", None, "A low-res photo: a cup of coffee 24 pixels wide, blown up",
     (COFFEE, low_res)),
]


def make(spec: Callable[[], Image.Image] | tuple) -> tuple[Image.Image, dict]:
    """An example's image and where it comes from (the manifest's provenance fields)."""
    if callable(spec):
        return spec(), {"provenance": DRAWN, "source": None, "licence": "CC0"}
    (package, rel, licence), filt = spec
    with Image.open(package_file(package, rel)) as src:
        photo = src.convert("RGB")
    how = "an oil-paint filter" if filt is oil_paint else "shrunk to 24 px wide and blown back up"
    return filt(photo), {"provenance": f"derived by {SCRIPT} ({how}) from {package}/{rel}; source photo: {licence}",
                         "source": f"{package}/{rel}", "licence": licence}


def main(out_dir: str | Path | None = None) -> list[dict]:
    out_dir = Path(out_dir) if out_dir else Path(__file__).resolve().parent / "examples"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for file, kind, text, caption, spec in EXAMPLES:
        image, origin = make(spec)
        image.save(out_dir / file, optimize=True)
        manifest.append({"file": file, "kind": kind, "text": text, "caption": caption, **origin})
    (out_dir / "examples.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


if __name__ == "__main__":
    for row in main(sys.argv[1] if len(sys.argv) > 1 else None):
        print(f"{row['kind']:12} {row['file']:20} {row['caption']}")
