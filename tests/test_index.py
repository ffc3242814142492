"""Indexing and FAISS search: oracle checks, defensive loading, incremental + resumable runs, zip slip."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from models import create_encoder, get_encoder
from search.index.faiss_index import IndexSpec, VectorIndex, auto_spec, compressed_spec
from search.index.gallery_index import GalleryIndex, IndexMismatchError, build_index, write_index
from search.index.sources import read_source
from search.types import GalleryItem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "camera.png"]


# ---------------------------------------------------------------- FAISS against a NumPy oracle
def clustered_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors around 50 random centres (like embeddings: structured, not uniform), unit length."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def oracle(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ base.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, 1), rows


SPECS = {  # name -> (spec, minimum recall@10 against exact search)
    "exact": (IndexSpec("Flat"), 1.0),
    "hnsw": (IndexSpec("HNSW32", "efSearch=64"), 0.9),
    "ivf": (IndexSpec("IVF64,Flat", "nprobe=16"), 0.9),
    "ivf-sq8": (IndexSpec("IVF64,SQ8", "nprobe=16"), 0.9),
    "compressed+rerank": (compressed_spec(128, nlist=64, reduced=64, nprobe=16, rerank=100), 0.9),
}


@pytest.mark.parametrize("name", SPECS)
def test_faiss_matches_numpy_brute_force(name: str) -> None:
    spec, min_recall = SPECS[name]
    data = clustered_unit_vectors(5050, 128, 0)
    base, queries = data[:5000], data[5000:]  # queries from the same distribution, not in the base
    want_scores, want_rows = oracle(base, queries, 10)
    scores, rows = VectorIndex.build(base, spec).search(queries, 10)
    assert rows.shape == scores.shape == (50, 10)
    recall = np.mean([len(set(r) & set(w)) / 10 for r, w in zip(rows, want_rows)])
    assert recall >= min_recall, f"{name}: recall@10 {recall:.3f}"
    if spec.exact:
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    if spec.rerank:  # re-ranked scores are exact inner products, best first
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, rows, 1), atol=1e-5)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_default_index_is_exact_when_small_and_compressed_when_large() -> None:
    assert auto_spec(10_000, 1256) == IndexSpec("Flat")
    big = auto_spec(1_000_000, 1256)
    assert "IVF" in big.factory and "x4fs" in big.factory and big.rerank > 0 and "nprobe" in big.params


def test_vector_index_save_load_round_trip(tmp_path: Path) -> None:
    data = clustered_unit_vectors(3020, 64, 2)
    base, queries = data[:3000], data[3000:]
    spec = IndexSpec("IVF32,SQ8", "nprobe=4", rerank=50)
    index = VectorIndex.build(base, spec)
    index.save(tmp_path / "faiss.index")
    loaded = VectorIndex.load(tmp_path / "faiss.index", spec, base)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_wrong_query_shape_is_a_clear_error() -> None:
    index = VectorIndex.build(clustered_unit_vectors(100, 32, 0), IndexSpec("Flat"))
    with pytest.raises(ValueError, match=r"expected vectors of shape \(n, 32\)"):
        index.search(np.zeros((1, 31), np.float32), 5)


# ---------------------------------------------------------------- index directories with the real lite encoder
@pytest.fixture(scope="module")
def lite():
    return get_encoder("lite")


def make_photos(folder: Path, n: int, size: int = 160) -> list[Path]:
    """n distinct small photos (crops and scales of package photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.open(SKIMAGE_DATA / PHOTOS[i % len(PHOTOS)]).convert("RGB")
        w, h = im.size
        d = (i // len(PHOTOS)) * 7 % (min(w, h) // 3)
        im = im.crop((d, d // 2, w - d // 2, h - d)).resize((size, size * h // w))
        paths.append(folder / f"photo{i:03d}.jpg")
        im.save(paths[-1], quality=90)
    return paths


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write_bad_and_odd_images(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """-> ({good file: upright size}, {bad file: words its reason must contain})."""
    folder.mkdir(parents=True, exist_ok=True)
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")             # 451 x 300
    cat.save(folder / "plain.jpg", quality=90)
    cat.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(np.asarray(cat.convert("L"), np.uint16) * 257).save(folder / "gray16.png")
    rgba = cat.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    cat.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    cat.save(folder / "rotated.jpg", quality=90, exif=exif)
    data = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")               # 100 Mpx in a few KB
    (folder / "readme.txt").write_text("not indexed: no image extension")
    good = {"plain.jpg": (451, 300), "cmyk.jpg": (451, 300), "gray16.png": (451, 300), "alpha.png": (451, 300),
            "palette.png": (451, 300), "rotated.jpg": (300, 451)}
    bad = {"truncated.jpg": "truncated", "notes.jpg": "not a readable image", "empty.png": "empty file",
           "bomb.png": "decompression bomb"}
    return good, bad


@pytest.mark.slow
def test_bad_files_are_listed_and_good_ones_indexed_upright(tmp_path: Path, lite) -> None:
    good, bad = write_bad_and_odd_images(tmp_path / "photos")
    out = tmp_path / "index"
    proc = run_cli("index", str(tmp_path / "photos"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out}: {len(good)} images · encoder {lite.fingerprint}" in proc.stdout
    for name, words in bad.items():
        line = next((ln for ln in proc.stdout.splitlines() if name in ln), None)
        assert line is not None and words in line, proc.stdout
    assert f"skipped {len(bad) + 1} " in proc.stdout  # + readme.txt (not an image extension)
    log = (out / "index.log").read_text()
    assert all(name in log for name in bad)

    index = GalleryIndex.load(out, lite)
    assert {it.id: it.size for it in index.items} == good
    assert all(it.thumbnail.is_file() and max(Image.open(it.thumbnail).size) <= 256 for it in index.items)
    # the EXIF-rotated file is embedded upright: like the upright photo, unlike the sideways pixels
    cat = Image.open(tmp_path / "photos" / "plain.jpg")
    upright, sideways = lite.encode_images([cat.rotate(-90, expand=True), cat])
    row = next(i for i, it in enumerate(index.items) if it.id == "rotated.jpg")
    v = np.asarray(index.index.vectors[row])
    assert v @ upright > 0.99 and v @ upright > v @ sideways + 0.01

    found = run_cli("query", str(out), "--text", "a cat", "-k", "3")
    assert found.returncode == 0, found.stderr[-3000:]
    header, *rows = found.stdout.splitlines()
    assert header.startswith("rank  cosine  id") and [line.split()[0] for line in rows] == ["1", "2", "3"]


def test_index_cli_on_a_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "index"))
    assert proc.returncode == 2 and f"gallery source {tmp_path / 'nowhere'} does not exist" in proc.stderr


@pytest.mark.slow
def test_incremental_runs_embed_only_new_and_changed_files(tmp_path: Path, lite) -> None:
    make_photos(tmp_path / "photos", 8)
    items, _ = read_source(tmp_path / "photos")
    first, report = build_index(items, tmp_path / "index", lite, progress=False)
    assert (report.added, report.reused, len(first)) == (8, 0, 8)

    _, report = build_index(items, tmp_path / "index", lite, progress=False)
    assert (report.added, report.reused, report.removed) == (0, 8, 0)

    make_photos(tmp_path / "more", 9)[-1].rename(tmp_path / "photos" / "new.jpg")
    (tmp_path / "photos" / "photo000.jpg").unlink()
    items, _ = read_source(tmp_path / "photos")
    index, report = build_index(items, tmp_path / "index", lite, progress=False)
    assert (report.added, report.reused, report.removed, len(index)) == (1, 7, 1, 8)
    assert len(list((tmp_path / "index").glob("snapshot-*"))) == 1  # older snapshots are removed
    assert len(list((tmp_path / "index" / "thumbs").iterdir())) == 8

    hits = index.search(lite.encode_texts(["a cat"]), 3)[0]
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
    assert all(isinstance(h.item, GalleryItem) and h.item.path.is_file() for h in hits)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_index(tmp_path: Path, lite) -> None:
    make_photos(tmp_path / "photos", 64)  # two batches: the run is killed once the first is checkpointed
    whole = tmp_path / "whole"
    build_index(read_source(tmp_path / "photos")[0], whole, lite, progress=False)  # uninterrupted, in-process

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "search", "index", str(tmp_path / "photos"), "--out", str(cut),
                             "--checkpoint-seconds", "0"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((cut / "partial").glob("*[0-9].npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (cut / "index.json").exists()  # really cut mid-run
    with pytest.raises(FileNotFoundError, match="is not an index directory"):
        GalleryIndex.load(cut, lite)

    resumed = run_cli("index", str(tmp_path / "photos"), "--out", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reused = int(resumed.stdout.split("re-used ")[1].split(",")[0])
    assert 0 < reused < 64
    a, b = GalleryIndex.load(whole, lite), GalleryIndex.load(cut, lite)
    assert [it.id for it in a.items] == [it.id for it in b.items]
    np.testing.assert_allclose(np.asarray(a.index.vectors), np.asarray(b.index.vectors), atol=1e-4)
    assert not (cut / "partial").exists()


@pytest.mark.slow
def test_index_of_another_encoder_is_refused_with_how_to_rebuild(tmp_path: Path, lite) -> None:
    make_photos(tmp_path / "photos", 3)
    items, _ = read_source(tmp_path / "photos")
    build_index(items, tmp_path / "index", lite, progress=False)
    other = create_encoder("open_clip:ViT-S-32")
    message = r"built with encoder lite@\w+, not open_clip:ViT-S-32@\w+.*Rebuild it: python -m search index"
    with pytest.raises(IndexMismatchError, match=message):
        GalleryIndex.load(tmp_path / "index", other)
    with pytest.raises(IndexMismatchError, match=message):
        build_index(items, tmp_path / "index", other, progress=False)
    index, report = build_index(items, tmp_path / "index", other, rebuild=True, progress=False)
    assert report.added == 3 and index.meta.fingerprint == other.fingerprint and index.meta.dim == other.dim


@pytest.mark.slow
def test_rows_and_folders_of_a_loaded_index(tmp_path: Path, lite) -> None:
    out = (tmp_path / "index").resolve()
    paths = [*make_photos(tmp_path / "photos" / "a", 2), *make_photos(tmp_path / "photos" / "b" / "deep", 1),
             *make_photos(out / "files", 1), *make_photos(tmp_path / "other", 1)]
    captions = ["a cat\u2028on two lines", "caf\u00e9\u0085", None, "x", "y"]  # no line breaks for JSON Lines
    items = [GalleryItem(f"item{i}", p, c) for i, (p, c) in enumerate(zip(paths, captions))]
    write_index(out, lite, items, clustered_unit_vectors(len(items), lite.dim, 0))
    want = [str(out), *(str((tmp_path / d).resolve()) for d in ("other", "photos/a", "photos/b/deep"))]

    index = GalleryIndex.load(out, lite)  # rows are parsed as they are read
    assert len(index) == len(index.rows) == 5 and index.rows[-1]["id"] == "item4"
    assert index.rows[1:3] == [index.rows[1], index.rows[2]] and index.row_of("item3") == 3
    assert [it.caption for it in index.items] == captions and index.item(3).path == out / "files" / "photo000.jpg"
    assert index.folders() == want
    (out / index.meta.snapshot / "folders.json").unlink()  # an index written before folders.json: read the rows
    assert GalleryIndex.load(out, lite).folders() == want


# ---------------------------------------------------------------- sources: manifests and zips
def test_zip_entries_escaping_the_target_are_refused(tmp_path: Path) -> None:
    photo = (SKIMAGE_DATA / "rocket.jpg").read_bytes()
    with zipfile.ZipFile(tmp_path / "g.zip", "w") as z:
        z.writestr("ok/rocket.jpg", photo)
        z.writestr("../escaped.jpg", photo)
        z.writestr("/etc/absolute.jpg", photo)
        z.writestr("ok/../../sneaky.jpg", photo)
        z.writestr("notes.txt", "hello")
    target = tmp_path / "out" / "files"
    items, skipped = read_source(tmp_path / "g.zip", extract_to=target)
    assert [it.id for it in items] == ["ok/rocket.jpg"] and (target / "ok" / "rocket.jpg").read_bytes() == photo
    refused = {s.where.split("!")[1]: s.reason for s in skipped}
    assert set(refused) == {"../escaped.jpg", "/etc/absolute.jpg", "ok/../../sneaky.jpg", "notes.txt"}
    assert all("escapes" in refused[n] for n in ("../escaped.jpg", "/etc/absolute.jpg", "ok/../../sneaky.jpg"))
    assert not (tmp_path / "out" / "escaped.jpg").exists() and not (tmp_path / "sneaky.jpg").exists()
    assert {p.name for p in tmp_path.rglob("*.jpg")} == {"rocket.jpg"}


def test_manifests_give_ids_captions_labels_and_report_bad_rows(tmp_path: Path) -> None:
    make_photos(tmp_path / "img", 2)
    rows = [{"id": "a", "path": "img/photo000.jpg", "caption": "a cat", "label": "cat"},
            {"path": "img/photo001.jpg", "captions": ["coffee", "a cup"]},
            {"id": "c", "path": "img/missing.jpg"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    items, skipped = read_source(tmp_path / "m.jsonl")
    assert [(it.id, it.caption, it.label) for it in items] == [("a", "a cat", "cat"),
                                                               ("img/photo001.jpg", "coffee", None)]
    assert [(s.where.rsplit(":", 1)[1], s.reason.split(" ")[0]) for s in skipped] == [("3", "img/missing.jpg:"),
                                                                                        ("4", "invalid")]
    (tmp_path / "m.csv").write_text("file_name,text\nimg/photo000.jpg,a cat\nimg/photo001.jpg,\n")
    items, skipped = read_source(tmp_path / "m.csv")
    assert [(it.id, it.caption) for it in items] == [("img/photo000.jpg", "a cat"), ("img/photo001.jpg", None)]
    assert skipped == []
