"""A safety filter for a public demo: NudeNet's nudity detector, whose weights ship inside its wheel.

`SafetyFilter.check(image)` -> `SafetyVerdict(flagged, reason, score)`. The detector (NudeNet 3.4.2's
`320n.onnx`, a YOLOv8n over 18 body-part classes, run by onnxruntime on the CPU) is loaded once per
process and shared; `check` and `check_batch` may be called from several threads at once (onnxruntime's
`InferenceSession.run` is thread-safe, and NudeNet's pre- and post-processing keep no state).

What it catches and what it does not: docs/safety.md. Licence: the nudenet wheel's LICENSE is AGPL-3.0
(its metadata says MIT).
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# every class NudeNet 3.x's detector knows (nudenet/nudenet.py, in its output order)
NUDENET_CLASSES: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
# exposed genitalia, female breasts, buttocks and anus (not male chests, bellies, feet or armpits)
DEFAULT_UNSAFE_CLASSES: frozenset[str] = frozenset({
    "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
})
DEFAULT_THRESHOLD = 0.5
MAX_SIDE = 640  # images are downscaled to this long side first (the detector itself sees 320 x 320)
INSTALL_HINT = "pip install nudenet==3.4.2"


class SafetyUnavailableError(ImportError):
    """The detector cannot be loaded (nudenet or onnxruntime is not installed)."""


class UnsafeImageError(ValueError):
    """An image the safety filter refuses (the message says why)."""


@dataclass(frozen=True)
class SafetyVerdict:
    flagged: bool
    reason: str | None   # why it was flagged, e.g. "nudity (FEMALE_BREAST_EXPOSED 0.81)"; None if not
    score: float         # the highest score among the unsafe classes' detections (0.0: none detected)


class SafetyFilter:
    """Flags an image when the detector finds one of `classes` with a score >= `threshold`.

    `classes`: NudeNet class names that make an image unsafe (default: the exposed genitalia, female
    breast, buttocks and anus classes). `label`: the first word of a verdict's reason. `max_side`: the
    long side an image is downscaled to before detection. Construction loads the shared detector, so a
    missing `nudenet` fails here, with the command that installs it.
    """

    def __init__(self, classes: Iterable[str] = DEFAULT_UNSAFE_CLASSES, threshold: float = DEFAULT_THRESHOLD,
                 *, label: str = "nudity", max_side: int = MAX_SIDE) -> None:
        self.classes = frozenset(classes)
        unknown = sorted(self.classes - set(NUDENET_CLASSES))
        if unknown:
            raise ValueError(f"unknown NudeNet class(es) {unknown}; known: {', '.join(NUDENET_CLASSES)}")
        if not self.classes:
            raise ValueError("a safety filter needs at least one unsafe class")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
        self.threshold, self.label, self.max_side = float(threshold), label, int(max_side)
        # the arguments that make this filter again elsewhere (a Ray actor loads its own detector)
        self.settings = {"classes": sorted(self.classes), "threshold": self.threshold, "label": label,
                         "max_side": self.max_side}
        self._detector = load_detector()

    @property
    def fingerprint(self) -> str:
        """What a verdict depends on (an index records it; another fingerprint means re-checking)."""
        return (f"nudenet-{_nudenet_version()}/320n:{','.join(sorted(self.classes))}"
                f">={self.threshold:g}@{self.max_side}")

    def __repr__(self) -> str:
        return f"SafetyFilter({self.fingerprint})"

    def check(self, image: Image.Image) -> SafetyVerdict:
        """One image (any PIL mode) -> its verdict."""
        return self._verdict(self._detector.detect(self._to_bgr(image)))

    def refuse(self, image: Image.Image) -> None:
        """Raise UnsafeImageError (a ValueError) if the image is flagged: for query images."""
        verdict = self.check(image)
        if verdict.flagged:
            raise UnsafeImageError(f"this image was refused by the safety filter ({verdict.reason})")

    def check_batch(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """Several images -> their verdicts, in order. (One by one: the detector's own batching was no
        faster on a 2-core CPU, ~85 ms an image either way.)"""
        return [self.check(im) for im in images]

    def detections(self, image: Image.Image) -> list[dict[str, Any]]:
        """The detector's raw findings, every class: [{"class", "score", "box"}] (for inspection)."""
        return self._detector.detect(self._to_bgr(image))

    def _to_bgr(self, image: Image.Image) -> np.ndarray:
        if image.width < 1 or image.height < 1:
            raise ValueError(f"cannot check an empty image ({image.width}x{image.height})")
        im = image if image.mode == "RGB" else image.convert("RGB")
        if max(im.size) > self.max_side:
            scale = self.max_side / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.ascontiguousarray(np.asarray(im)[:, :, ::-1])  # RGB -> BGR, as cv2.imread gives it

    def _verdict(self, found: list[dict[str, Any]]) -> SafetyVerdict:
        unsafe = [d for d in found if d["class"] in self.classes]
        if not unsafe:
            return SafetyVerdict(False, None, 0.0)
        worst = max(unsafe, key=lambda d: d["score"])
        score = float(worst["score"])
        if score < self.threshold:
            return SafetyVerdict(False, None, score)
        return SafetyVerdict(True, f"{self.label} ({worst['class']} {score:.2f})", score)


def as_safety_filter(setting: SafetyFilter | bool | str | None) -> SafetyFilter | None:
    """A setting as given on a command line or to an API -> a filter or None (off).

    None, False, "off" (also "no", "false", "0", "none", ""): off. True, "on" (also "yes", "true", "1"):
    the default filter. A SafetyFilter: itself."""
    if setting is None or isinstance(setting, SafetyFilter):
        return setting
    if isinstance(setting, bool):
        return SafetyFilter() if setting else None
    value = str(setting).strip().lower()
    if value in ("on", "yes", "true", "1"):
        return SafetyFilter()
    if value in ("off", "no", "false", "0", "none", ""):
        return None
    raise ValueError(f"safety must be on or off, got {setting!r}")


# ---------------------------------------------------------------- the shared detector
_lock = threading.Lock()
_detector: Any = None


def load_detector() -> Any:
    """NudeNet's NudeDetector, loaded once per process (thread-safe), with an onnxruntime session of one
    non-spinning thread per call (indexing calls it from two decoding threads beside the encoder; spinning
    worker threads would starve the encoder on a 2-core machine)."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                _detector = _new_detector()
    return _detector


def _new_detector() -> Any:
    try:
        import nudenet
        import onnxruntime as ort
        from nudenet import NudeDetector
    except ImportError as e:
        raise SafetyUnavailableError(
            f"the safety filter needs the nudenet package and its ONNX runtime ({e}); install it with: "
            f"{INSTALL_HINT} (or turn the filter off: --safety off)") from e
    model = Path(nudenet.__file__).parent / "320n.onnx"  # inside the wheel: nothing is downloaded
    if not model.is_file():
        raise SafetyUnavailableError(f"the nudenet package has no detector at {model}; reinstall it: {INSTALL_HINT}")
    detector = NudeDetector(str(model))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    detector.onnx_session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return detector


def _nudenet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nudenet")
    except PackageNotFoundError:
        return "unknown"

