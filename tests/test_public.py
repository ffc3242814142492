"""Safe in front of the public (issue 16), tried as an attacker would, against real launched apps: only
thumbnails and examples are served, every image that enters is bounded, session state is small, abuse is
limited with clear messages, and errors say what happened without server paths."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage
from conftest import APP, App
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from search.index import sources as gallery_sources
from search.votes.store import VoteStore

pytestmark = pytest.mark.slow

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


def client(app: App) -> Client:
    return Client(app.url, verbose=False, download_files=False)


def search(c: Client, text: str = "", sketch: dict | None = None, upload: str | None = None, **settings) -> tuple:
    return c.predict(text, sketch, handle_file(upload) if upload else None, **settings, api_name="/search")


def fetch(app: App, path: str | Path) -> int:
    """HTTP status of Gradio's file route for a server path (what an attacker would ask for)."""
    return httpx.get(f"{app.url}gradio_api/file={path}", timeout=30).status_code


def rss_mb(app: App) -> float:
    for line in Path(f"/proc/{app.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def noise_jpeg(path: Path, side: int) -> Path:
    """A photo-sized JPEG that compresses badly (a photo blown up, with grain): the worst case for stored bytes."""
    photo = np.asarray(Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB").resize((side, side)), np.int16)
    grain = np.random.default_rng(side).integers(-40, 41, photo.shape, dtype=np.int16)
    Image.fromarray(np.clip(photo + grain, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def make_unwritable(path: Path) -> None:
    """Root ignores permission bits: make the folder immutable instead (chattr), else read-only (chmod)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    else:
        path.chmod(0o555)
    try:
        (path / ".probe").touch()
    except OSError:
        return
    (path / ".probe").unlink()
    pytest.skip(f"cannot make {path} unwritable on this file system")


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    else:
        path.chmod(0o755)


# ---------------------------------------------------------------- a gallery beside private files
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "home folder" holding a manifest gallery next to secrets, and a symlinked image whose target
    lies beside another secret."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    (home / ".env").write_text("HF_TOKEN=hf_secret\n")
    (home / "notes.txt").write_text("private notes\n")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(SKIMAGE_DATA / "rocket.jpg", outside / "rocket.jpg")
    (outside / "secret.txt").write_text("beside the symlink's target\n")
    photos = home / "photos"
    photos.mkdir()
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        shutil.copy(SKIMAGE_DATA / name, photos / name)
    (photos / "rocket.jpg").symlink_to(outside / "rocket.jpg")
    rows = [{"path": "photos/chelsea.png", "caption": "a cat"}, {"path": "photos/coffee.png", "caption": "coffee"},
            {"path": "photos/astronaut.png", "caption": "an astronaut"}, {"path": "photos/rocket.jpg"}]
    (home / "gallery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return home


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, home: Path):
    """A second app: that gallery, the safety filter on (with a class the astronaut photo triggers, so a real
    detection happens), tight per-visitor limits and a 1-byte quota for stored query images."""
    env = {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "20", "VISUAL_SEARCH_VOTES_PER_MINUTE": "20",
           "VISUAL_SEARCH_IMAGE_QUOTA": "1", "VISUAL_SEARCH_SAFETY_CLASSES": "FACE_FEMALE",
           "VISUAL_SEARCH_QUEUE_SIZE": "2"}
    with App(tmp_path_factory.mktemp("strict"), "--gallery", str(home / "gallery.jsonl"), "--safety", "on",
             "--concurrency", "1", env=env) as app:
        yield app


def served_ids(app: App, results: list[dict]) -> list[str]:
    (meta,) = app.cache_dir.glob("indexes/*/index.json")
    snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
    rows = [json.loads(line) for line in (snapshot / "items.jsonl").read_text().splitlines() if line.strip()]
    by_thumb = {Path(r["thumbnail"]).name: r["id"] for r in rows}
    return [by_thumb[Path(r["image"]["path"]).name] for r in results]


def test_nothing_beside_a_gallery_is_served(strict: App, home: Path) -> None:
    c = Client(strict.url, verbose=False, download_files=False)
    a, b, _, _ = search(c, "a cat", k=3)
    thumbnails = [r["image"]["path"] for r in a + b]
    assert thumbnails and all(fetch(strict, t) == 200 for t in thumbnails)  # what the page shows is served
    outside = (home / "photos" / "rocket.jpg").resolve().parent
    for private in (home / ".ssh" / "id_rsa", home / ".env", home / "notes.txt", home / "gallery.jsonl",
                    home / "photos" / "chelsea.png", home / "photos" / "rocket.jpg", outside / "secret.txt",
                    outside / "rocket.jpg"):
        assert fetch(strict, private) == 403, private


def test_the_index_files_and_package_folders_are_not_served(app: App) -> None:
    search(client(app), "a cat", k=2)
    (meta,) = app.cache_dir.glob("indexes/*/index.json")
    snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
    private = [meta, meta.parent / "index.log", *(snapshot / n for n in ("items.jsonl", "vectors.npy", "faiss.index")),
               SKIMAGE_DATA / "__init__.py", SKIMAGE_DATA / "chelsea.png", APP, app.data_dir / "votes.db"]
    for path in private:
        assert path.is_file(), path
        assert fetch(app, path) == 403, path
    thumbs = sorted((meta.parent / "thumbs").iterdir())
    assert thumbs and fetch(app, thumbs[0]) == 200  # thumbnails are the gallery's public face


def test_a_huge_canvas_is_refused_before_it_is_decoded(app: App, tmp_path: Path) -> None:
    big = tmp_path / "canvas.png"
    Image.new("1", (12_000, 12_000), 1).save(big)  # a few KB on the wire, 576 MB as RGBA
    before = rss_mb(app)
    c = client(app)
    with pytest.raises(AppError, match=r"the drawing is 12000x12000 pixels, over the 16,000,000 limit"):
        search(c, "", {"background": None, "layers": [], "composite": handle_file(str(big))})
    assert rss_mb(app) - before < 200
    a, _, _, _ = search(c, "a cat", k=2)  # the next good query works
    assert len(a) == 2


def test_an_image_vote_stores_a_small_webp(app: App, tmp_path: Path) -> None:
    photo = noise_jpeg(tmp_path / "noise.jpg", 4000)  # ~ 10 MB of JPEG, 48 MB of pixels
    c = client(app)
    search(c, "", None, str(photo), k=3)
    with VoteStore(app.data_dir) as store:
        before = {v.vote_id for v in store.votes()}
    c.predict("A", True, api_name="/vote")
    with VoteStore(app.data_dir) as store:
        (vote,) = [v for v in store.votes() if v.vote_id not in before]
        stored = store.image_path(vote.query_image)
    assert stored.suffix == ".webp" and stored.stat().st_size < 1_000_000
    with Image.open(stored) as im:
        assert im.format == "WEBP" and max(im.size) == 1024


def test_sessions_keep_no_full_size_image(app: App, tmp_path: Path) -> None:
    photo = noise_jpeg(tmp_path / "noise.jpg", 4000)
    for _ in range(2):  # warm up: the first large uploads size the allocator's pools
        search(client(app), "", None, str(photo), k=2)
    before = rss_mb(app)
    for _ in range(8):
        search(client(app), "", None, str(photo), k=2)
    growth = rss_mb(app) - before
    assert growth < 100, f"8 sessions with a 4000x4000 upload grew the server by {growth:.0f} MB"


def test_uploads_over_the_size_limit_are_refused(app: App) -> None:
    junk = os.urandom(21 * 1024 * 1024)
    response = httpx.post(f"{app.url}gradio_api/upload", files={"files": ("junk.bin", junk)}, timeout=60)
    assert response.status_code == 413, response.text[:200]
    a, _, _, _ = search(client(app), "a cat", k=1)
    assert len(a) == 1


def test_a_long_text_is_refused_and_not_logged(app: App) -> None:
    c = client(app)
    with pytest.raises(AppError, match="the text is 5,000 characters long; at most 1,000 are searched"):
        search(c, "a cat " * 833 + "xx")
    search(c, "a cat " * 166, k=1)  # 996 characters: searched, logged short
    assert max(len(line) for line in app.log.read_text(errors="replace").splitlines()) < 1000


def test_a_vote_that_cannot_be_written_says_so_and_loses_nothing(app: App) -> None:
    c = client(app)
    search(c, "", None, str(SKIMAGE_DATA / "rocket.jpg"), k=2)
    before = len(app.votes())
    make_unwritable(app.data_dir / "images")
    try:
        with pytest.raises(AppError, match="vote not saved: the server could not write it") as error:
            c.predict("A", True, api_name="/vote")
        assert str(app.root) not in str(error.value)
    finally:
        make_writable(app.data_dir / "images")
    assert len(app.votes()) == before
    c.predict("A", True, api_name="/vote")  # the comparison is still there: the retry is stored
    assert len(app.votes()) == before + 1


def test_consent_must_be_exactly_true(app: App) -> None:
    c = client(app)
    search(c, "a cup of coffee", k=2)
    before = len(app.votes())
    for fake in ("false", "true", 1, "yes"):
        with pytest.raises(AppError, match="tick \"I agree that my votes are stored\""):
            c.predict("A", fake, api_name="/vote")
    assert len(app.votes()) == before
    c.predict("A", True, api_name="/vote")
    assert len(app.votes()) == before + 1


def test_the_stored_session_id_is_made_by_the_server(app: App) -> None:
    c = client(app)
    c.session_hash = "x" * 5009  # a visitor may pick any session hash
    search(c, "a rocket", k=2)
    before = {v.vote_id for v in app.votes()}
    c.predict("tie", True, api_name="/vote")
    (vote,) = [v for v in app.votes() if v.vote_id not in before]
    assert len(vote.session) == 32 and set(vote.session) <= set("0123456789abcdef")
    search(c, "a cat", k=2)  # the same visitor's next query keeps the same server-made session
    c.predict("A", True, api_name="/vote")
    assert {v.session for v in app.votes() if v.vote_id not in before} == {vote.session}


# ---------------------------------------------------------------- the strict app: safety, quota, rate limits
def test_unsafe_gallery_images_are_hidden_and_unsafe_queries_refused(strict: App) -> None:
    c = client(strict)
    a, b, _, _ = search(c, "an astronaut portrait", k=4)
    shown = set(served_ids(strict, a + b))
    assert shown and "photos/astronaut.png" not in shown  # flagged at indexing: kept in the index, never shown
    with pytest.raises(AppError, match=r"this image was refused by the safety filter \(nudity \(FACE_FEMALE"):
        search(c, "", None, str(SKIMAGE_DATA / "astronaut.png"))
    a, _, _, _ = search(c, "", None, str(SKIMAGE_DATA / "coffee.png"), k=1)
    assert served_ids(strict, a) == ["photos/coffee.png"]
    with pytest.raises(AppError, match="no gallery image with id 'photos/astronaut.png'"):
        c.predict("photos/astronaut.png", api_name="/more_like_this")
    (meta,) = strict.cache_dir.glob("indexes/*/index.json")
    snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
    rows = [json.loads(line) for line in (snapshot / "items.jsonl").read_text().splitlines() if line.strip()]
    (flagged,) = [r for r in rows if r["safety"]]
    assert flagged["id"] == "photos/astronaut.png" and fetch(strict, meta.parent / flagged["thumbnail"]) == 403


def test_a_vote_over_the_image_quota_says_so(strict: App) -> None:
    c = client(strict)
    search(c, "", None, str(SKIMAGE_DATA / "chelsea.png"), k=2)
    with pytest.raises(AppError, match="vote not saved: the server's storage for query images is full"):
        c.predict("A", True, api_name="/vote")
    search(c, "a cat", k=2)
    c.predict("B", True, api_name="/vote")  # a vote without an image is still stored
    assert [v.choice for v in strict.votes()] == ["B"]


def test_a_full_queue_says_so(strict: App) -> None:
    visitors = [client(strict) for _ in range(8)]
    jobs = [c.submit("", None, handle_file(str(SKIMAGE_DATA / "astronaut.png")), api_name="/search")
            for c in visitors]  # refused by the safety filter, but only after a worker took it
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001 (the outcome is the message)
            outcomes.append(str(e))
    assert any("queue is full" in o.lower() for o in outcomes), outcomes
    assert any("safety filter" in o for o in outcomes), outcomes  # the ones queued were served
    a, _, _, _ = search(client(strict), "a cat", k=1)
    assert len(a) == 1


def test_too_many_requests_get_a_clear_message_then_pass_again(strict: App) -> None:
    c = client(strict)
    message = None
    for _ in range(25):  # 20 a minute, in bursts of 20
        try:
            search(c, "a cat", k=1)
        except AppError as e:
            message = str(e)
            break
    assert message and "too many searches: at most 20 a minute; try again in" in message
    time.sleep(3.5)  # one search's worth of tokens
    a, _, _, _ = search(c, "a cat", k=1)
    assert len(a) == 1


# ---------------------------------------------------------------- start-up and sources
def test_an_unwritable_data_dir_stops_the_app_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    VoteStore(data).close()
    for leftover in data.glob("votes.db-*"):
        leftover.unlink()
    make_unwritable(data / "images")
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(APP), "--data-dir", str(data), "--cache-dir", str(tmp_path / "c")],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        make_writable(data / "images")
    assert done.returncode != 0
    assert "app.py: error: cannot store votes in" in done.stderr and "writable --data-dir" in done.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "c").exists()  # before any indexing


def zip_of(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_a_zip_bomb_writes_nothing(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "bomb.zip", {f"{i}.png": bytes(50 * 1024 * 1024) for i in range(2)} |
                     {"cat.png": (SKIMAGE_DATA / "chelsea.png").read_bytes()})
    assert archive.stat().st_size < 1_000_000
    items, skipped = gallery_sources.zip_gallery(archive, tmp_path / "out")
    assert [it.id for it in items] == ["cat.png"]
    assert sorted(s.where.split("!")[1] for s in skipped) == ["0.png", "1.png"]
    assert all("zip bomb" in s.reason for s in skipped)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["cat.png"]


def test_a_zip_over_the_total_limit_is_refused_and_unreadable_entries_are_deleted(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    cat = (SKIMAGE_DATA / "chelsea.png").read_bytes()
    archive = zip_of(tmp_path / "a.zip", {"cat.png": cat, "fake.jpg": os.urandom(5000)}, zipfile.ZIP_STORED)
    items, skipped = gallery_sources.zip_gallery(archive, tmp_path / "out")
    assert [it.id for it in items] == ["cat.png"]
    assert [(s.where.split("!")[1], s.reason) for s in skipped] == [("fake.jpg",
                                                                      "cannot extract (not a readable image)")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.png"]  # nothing unreadable left
    monkeypatch.setattr(gallery_sources, "MAX_ZIP_BYTES", len(cat))
    with pytest.raises(ValueError, match=r"inflate to [\d,]+ bytes, over the [\d,]+ limit"):
        gallery_sources.zip_gallery(archive, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
