"""The arena: blind A/B votes between any two of a list of configured systems (`python app.py --arena ...`).

A system is an encoder, a ranking and optional setting overrides, written `ENCODER:RANKING[:KEY=VALUE...]`:

    lite:baseline                        plain kNN of the `lite` encoder
    lite:aligned                         lite's aesthetically-aligned ranking (rephrased text, re-scored, deduplicated)
    lite-aligned:baseline                plain kNN of the encoder retrained by `train-align` (its single stage)
    lite:aligned:aesthetic_weight=0.8:dedup=false

Keys are `RankSettings` fields (search/rankings.py) and `rephrase`; an override replaces the visitor's own
setting for that system. An arena is a comma-separated list: `lite:baseline,lite:aligned,lite-aligned:baseline`.
Per query, `draw_pair` draws two of them uniformly over unordered pairs, in a random side order. Parsing and
validation live here only; `compare_pair` runs a drawn pair on one engine per encoder.

The default app (no --arena) is the arena `ENCODER:baseline,ENCODER:aligned`; its votes name no systems
(Vote.system_a/system_b None) and `vote_systems` reads them as exactly that pair.
"""
from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from search.types import ImageFilter

if TYPE_CHECKING:
    from search.engine import SearchEngine
    from search.rankings import RankSettings
    from search.types import Hit, Query
    from search.votes.store import Vote

_NOT_SETTINGS = ("k",)  # the visitor's "results per side" is the same on both sides, whatever the systems


def _setting_types() -> dict[str, type]:
    from search.rankings import RankSettings

    types: dict[str, type] = {"rephrase": bool}
    for f in fields(RankSettings):
        if f.name not in _NOT_SETTINGS:
            default = getattr(RankSettings, f.name)
            types[f.name] = float if default is None else type(default)  # margin/dedup_threshold: None -> float
    return types


def _parse_value(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"setting {key} takes true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"setting {key} takes {'an integer' if kind is int else 'a number'}, got {text!r}") from None


@dataclass(frozen=True)
class System:
    """One arm of the arena: `encoder` (a models.registry name), `ranking` (search.rankings.RANKINGS) and
    setting overrides, sorted by key. `str(system)` is its canonical name, stored in votes."""

    encoder: str
    ranking: str
    settings: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        parts = [self.encoder, self.ranking]
        for key, value in self.settings:
            text = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) \
                else str(value)
            parts.append(f"{key}={text}")
        return ":".join(parts)

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.settings)

    def rank_settings(self, visitor: RankSettings) -> RankSettings:
        """The visitor's settings with this system's overrides (all but `rephrase`) applied."""
        return replace(visitor, **{k: v for k, v in self.settings if k != "rephrase"})

    def rephrases(self, visitor: bool) -> bool:
        """Whether this system searches with the rephrased text: only an aligned ranking does, when the visitor
        (or the system's own `rephrase` override) asks for it, as in SearchEngine.compare."""
        return self.ranking == "aligned" and bool(self.overrides.get("rephrase", visitor))


