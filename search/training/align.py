"""`python -m search train-align`: ranked-DPO alignment of a `lite` encoder (arXiv 2406.09397, part 4).

The aligned ranking (relevance candidates re-scored with aesthetics) is a two-stage cascade; this distils
it into the single-stage encoder so plain kNN moves toward it:

1. Lists. Every `train` photo (ImageNet, PACS, Sketchy) gets degraded copies (TRAIN_DEGRADATIONS); class
   words in several phrasings are the queries. Per query, the frozen reference encoder retrieves the top-K
   candidates (relevance) and an aesthetic scorer scores them.
2. Pairs. The paper's partial order: candidates on a u x v grid, rows = relevance tiers, columns =
   aesthetic tiers within a row; an item is preferred over every item in a row and a column no better
   (`grid_pairs`). User votes add pairs: the chosen side's top items over the other side's (`vote_pairs`).
3. DPO. The policy is the reference with its trainable part, the aesthetic gate (models/aesthetic_gate.py),
   on gallery images. Retrieval is a softmax over candidates of s = cos / temperature, so a log-prob ratio
   is a score difference: loss = -log sigmoid(beta * [(s(q,w) - s_ref(q,w)) - (s(q,l) - s_ref(q,l))]).
4. Dev. Held-out photos, with copies of degradation types held out of training, pick beta; then refit on all.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.aesthetic_gate import GATE_FEATURES, AestheticGate
from models.lite import LiteHeads
from search.training.degradations import TRAIN_DEGRADATIONS
from search.training.tower_cache import DEGRADED, TowerCache, text_embeddings
from search.votes.store import Vote

log = logging.getLogger(__name__)

PHOTO_DATASETS = ("imagenet", "pacs", "sketchy")
# Phrasings of class words: the queries of the lists (no aesthetic words: the model must prefer quality unasked).
PHRASES = ("a photo of a {}", "{}", "a {} in the scene", "a picture showing a {}", "there is a {} here")
# Held out of training in the dev phase (copies of dev photos use only these), so dev measures unseen types.
DEV_DEGRADATION_TYPES = ("downscale", "colour_cast", "low_contrast", "sharpen")


@dataclass(frozen=True)
class AlignConfig:
    rows: int = 4               # u: relevance tiers of the grid
    cols: int = 6               # v: aesthetic tiers within a row (one candidate per cell, as in the paper)
    steps: int = 600
    batch: int = 1024           # preference pairs per step
    lr: float = 3e-3
    weight_decay: float = 10.0  # decoupled (AdamW): keeps the gate smooth; a near-binary gate generalises worse
    beta: float = 0.5           # DPO beta (on s = cos / temperature)
    floor: float = 0.4          # the least share of its similarity a gallery image keeps (models/aesthetic_gate.py)
    temperature: float = 0.05   # retrieval policy temperature (the heads' InfoNCE temperature)
    vote_share: float = 0.25    # share of each batch drawn from vote pairs, when there are any
    vote_top: int = 10          # a vote compares the top this-many items of each side
    betas: tuple[float, ...] = (0.1, 0.5)  # tried on dev (the best orig@10 gain within the relevance bound)
    max_relevance_drop: float = 0.01  # dev: R@10 may drop at most this much for a beta to be chosen
    dev_fraction: float = 0.2
    seed: int = 0

    @property
    def candidates(self) -> int:
        """K = u x v: relevance candidates per query (the re-ranked list)."""
        return self.rows * self.cols


@dataclass(frozen=True)
class Pair:
    query: str                  # query text
    winner: str                 # image key ("file|view") preferred
    loser: str                  # image key dispreferred


@dataclass(frozen=True)
class Candidate:
    key: str                    # image key
    relevance: float            # reference similarity to the query
    aesthetic: float            # aesthetic score (higher = better)


# ---------------------------------------------------------------- data: photos, copies, queries
def read_photos(data: str | Path) -> list[dict]:
    """`train` photos of PHOTO_DATASETS, each with `file` (absolute path)."""
    data = Path(data)
    out = []
    for ds in PHOTO_DATASETS:
        f = data / ds / "items.jsonl"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: --data must hold {', '.join(PHOTO_DATASETS)} with items.jsonl")
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row.get("split") == "train" and row.get("style") == "photo":
                out.append({**row, "file": str((data / ds / row["path"]).resolve())})
    if not out:
        raise ValueError(f"no train photos under {data}")
    return out


def copy_views(item_id: str, seed: int = 0) -> tuple[str, str]:
    """Two degraded views of a photo: one of a dev-held-out type, one of another type. Picked by rendezvous
    hashing of (seed, photo id, degradation id), so editing TRAIN_DEGRADATIONS re-draws (and re-computes
    the tower outputs of) only the copies a new entry wins or a removed one had."""
    def pick(options: list) -> str:
        return DEGRADED + min(options, key=lambda d: hashlib.sha1(f"{seed}:{item_id}:{d.id}".encode()).digest()).id

    return (pick([d for d in TRAIN_DEGRADATIONS if d.name in DEV_DEGRADATION_TYPES]),
            pick([d for d in TRAIN_DEGRADATIONS if d.name not in DEV_DEGRADATION_TYPES]))


def queries_for(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(query text, class label) for every label in every phrasing."""
    return [(p.format(label), label) for label in sorted(set(labels)) for p in PHRASES]


