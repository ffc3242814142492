"""Past one machine (issue 20), with real engines and no mocks: a local Ray cluster (`ray.init(num_cpus=2)`)
embeds into Parquet shards, Milvus Lite serves them.

- shards from `--engine ray` equal those from `--engine local`;
- a Milvus FLAT index returns the same top 10 as FAISS Flat;
- filters run in the database; incremental re-runs add only new or changed images;
- an embedding run killed midway is finished by the next run, which writes only the missing shards;
- the app serving `--index milvus:...` answers a search through gradio_client.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import App
from PIL import Image

from search.index.faiss_index import IndexSpec, VectorIndex
from search.index.milvus_index import MilvusTarget, build_milvus, open_gallery
from search.index.shards import ShardManifest, ShardSet, embed_to_shards, read_shard, read_shards
from search.index.sources import default_gallery, read_source

N_IMAGES = 8
SHARD_SIZE = 3


def _copy_gallery(folder: Path, n: int = N_IMAGES) -> Path:
    """The first `n` photos of the built-in gallery, shrunk (decoding is not what is tested), in a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in default_gallery()[:n]:
        im = Image.open(item.path).convert("RGB")
        im.thumbnail((320, 320))
        im.save(folder / f"{item.id.split('/')[-1]}.png")
    return folder


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_gallery(tmp_path_factory.mktemp("scale") / "photos")


