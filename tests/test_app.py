"""The real app, served in a subprocess and used through gradio_client (no mocks): /search, /vote and
/more_like_this end to end, votes read back from the real SQLite store, bad inputs, a restart."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
import skimage
from conftest import APP, App
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from search.config import APP_VERSION
from search.index.images import MAX_PIXELS
from search.votes.store import VoteStore

pytestmark = pytest.mark.slow

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
REVEAL = re.compile(r"\*\*([AB])\*\* was the baseline ranking and \*\*([AB])\*\* the aesthetically-aligned one\. "
                    r"You chose: (.+)\.")


def client(app: App) -> Client:
    """A fresh visitor: each Client is its own session (its own gr.State)."""
    return Client(app.url, verbose=False, download_files=False)


def search(c: Client, text: str = "", sketch: dict | None = None, upload: str | None = None, **settings) -> tuple:
    return c.predict(text, sketch, handle_file(upload) if upload else None, **settings, api_name="/search")


def ids(app: App, gallery: list[dict]) -> list[str]:
    return [app.id_of(r) for r in gallery]


def new_votes(app: App, before: list) -> list:
    seen = {v.vote_id for v in before}
    return [v for v in app.votes() if v.vote_id not in seen]


# ---------------------------------------------------------------- search
def test_text_search_returns_two_rankings_of_k_results(app: App, tmp_path: Path) -> None:
    c = Client(app.url, verbose=False, download_files=str(tmp_path))  # files really served and downloaded
    a, b, info, reveal = search(c, "a cat", k=5, show_scores=True)
    assert len(a) == len(b) == 5
    for side in (a, b):
        assert len(set(ids(app, side))) == 5
        assert all(Image.open(r["image"]).size[0] > 0 for r in side)
        assert all(re.search(r"relevance -?\d\.\d{3} \(cosine\) · aesthetic \d+th percentile", r["caption"])
                   for r in side), side
    assert "skimage/chelsea" in ids(app, a) and "skimage/chelsea" in ids(app, b)
    assert "skimage/chelsea" in (ids(app, a)[0], ids(app, b)[0])  # first at least on the baseline side
    assert "**Query:** text" in info and "**Rephrased:**" in info and "5 results per side" in info
    assert reveal == ""  # hidden until the vote
    a, b, _, _ = search(c, "a cat")
    assert len(a) == len(b) == 12  # DEFAULT_TOP_K
    assert all(" · relevance" not in r["caption"] for r in a + b)


def test_the_look_filter_shows_only_the_best_looking_images_on_both_sides(app: App) -> None:
    (meta,) = app.cache_dir.glob("indexes/*/index.json")
    snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
    rows = [json.loads(line) for line in (snapshot / "items.jsonl").read_text().splitlines() if line.strip()]
    scores = sorted(r["aesthetic"] for r in rows)
    best = {r["id"] for r in rows if r["aesthetic"] >= scores[len(scores) // 2]}   # the better-looking half
    c = client(app)
    a, b, info, _ = search(c, "a cat", min_look=50)
    assert set(ids(app, a)) == set(ids(app, b)) == best
    with pytest.raises(AppError, match="greater than maximum"):  # the slider refuses it (to_filter too)
        search(c, "a cat", min_look=150)
    with pytest.raises(AppError, match="not in the list of choices"):
        search(c, "a cat", style="'); drop table")
    a, _, _, _ = search(c, "a cat")  # the next good query still works, unfiltered
    assert len(a) == 12


def test_image_search_ranks_the_same_photo_first_on_both_sides(app: App) -> None:
    a, b, info, _ = search(client(app), upload=str(SKIMAGE_DATA / "coffee.png"))
    assert ids(app, a)[0] == ids(app, b)[0] == "skimage/coffee"
    assert re.search(r"\*\*Query style:\*\* \w+ \d\.\d\d", info), info


def test_more_like_this_finds_the_clicked_image_first(app: App) -> None:
    c = client(app)
    a, b, info, _ = c.predict("skimage/astronaut", k=4, api_name="/more_like_this")
    assert len(a) == len(b) == 4
    assert ids(app, a)[0] == ids(app, b)[0] == "skimage/astronaut"
    before = app.votes()
    c.predict("B", True, api_name="/vote")
    (vote,) = new_votes(app, before)
    assert vote.settings["more_like"] == "skimage/astronaut" and vote.query_image and vote.query_text is None
    with pytest.raises(AppError, match="no gallery image with id 'no/such-id'"):
        c.predict("no/such-id", api_name="/more_like_this")


# ---------------------------------------------------------------- votes
def test_a_vote_is_stored_with_everything_the_visitor_was_shown(app: App) -> None:
    c = client(app)
    start = time.time()
    a, b, _, _ = search(c, "  a cat  ", k=6, aesthetic_weight=0.7, dedup=False)
    before = app.votes()
    reveal = c.predict("B", True, api_name="/vote")
    (vote,) = new_votes(app, before)
    assert vote.query_text == "a cat" and vote.query_image is None and vote.style is None
    assert vote.rephrased and "cat" in vote.rephrased
    assert [r.id for r in vote.side_a] == ids(app, a) and [r.id for r in vote.side_b] == ids(app, b)
    assert vote.choice == "B" and vote.baseline_side in ("A", "B")
    assert vote.preferred == ("baseline" if vote.baseline_side == "B" else "aligned")
    baseline = vote.side_a if vote.baseline_side == "A" else vote.side_b
    scores = [r.score for r in baseline]
    assert scores == sorted(scores, reverse=True)  # the baseline is plain kNN, best first
    assert vote.app_version == APP_VERSION and vote.encoder.startswith("lite@") and vote.index
    assert vote.settings == {"k": 6, "aesthetic_weight": 0.7, "rephrase": True, "dedup": False,
                             "show_scores": False, "min_look": 0, "style": "any", "text_weight": 0.5}
    assert vote.session and start - 1 <= vote.time <= time.time() + 1
    # the reveal names the side the store recorded as baseline
    match = REVEAL.search(reveal)
    assert match, reveal
    assert match[1] == vote.baseline_side and match[2] != match[1] and match[3] == "B is better"


def test_a_vote_on_an_image_query_stores_the_image_and_its_style(app: App) -> None:
    c = client(app)
    a, b, _, _ = search(c, upload=str(SKIMAGE_DATA / "coffee.png"), k=3)
    before = app.votes()
    c.predict("both_bad", True, api_name="/vote")
    (vote,) = new_votes(app, before)
    assert vote.query_text is None and vote.style and vote.choice == "both_bad"
    assert [r.id for r in vote.side_a] == ids(app, a) and [r.id for r in vote.side_b] == ids(app, b)
    stored = app.data_dir / "images" / f"{vote.query_image}.webp"
    with Image.open(stored) as im, Image.open(SKIMAGE_DATA / "coffee.png") as original:
        assert im.size == original.size  # under 1024 px: kept at its size


def test_voting_twice_on_one_query_stores_one_vote(app: App) -> None:
    c = client(app)
    search(c, "a red rocket", k=3)
    before = app.votes()
    first = c.predict("A", True, api_name="/vote")
    second = c.predict("tie", True, api_name="/vote")
    (vote,) = new_votes(app, before)
    assert vote.choice == "A"
    assert REVEAL.search(first)[3] == REVEAL.search(second)[3] == "A is better"


def test_a_vote_needs_consent(app: App) -> None:
    c = client(app)
    search(c, "a cup of coffee", k=3)
    before = app.votes()
    with pytest.raises(AppError, match="tick \"I agree that my votes are stored\""):
        c.predict("A", False, api_name="/vote")
    assert new_votes(app, before) == []
    c.predict("A", True, api_name="/vote")  # the shown comparison is still there to vote on
    assert len(new_votes(app, before)) == 1


def test_a_vote_before_any_search_is_an_error(app: App) -> None:
    before = app.votes()
    with pytest.raises(AppError, match="search first"):
        client(app).predict("A", True, api_name="/vote")
    c = client(app)
    search(c, "a cat", k=2)
    with pytest.raises(AppError, match="unknown choice 'C'"):
        c.predict("C", True, api_name="/vote")
    assert new_votes(app, before) == []


# ---------------------------------------------------------------- bad inputs
def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape, without the bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.png").write_text("this is a text file, not an image\n")
    (d / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>\n')
    Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").save(d / "cat.jpg", quality=90)
    jpeg = (d / "cat.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    side = int(MAX_PIXELS ** 0.5) + 1000
    (d / "huge-header.png").write_bytes(png_header(side, side))
    Image.new("1", (side, side), 1).save(d / "huge-1bit.png")  # a real, decodable image of a few KB
    (d / "bomb.png").write_bytes(png_header(20_000, 20_000))  # over PIL's own bomb limit too
    Image.new("RGBA", (512, 512), (0, 0, 0, 0)).save(d / "transparent.png")  # an untouched canvas
    Image.new("RGB", (512, 512), "white").save(d / "white.png")  # a canvas painted white
    return d


def canvas(path: Path) -> dict:
    return {"background": None, "layers": [], "composite": handle_file(str(path))}


over = re.escape(f"over the {MAX_PIXELS:,} limit")
BAD_INPUTS = {  # name: (text, sketch file, upload file, the message expected)
    "empty query": ("   ", None, None, "empty query: give a text, an image, or both"),
    "blank canvas": ("", "transparent.png", None, "the canvas is blank: draw something"),
    "white canvas": ("", "white.png", None, "the image is blank or a single colour"),
    "non-image upload": ("", None, "notes.png", "notes.png.*not a readable image"),
    "svg upload": ("", None, "drawing.svg", r"drawing.svg: not a readable image \(cannot identify image file"),
    "truncated jpeg": ("", None, "truncated.jpg", r"truncated.jpg: not a readable image \(image file is truncated"),
    "huge image (header)": ("", None, "huge-header.png", over),
    "huge image (1-bit)": ("", None, "huge-1bit.png", over),
    "decompression bomb": ("", None, "bomb.png", "bomb.png.*(exceeds limit|over the)"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_input_gets_a_clear_message_and_the_next_query_works(app: App, bad_files: Path, case: str) -> None:
    text, sketch, upload, message = BAD_INPUTS[case]
    c = client(app)
    start = time.monotonic()
    with pytest.raises(AppError, match=message) as error:
        search(c, text, canvas(bad_files / sketch) if sketch else None, str(bad_files / upload) if upload else None)
    assert "/tmp" not in str(error.value) and str(app.root) not in str(error.value)  # no server paths
    assert time.monotonic() - start < 15, "a bad input should be refused without decoding it"
    a, b, _, _ = search(c, "a cat", k=3)
    assert len(a) == len(b) == 3


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli():
    """app.py imported as a module (its main(argv) in this process: no second gradio/torch start-up)."""
    spec = importlib.util.spec_from_file_location("app_cli", APP)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
    environ = dict(os.environ)
    try:
        spec.loader.exec_module(module)
    finally:  # app.py sets thread variables for its own process: keep them out of this one's later tests
        os.environ.clear()
        os.environ.update(environ)
    return module


def test_help_lists_the_options(cli, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--gallery", "--index", "--encoder", "--cache-dir", "--data-dir", "--top-k", "--concurrency",
                   "--rephraser", "--hub-repo", "--host", "--port", "--share", "--public", "--safety"):
        assert option in out


def test_bad_arguments_exit_with_a_message(cli, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error(*argv: str) -> str:
        """main(argv) must exit non-zero; its message (SystemExit's, or argparse's on stderr)."""
        with pytest.raises(SystemExit) as done:
            cli.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--data-dir", str(tmp_path / "data")])
        assert done.value.code not in (0, None)
        return f"{done.value.code} {capsys.readouterr().err}"

    empty = str(tmp_path)
    assert "unknown encoder 'no-such-encoder'" in error("--encoder", "no-such-encoder")
    assert "holds no images" in error("--gallery", empty)
    message = error("--index", empty)
    assert "is not an index directory" in message and "python -m search index" in message
    assert "give --gallery or --index, not both" in error("--index", empty, "--gallery", empty)
    assert "--top-k and --concurrency must be >= 1" in error("--top-k", "0")
    assert not (tmp_path / "data").exists()  # nothing served, nothing stored


# ---------------------------------------------------------------- last: a restart
def test_votes_survive_a_restart(app: App) -> None:
    before = app.votes()
    assert before, "the tests above stored votes"
    app.stop()
    app.start()  # same --data-dir, new process
    assert [v.vote_id for v in app.votes()] == [v.vote_id for v in before]
    with VoteStore(app.data_dir) as store:
        assert store.integrity_check() == "ok"
    c = client(app)
    search(c, "a cat", k=2)
    c.predict("tie", True, api_name="/vote")
    assert len(app.votes()) == len(before) + 1


def test_searches_queue_one_per_two_cores_and_votes_have_a_pool_of_their_own(default_engine, tmp_path) -> None:  # noqa: ANN001
    """Searches (and more like this) share one pool of `--concurrency` workers, by default one per two cores (each
    search uses two); votes have their own, so a vote never waits behind searches (benchmarks/serving.py)."""
    from search import config
    from ui.handlers import Limits
    from ui.page import build_ui

    assert config.CONCURRENCY == max(1, (os.cpu_count() or 2) // 2)
    demo = build_ui(default_engine, VoteStore(tmp_path), limits=Limits(concurrency=3))
    fns = {f.api_name: f for f in demo.fns.values() if f.api_name}
    assert {"search", "more_like_this", "vote"} <= set(fns)
    assert fns["search"].concurrency_id == fns["more_like_this"].concurrency_id
    assert fns["vote"].concurrency_id != fns["search"].concurrency_id
    assert fns["search"].concurrency_limit == fns["vote"].concurrency_limit == 3
