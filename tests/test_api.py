"""The REST API (/api/search, /api/thumbnail) and the MCP tool of the real launched app, through a real HTTP
client and a real MCP client."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
import skimage
from conftest import App

pytestmark = pytest.mark.slow

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"


def test_get_search_returns_json_hits_with_thumbnails(app: App) -> None:
    r = httpx.get(f"{app.url}api/search", params={"text": "a cat", "k": 4, "ranking": "baseline"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ranking"] == "baseline" and body["rephrased"] is None and len(body["hits"]) == 4
    first = body["hits"][0]
    assert first["id"] == "skimage/chelsea" and first["rank"] == 1 and -1 <= first["relevance"] <= 1
    assert set(first) == {"id", "rank", "score", "relevance", "aesthetic", "caption", "thumbnail"}
    thumb = httpx.get(first["thumbnail"], timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    aligned = httpx.get(f"{app.url}api/search", params={"text": "a cat", "k": 4}, timeout=60).json()
    assert aligned["ranking"] == "aligned" and "cat" in aligned["rephrased"]


def test_post_search_with_an_image(app: App) -> None:
    with open(SKIMAGE_DATA / "coffee.png", "rb") as f:
        r = httpx.post(f"{app.url}api/search", files={"image": ("coffee.png", f, "image/png")},
                       data={"k": "3", "ranking": "baseline"}, timeout=120)
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]][0] == "skimage/coffee" and r.json()["style"].startswith("photo")


def test_get_search_filters_by_aesthetic_score(app: App) -> None:
    every = httpx.get(f"{app.url}api/search", params={"text": "a cat", "k": 20, "ranking": "baseline"},
                      timeout=60).json()["hits"]
    cut = sorted(h["aesthetic"] for h in every)[len(every) // 2]
    r = httpx.get(f"{app.url}api/search", params={"text": "a cat", "k": 20, "min_aesthetic": cut}, timeout=60)
    assert r.status_code == 200, r.text
    assert {h["id"] for h in r.json()["hits"]} == {h["id"] for h in every if h["aesthetic"] >= cut}


@pytest.mark.parametrize(("request_args", "status", "message"), [
    ({"params": {"text": "a cat", "style": "anything"}}, 400, "style must be one of"),
    ({"params": {"text": "a cat", "min_aesthetic": "nan"}}, 400, "finite number"),
    ({"params": {"text": "a cat", "ranking": "best"}}, 400, "ranking must be one of baseline, aligned"),
    ({"params": {"text": "a cat", "k": 0}}, 400, r"k must be in 1..100"),
    ({"params": {"text": "x" * 1001}}, 400, "at most 1,000 are searched"),
    ({"params": {"text": "   "}}, 400, "empty query"),
])
def test_bad_requests_get_a_clear_message(app: App, request_args: dict, status: int, message: str) -> None:
    r = httpx.get(f"{app.url}api/search", timeout=60, **request_args)
    assert r.status_code == status and message in r.json()["detail"], r.text


def test_bad_uploads_are_refused_without_server_paths(app: App, tmp_path: Path) -> None:
    r = httpx.post(f"{app.url}api/search", files={"image": ("notes.png", b"not an image", "image/png")}, timeout=60)
    assert r.status_code == 400 and r.json()["detail"].startswith("notes.png: not a readable image")
    assert "/tmp" not in r.text
    r = httpx.post(f"{app.url}api/search", files={"image": ("big.jpg", bytes(21 * 1024 * 1024), "image/jpeg")},
                   timeout=60)
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    assert httpx.get(f"{app.url}api/thumbnail/no/such-id", timeout=30).status_code == 404


def test_the_mcp_server_lists_the_search_tool_and_a_call_returns_hits(app: App) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def use_tool() -> tuple[list, str]:
        async with streamablehttp_client(f"{app.url}agent/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                result = await session.call_tool("find_images", {"text": "a cup of coffee", "k": 3})
                return tools, "".join(getattr(c, "text", "") for c in result.content)

    tools, text = asyncio.run(use_tool())
    names = [t.name for t in tools]
    assert names == ["find_images"], names  # the search only: votes are never a tool
    assert "match a text description" in tools[0].description
    assert "skimage/coffee" in text
    thumb = re.search(r"https?://[^\s\"']+/api/thumbnail/skimage/coffee", text)
    assert thumb and httpx.get(thumb[0], timeout=30).status_code == 200  # the URL an agent gets works


def test_rest_searches_run_one_at_a_time_at_concurrency_one(default_engine) -> None:  # noqa: ANN001
    """The REST API runs at most `concurrency` searches at once, as the page does: four concurrent new texts at
    concurrency 1 are four encoder calls of their own (each a text and its rephrasing), never one shared batch."""
    import threading
    import uuid

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from search.api import create_router
    from search.limits import RateLimiter

    app = FastAPI()
    app.include_router(create_router(default_engine, RateLimiter("searches", 10_000), concurrency=1))
    batcher = default_engine.text_vectors.batcher
    texts = [f"a red bicycle number {uuid.uuid4().hex[:8]}" for _ in range(4)]
    with TestClient(app) as client:
        calls, keys = batcher.calls, batcher.keys_done
        answers: list = []
        threads = [threading.Thread(target=lambda t=t: answers.append(client.get("/api/search", params={
            "text": t, "ranking": "aligned"}))) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [a.status_code for a in answers] == [200] * 4 and all(a.json()["hits"] for a in answers)
    assert (batcher.calls - calls, batcher.keys_done - keys) == (4, 8)