# ---------------------------------------------------------------- pairs: the u x v grid and votes
def grid_cells(candidates: Sequence[Candidate], rows: int, cols: int) -> list[tuple[int, int]]:
    """(row, col) of each candidate: rows are `rows` equal tiers of the relevance order (0 = most relevant),
    and within a row, columns are `cols` equal tiers of its aesthetic order (0 = best). Ties keep list order."""
    if rows < 1 or cols < 1:
        raise ValueError(f"the grid needs rows >= 1 and cols >= 1, got {rows} x {cols}")
    cells = [(0, 0)] * len(candidates)
    by_relevance = sorted(range(len(candidates)), key=lambda i: -candidates[i].relevance)
    for r, tier in enumerate(np.array_split(np.array(by_relevance, int), rows)):
        by_aesthetic = sorted(tier.tolist(), key=lambda i: -candidates[i].aesthetic)
        for c, col in enumerate(np.array_split(np.array(by_aesthetic, int), cols)):
            for i in col.tolist():
                cells[i] = (r, c)
    return cells


def grid_pairs(query: str, candidates: Sequence[Candidate], rows: int, cols: int) -> list[Pair]:
    """The paper's partially ordered pairs: a candidate is preferred over another whose row and column are
    both no better and not both equal (better relevance at no aesthetic cost, or the reverse, or both)."""
    placed = list(zip(candidates, grid_cells(candidates, rows, cols)))
    return [Pair(query, a.key, b.key) for a, (ra, ca) in placed for b, (rb, cb) in placed
            if ra <= rb and ca <= cb and (ra, ca) != (rb, cb)]


def vote_pairs(vote: Vote, top: int = 10) -> list[tuple[str, str, str]]:
    """(query text, winner id, loser id): the chosen side's top `top` items over the other side's (an item
    both sides show is not compared). Ties, both-bad votes and image-only queries give no pairs."""
    if vote.choice not in ("A", "B") or vote.query_text is None:
        return []
    chosen, other = (vote.side_a, vote.side_b) if vote.choice == "A" else (vote.side_b, vote.side_a)
    won, lost = [r.id for r in chosen[:top]], [r.id for r in other[:top]]
    return [(vote.query_text, w, x) for w in won if w not in lost for x in lost if x not in won]


