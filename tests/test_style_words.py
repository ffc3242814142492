"""Style words in text queries (models/style_words.py, search/style_text.py): parsing, style-free queries
ranking exactly as before, and "a sketch of X" putting a sketch of X first on a small mixed gallery."""
from __future__ import annotations

import numpy as np
import pytest

from models.style_words import LABELS, read_style, strip_style_words
from search.config import PROJECT_ROOT
from search.pipeline import encode_query, rank_query
from search.rankings import RankSettings
from search.style_text import style_probe_for, text_style_caption
from search.types import GalleryItem, Query

EXAMPLES = PROJECT_ROOT / "assets" / "examples"


@pytest.mark.parametrize(("text", "label", "content"), [
    ("a watercolour of a harbour", "painting", "a harbour"),
    ("a watercolor of a harbour", "painting", "a harbour"),
    ("a pencil sketch of a horse", "sketch", "a horse"),
    ("A Pencil Drawing of a dog", "sketch", "a dog"),
    ("sketches of giraffes", "sketch", "giraffes"),
    ("an impressionist garden", "impressionism", "a garden"),
    ("a horse in the style of impressionism", "impressionism", "a horse"),
    ("a post-impressionist painting of a cafe", "post-impressionism", "a cafe"),
    ("a post impressionist still life", "post-impressionism", "a still life"),
    ("an oil painting of an elephant", "painting", "an elephant"),
    ("cartoon dog", "cartoon", "dog"),
    ("a guitar in clip art", "cartoon", "a guitar"),
    ("pixel art of a house", "lowres", "a house"),
    ("doodles of a cat", "doodle", "a cat"),
    ("baroque", "baroque", ""),
    ("an impressionist oil painting of a bridge", "impressionism", "a bridge"),  # the movement wins
])
def test_style_words_and_synonyms_are_read_and_stripped(text: str, label: str, content: str) -> None:
    read = read_style(text)
    assert read is not None and read.label == label and read.content == content
    assert read.label in LABELS


def test_styles_without_examples_are_read_as_their_nearest_label() -> None:
    read = read_style("a cubist guitar")
    assert (read.label, read.name, read.content, read.approximate) == ("painting", "cubism", "a guitar", True)
    assert read.describe() == "cubism (read as painting)"
    assert read_style("a pointillist beach").label == "post-impressionism"


@pytest.mark.parametrize("text", ["a red car", "a romantic dinner", "a sketchy street", "a painter at work",
                                  "a photo of a cat", "a photograph of a giraffe", "", None])
def test_text_without_style_words_reads_no_style(text: str | None) -> None:
    assert read_style(text) is None
    if text:
        assert strip_style_words(text) == text


def test_a_style_free_query_ranks_exactly_as_before(default_engine) -> None:  # noqa: ANN001
    engine = default_engine
    assert style_probe_for(engine.encoder) is not None, "the lite encoder ships a style probe"
    settings = RankSettings(k=len(engine.gallery))
    for text in ("a cat", "a rocket launch", "portrait of a woman"):
        query = Query(text)
        encoded = engine.encode(query)
        assert encoded.text_style is None
        before = engine.encoder.encode_texts([text])[0]           # today's path: the text as typed, plain kNN
        assert np.array_equal(encoded.vector, before / np.linalg.norm(before))
        today = engine.gallery.search(encoded.vector[None], settings.k)[0]
        now = engine.search(query, k=settings.k)
        assert [(h.item.id, h.score) for h in now] == [(h.item.id, h.score) for h in today]
        off = encode_query(engine.encoder, query, style_words=False)
        assert [h.item.id for h in rank_query("aligned", off.vector, off, query, engine.gallery, settings, None)] == \
            [h.item.id for h in rank_query("aligned", encoded.vector, encoded, query, engine.gallery, settings, None)]


DRAWINGS = ("cat", "cup", "rocket", "flower", "motorcycle", "bicycle", "house")  # assets/examples/*.png
PHOTOS = ("chelsea", "coffee", "rocket", "motorcycle_left", "flower", "astronaut")


@pytest.fixture(scope="module")
def mixed_engine(default_engine, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """The repo's example drawings (assets/make_examples.py) and painting, and photos of the default gallery, indexed
    with the session's encoder."""
    from search.engine import SearchEngine
    from search.index.sources import default_gallery

    items = [GalleryItem(f"drawing/{n}", EXAMPLES / f"{n}.png") for n in DRAWINGS]
    items.append(GalleryItem("painting/cat", EXAMPLES / "cat-painting.png"))
    items += [GalleryItem(f"photo/{i.id.split('/')[1]}", i.path) for i in default_gallery()
              if i.id.split("/")[1] in PHOTOS]
    engine, _ = SearchEngine.build(items, default_engine.encoder, tmp_path_factory.mktemp("mixed") / "index",
                                   scorer=None)
    return engine


def ranked(engine, text: str, style_words: bool = True) -> list[str]:  # noqa: ANN001
    query = Query(text)
    encoded = encode_query(engine.encoder, query, style_words=style_words)
    return [h.item.id for h in rank_query("baseline", encoded.vector, encoded, query, engine.gallery,
                                          RankSettings(k=len(engine.gallery)), None)]


def test_a_sketch_of_a_rocket_puts_the_drawn_rocket_first_then_the_other_drawings(mixed_engine) -> None:  # noqa: ANN001
    off, on = ranked(mixed_engine, "a sketch of a rocket", False), ranked(mixed_engine, "a sketch of a rocket")
    assert off[0] == "photo/rocket"                       # today: the photo of a rocket first
    assert on[0] == "drawing/rocket", on                  # with the style word: the drawing of a rocket
    assert all(i.startswith("drawing/") for i in on[: len(DRAWINGS)]), on
    assert mixed_engine.encode(Query("a sketch of a rocket")).text_style.label == "sketch"


def test_a_photo_of_a_rocket_ranks_as_without_style_words(mixed_engine) -> None:  # noqa: ANN001
    # "photo" is not a style word: a photo is what a search finds when no style is named (models/style_words.py)
    assert ranked(mixed_engine, "a photo of a rocket") == ranked(mixed_engine, "a photo of a rocket", False)
    assert ranked(mixed_engine, "a photo of a rocket")[0] == "photo/rocket"


def test_a_painting_of_a_cat_lifts_the_painted_cat(mixed_engine) -> None:  # noqa: ANN001
    on, off = ranked(mixed_engine, "a painting of a cat"), ranked(mixed_engine, "a painting of a cat", False)
    assert on.index("painting/cat") <= 1 and on.index("painting/cat") <= off.index("painting/cat")
    assert on.index("photo/cat" if "photo/cat" in on else "photo/chelsea") <= 1  # the cat stays near the top


def test_the_caption_the_page_shows_of_the_style_read_from_the_text() -> None:
    # ui/adapters.py `describe` adds it to the query line (not imported here: gradio takes seconds to import)
    assert text_style_caption("a pencil sketch of a horse") == "**Style in text:** sketch"
    assert text_style_caption("a cubist guitar") == "**Style in text:** cubism (read as painting)"
    assert text_style_caption("a horse") is None and text_style_caption(None) is None
