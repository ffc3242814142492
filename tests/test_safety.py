"""The safety filter (models/safety.py) with NudeNet's real detector, and flagged items in real indexes.

scikit-image's sample photos are all safe. To see a flag really happen, a test-only filter treats a class
real photos do trigger as unsafe: FACE_FEMALE, which the detector finds on astronaut.png (Eileen Collins)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

pytest.importorskip("nudenet", reason="the safety filter needs: pip install nudenet==3.4.2")

from models import get_encoder  # noqa: E402
from models.safety import (  # noqa: E402
    DEFAULT_UNSAFE_CLASSES,
    SafetyFilter,
    SafetyVerdict,
    as_safety_filter,
)
from search.engine import SearchEngine  # noqa: E402
from search.index.faiss_index import IndexSpec, VectorIndex  # noqa: E402
from search.index.gallery_index import GalleryIndex, UnflaggedIndex, build_index  # noqa: E402
from search.index.sources import read_source  # noqa: E402
from search.types import Query  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SAFE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "motorcycle_left.png",
               "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "horse.png"]
GALLERY = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "motorcycle_left.png"]
FLAG = r"test \(FACE_FEMALE 0\.\d\d\)"


@pytest.fixture(scope="module")
def default() -> SafetyFilter:
    return SafetyFilter()


@pytest.fixture(scope="module")
def faces() -> SafetyFilter:
    """Test only: a woman's face counts as unsafe, so a real photo (astronaut.png) is flagged."""
    return SafetyFilter({"FACE_FEMALE"}, threshold=0.5, label="test")


@pytest.fixture(scope="module")
def lite():
    return get_encoder("lite")


def photo(name: str) -> Image.Image:
    return Image.open(SKIMAGE_DATA / name)


# ---------------------------------------------------------------- the classifier
def test_sample_photos_are_safe(default: SafetyFilter) -> None:
    images = [photo(n) for n in SAFE_PHOTOS]  # RGB, grayscale (camera, horse), large (retina 1411 px)
    verdicts = default.check_batch(images)
    assert verdicts == [SafetyVerdict(False, None, 0.0)] * len(SAFE_PHOTOS)
    assert default.classes == DEFAULT_UNSAFE_CLASSES and default.threshold == 0.5


def test_a_class_real_photos_trigger_flags_with_its_reason(faces: SafetyFilter) -> None:
    verdict = faces.check(photo("astronaut.png"))
    assert verdict.flagged and verdict.score >= 0.5
    assert re.fullmatch(FLAG, verdict.reason) and verdict.reason.endswith(f" {verdict.score:.2f})")
    assert not faces.check(photo("chelsea.png")).flagged  # a cat has no face the detector calls a woman's
    # the same class under a threshold above its score: not flagged, the score still reported
    strict = SafetyFilter({"FACE_FEMALE"}, threshold=0.99)
    assert strict.check(photo("astronaut.png")) == SafetyVerdict(False, None, verdict.score)


def test_any_mode_and_size_is_checked_after_downscaling(faces: SafetyFilter) -> None:
    astronaut = photo("astronaut.png").convert("RGB")
    big = astronaut.resize((3000, 3000), Image.Resampling.BICUBIC)
    variants = [astronaut.convert("RGBA"), astronaut.convert("P", palette=Image.Palette.ADAPTIVE), big]
    assert all(v.flagged for v in faces.check_batch(variants))
    assert max(faces._to_bgr(big).shape[:2]) == 640 and big.size == (3000, 3000)  # the input is left alone
    with pytest.raises(ValueError, match="empty image"):
        faces.check(Image.new("RGB", (0, 0)))


