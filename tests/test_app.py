"""The real app, served in a subprocess and queried through gradio_client (no mocks)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import skimage
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent.parent / "app.py"
SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
STARTUP_TIMEOUT = 120  # seconds: loading the encoder and embedding the gallery on a busy CPU


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`python app.py` on a free port, run from a foreign cwd (gallery files must still be served)."""
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(APP), "--port", str(port), "--cache-dir", str(tmp / "cache")],
                                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not answers(url):
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within {STARTUP_TIMEOUT} s:\n{log_path.read_text()}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server: str) -> Client:
    return Client(server, verbose=False)


def score(result: dict) -> float:
    """The score at the end of a gallery caption ("a cat (Chelsea) · 0.312")."""
    match = re.search(r"· (-?\d+\.\d{3})$", result["caption"])
    assert match, f"caption without a 3-decimal score: {result['caption']!r}"
    return float(match.group(1))


def test_text_query_finds_the_cat(client: Client) -> None:
    results = client.predict("a cat", None, api_name="/search")
    assert len(results) == 12  # DEFAULT_TOP_K
    assert "cat" in results[0]["caption"]
    assert Path(results[0]["image"]).name == "chelsea.png"
    scores = [score(r) for r in results]
    assert scores == sorted(scores, reverse=True)


def test_image_query_finds_the_same_photo(client: Client) -> None:
    results = client.predict(image=handle_file(str(SKIMAGE_DATA / "coffee.png")), api_name="/search")
    assert Path(results[0]["image"]).name == "coffee.png"
    assert "coffee" in results[0]["caption"]
    assert score(results[0]) > 0.99  # the query is the gallery image itself


def test_empty_query_is_an_error_and_the_app_keeps_serving(client: Client) -> None:
    with pytest.raises(AppError, match="empty query"):
        client.predict("   ", None, api_name="/search")
    assert Path(client.predict("a cat", None, api_name="/search")[0]["image"]).name == "chelsea.png"


def run_app(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_options() -> None:
    done = run_app("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--gallery", "--index", "--encoder", "--cache-dir", "--top-k", "--host", "--port", "--share"):
        assert option in done.stdout


def test_bad_arguments_exit_with_a_message(tmp_path: Path) -> None:
    done = run_app("--encoder", "no-such-encoder")
    assert done.returncode != 0
    assert "unknown encoder 'no-such-encoder'" in done.stderr
    done = run_app("--gallery", str(tmp_path))
    assert done.returncode != 0
    assert "holds no images" in done.stderr
    done = run_app("--index", str(tmp_path))
    assert done.returncode != 0
    assert "is not an index directory" in done.stderr and "python -m search index" in done.stderr
    done = run_app("--index", str(tmp_path), "--gallery", str(tmp_path))
    assert done.returncode != 0
    assert "give --gallery or --index, not both" in done.stderr