def gallery_files(source: str | Path | None) -> dict[str, str]:
    """Gallery id -> image file of the gallery votes were cast on: an index directory, a source (folder,
    manifest, zip: see search.index.sources), or None for the app's built-in gallery."""
    from search.index.sources import default_gallery, read_source

    if source is None:
        items = default_gallery()
    elif (Path(source) / "index.json").is_file():
        from search.index.gallery_index import GalleryIndex

        items = GalleryIndex.load(source).items()
    else:
        items = read_source(source, extract_to=Path(source).with_suffix(""))[0]
    return {it.id: str(Path(it.path).resolve()) for it in items}


def pairs_from_votes(votes: Sequence[Vote], files: dict[str, str], top: int = 10) -> list[Pair]:
    """Vote pairs with gallery ids resolved to image keys; ids the gallery lacks are left out (logged)."""
    pairs, unknown = [], set()
    for vote in votes:
        for text, w, x in vote_pairs(vote, top):
            if w in files and x in files:
                pairs.append(Pair(text, f"{files[w]}|", f"{files[x]}|"))
            else:
                unknown.update({w, x} - set(files))
    if unknown:
        log.warning("votes name %d gallery id(s) the vote gallery lacks (left out), e.g. %s",
                    len(unknown), sorted(unknown)[:3])
    no_text = sum(v.query_text is None for v in votes)
    log.info("%d vote(s) -> %d pairs (%d image-only vote(s) skipped: only text queries are aligned)",
             len(votes), len(pairs), no_text)
    return pairs


