"""The example queries under assets/: the manifest lists real files, the drawings are drawings (neither blank
nor filled in), the script reproduces what is committed, and (slow, the real encoder) they find what they
show in the default gallery."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.config import PROJECT_ROOT
from search.examples import ASSETS_DIR, KINDS, TEXT_EXAMPLES, ExampleQuery, load_examples, make_examples

EXAMPLES_DIR = ASSETS_DIR / "examples"
MANIFEST = EXAMPLES_DIR / "examples.json"
MAX_TOTAL_BYTES = 1_000_000


def manifest_rows() -> list[dict]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def load_script():
    spec = importlib.util.spec_from_file_location("make_examples", ASSETS_DIR / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_assets_dir_is_under_the_project() -> None:
    assert ASSETS_DIR == PROJECT_ROOT / "assets"
    assert (ASSETS_DIR / "README.md").is_file()


def test_manifest_lists_existing_files_with_captions_and_provenance() -> None:
    rows = manifest_rows()
    assert len({r["file"] for r in rows}) == len(rows)
    on_disk = {p.name for p in EXAMPLES_DIR.iterdir() if p.name != "examples.json"}
    assert on_disk == {r["file"] for r in rows}, "every file is listed, every listed file exists"
    for r in rows:
        assert r["kind"] in KINDS[1:]
        assert r["caption"].strip() and r["provenance"].strip() and r["licence"].strip()
        assert (r["text"] is not None) == r["kind"].endswith("+text")
        if r["source"]:  # derived from a package photo: the provenance names it
            assert r["source"] in r["provenance"]
    kinds = {r["kind"] for r in rows}
    assert {"sketch", "painting", "lowres"} <= kinds
    assert sum((EXAMPLES_DIR / r["file"]).stat().st_size for r in rows) + MANIFEST.stat().st_size < MAX_TOTAL_BYTES


@pytest.mark.parametrize("row", [r for r in manifest_rows() if r["kind"].startswith("sketch")], ids=lambda r: r["file"])
def test_sketches_are_black_lines_on_white(row: dict) -> None:
    grey = np.asarray(Image.open(EXAMPLES_DIR / row["file"]).convert("L"))
    assert grey.shape == (512, 512)
    dark = (grey < 128).mean()
    assert 0.02 < dark < 0.20, f"{row['file']}: {dark:.1%} dark pixels (nearly blank or filled in)"
    assert (grey > 240).mean() > 0.75, "a white background"
    rows, cols = np.nonzero(grey < 128)
    assert rows.max() - rows.min() > 200 and cols.max() - cols.min() > 200, "the drawing fills the canvas"


def test_load_examples_texts_then_the_manifest_in_order() -> None:
    examples = load_examples()
    assert [e.text for e in examples[: len(TEXT_EXAMPLES)]] == list(TEXT_EXAMPLES)
    assert all(e.kind == "text" and e.image is None for e in examples[: len(TEXT_EXAMPLES)])
    images = examples[len(TEXT_EXAMPLES):]
    rows = manifest_rows()
    assert [e.image for e in images] == [EXAMPLES_DIR / r["file"] for r in rows]
    assert [(e.kind, e.text, e.caption, e.provenance) for e in images] == \
        [(r["kind"], r["text"], r["caption"], r["provenance"]) for r in rows]
    assert make_examples([], "ignored") == examples  # the old name still works


def test_load_examples_refuses_a_broken_manifest(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    manifest = tmp_path / "examples" / "examples.json"
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_examples(tmp_path)
    manifest.write_text(json.dumps([{"file": "a.png", "kind": "photo"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_examples(tmp_path)
    manifest.write_text(json.dumps([{"file": "missing.png", "kind": "sketch"}]))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_examples(tmp_path)
    Image.new("L", (8, 8), 255).save(tmp_path / "examples" / "a.png")
    manifest.write_text(json.dumps([{"file": "a.png", "kind": "sketch+text", "text": " a cat "}]))
    assert load_examples(tmp_path)[-1] == ExampleQuery("a cat", tmp_path / "examples" / "a.png", "sketch+text",
                                                       "a.png", "")


def test_the_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    """Same manifest, same pixels (PNG bytes may differ with another zlib, pixels may not)."""
    load_script().main(tmp_path)
    assert json.loads((tmp_path / "examples.json").read_text()) == manifest_rows()
    for r in manifest_rows():
        with Image.open(tmp_path / r["file"]) as new, Image.open(EXAMPLES_DIR / r["file"]) as old:
            assert new.mode == old.mode and new.size == old.size, r["file"]
            assert np.array_equal(np.asarray(new), np.asarray(old)), f"{r['file']} differs from the committed one"


# ---------------------------------------------------------------- with the real encoder
@pytest.fixture(scope="module")
def engine(default_engine):  # noqa: ANN001, ANN201 (the session's engine on the default gallery: conftest.py)
    return default_engine


def first_hits(engine, example: ExampleQuery, k: int = 3) -> list[str]:
    from search.index.images import load_image
    from search.types import Query

    hits = engine.search(Query(text=example.text, image=load_image(example.image)), k=k)
    return [h.item.id for h in hits]


def image_example(file: str) -> ExampleQuery:
    return next(e for e in load_examples() if e.image is not None and e.image.name == file)


@pytest.mark.slow
def test_the_cup_sketch_finds_the_coffee_photo(engine) -> None:
    assert "skimage/coffee" in first_hits(engine, image_example("cup.png"))


@pytest.mark.slow
def test_the_lowres_example_finds_its_source_photo_first(engine) -> None:
    row = next(r for r in manifest_rows() if r["kind"] == "lowres")
    package, rel = row["source"].split("/", 1)
    assert first_hits(engine, image_example(row["file"]))[0] == f"{package}/{Path(rel).stem}"


@pytest.mark.slow
def test_every_image_example_is_a_readable_query(engine) -> None:
    """No example is refused as blank, and each finds some of the gallery."""
    for e in load_examples():
        if e.image is not None:
            assert len(first_hits(engine, e)) == 3, e.image.name
