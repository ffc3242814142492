"""A plain REST API beside the page, like clip-retrieval's knn service: queries in, JSON hits out.

    GET  /api/search?text=a+red+bicycle&k=12&ranking=aligned
    POST /api/search   (multipart: image=@photo.jpg, and optionally text, k, ranking, text_weight)
    GET  /api/thumbnail/{id}

The limits are the page's: the same per-visitor rate limiter, upload size, pixel count and text length.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from search import config
from search.engine import NO_FILTER, SearchEngine
from search.index.images import ImageLoadError, load_image
from search.limits import RateLimited, RateLimiter
from search.rankings import RankSettings
from search.types import Hit, ImageFilter
from search.types import Query as SearchQuery

log = logging.getLogger(__name__)
MAX_K = 100
RANKINGS = ("baseline", "aligned")


@dataclass(frozen=True)
class HitJSON:
    id: str
    rank: int
    score: float                   # what the ranking sorted by
    relevance: float               # cosine similarity to the query (-1..1)
    aesthetic: float | None        # the scorer's raw score (higher is better), if indexed with one
    caption: str | None
    thumbnail: str                 # URL of the item's thumbnail on this server


def hit_json(hit: Hit, base_url: str) -> dict:
    rel = hit.score if hit.relevance is None else hit.relevance
    return asdict(HitJSON(hit.item.id, hit.rank, round(hit.score, 6), round(rel, 6), hit.item.aesthetic,
                          hit.item.caption or hit.item.label, f"{base_url}api/thumbnail/{hit.item.id}"))


def search_json(engine: SearchEngine, query: SearchQuery, k: int, ranking: str, base_url: str,
                image_filter: ImageFilter = NO_FILTER) -> dict:
    """One query -> {"query", "ranking", "style", "rephrased", "seconds", "hits"}: the app's own ranking path."""
    c = engine.compare(query, RankSettings(k=k), rephrase=ranking == "aligned", image_filter=image_filter)
    hits = c.aligned if ranking == "aligned" else c.baseline
    return {"query": {"text": query.text, "image": query.image is not None}, "ranking": ranking, "style": c.style,
            "rephrased": c.rephrasing.rephrased if c.rephrasing and ranking == "aligned" else None,
            "seconds": round(c.seconds, 4), "hits": [hit_json(h, base_url) for h in hits]}


class LimitBody:
    """ASGI middleware: refuse an /api upload larger than the limit before it is read (the multipart parser
    would otherwise spool any size to disk first); a body without a declared length is refused too (411).
    Plain ASGI, not FastAPI's `@app.middleware("http")`: that wraps every response of the server, the page's
    event streams and thumbnails too, in extra tasks and queues (+~50 ms on each search's images here)."""

    def __init__(self, app) -> None:  # noqa: ANN001 (any ASGI app)
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/api/"):
            length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
            if not length:
                refusal = JSONResponse({"detail": "send a Content-Length header"}, status_code=411)
            elif not length.isdigit() or int(length) > config.MAX_UPLOAD_BYTES + 64 * 1024:  # + the form's fields
                refusal = JSONResponse({"detail": f"the image is over the {config.MAX_UPLOAD_BYTES // 2**20} MB "
                                                  "upload limit"}, status_code=413)
            else:
                refusal = None
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_router(engine: SearchEngine, limiter: RateLimiter, check_image: Callable | None = None,
                  concurrency: int = config.CONCURRENCY) -> APIRouter:
    """The /api routes over `engine`. `check_image(PIL image)` may raise ValueError to refuse an image
    (the safety filter). At most `concurrency` searches run at once, as on the page; the others wait."""
    router = APIRouter(prefix="/api")
    searching = threading.BoundedSemaphore(concurrency)

    def checked(text: str | None, k: int, ranking: str, request: Request) -> None:
        host = request.client.host if request.client else "unknown"
        try:
            limiter.take(f"ip:{host}")
        except RateLimited as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(int(e.retry_after) + 1)}) from e
        if ranking not in RANKINGS:
            raise HTTPException(400, f"ranking must be one of {', '.join(RANKINGS)}, got {ranking[:20]!r}")
        if not 1 <= k <= MAX_K:
            raise HTTPException(400, f"k must be in 1..{MAX_K}, got {k}")
        if text and len(text) > config.MAX_TEXT_CHARS:
            raise HTTPException(400, f"the text is {len(text):,} characters long; at most "
                                     f"{config.MAX_TEXT_CHARS:,} are searched")

    def answer(query_args: dict, k: int, ranking: str, request: Request, style: str | None,
               min_aesthetic: float | None) -> JSONResponse:
        try:
            query = SearchQuery(**query_args)
            only = ImageFilter(style, min_aesthetic)
            if query.image is not None and check_image is not None:
                check_image(query.image)
            with searching:
                found = search_json(engine, query, k, ranking, str(request.base_url), only)
            return JSONResponse(found)
        except (ValueError, ImageLoadError) as e:
            raise HTTPException(400, str(e)) from e

    @router.get("/search")
    def get_search(request: Request, text: Annotated[str, Query(description="what to look for")],
                   k: int = config.DEFAULT_TOP_K, ranking: str = "aligned", style: str | None = None,
                   min_aesthetic: float | None = None) -> JSONResponse:
        """Hits for a text query; `style` and `min_aesthetic` (a raw aesthetic score) filter the images."""
        checked(text, k, ranking, request)
        return answer({"text": text}, k, ranking, request, style, min_aesthetic)

    @router.post("/search")
    def post_search(request: Request, image: Annotated[UploadFile, File()],
                    text: Annotated[str | None, Form()] = None, k: Annotated[int, Form()] = config.DEFAULT_TOP_K,
                    ranking: Annotated[str, Form()] = "aligned",
                    text_weight: Annotated[float, Form()] = 0.5, style: Annotated[str | None, Form()] = None,
                    min_aesthetic: Annotated[float | None, Form()] = None) -> JSONResponse:
        """Hits for an image query (a sketch, an artwork, a low-res or any photo), optionally with text."""
        checked(text, k, ranking, request)
        data = image.file.read(config.MAX_UPLOAD_BYTES + 1)
        if len(data) > config.MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the image is over the {config.MAX_UPLOAD_BYTES // 2**20} MB upload limit")
        name = os.path.basename(image.filename or "upload")
        with tempfile.NamedTemporaryFile(suffix=os.path.splitext(name)[1][:10]) as f:
            f.write(data)
            f.flush()
            try:
                picture = load_image(f.name, max_side=config.QUERY_MAX_SIDE)
            except ImageLoadError as e:
                raise HTTPException(400, f"{name}: {e.reason.replace(f.name, name)}") from e
        return answer({"text": text, "image": picture, "text_weight": text_weight}, k, ranking, request, style,
                      min_aesthetic)

    @router.get("/thumbnail/{item_id:path}")
    def thumbnail(item_id: str) -> FileResponse:
        """The thumbnail of a gallery item (never the original, never a flagged item)."""
        row = engine.gallery.row_of(item_id)
        item = engine.gallery.item(row) if row is not None and not engine.gallery.is_flagged(row) else None
        if item is None or item.thumbnail is None or not item.thumbnail.is_file():
            raise HTTPException(404, f"no thumbnail for {item_id[:100]!r}")
        return FileResponse(item.thumbnail, media_type="image/jpeg")

    return router