# ---------------------------------------------------------------- the DPO loss
def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Mean of -log sigmoid(beta * [(s(w) - s_ref(w)) - (s(l) - s_ref(l))]); inputs (B,) scores (cos / T).
    log 2 at the reference, whatever the reference itself prefers."""
    return -F.logsigmoid(beta * ((policy_w - ref_w) - (policy_l - ref_l))).mean()


# ---------------------------------------------------------------- features
class TowerBank:
    """Cached tower outputs by image key, looked up across caches (the shared one, the degraded copies')."""

    def __init__(self, caches: Sequence[TowerCache]) -> None:
        self.caches = list(caches)

    def __contains__(self, key: str) -> bool:
        return any(key in c.index for c in self.caches)

    def get(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """{tower output name: (len(keys), dim) float32}."""
        owner = []
        for k in keys:
            found = [i for i, c in enumerate(self.caches) if k in c.index]
            if not found:
                raise KeyError(f"no cached tower outputs for {k!r}")
            owner.append(found[0])
        out: dict[str, torch.Tensor] = {}
        for i, cache in enumerate(self.caches):
            pos = [j for j, o in enumerate(owner) if o == i]
            if not pos:
                continue
            for name, a in cache.get([keys[j] for j in pos]).items():
                out.setdefault(name, torch.empty(len(keys), a.shape[1]))[pos] = torch.from_numpy(a)
        return out


def aesthetic_scores(keys: Sequence[str], score: Callable[[list], np.ndarray], fingerprint: str,
                     cache_file: str | Path) -> dict[str, float]:
    """Key ("file|view") -> aesthetic score of that view of the image, cached per scorer fingerprint."""
    from search.index.images import load_image
    from search.training.tower_cache import get_transform

    cache_file = Path(cache_file)
    done: dict[str, float] = {}
    if cache_file.is_file():
        z = np.load(cache_file)
        if str(z["fingerprint"]) == fingerprint:
            done = dict(zip(z["keys"].tolist(), z["scores"].tolist()))
    todo = sorted(set(keys) - set(done))
    for n, i in enumerate(range(0, len(todo), 64)):
        part = todo[i : i + 64]
        images = [get_transform(k.rsplit("|", 1)[1])(load_image(k.rsplit("|", 1)[0])) for k in part]
        done.update(zip(part, score(images).tolist()))
        if n % 20 == 19 or i + 64 >= len(todo):  # checkpoint: a killed run resumes
            log.info("aesthetic scores: %d / %d", i + len(part), len(todo))
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, fingerprint=fingerprint, keys=np.array(list(done)), scores=np.array(list(done.values())))
            tmp.replace(cache_file)
    return {k: done[k] for k in keys}


# ---------------------------------------------------------------- lists -> pairs
@torch.no_grad()
def list_pairs(ref: LiteHeads, gallery: Sequence[str], gallery_vecs: torch.Tensor, queries: Sequence[str],
               query_vecs: torch.Tensor, aesthetic: dict[str, float], cfg: AlignConfig) -> list[Pair]:
    """Per query, the reference's top-K gallery candidates on the u x v grid -> partially ordered pairs."""
    pairs = []
    k = min(cfg.candidates, len(gallery))
    for i in range(0, len(queries), 256):
        sims = query_vecs[i : i + 256] @ gallery_vecs.T                      # (b, N)
        top = sims.topk(k, dim=1)
        for q, vals, idx in zip(queries[i : i + 256], top.values.tolist(), top.indices.tolist()):
            cands = [Candidate(gallery[j], v, aesthetic[gallery[j]]) for v, j in zip(vals, idx)]
            pairs += grid_pairs(q, cands, cfg.rows, cfg.cols)
    return pairs


@torch.no_grad()
def embed_images(heads: LiteHeads, bank: TowerBank, keys: Sequence[str], gate: AestheticGate | None = None,
                 chunk: int = 512) -> torch.Tensor:
    """(N, D) gallery embeddings of cached images, through `gate` if given (as the aligned encoder indexes)."""
    out = [torch.zeros(0, heads.out_dim + (gate is not None))]
    for i in range(0, len(keys), chunk):
        feats = bank.get(list(keys[i : i + chunk]))
        emb = heads.embed_image(feats)
        out.append(emb if gate is None else gate(emb, feats))
    return torch.cat(out)


# ---------------------------------------------------------------- training
def fit_gate(ref: LiteHeads, bank: TowerBank, texts: dict[str, torch.Tensor], pairs: Sequence[Pair],
             cfg: AlignConfig, votes: Sequence[Pair] = ()) -> AestheticGate:
    """An aesthetic gate over the frozen reference `ref`, trained with DPO on `pairs` (+ `votes`, `cfg.vote_share`
    of each batch). `texts`: query text -> its MiniLM vector."""
    if not pairs and not votes:
        raise ValueError("no preference pairs to train on (empty lists and no usable votes)")
    torch.manual_seed(cfg.seed)
    both = [*pairs, *votes]
    images = sorted({p.winner for p in both} | {p.loser for p in both})
    img_row = {k: i for i, k in enumerate(images)}
    text_list = sorted({p.query for p in both})
    text_row = {t: i for i, t in enumerate(text_list)}
    with torch.no_grad():
        feats = {n: [] for n in GATE_FEATURES}
        for i in range(0, len(images), 1024):
            part = bank.get(images[i : i + 1024])
            for n in GATE_FEATURES:
                feats[n].append(part[n])
        feats = {n: torch.cat(v) for n, v in feats.items()}                      # {name: (N, dim)}
        ref_img = embed_images(ref, bank, images)                                 # (N, D)
        ref_txt = ref.embed_text(torch.stack([texts[t] for t in text_list]))     # (M, D)
    gate = AestheticGate(sum(v.shape[1] for v in feats.values()), cfg.floor)
    gate.standardise_from(feats)

    def triplets(ps: Sequence[Pair]) -> torch.Tensor:                          # (P, 3): text, winner, loser rows
        return torch.tensor([[text_row[p.query], img_row[p.winner], img_row[p.loser]] for p in ps],
                            dtype=torch.long).reshape(-1, 3)

    lists, voted = triplets(pairs), triplets(votes)
    n_votes = cfg.batch if not len(lists) else round(cfg.batch * cfg.vote_share) if len(voted) else 0
    opt = torch.optim.AdamW(gate.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for step in range(cfg.steps):
        batch = torch.cat([lists[torch.randint(len(lists), (cfg.batch - n_votes,))] if len(lists) else lists,
                           voted[torch.randint(len(voted), (n_votes,))] if n_votes else voted])
        q, w, lo = batch.T                                                        # (B,) each
        r_w, r_l = (ref_txt[q] * ref_img[w]).sum(-1), (ref_txt[q] * ref_img[lo]).sum(-1)
        # the policy's similarity is the reference's times the image's kept share (models/aesthetic_gate.py)
        s_w, s_l = (r * gate.keep({n: v[rows] for n, v in feats.items()}) for r, rows in ((r_w, w), (r_l, lo)))
        loss = dpo_loss(s_w / cfg.temperature, s_l / cfg.temperature, r_w / cfg.temperature, r_l / cfg.temperature,
                        cfg.beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                acc = ((s_w - s_l) > 0).float().mean().item()
            log.info("step %d: dpo %.4f, pair accuracy %.3f", step, loss.item(), acc)
    return gate.eval().requires_grad_(False)


# ---------------------------------------------------------------- dev measurement
@torch.no_grad()
def degraded_retrieval(heads: LiteHeads, gate: AestheticGate | None, bank: TowerBank, photos: Sequence[dict],
                       copy_of: dict[str, str], texts: dict[str, torch.Tensor], k: int = 10) -> dict[str, float]:
    """The acceptance measurement on dev data: gallery = photos + one degraded copy each (`copy_of`: photo
    key -> copy key), queries = their class words; R@10 (a same-class original or copy in the top k) and
    orig@10 (share of originals in the top k), and R@1, averaged over datasets."""
    out = []
    for ds in PHOTO_DATASETS:
        group = [r for r in photos if r["id"].startswith(f"{ds}/")]
        if not group:
            continue
        keys = [f"{r['file']}|" for r in group]
        gallery = keys + [copy_of[key] for key in keys]
        labels = np.array([r["label"] for r in group] * 2)
        is_orig = np.arange(len(gallery)) < len(keys)
        queries = queries_for([r["label"] for r in group])
        q = heads.embed_text(torch.stack([texts[t] for t, _ in queries]))
        q = q if gate is None else gate.pad_query(q)
        top = (q @ embed_images(heads, bank, gallery, gate).T).topk(min(k, len(gallery)), dim=1).indices.numpy()
        hit = labels[top] == np.array([label for _, label in queries])[:, None]
        out.append({"R@1": float(hit[:, 0].mean()), "R@10": float(hit.any(1).mean()),
                    "orig@10": float(is_orig[top].mean())})
    return {m: float(np.mean([o[m] for o in out])) for m in ("R@1", "R@10", "orig@10")}


# ---------------------------------------------------------------- the command
def load_reference(encoder: str = "lite") -> LiteHeads:
    """The frozen reference: a lite encoder config's heads (registry paths)."""
    from models.registry import CONFIG_DIR, get_config

    cfg = get_config(encoder)
    if cfg.family != "lite":
        raise ValueError(f"train-align aligns a lite encoder; {encoder!r} is {cfg.family}")
    if cfg.aesthetic_gate:
        raise ValueError(f"{encoder!r} is already aligned (it has an aesthetic gate); align its reference instead")
    return LiteHeads.load(CONFIG_DIR.parent / cfg.weights)


def train_align(data: str | Path, out: str | Path, cache_dir: str | Path, cfg: AlignConfig | None = None,
                votes: str | Path | None = None, vote_gallery: str | Path | None = None,
                reference: str = "lite", scorer: str = "lite-quality") -> Path:
    """Pairs from re-ranked lists of `train` photos and their degraded copies (+ votes), beta picked on dev,
    DPO refit on all train data; saves the aesthetic gate to `out`."""
    from models.aesthetic import create_scorer
    from search.training.encoder import split_dev
    from search.votes.store import read_votes

    cfg = cfg or AlignConfig()
    photos = read_photos(data)
    cache_dir = Path(cache_dir)
    # the shared cache is read as is; what this command adds (copies, vote images) goes to a file of its own
    base, own = TowerCache(cache_dir / "towers.npz"), TowerCache(cache_dir / "towers-align.npz")
    bank = TowerBank([base, own])
    views = {f"{r['file']}|": copy_views(r["id"], cfg.seed) for r in photos}
    vote_list_pairs = []
    if votes:
        vote_list_pairs = pairs_from_votes(read_votes(votes), gallery_files(vote_gallery), cfg.vote_top)
    need = [k for key, vs in views.items() for k in (key, *(with_view(key, v) for v in vs))]
    need += sorted({k for p in vote_list_pairs for k in (p.winner, p.loser)})
    missing = [k for k in dict.fromkeys(need) if k not in bank]
    bad = set(own.fill(*zip(*(k.rsplit("|", 1) for k in missing)))) if missing else set()
    if bad:
        log.warning("leaving out %d unreadable images, e.g. %s", len(bad), sorted(bad)[:3])
        bad_files = {k.rsplit("|", 1)[0] for k in bad}
        photos = [r for r in photos if r["file"] not in bad_files]
        vote_list_pairs = [p for p in vote_list_pairs if p.winner not in bad and p.loser not in bad]
    aes = create_scorer(scorer)
    aesthetic = aesthetic_scores([k for k in need if k not in bad], aes.score_images, aes.fingerprint,
                                 cache_dir / "aesthetic-align.npz")
    queries = [t for t, _ in queries_for([r["label"] for r in photos])]
    all_texts = sorted(set(queries) | {p.query for p in vote_list_pairs})
    texts = dict(zip(all_texts, torch.from_numpy(text_embeddings(all_texts))))
    ref = load_reference(reference)

    def pairs_for(group: Sequence[dict], copies: Callable[[str], tuple[str, ...]]) -> list[Pair]:
        gallery = [k for r in group for k in (f"{r['file']}|", *copies(f"{r['file']}|"))]
        qs = [t for t, _ in queries_for([r["label"] for r in group])]
        with torch.no_grad():
            g, q = embed_images(ref, bank, gallery), ref.embed_text(torch.stack([texts[t] for t in qs]))
        return list_pairs(ref, gallery, g, qs, q, aesthetic, cfg)

    # dev: train on train-split photos with copies of the other types, measure dev photos with dev-type copies
    train_ids = {r["id"] for r in split_dev(photos, cfg.dev_fraction, cfg.seed)[0]}
    train_photos = [r for r in photos if r["id"] in train_ids]
    dev_photos = [r for r in photos if r["id"] not in train_ids]
    dev_copy = {k: with_view(k, vs[0]) for k, vs in views.items()}
    dev_pairs = pairs_for(train_photos, lambda k: (with_view(k, views[k][1]),))
    before = degraded_retrieval(ref, None, bank, dev_photos, dev_copy, texts)
    log.info("dev reference: %s", before)
    best, best_gain = cfg.betas[0], -1.0
    for beta in cfg.betas:
        gate = fit_gate(ref, bank, texts, dev_pairs, replace(cfg, beta=beta))
        after = degraded_retrieval(ref, gate, bank, dev_photos, dev_copy, texts)
        gain = after["orig@10"] - before["orig@10"]
        ok = before["R@10"] - after["R@10"] <= cfg.max_relevance_drop
        log.info("dev beta %g: %s: orig@10 gain %+.3f%s", beta, after, gain,
                 "" if ok else " (relevance drops too much)")
        if ok and gain > best_gain:
            best, best_gain = beta, gain
    log.info("chosen on dev: beta %g; refitting on all train photos (both copies) and %d vote pairs", best,
             len(vote_list_pairs))
    gate = fit_gate(ref, bank, texts, pairs_for(photos, lambda k: tuple(with_view(k, v) for v in views[k])),
                    replace(cfg, beta=best), vote_list_pairs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gate.save(out)
    log.info("saved %s", out)
    return out


def with_view(key: str, view: str) -> str:
    """The same image file under another view: "file|" -> "file|view"."""
    return f"{key.rsplit('|', 1)[0]}|{view}"