def parse_system(text: str, check_encoder: bool = True) -> System:
    """`ENCODER:RANKING[:KEY=VALUE...]` -> System. ValueError names what is wrong. `check_encoder`: the encoder
    must be known to models.registry (its config is read; nothing is loaded)."""
    from search.rankings import RANKINGS, RankSettings

    if not isinstance(text, str) or not text.strip():
        raise ValueError("an arena system is ENCODER:RANKING, e.g. lite:aligned; got an empty name")
    parts = [p.strip() for p in text.strip().split(":")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"arena system {text!r} is not ENCODER:RANKING[:KEY=VALUE...] (e.g. lite:aligned)")
    encoder, ranking, *rest = parts
    if encoder == "open_clip":  # open_clip:ARCH:PRETRAINED names have colons of their own: not in an arena
        raise ValueError(f"arena system {text!r}: name an open_clip encoder by a config name (models/configs)")
    if ranking not in RANKINGS:
        raise ValueError(f"arena system {text!r}: unknown ranking {ranking!r}; known: {', '.join(RANKINGS)}")
    if check_encoder:
        from models.registry import get_config

        get_config(encoder)  # RegistryError (a ValueError) lists the known encoders
    types, settings = _setting_types(), {}
    for part in rest:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ValueError(f"arena system {text!r}: {part!r} is not KEY=VALUE")
        if key not in types:
            raise ValueError(f"arena system {text!r}: unknown setting {key!r}; known: {', '.join(sorted(types))}")
        if key in settings:
            raise ValueError(f"arena system {text!r}: setting {key!r} given twice")
        settings[key] = _parse_value(key, value.strip(), types[key])
    system = System(encoder, ranking, tuple(sorted(settings.items())))
    try:
        system.rank_settings(RankSettings())  # RankSettings validates the values (e.g. aesthetic_weight in 0..1)
    except ValueError as e:
        raise ValueError(f"arena system {text!r}: {e}") from None
    return system


