"""search.evaluation.evaluate on a tiny benchmark folder built from package sample photos, with the real `lite` encoder.

Most queries have answers that do not depend on model quality (an exact copy of a gallery photo is its own
nearest neighbour; a query whose relevant set is the whole gallery is perfect), so their metrics are
computed by hand. All rankings are also checked against a NumPy brute-force oracle over the same vectors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import get_encoder
from search.evaluation.evaluate import EvalResult, evaluate, write_outputs
from search.evaluation.metrics import METRICS, query_metrics
from search.index.images import load_image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENCODER = "lite"

pytestmark = pytest.mark.slow  # every test here runs the real lite encoder


def sample_arrays() -> dict[str, np.ndarray]:
    """Twelve photos shipped inside scikit-image and scikit-learn (RGB and grayscale)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    return {
        "chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(),
        "astronaut": skimage.data.astronaut(), "motorcycle": skimage.data.stereo_motorcycle()[0],
        "china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg"),
        "camera": skimage.data.camera(), "coins": skimage.data.coins(), "moon": skimage.data.moon(),
        "brick": skimage.data.brick(), "hubble": skimage.data.hubble_deep_field(),
    }


GALLERY_IDS = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china", "flower",
               "camera", "coins", "moon", "brick", "hubble"]
EXT = {gid: "png" if i % 2 else "jpg" for i, gid in enumerate(GALLERY_IDS)}  # both formats in the gallery
OTHERS = [g for g in GALLERY_IDS if g != "chelsea"]

# Average precision when the 11 relevant ids fill ranks 2..12 (rank 1 is the query's own copy):
# the k-th relevant item sits at rank k + 1, so its precision is k / (k + 1).
AP_COMPLEMENT = sum(k / (k + 1) for k in range(1, 12)) / 11