@pytest.fixture(scope="module")
def local_shards(gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local-shards")
    items, _ = read_source(gallery)
    embed_to_shards(items, out, "lite", engine="local", shard_size=SHARD_SIZE, progress=False)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_milvus_targets_parse() -> None:
    lite = MilvusTarget.parse("milvus:some/dir/g.db")
    assert lite.lite and lite.uri == str(Path("some/dir/g.db").resolve()) and lite.collection == "gallery"
    server = MilvusTarget.parse("milvus://milvus.example:19530/photos")
    assert not server.lite and (server.uri, server.collection) == ("http://milvus.example:19530", "photos")
    for bad in ("milvus:g.sqlite", "milvus:///x", "faiss:dir"):
        with pytest.raises(ValueError):
            MilvusTarget.parse(bad)


# ---------------------------------------------------------------- Ray Data = local
@pytest.fixture(scope="module")
def faces():  # noqa: ANN201
    """A safety filter that flags a real photo of the gallery (FACE_FEMALE: astronaut.png)."""
    from models.safety import SafetyFilter

    return SafetyFilter({"FACE_FEMALE"}, threshold=0.5, label="test")


@pytest.fixture(scope="module")
def flagged_shards(gallery: Path, faces, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("flagged-shards")
    items, _ = read_source(gallery)
    embed_to_shards(items, out, "lite", engine="local", shard_size=SHARD_SIZE, progress=False, safety=faces)
    return out


def test_ray_shards_equal_local_shards(ray_cluster, gallery: Path, flagged_shards: Path, faces,  # noqa: ANN001
                                       tmp_path: Path) -> None:
    """Ray Data writes the shards the local engine writes: same plan, vectors, fields, thumbnails, and the safety
    flags `embed --safety on` makes (each actor loads its own detector)."""
    items, _ = read_source(gallery)
    manifest, report = embed_to_shards(items, tmp_path, "lite", engine="ray", shard_size=SHARD_SIZE, actors=2,
                                       progress=False, safety=faces)
    local = ShardManifest.read(flagged_shards)
    assert manifest.shards == local.shards and len(manifest.shards) == 3  # same plan, same names
    assert report.embedded == N_IMAGES and len(report.written) == 3
    for name in manifest.shards:
        ray_rows, ray_vecs = read_shard(tmp_path / name)
        loc_rows, loc_vecs = read_shard(flagged_shards / name)
        np.testing.assert_allclose(ray_vecs, loc_vecs, atol=1e-5)  # another thread count: rounding only
        for a, b in zip(ray_rows, loc_rows):
            assert a.pop("aesthetic") == pytest.approx(b.pop("aesthetic"), abs=1e-4)
            assert a == b
    assert {p.name for p in (tmp_path / "thumbs").iterdir()} == {p.name for p in (flagged_shards / "thumbs").iterdir()}
    flags = {r["id"]: r["safety"] for r in read_shards(tmp_path).rows}
    assert {i for i, why in flags.items() if why} == {"astronaut.png"}
    assert flags["astronaut.png"].startswith("test (FACE_FEMALE")


def test_images_flagged_while_embedding_are_hidden_by_every_index(flagged_shards: Path, tmp_path: Path) -> None:
    """Neither a FAISS index nor a Milvus collection built from shards embedded with `--safety on` returns a
    flagged image (the flag itself: test_ray_shards_equal_local_shards)."""
    from search.engine import SearchEngine
    from search.index.shards import write_faiss_index
    from search.types import Query

    shards = read_shards(flagged_shards)
    write_faiss_index(shards, tmp_path / "faiss")
    built, _ = build_milvus(shards, f"milvus:{tmp_path / 's.db'}", "FLAT")
    built.close()
    for index in (tmp_path / "faiss", f"milvus:{tmp_path / 's.db'}"):
        engine = SearchEngine.open(index)
        ids = [h.item.id for h in engine.search(Query("an astronaut in a space suit"), k=N_IMAGES)]
        assert len(ids) == N_IMAGES - 1 and "astronaut.png" not in ids, index
        if hasattr(engine.gallery, "close"):
            engine.gallery.close()


# ---------------------------------------------------------------- Milvus = FAISS
def test_milvus_flat_returns_the_same_top10_as_faiss_flat(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, dim = 3_000, 64
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = tuple({"id": f"v{i}", "path": f"/nowhere/{i}.jpg", "key": f"/nowhere/{i}.jpg|1|{i}", "caption": None,
                  "label": None, "aesthetic": None, "style": None, "safety": None, "width": None, "height": None,
                  "bytes": 1, "thumbnail": None} for i in range(n))
    shards = ShardSet(tmp_path, ShardManifest("lite", "synthetic@0", dim, (), n), rows, vectors)
    gallery, report = build_milvus(shards, f"milvus:{tmp_path / 'flat.db'}", "FLAT")
    assert report.added == n and gallery.spec.index_type == "FLAT"
    m_scores, m_rows = gallery.index.search(queries, 10)
    f_scores, f_rows = VectorIndex.build(vectors, IndexSpec("Flat")).search(queries, 10)
    assert (m_rows == f_rows).all()
    np.testing.assert_allclose(m_scores, f_scores, atol=1e-5)
    gallery.close()


def test_milvus_and_faiss_built_from_the_same_shards_agree(local_shards: Path, tmp_path: Path, capsys) -> None:
    """Through the command line: `index SHARDS_DIR --out` both backends, then `query --json` both."""
    from search.cli import main

    db, faiss_dir = f"milvus:{tmp_path / 'g.db'}", str(tmp_path / "faiss")
    assert main(["index", str(local_shards), "--out", db, "--index-type", "FLAT"]) == 0
    assert main(["index", str(local_shards), "--out", faiss_dir]) == 0
    capsys.readouterr()
    for text in ("a cat", "a cup of coffee", "a rocket launch"):
        hits = {}
        for index in (db, faiss_dir):
            assert main(["query", index, "--text", text, "--json", "-k", "5"]) == 0
            hits[index] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        m, f = hits[db], hits[faiss_dir]
        assert len(m) == 5 and [h["id"] for h in m] == [h["id"] for h in f]
        assert [h["score"] for h in m] == pytest.approx([h["score"] for h in f], abs=1e-5)
        assert [h["path"] for h in m] == [h["path"] for h in f]
    assert hits[db][0]["id"] == "rocket.png"
    # the FAISS directory built from shards carries their thumbnails
    rows = [json.loads(line) for line in next(Path(faiss_dir).glob("snapshot-*/items.jsonl")).read_text().splitlines()]
    assert all((Path(faiss_dir) / r["thumbnail"]).is_file() for r in rows)


def test_index_types_are_a_setting_with_a_size_based_default(tmp_path: Path) -> None:
    from search.index.milvus_index import auto_milvus_spec

    assert [auto_milvus_spec(n, 512).index_type for n in (10_000, 10_001, 10_000_000, 10_000_001)] == \
        ["FLAT", "HNSW", "HNSW", "IVF_SQ8"]
    rng = np.random.default_rng(1)
    n, dim = 2_000, 16
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = tuple({"id": f"v{i}", "path": f"/nowhere/{i}.jpg", "key": f"k{i}", "bytes": 1} for i in range(n))
    shards = ShardSet(tmp_path, ShardManifest("lite", "synthetic@0", dim, (), n), rows, vectors)
    exact = VectorIndex.build(vectors, IndexSpec("Flat")).search(vectors[:20], 10)[1]
    db = f"milvus:{tmp_path / 'types.db'}"
    for asked, built in (("IVF_PQ", "IVF_SQ8"), ("HNSW", "HNSW")):  # Milvus Lite cannot build IVF_PQ: mapped
        gallery, report = build_milvus(shards, db, asked)
        assert gallery.spec.index_type == built and report.added == (n if asked == "IVF_PQ" else 0)
        found = gallery.index.search(vectors[:20], 10)[1]
        assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]) >= 0.8
        gallery.close()
    gallery, _ = build_milvus(shards, db)  # no type asked: the one chosen by hand stays
    assert gallery.spec.index_type == "HNSW"
    gallery.close()


def test_rows_a_safety_filter_flagged_are_never_returned(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = tuple({"id": f"v{i}", "path": f"/nowhere/{i}.jpg", "key": f"k{i}", "bytes": 1,
                  "safety": "nudity (test)" if i in (3, 7) else None} for i in range(50))
    shards = ShardSet(tmp_path, ShardManifest("lite", "synthetic@0", 8, (), 50), rows, vectors)
    gallery, _ = build_milvus(shards, f"milvus:{tmp_path / 's.db'}")
    assert gallery.flagged_rows == {3, 7} and gallery.safety(3) == "nudity (test)"
    _, found = gallery.index.search(vectors[[3, 7, 9]], 50)
    assert found.shape == (3, 48) and not ({3, 7} & set(found.ravel().tolist()))
    assert found[2, 0] == 9
    gallery.close()


# ---------------------------------------------------------------- filters
def test_filters_run_in_the_database(local_shards: Path, tmp_path: Path) -> None:
    from search.engine import SearchEngine
    from search.types import Query

    shards = read_shards(local_shards)
    built, _ = build_milvus(shards, f"milvus:{tmp_path / 'f.db'}")
    built.close()
    scores = sorted(r["aesthetic"] for r in shards.rows)
    cut = scores[len(scores) // 2]
    engine = SearchEngine.open(f"milvus:{tmp_path / 'f.db'}")
    everything = engine.search(Query("a photo"), k=N_IMAGES)
    assert len(everything) == N_IMAGES
    good = replace_gallery(engine, f"aesthetic > {cut}").search(Query("a photo"), k=N_IMAGES)
    assert good and len(good) == sum(s > cut for s in scores)
    assert all(h.item.aesthetic > cut for h in good)
    styles = {r["style"] for r in shards.rows}
    style = sorted(styles)[0]
    only = replace_gallery(engine, f'style == "{style}"').search(Query("a photo"), k=N_IMAGES)
    assert len(only) == sum(r["style"] == style for r in shards.rows)
    assert all(h.item.extra["style"] == style for h in only)
    none = replace_gallery(engine, 'id == "no such image"').search(Query("a photo"), k=N_IMAGES)
    assert none == []
    engine.gallery.close()


def test_the_pages_filters_give_the_same_images_in_milvus_and_faiss(local_shards: Path, tmp_path: Path) -> None:
    """An ImageFilter (the page's "only this style" and "look at least"): run inside Milvus as an expression,
    over a FAISS index as hidden rows; both return the same images, all passing it, and nothing else."""
    from models.style import STYLES
    from search.engine import SearchEngine
    from search.index.shards import write_faiss_index
    from search.types import ImageFilter, Query

    shards = read_shards(local_shards)
    built, _ = build_milvus(shards, f"milvus:{tmp_path / 'p.db'}", "FLAT")
    built.close()
    write_faiss_index(shards, tmp_path / "faiss")
    milvus, faiss = SearchEngine.open(f"milvus:{tmp_path / 'p.db'}"), SearchEngine.open(tmp_path / "faiss")
    scores = sorted(r["aesthetic"] for r in shards.rows)
    styles = [r["style"] for r in shards.rows]
    common, absent = max(set(styles), key=styles.count), next(s for s in STYLES if s not in styles)
    for only in (ImageFilter(min_aesthetic=scores[len(scores) // 2]), ImageFilter(style=absent),
                 ImageFilter(style=common, min_aesthetic=scores[len(scores) // 3])):
        want = {r["id"] for r in shards.rows if only.allows(r)}
        assert len(want) < N_IMAGES
        for ranking in ("baseline", "aligned"):
            found = [[h.item.id for h in e.search(Query("a photo"), N_IMAGES, ranking, image_filter=only)]
                     for e in (milvus, faiss)]
            assert set(found[0]) == set(found[1]) == want, (only, ranking)
        assert len(faiss.compare(Query("a cat"), image_filter=only).aligned) == min(12, len(want))
    milvus.gallery.close()


def replace_gallery(engine, expression: str):  # noqa: ANN001, ANN201
    from dataclasses import replace

    return replace(engine, gallery=engine.gallery.filtered(expression))


# ---------------------------------------------------------------- incremental
def test_rerun_adds_only_new_or_changed_images(tmp_path: Path) -> None:
    photos = _copy_gallery(tmp_path / "photos", 6)
    shards_dir, db = tmp_path / "shards", f"milvus:{tmp_path / 'inc.db'}"

    def run():
        items, _ = read_source(photos)
        _, report = embed_to_shards(items, shards_dir, "lite", shard_size=SHARD_SIZE, scorer="none", progress=False)
        gallery, mreport = build_milvus(read_shards(shards_dir), db)
        gallery.close()
        return report, mreport

    first, m1 = run()
    assert first.embedded == 6 and m1.added == 6
    again, m2 = run()  # nothing changed: nothing embedded, nothing written
    assert (again.embedded, len(again.written), again.kept) == (0, 0, 2)
    assert (m2.added, m2.kept, m2.removed) == (0, 6, 0)
    # one image changed (new bytes), one added: the two alone go through the model
    changed = sorted(photos.iterdir())[1]
    Image.open(changed).rotate(90).save(changed)
    Image.open(sorted(photos.iterdir())[0]).transpose(Image.FLIP_LEFT_RIGHT).save(photos / "zz-new.png")
    third, m3 = run()
    assert (third.embedded, third.copied, third.kept, third.removed) == (2, 2, 1, 1)
    assert (m3.added, m3.kept, m3.removed, m3.count) == (2, 5, 1, 7)
    gallery = open_gallery(db)
    assert len(gallery) == 7 and gallery.row_of("zz-new.png") is not None
    gallery.close()


# ---------------------------------------------------------------- killed and resumed
def test_a_killed_embedding_run_is_finished_by_the_next(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "search", "embed", str(gallery), "--out", str(out), "--shard-size", "2",
           "--scorer", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.parquet")):
        assert proc.poll() is None, "the run ended before writing a shard"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert 1 <= len(before) < N_IMAGES // 2 and not (out / "shards.json").exists()
    items, _ = read_source(gallery)
    manifest, report = embed_to_shards(items, out, "lite", shard_size=2, scorer="none", progress=False)
    assert report.kept == len(before) and len(report.written) == len(manifest.shards) - len(before)
    assert set(report.written).isdisjoint(before)
    assert report.embedded == N_IMAGES - 2 * len(before)
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # finished shards left alone
    assert not list(out.glob("*.tmp"))  # a half-written file never counts as a shard
    assert len(read_shards(out).rows) == N_IMAGES


# ---------------------------------------------------------------- the app
@pytest.mark.slow
def test_app_serving_a_milvus_index_answers_a_search(local_shards: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    db = f"milvus:{tmp_path / 'app.db'}"
    built, _ = build_milvus(read_shards(local_shards), db)
    built.close()  # Milvus Lite: one process at a time opens a file
    thumb_ids = {Path(r["thumbnail"]).name: r["id"] for r in read_shards(local_shards).rows}
    with App(tmp_path, "--index", db) as app:
        c = Client(app.url, verbose=False, download_files=False)
        a, b, info, _ = c.predict("a cat", None, None, k=3, api_name="/search")
    assert len(a) == len(b) == 3
    firsts = [thumb_ids[Path(side[0]["image"]["path"]).name] for side in (a, b)]
    assert "chelsea.png" in firsts, json.dumps(a)[:500]
