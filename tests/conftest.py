"""Fixtures shared by the test modules: one launched app.py for every test that needs a running app."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import skimage
from PIL import Image, ImageFilter, ImageOps

from search.votes.store import VoteStore

APP = Path(__file__).resolve().parent.parent / "app.py"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"  # the default gallery's photos
STARTUP_TIMEOUT = 300  # seconds: loading the encoder and embedding the gallery on a busy 2-core CPU
# the shared app serves many tests from one address: per-visitor limits that they never reach
GENEROUS_LIMITS = {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "100000", "VISUAL_SEARCH_VOTES_PER_MINUTE": "100000"}


# ---------------------------------------------------------------- the app under test
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class App:
    """`python app.py --port P --cache-dir C --data-dir D`, run from a foreign cwd; restartable on the same dirs."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None,
                 cache_dir: Path | None = None) -> None:
        self.root, self.cache_dir, self.data_dir = root, cache_dir or root / "cache", root / "data"
        self.args, self.env = args, {**GENEROUS_LIMITS, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.starts += 1
        self.log = self.root / f"server-{self.starts}.log"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_WAIT_POLICY": "PASSIVE", **self.env}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), "--port", str(port), "--cache-dir", str(self.cache_dir),
                 "--data-dir", str(self.data_dir), *self.args],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not answers(self.url):
            if self.proc.poll() is not None:
                pytest.fail(f"app.py exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"app.py did not answer on {self.url} within {STARTUP_TIMEOUT} s:\n{self.log.read_text()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> App:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def id_of(self, result: dict) -> str:
        """The gallery id of one gallery result (by its served file's name: the item's thumbnail or file)."""
        image = result["image"]
        name = Path(image["path"] if isinstance(image, dict) else image).name
        return self.gallery_ids()[name]

    def gallery_ids(self) -> dict[str, str]:
        """{thumbnail or image file name: item id} of the index the app built under --cache-dir."""
        (meta,) = self.cache_dir.glob("indexes/*/index.json")
        snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
        rows = [json.loads(line) for line in (snapshot / "items.jsonl").read_text().splitlines() if line.strip()]
        return {Path(r.get("thumbnail") or r["path"]).name: r["id"] for r in rows}

    def votes(self) -> list:
        with VoteStore(self.data_dir) as store:
            return store.votes()


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory):
    """One app.py on the default gallery for the whole session (test modules share it; votes accumulate)."""
    with App(tmp_path_factory.mktemp("app"), "--mcp") as app:
        yield app




# ---------------------------------------------------------------- one engine on the default gallery
@pytest.fixture(scope="session")
def default_engine(tmp_path_factory: pytest.TempPathFactory):
    """The built-in gallery indexed once with the real `lite` encoder, for every test that only searches it."""
    from search.engine import SearchEngine
    from search.index.sources import default_gallery

    engine, _ = SearchEngine.build(default_gallery(), "lite", cache_dir=tmp_path_factory.mktemp("engine-cache"))
    return engine


# ---------------------------------------------------------------- images
def photo(name: str) -> Image.Image:
    """A sample photo of the default gallery, as RGB."""
    return Image.open(SKIMAGE_DATA / name).convert("RGB")


def pencil_sketch(im: Image.Image) -> Image.Image:
    """Dark strokes on white paper: the main edges of a photo (smoothed first, so fur is not drawn)."""
    edges = im.convert("L").filter(ImageFilter.GaussianBlur(3)).filter(ImageFilter.FIND_EDGES)
    edges = edges.point(lambda v: 255 if v > 40 else 0)
    return ImageOps.invert(edges).convert("RGB")