def test_checks_from_several_threads_agree(faces: SafetyFilter) -> None:
    images = [photo(n) for n in ("astronaut.png", "chelsea.png", "coffee.png", "astronaut.png")] * 2
    one_by_one = [faces.check(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(faces.check, images)) == one_by_one
    assert [v.flagged for v in one_by_one] == [True, False, False, True] * 2


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown NudeNet class"):
        SafetyFilter({"FEMALE_BREAST_NAKED"})
    with pytest.raises(ValueError, match="threshold"):
        SafetyFilter(threshold=0)
    with pytest.raises(ValueError, match="at least one"):
        SafetyFilter(set())
    assert as_safety_filter(None) is None and as_safety_filter("off") is None and as_safety_filter(False) is None
    assert isinstance(as_safety_filter("on"), SafetyFilter) and isinstance(as_safety_filter(True), SafetyFilter)
    with pytest.raises(ValueError, match="on or off"):
        as_safety_filter("maybe")
    a, b = SafetyFilter(), SafetyFilter({"FACE_FEMALE"})
    assert a.fingerprint != b.fingerprint and a.fingerprint == SafetyFilter().fingerprint
    assert "nudenet-3.4.2/320n" in a.fingerprint


def test_without_nudenet_the_error_says_how_to_install() -> None:
    code = ("import sys; sys.modules['nudenet'] = None\n"  # as if it were not installed
            "from models.safety import SafetyFilter\nSafetyFilter()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "SafetyUnavailableError" in proc.stderr
    assert "pip install nudenet" in proc.stderr


# ---------------------------------------------------------------- flagged items in an index (real FAISS)
@pytest.mark.parametrize("n_flagged", [1, 40, 700])
def test_searches_widen_past_flagged_rows_to_the_exact_unflagged_neighbours(n_flagged: int) -> None:
    rng = np.random.default_rng(n_flagged)
    x = rng.standard_normal((1000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(1000, 20, replace=False)]
    flagged = frozenset(rng.choice(1000, n_flagged, replace=False).tolist())
    view = UnflaggedIndex(VectorIndex.build(x, IndexSpec("Flat")), flagged)
    visible = np.array(sorted(set(range(1000)) - flagged))
    for k in (1, 10, 400):
        scores, rows = view.search(queries, k)
        want = visible[np.argsort(-(queries @ x[visible].T), axis=1, kind="stable")[:, : min(k, len(visible))]]
        assert rows.shape == want.shape and not flagged & set(rows.ravel().tolist())
        np.testing.assert_array_equal(np.sort(rows, axis=1), np.sort(want, axis=1))
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ x.T, rows, 1), atol=1e-5)
    assert len(view) == 1000 and view.vectors is x and view.spec == IndexSpec("Flat")


def gallery(folder: Path, names: list[str] = GALLERY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(SKIMAGE_DATA / n, folder / n)
    return folder


def rows_of(out: Path) -> dict[str, dict]:
    meta = json.loads((out / "index.json").read_text())
    lines = (out / meta["snapshot"] / "items.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


@pytest.mark.slow
def test_flagged_items_stay_in_the_index_and_never_come_back_from_search(tmp_path: Path, lite, faces) -> None:
    items, _ = read_source(gallery(tmp_path / "photos"))
    out = tmp_path / "index"
    index, report = build_index(items, out, lite, progress=False, safety=faces)
    rows = rows_of(out)
    assert set(rows) == set(GALLERY) and report.flagged == 1 and "flagged 1" in report.summary()
    assert re.fullmatch(FLAG, rows["astronaut.png"]["safety"])
    assert all(r["safety"] is None for n, r in rows.items() if n != "astronaut.png")
    assert index.meta.safety == faces.fingerprint

    index = GalleryIndex.load(out, lite)
    row = index.row_of("astronaut.png")
    assert index.flagged_count == 1 and index.is_flagged(row) and index.safety(row) == rows["astronaut.png"]["safety"]
    assert "astronaut.png" not in {it.id for it in index.visible_items} and len(index.items) == len(GALLERY)
    own = index.vectors([row])  # the flagged image's own vector: it would be its own best hit
    everything = index.search(own, 100)[0]
    assert len(everything) == len(GALLERY) - 1 and row not in {h.row for h in everything}
    assert [h.rank for h in index.search(own, 3)[0]] == [1, 2, 3]  # k results still come back
    _, neighbours = index.index.search(own, 3)  # what query expansion reads
    assert row not in neighbours[0] and len(index.index.vectors) == len(GALLERY)

    # through the engine, every ranking (query expansion, aesthetic re-scoring, shift)
    engine = SearchEngine(lite, index)
    query = Query(image=Image.open(out.parent / "photos" / "astronaut.png").convert("RGB"))
    for ranking in ("baseline", "aligned"):
        hits = engine.search(query, k=len(GALLERY), ranking=ranking)
        assert "astronaut.png" not in [h.item.id for h in hits] and len(hits) == len(GALLERY) - 1
    unfiltered, _ = build_index(items, tmp_path / "plain", lite, progress=False)
    assert unfiltered.flagged_count == 0 and all(r["safety"] is None for r in rows_of(tmp_path / "plain").values())
    assert SearchEngine(lite, unfiltered).search(query, k=1)[0].item.id == "astronaut.png"  # found when unfiltered


@pytest.mark.slow
def test_incremental_runs_keep_flags_and_a_run_without_the_filter_drops_them(tmp_path: Path, lite, faces) -> None:
    photos = gallery(tmp_path / "photos", GALLERY[:4])
    out = tmp_path / "index"
    build_index(read_source(photos)[0], out, lite, progress=False, safety=faces)
    flag = rows_of(out)["astronaut.png"]["safety"]
    snapshot = json.loads((out / "index.json").read_text())["snapshot"]

    _, report = build_index(read_source(photos)[0], out, lite, progress=False, safety=faces)  # nothing changed
    assert (report.added, report.reused, report.flagged) == (0, 4, 1)
    assert json.loads((out / "index.json").read_text())["snapshot"] == snapshot

    gallery(photos, GALLERY[4:])  # two new photos: only they are embedded and checked
    index, report = build_index(read_source(photos)[0], out, lite, progress=False, safety=faces)
    assert (report.added, report.reused, report.flagged) == (2, 4, 1)
    assert rows_of(out)["astronaut.png"]["safety"] == flag and index.flagged_count == 1
    row = index.row_of("astronaut.png")
    assert all(row not in {h.row for h in hits} for hits in index.search(index.vectors(list(range(6))), 9))

    index, report = build_index(read_source(photos)[0], out, lite, progress=False)  # no filter: no flags
    assert report.flagged is None and index.flagged_count == 0 and index.meta.safety is None
    assert all(r["safety"] is None for r in rows_of(out).values()) and (report.added, report.reused) == (0, 6)

    index, report = build_index(read_source(photos)[0], out, lite, progress=False, safety=faces)
    assert (report.added, report.reused, report.flagged) == (0, 6, 1)  # re-checked, not re-embedded
    assert rows_of(out)["astronaut.png"]["safety"] == flag and index.flagged_count == 1


@pytest.mark.slow
def test_cli_safety_option(tmp_path: Path) -> None:
    photos = gallery(tmp_path / "photos", GALLERY[:3])
    proc = subprocess.run([sys.executable, "-m", "search", "index", str(photos), "--out", str(tmp_path / "on"),
                           "--scorer", "none", "--safety", "on"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flagged 0 as unsafe" in proc.stdout  # the default filter ran; the sample photos are safe
    meta = json.loads((tmp_path / "on" / "index.json").read_text())
    assert meta["safety"] == SafetyFilter().fingerprint
    assert all(r["safety"] is None for r in rows_of(tmp_path / "on").values())