EXPECTED_BY_STYLE = {
    # exact copies of gallery photos: rank 1 is certain; one relevant id -> P@10 = 1/10
    "copy": {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": 1.0, "P@10": 0.1, "n": 3},
    # a copy of chelsea whose relevant set is every *other* photo: rank 1 misses, ranks 2..12 hit
    "complement": {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "mAP": AP_COMPLEMENT, "P@10": 0.9, "n": 1},
    # a text query for which the whole gallery is relevant: perfect whatever the model
    "text": {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP": 1.0, "P@10": 1.0, "n": 1},
}

# (file, line) -> words the reason must contain; the gallery/queries files below put them on these lines
EXPECTED_PROBLEMS = {
    ("gallery.jsonl", 13): "image images/ghost.jpg not found",
    ("gallery.jsonl", 14): "notes.jpg: not a readable image",
    ("gallery.jsonl", 16): "invalid JSON",
    ("gallery.jsonl", 17): "duplicate id 'chelsea'",
    ("queries.jsonl", 8): "relevant id(s) not in the gallery: ['ghost']",
    ("queries.jsonl", 9): "empty.jpg: empty file (0 bytes)",
    ("queries.jsonl", 10): "invalid JSON",
    ("queries.jsonl", 11): "relevant id(s) not in the gallery: ['notes']",
}
GOOD_QUERIES = ["copy-chelsea", "copy-rocket", "copy-flower", "not-chelsea", "text-all", "text-cat", "text-rocket"]


def copy_path(gid: str) -> str:
    return f"queries/{gid}-copy.{EXT[gid]}"


# queries.jsonl, one row per line; None is a malformed line
QUERY_ROWS = [
    {"id": "copy-chelsea", "style": "copy", "path": copy_path("chelsea"), "relevant": ["chelsea"]},        # 1
    {"id": "copy-rocket", "style": "copy", "path": copy_path("rocket"), "relevant": ["rocket"]},           # 2
    {"id": "copy-flower", "style": "copy", "path": copy_path("flower"), "relevant": ["flower"]},           # 3
    {"id": "not-chelsea", "style": "complement", "path": copy_path("chelsea"), "relevant": OTHERS},        # 4
    {"id": "text-all", "style": "text", "text": "a photo", "relevant": GALLERY_IDS},                       # 5
    {"id": "text-cat", "style": "text-content", "text": "a cat", "relevant": ["chelsea"]},                 # 6
    {"id": "text-rocket", "style": "text-content", "text": "a rocket", "relevant": ["rocket"]},            # 7
    {"id": "bad-relevant", "style": "text", "text": "a ghost", "relevant": ["chelsea", "ghost"]},          # 8
    {"id": "empty-image", "style": "copy", "path": "queries/empty.jpg", "relevant": ["coffee"]},           # 9
    None,                                                                                                   # 10
    {"id": "skipped-target", "style": "text", "text": "some notes", "relevant": ["notes"]},                # 11
]
QUERIES = {row["id"]: row for row in QUERY_ROWS if row is not None}


def build_benchmark(root: Path) -> Path:
    """A benchmark folder in the shared format: 12 good gallery rows and 7 good queries, plus bad rows."""
    (root / "images").mkdir(parents=True)
    (root / "queries").mkdir()
    gallery_lines = []
    for gid, array in sample_arrays().items():  # camera, coins, moon and brick are grayscale
        Image.fromarray(array).save(root / "images" / f"{gid}.{EXT[gid]}")
        gallery_lines.append(json.dumps({"id": gid, "path": f"images/{gid}.{EXT[gid]}", "style": "photo"}))
    assert [json.loads(line)["id"] for line in gallery_lines] == GALLERY_IDS
    (root / "images" / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    gallery_lines += [
        json.dumps({"id": "ghost", "path": "images/ghost.jpg"}),                  # 13: image missing
        json.dumps({"id": "notes", "path": "images/notes.jpg"}),                  # 14: text file named .jpg
        "",                                                                       # 15: blank (ignored)
        '{"id": "broken", "path": "images/chelsea.jpg"',                         # 16: malformed JSON
        json.dumps({"id": "chelsea", "path": "images/coffee.png"}),               # 17: duplicate id
    ]
    (root / "gallery.jsonl").write_text("\n".join(gallery_lines) + "\n")

    for gid in ("chelsea", "rocket", "flower"):  # byte-for-byte copies of gallery files
        shutil.copyfile(root / "images" / f"{gid}.{EXT[gid]}", root / copy_path(gid))
    (root / "queries" / "empty.jpg").write_bytes(b"")
    lines = ['{"id": "q-broken", "text": "a cat", ' if row is None else json.dumps(row) for row in QUERY_ROWS]
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_benchmark(tmp_path_factory.mktemp("tiny-bench") / "tiny")


@pytest.fixture(scope="module")
def result(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    return evaluate(bench, encoder=ENCODER, cache_dir=tmp_path_factory.mktemp("eval") / "cache")


def assert_metrics(got: dict, expected: dict) -> None:
    assert set(got) == {*METRICS, "n"}
    assert got["n"] == expected["n"]
    assert {m: got[m] for m in METRICS} == pytest.approx({m: expected[m] for m in METRICS}, abs=1e-9)


# ---------------------------------------------------------------- metrics
def test_hand_computed_styles(result: EvalResult) -> None:
    assert result.benchmark == "tiny" and result.encoder == ENCODER and result.ranking == "baseline"
    assert set(result.by_style) == {"copy", "complement", "text", "text-content"}
    for style, expected in EXPECTED_BY_STYLE.items():
        assert_metrics(result.by_style[style], expected)


def test_overall_is_the_mean_over_all_queries(result: EvalResult) -> None:
    styles = result.by_style.values()
    assert result.overall["n"] == sum(m["n"] for m in styles) == len(GOOD_QUERIES)
    for metric in METRICS:
        expected = sum(m[metric] * m["n"] for m in styles) / len(GOOD_QUERIES)
        assert result.overall[metric] == pytest.approx(expected, abs=1e-9)


def test_rankings_match_a_brute_force_oracle(bench: Path, result: EvalResult) -> None:
    """Every query's full ranking equals NumPy's ranking of the same encoder's vectors (no FAISS)."""
    enc = get_encoder(ENCODER)
    gallery_vecs = enc.encode_images([load_image(bench / "images" / f"{g}.{EXT[g]}") for g in GALLERY_IDS])
    image_q = [q for q in GOOD_QUERIES if "path" in QUERIES[q]]
    text_q = [q for q in GOOD_QUERIES if "text" in QUERIES[q]]
    image_vecs = enc.encode_images([load_image(bench / QUERIES[q]["path"]) for q in image_q])
    qvecs = dict(zip(image_q, image_vecs, strict=True))
    qvecs.update(zip(text_q, enc.encode_texts([QUERIES[q]["text"] for q in text_q]), strict=True))

    got = dict(result.rankings)
    assert list(got) == GOOD_QUERIES  # bad queries skipped, the rest in file order
    per_style: dict[str, list[dict]] = {}
    for qid in GOOD_QUERIES:
        scores = gallery_vecs @ qvecs[qid]
        oracle = [GALLERY_IDS[j] for j in np.argsort(-scores, kind="stable")]
        assert got[qid] == oracle, qid
        per_style.setdefault(QUERIES[qid]["style"], []).append(query_metrics(oracle, QUERIES[qid]["relevant"]))
    for style, ms in per_style.items():
        assert result.by_style[style]["n"] == len(ms)
        for metric in METRICS:
            assert result.by_style[style][metric] == pytest.approx(np.mean([m[metric] for m in ms]), abs=1e-9)


def test_copies_rank_their_original_first_and_text_finds_content(result: EvalResult) -> None:
    got = dict(result.rankings)
    for qid, first in [("copy-chelsea", "chelsea"), ("copy-rocket", "rocket"), ("copy-flower", "flower"),
                       ("not-chelsea", "chelsea")]:
        assert got[qid][0] == first
    for ranked in got.values():
        assert sorted(ranked) == sorted(GALLERY_IDS)  # full rankings of the readable gallery
    # model quality, as in test_models: lite finds the cat and the rocket among these 12 photos
    assert got["text-cat"][0] == "chelsea"
    assert got["text-rocket"][0] == "rocket"


# ---------------------------------------------------------------- bad rows
def test_bad_rows_are_reported_with_file_and_line_and_skipped(result: EvalResult) -> None:
    found = {(p.file, p.line): p for p in result.problems}
    assert set(found) == set(EXPECTED_PROBLEMS), [str(p) for p in result.problems]
    assert len(result.problems) == len(EXPECTED_PROBLEMS)  # each reported once
    for (file, line), words in EXPECTED_PROBLEMS.items():
        assert words in found[file, line].reason
        assert str(found[file, line]).startswith(f"{file}:{line}: ")
    assert not {"ghost", "notes", "broken"} & set(dict(result.rankings)["text-all"])


# ---------------------------------------------------------------- outputs and cache
def test_write_outputs(result: EvalResult, tmp_path: Path) -> None:
    out, rankings_out = tmp_path / "out.json", tmp_path / "rankings.jsonl"
    write_outputs(result, out, rankings_out)
    data = json.loads(out.read_text())
    assert {"benchmark", "encoder", "ranking", "overall", "by_style"} <= set(data)
    assert (data["benchmark"], data["encoder"], data["ranking"]) == ("tiny", ENCODER, "baseline")
    assert set(data["overall"]) == {*METRICS, "n"} and data["overall"]["n"] == len(GOOD_QUERIES)
    for style, expected in EXPECTED_BY_STYLE.items():
        assert_metrics(data["by_style"][style], expected)
    assert sorted(data["problems"]) == sorted(str(p) for p in result.problems)
    rows = [json.loads(line) for line in rankings_out.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == GOOD_QUERIES
    for row in rows:
        assert set(row) == {"query_id", "ranked"}
        assert len(row["ranked"]) >= 10 and row["ranked"] == dict(result.rankings)[row["query_id"]]


def test_second_run_reuses_the_cache_with_the_same_result(bench: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="search"):
        first = evaluate(bench, encoder=ENCODER, cache_dir=cache)
        assert "added 12" in caplog.text
        caplog.clear()
        second = evaluate(bench, encoder=ENCODER, cache_dir=cache)
        assert "added 0, re-used 12" in caplog.text  # the gallery index is kept in the cache
    assert second.to_json() == first.to_json()  # including the unreadable gallery file
    assert second.rankings == first.rankings
    uncached = evaluate(bench, encoder=ENCODER, cache_dir=None)
    assert uncached.rankings == first.rankings


def test_cli_eval_prints_a_table_and_reuses_its_cache(bench: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VISUAL_SEARCH_ENCODER"}
    out, rankings_out, cache = tmp_path / "out.json", tmp_path / "r.jsonl", tmp_path / "cache"
    cmd = [sys.executable, "-m", "search", "eval", str(bench), "--out", str(out), "--rankings-out", str(rankings_out),
           "--cache-dir", str(cache)]

    first = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0] == f"tiny · encoder {ENCODER} · ranking baseline · style on"
    assert lines[1].split() == ["style", *METRICS, "n"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:] if line.strip() and not line.startswith(" ")}
    for style in ("copy", "complement", "text", "text-content", "overall"):
        assert style in rows, first.stdout
    assert rows["copy"] == ["1.000", "1.000", "1.000", "1.000", "0.100", "3"]
    assert rows["complement"] == ["0.000", "1.000", "1.000", f"{AP_COMPLEMENT:.3f}", "0.900", "1"]
    assert rows["overall"][-1] == str(len(GOOD_QUERIES))
    assert f"{len(EXPECTED_PROBLEMS)} bad row(s) skipped:" in first.stdout
    assert "  gallery.jsonl:14: " in first.stdout and "  queries.jsonl:9: " in first.stdout
    assert "added 12" in first.stderr
    data = json.loads(out.read_text())
    assert data["by_style"]["complement"]["mAP"] == pytest.approx(AP_COMPLEMENT)
    assert len(rankings_out.read_text().splitlines()) == len(GOOD_QUERIES)

    second = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "added 0, re-used 12" in second.stderr
    assert second.stdout == first.stdout
    assert json.loads(out.read_text()) == data


def test_cli_eval_on_a_folder_that_is_not_a_benchmark(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "search", "eval", str(tmp_path), "--cache-dir", str(tmp_path / "c")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: {tmp_path} is not a benchmark folder: gallery.jsonl is missing" in proc.stderr
