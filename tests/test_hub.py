"""Hugging Face galleries and indexes (search/hub.py), run with the real `datasets` and `huggingface_hub` code on
local copies laid out as on the Hub: a dataset in the formats `datasets` writes, an index repo as a plain folder
(VISUAL_SEARCH_HUB_DIR) and in the Hugging Face cache layout (HF_HUB_CACHE). Offline errors come within seconds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from skimage import data

import search.config
from models import get_encoder
from search.engine import SearchEngine
from search.index import hub
from search.index.gallery_index import build_index
from search.index.hub import HubOfflineError, publish_index, resolve_index, stage_index
from search.index.sources import read_source
from search.types import Query

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut": "an astronaut in a spacesuit", "chelsea": "a cat", "coffee": "a cup of coffee",
          "rocket": "a rocket launch", "camera": "a man with a camera"}
OFFLINE_SECONDS = 5.0  # "within seconds": the probe's timeout is 3 s

pytestmark = pytest.mark.slow  # loads the lite encoder (once, shared by the module)


@pytest.fixture(scope="module")
def lite():  # noqa: ANN201
    return get_encoder("lite")


@pytest.fixture(scope="module")
def images() -> dict[str, Image.Image]:
    return {n: Image.fromarray(getattr(data, n)()).convert("RGB") for n in PHOTOS}


def photo_dataset(images: dict[str, Image.Image]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": list(images.values()), "caption": list(PHOTOS.values()),
                                       "id": list(images)}).cast_column("image", datasets.Image())


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of repos as plain files, the way $VISUAL_SEARCH_HUB_DIR gives them."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv(hub.LOCAL_ENV, str(root))
    return root


def assert_finds_itself(engine: SearchEngine, image: Image.Image, item_id: str) -> None:
    hits = engine.search(Query(image=image), k=3)
    assert hits[0].item.id == item_id, [h.item.id for h in hits]


# ---------------------------------------------------------------- galleries from datasets
def test_hub_dataset_in_push_to_hub_layout_is_indexed_and_searched(hub_dir: Path, tmp_path: Path, lite,
                                                                     images: dict[str, Image.Image]) -> None:
    repo = hub_dir / "someone" / "photos"
    (repo / "data").mkdir(parents=True)
    photo_dataset(images).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))  # push_to_hub's layout

    items, skipped = read_source("hf://datasets/someone/photos", extract_to=tmp_path / "files")
    assert skipped == []
    assert [(it.id, it.caption) for it in items] == list(PHOTOS.items())
    assert all(it.path.is_file() and tmp_path / "files" in it.path.parents for it in items)
    assert Image.open(items[1].path).size == images["chelsea"].size
    mtimes = [it.path.stat().st_mtime_ns for it in items]
    assert [it.path.stat().st_mtime_ns for it in read_source("hf://datasets/someone/photos",
                                                              extract_to=tmp_path / "files")[0]] == mtimes

    engine, report = SearchEngine.from_source("hf://datasets/someone/photos", lite, cache_dir=tmp_path / "cache")
    assert report.added == len(PHOTOS)
    assert_finds_itself(engine, images["chelsea"], "chelsea")
    assert engine.search(Query(text="a cat"), k=1)[0].item.id == "chelsea"
    assert engine.gallery.meta.source == "hf://datasets/someone/photos"
    again, report = SearchEngine.from_source("hf://datasets/someone/photos", lite, cache_dir=tmp_path / "cache")
    assert (report.added, report.reused) == (0, len(PHOTOS))  # images written once: vectors re-used


def test_local_datasets_formats_and_splits(hub_dir: Path, tmp_path: Path, images: dict[str, Image.Image]) -> None:
    ds = photo_dataset(images)
    ds.to_parquet(str(tmp_path / "photos.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([1, 3])}).save_to_disk(str(hub_dir / "me" / "split"))
    for source in (tmp_path / "photos.parquet", tmp_path / "saved"):
        items, _ = read_source(source, extract_to=tmp_path / "out" / source.name)
        assert [it.caption for it in items] == list(PHOTOS.values())
    items, _ = read_source("hf://datasets/me/split:test", extract_to=tmp_path / "out" / "test")
    assert [it.id for it in items] == ["chelsea", "rocket"]
    items, _ = read_source("hf://datasets/me/split:train+test", extract_to=tmp_path / "out" / "both")
    assert len(items) == len(PHOTOS) + 2 and len({it.path for it in items}) == len(items)
    assert [it.id for it in read_source("hf://datasets/me/split", extract_to=tmp_path / "out" / "d")[0]] \
        == list(PHOTOS)  # no split: "train"


def test_columns_are_detected(tmp_path: Path, images: dict[str, Image.Image]) -> None:
    pics = list(images.values())[:2]
    ds = datasets.Dataset.from_dict({
        "n": [1, 2], "photo": pics, "sentences": [[{"raw": "first of a"}, {"raw": "x"}], [{"raw": "first of b"}]],
        "label": [1, 0]}).cast_column("photo", datasets.Image()).cast_column(
        "label", datasets.ClassLabel(names=["dog", "cat"]))
    ds.to_parquet(str(tmp_path / "a.parquet"))
    items, _ = read_source(tmp_path / "a.parquet", extract_to=tmp_path / "a")
    assert [(it.caption, it.label) for it in items] == [("first of a", "cat"), ("first of b", "dog")]
    ds = datasets.Dataset.from_dict({"photo": pics, "captions": [["one", "two"], []]}).cast_column(
        "photo", datasets.Image())
    ds.to_parquet(str(tmp_path / "b.parquet"))
    assert [it.caption for it in read_source(tmp_path / "b.parquet", extract_to=tmp_path / "b")[0]] == ["one", None]
    datasets.Dataset.from_dict({"text": ["no images"]}).to_parquet(str(tmp_path / "c.parquet"))
    with pytest.raises(ValueError, match="no Image column .*text"):
        read_source(tmp_path / "c.parquet", extract_to=tmp_path / "c")


# ---------------------------------------------------------------- prebuilt indexes
@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory, lite, images: dict[str, Image.Image]) -> Path:
    """An index of a plain folder of photos (absolute paths), with the leftovers of a real build around it."""
    root = tmp_path_factory.mktemp("built")
    (root / "photos").mkdir()
    for name, im in images.items():
        im.save(root / "photos" / f"{name}.png")
    items, skipped = read_source(root / "photos")
    build_index(items, root / "index", lite, source=str(root / "photos"), skipped=skipped, progress=False)
    (root / "index" / "partial").mkdir()
    (root / "index" / "partial" / "123.npz").write_bytes(b"checkpoint")
    return root / "index"


def test_staged_index_has_no_server_paths_and_opens_without_originals(built_index: Path, tmp_path: Path, lite,
                                                                      images: dict[str, Image.Image]) -> None:
    staged = stage_index(built_index, tmp_path / "stage")
    assert "index.json" in staged and "README.md" in staged
    assert not any(f.startswith("partial") or f.endswith((".log", ".tmp")) for f in staged)
    assert sum(f.startswith("thumbs/") for f in staged) == len(PHOTOS)
    server = str(built_index.parent)
    for f in (tmp_path / "stage").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md"):
            assert server not in f.read_text(), f
    engine = SearchEngine.open(tmp_path / "stage", lite)
    item = engine.gallery.item(engine.gallery.row_of("chelsea.png"))
    assert not item.path.is_file() and item.thumbnail.is_file()  # "more like this" falls back to the thumbnail
    assert_finds_itself(engine, images["chelsea"], "chelsea.png")
    with pytest.raises(ValueError, match="not an index directory"):
        stage_index(built_index.parent / "photos", tmp_path / "nope")


def hf_cache_repo(cache: Path, repo: str, files: Path, commit: str = "0" * 40) -> None:
    """`files` laid out in the Hugging Face cache as snapshot_download leaves a dataset repo: blobs/ named by
    content hash, snapshots/<commit>/ of relative symlinks to them, refs/main naming the commit."""
    import hashlib

    base = cache / f"datasets--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    for f in sorted(p for p in files.rglob("*") if p.is_file()):
        blob = base / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(f, blob)
        link = base / "snapshots" / commit / f.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_index_from_the_hf_cache_layout(built_index: Path, tmp_path: Path, lite, monkeypatch: pytest.MonkeyPatch,
                                        images: dict[str, Image.Image]) -> None:
    stage_index(built_index, tmp_path / "stage")
    hf_cache_repo(tmp_path / "hf", "someone/photo-index", tmp_path / "stage")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(hub.LOCAL_ENV, raising=False)
    monkeypatch.setattr(search.config, "CACHE_DIR", tmp_path / "cache")
    local = resolve_index("hf://datasets/someone/photo-index")
    assert local == tmp_path / "cache" / "hub" / "someone--photo-index" / ("0" * 40)
    assert not any(p.is_symlink() for p in local.rglob("*"))  # real files: Gradio serves the thumbnails
    assert resolve_index("hf://datasets/someone/photo-index") == local  # once
    engine = SearchEngine.open("hf://datasets/someone/photo-index")
    assert engine.encoder.fingerprint == lite.fingerprint
    assert_finds_itself(engine, images["coffee"], "coffee.png")
    hit = engine.search(Query(text="a cat"), k=1)[0]
    assert hit.item.thumbnail.is_file() and local in hit.item.thumbnail.parents


def test_index_from_a_plain_folder_laid_out_as_the_repo(built_index: Path, hub_dir: Path, lite,
                                                        images: dict[str, Image.Image]) -> None:
    stage_index(built_index, hub_dir / "datasets" / "someone" / "idx")
    assert resolve_index("hf://datasets/someone/idx") == hub_dir / "datasets" / "someone" / "idx"
    assert_finds_itself(SearchEngine.open("hf://datasets/someone/idx", lite), images["rocket"], "rocket.png")
    (hub_dir / "someone" / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no index .*publish-index"):
        resolve_index("hf://datasets/someone/empty")
    with pytest.raises(ValueError, match="expected hf://datasets/OWNER/NAME"):
        resolve_index("hf://datasets/just-a-name")


# ---------------------------------------------------------------- offline: within seconds, naming the alternatives
@pytest.fixture(params=["HF_HUB_OFFLINE=1", "network closed"])
def offline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(hub.LOCAL_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    if request.param == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        if hub._hub_reachable():
            pytest.skip("the network is open here")


def timed(fn, *args, **kwargs) -> tuple[BaseException, float]:  # noqa: ANN001
    t0 = time.monotonic()
    with pytest.raises(HubOfflineError) as e:
        fn(*args, **kwargs)
    return e.value, time.monotonic() - t0


def test_offline_gallery_and_index_fail_fast(offline: None, tmp_path: Path) -> None:
    error, seconds = timed(read_source, "hf://datasets/nobody/photos", extract_to=tmp_path / "files")
    assert seconds < OFFLINE_SECONDS
    assert isinstance(error, OSError)  # app.py reports OSErrors as a one-line error
    assert "cannot download the Hugging Face dataset nobody/photos" in str(error)
    assert "--gallery FOLDER" in str(error) and "--index DIR" in str(error) and hub.LOCAL_ENV in str(error)
    error, seconds = timed(SearchEngine.open, "hf://datasets/nobody/photo-index")
    assert seconds < OFFLINE_SECONDS
    assert "--index DIR" in str(error) and "--gallery FOLDER" in str(error)


def test_offline_publish_fails_fast(offline: None, built_index: Path) -> None:
    error, seconds = timed(publish_index, built_index, "nobody/photo-index")
    assert seconds < OFFLINE_SECONDS
    assert "cannot publish to nobody/photo-index" in str(error) and "--index DIR" in str(error)


def test_publish_refuses_what_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not an index directory"):
        publish_index(tmp_path, "nobody/photo-index")
    with pytest.raises(ValueError, match="expected OWNER/NAME"):
        publish_index(tmp_path, "no-owner")


def test_cli_offline_errors(built_index: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty"),
           "VISUAL_SEARCH_CACHE": str(tmp_path / "cache")}
    env.pop(hub.LOCAL_ENV, None)
    cases = ((["publish-index", str(built_index), "--repo", "nobody/idx"], "cannot publish"),
             (["query", "hf://datasets/nobody/idx", "--text", "a cat"], "cannot download"),
             (["index", "hf://datasets/nobody/photos", "--out", str(tmp_path / "i")], "cannot download"),
             (["publish-index", str(built_index), "--repo", "nobody/idx", "--dry-run"], None))
    # started together: each is mostly a cold start (imports), so four at once take about as long as two
    procs = [subprocess.Popen([sys.executable, "-m", "search", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in cases]
    results = [p.communicate(timeout=180) for p in procs]
    for p, (_, err), (_, expected) in zip(procs, results, cases):
        if expected is None:
            assert p.returncode == 0, err
            continue
        assert p.returncode == 2, err
        assert f"error: {expected}" in err and "Traceback" not in err
    stage = Path(results[-1][0].split("staged in ", 1)[1].split(" (nothing uploaded)")[0])
    assert json.loads((stage / "index.json").read_text())["source"] == "photos"
    shutil.rmtree(stage)


def test_heads_parts_fit_a_space_and_join_to_the_trained_file() -> None:
    from models.lite import MAX_PART_BYTES, LiteHeads, heads_files, heads_sha256

    weights = ROOT / "models" / "weights"
    parts = heads_files(weights / "lite_heads.pt")
    assert len(parts) >= 2 and all(p.stat().st_size <= MAX_PART_BYTES < 10_000_000 for p in parts)
    assert get_encoder("lite").fingerprint == f"lite@{heads_sha256(weights / 'lite_heads.pt')}"
    heads = LiteHeads.load(weights / "lite_heads.pt")
    assert np.isfinite(heads.space_basis.numpy()).all()


def test_heads_save_and_load_round_trip(tmp_path: Path) -> None:
    from models.lite import heads_files, read_heads_bytes, write_heads_bytes

    blob = os.urandom(2500)
    assert [p.name for p in write_heads_bytes(tmp_path / "h.pt", blob, max_part=1000)] == \
        ["h.pt.000", "h.pt.001", "h.pt.002"]
    assert read_heads_bytes(tmp_path / "h.pt") == blob
    write_heads_bytes(tmp_path / "h.pt", blob[:500], max_part=1000)  # smaller: one file, stale parts removed
    assert heads_files(tmp_path / "h.pt") == [tmp_path / "h.pt"] and sorted(tmp_path.iterdir()) == [tmp_path / "h.pt"]