def parse_arena(text: str | Sequence[str], check_encoder: bool = True) -> tuple[System, ...]:
    """"lite:baseline,lite:aligned,lite-aligned:baseline" (or a list of names) -> Systems in the given order:
    at least two, none twice."""
    names = [n for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    systems = tuple(parse_system(n, check_encoder) for n in names)
    if len(systems) < 2:
        raise ValueError(f"an arena needs at least two systems, comma-separated (e.g. lite:baseline,lite:aligned); "
                         f"got {len(systems)}")
    seen: set[str] = set()
    for s in systems:
        if str(s) in seen:
            raise ValueError(f"arena system {s} is listed twice")
        seen.add(str(s))
    return systems


def default_arena(encoder: str) -> tuple[System, System]:
    """The app without --arena: its encoder's baseline vs aligned ranking."""
    return System(encoder, "baseline"), System(encoder, "aligned")


def draw_pair(systems: Sequence[System], rng: random.Random) -> tuple[System, System]:
    """(system on A, system on B): each unordered pair equally likely, each side order equally likely."""
    if len(systems) < 2:
        raise ValueError("an arena needs at least two systems")
    i, j = rng.sample(range(len(systems)), 2)  # uniform over ordered pairs = uniform pair, random order
    return systems[i], systems[j]


def baseline_side(pair: tuple[System, System], systems: Sequence[System]) -> str:
    """The vote's `baseline_side` for an arena pair: the side showing the system listed earlier in the arena
    (list the reference first; for the default arena it is the baseline ranking, as before the arena).
    Vote.preferred is read relative to it; the report ranks arena systems by their names, not by it."""
    order = [str(s) for s in systems]
    return "A" if order.index(str(pair[0])) < order.index(str(pair[1])) else "B"


def encoder_name(fingerprint: str) -> str:
    """"lite@1a2b3c" -> "lite" (a vote's `encoder` is a fingerprint; arena votes may hold two, comma-separated)."""
    return fingerprint.split("@", 1)[0]


def vote_systems(vote: Vote) -> tuple[str, str]:
    """(system shown on A, system shown on B) of a vote; a vote that names none (before the arena, or the
    default app) showed its encoder's baseline and aligned rankings, the baseline on `baseline_side`."""
    if vote.system_a is not None:
        return vote.system_a, vote.system_b
    enc = encoder_name(vote.encoder.split(",")[0])
    base, aligned = f"{enc}:baseline", f"{enc}:aligned"
    return (base, aligned) if vote.baseline_side == "A" else (aligned, base)


# ---------------------------------------------------------------- running a pair (the app's arena mode)
@dataclass(frozen=True)
class SideResult:
    system: System
    hits: tuple[Hit, ...]
    rephrased: str | None          # the text it searched with, when it rephrased


@dataclass(frozen=True)
class PairComparison:
    """One query answered by a drawn pair of systems."""

    query: Query
    style: str | None              # detected style of the query image (the first engine that reads style)
    a: SideResult
    b: SideResult
    encoder: str                   # for Vote.encoder: the fingerprint, or "fpA,fpB" when the encoders differ
    index: str                     # for Vote.index: "fingerprint/snapshot", likewise
    seconds: float

    @property
    def systems(self) -> tuple[str, str]:
        return str(self.a.system), str(self.b.system)

    @property
    def rephrased(self) -> str | None:
        return self.a.rephrased or self.b.rephrased


def run_system(engine: SearchEngine, system: System, query: Query, settings: RankSettings,
               rephrase: bool = True, image_filter: ImageFilter | None = None,
               ) -> tuple[tuple[Hit, ...], str | None, str | None]:
    """(hits, rephrased text or None, detected style) of one system for one query, as SearchEngine.compare
    ranks each of its sides (same encoding, same rank_queries path), among images passing `image_filter`."""
    from search.pipeline import rank_query
    from search.rankings import blend_rephrasing, rephrase_weight
    from search.rephrase import rephrase as rephrase_text

    texts, rephrased = [], None
    if system.rephrases(rephrase) and query.text:
        r = rephrase_text(engine.rephraser, query.text)
        if r.rephrased != query.text:
            texts, rephrased = [query.text, r.rephrased], r.rephrased
    base = engine.encode(query, texts)
    settings = system.rank_settings(settings)
    gallery = engine.gallery.where(image_filter or ImageFilter())
    vector = blend_rephrasing(base.vectors[0], base.vectors[-1], rephrase_weight(gallery, settings))
    hits = rank_query(system.ranking, vector, base, query, gallery, settings, engine.encoder.query_bank)
    return tuple(hits), rephrased, base.style


def compare_pair(engines: Mapping[str, SearchEngine], pair: tuple[System, System], query: Query,
                 settings: RankSettings, rephrase: bool = True, image_filter: ImageFilter | None = None,
                 ) -> PairComparison:
    """Both sides of a drawn pair; `engines`: encoder name -> its SearchEngine (see `engines_for`)."""
    t0 = time.perf_counter()
    sides, styles = [], []
    for system in pair:
        hits, rephrased, style = run_system(engines[system.encoder], system, query, settings, rephrase,
                                            image_filter)
        sides.append(SideResult(system, hits, rephrased))
        styles.append(style)
    used = list(dict.fromkeys(s.encoder for s in pair))
    encoder = ",".join(engines[e].encoder.fingerprint for e in used)
    index = ",".join(f"{engines[e].gallery.meta.fingerprint}/{engines[e].gallery.meta.snapshot}" for e in used)
    return PairComparison(query, next((s for s in styles if s), None), sides[0], sides[1], encoder, index,
                          time.perf_counter() - t0)


def shown_sides(pc: PairComparison, systems: Sequence[System]) -> tuple[str, tuple[Hit, ...], tuple[Hit, ...]]:
    """(baseline_side, hits of the system listed first, hits of the other): the app's Shown fields
    `baseline_side`, `baseline`, `aligned` for an arena pair (Shown.side(name) then gives each side's hits)."""
    side = baseline_side((pc.a.system, pc.b.system), systems)
    return (side, pc.a.hits, pc.b.hits) if side == "A" else (side, pc.b.hits, pc.a.hits)


def engines_for(systems: Sequence[System], build: Any) -> dict[str, SearchEngine]:
    """One SearchEngine per encoder the arena names: `build(encoder name) -> SearchEngine` (each indexes the
    gallery with its own encoder; app.py builds them as it builds its one engine)."""
    return {name: build(name) for name in dict.fromkeys(s.encoder for s in systems)}


def reveal(systems: tuple[str, str]) -> str:
    """The line shown after a vote: which system was on which side."""
    return f"**A** was `{systems[0]}` and **B** was `{systems[1]}`."
