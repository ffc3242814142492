"""`python -m search train-encoder`: fit the `lite` heads on the `train` splits of a data folder.

Stage 1 caches the frozen towers' outputs (once; later runs reuse them). Stage 2 trains the
learned part with a multi-positive InfoNCE over several tasks, each a list of (query, target)
pairs sharing a positive key: sketch -> its photo, PACS sketch/painting/cartoon -> photos of the
same class, low-res (mosaic / 32-px) -> its photo, class words -> photos, doodles -> class words;
sketch/photo pairs and PACS images are also used mirrored. Stage 3 fits on `train` minus a dev split
(whole classes held out), picks the bridge mixes and text temperature on that dev split (image and
text retrieval figures), and refits on all of `train` with them.
"""
from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.lite import CLASS_PROMPT, HeadsConfig, LiteHeads, imagenet_class_texts
from search.evaluation.metrics import mean_metrics, query_metrics, rank_all
from search.training.tower_cache import TowerCache, text_embeddings

log = logging.getLogger(__name__)

DATASETS = ("sketchy", "pacs", "imagenet", "quickdraw")
LOWRES_VIEWS = ("mosaic16", "tiny32")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch: int = 256            # pairs per task per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05   # InfoNCE temperature
    feat_dropout: float = 0.2   # dropout on the frozen image features (cheap augmentation)
    flip: bool = True           # add mirrored sketch/photo and PACS pairs (cached "hflip" view)
    dev_fraction: float = 0.2   # share of train classes / images held out to pick the mixes
    seed: int = 0


@dataclass
class Task:
    """(query, target) pairs; pairs whose `keys` are equal are positives of each other."""

    name: str
    query_kind: str   # "image" or "text"
    target_kind: str
    queries: list[str]
    targets: list[list[str]]  # per pair, candidate targets; one is sampled each step
    keys: list[str]


def read_items(data_dir: Path) -> list[dict]:
    items = []
    for ds in DATASETS:
        for line in (data_dir / ds / "items.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("split") == "train":
                row["file"] = str((data_dir / ds / row["path"]).resolve())
                items.append(row)
    return items


def split_dev(items: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole classes (class-split datasets) or images (PACS), like the shared test splits."""
    rng = random.Random(seed)
    labels = sorted({(r["id"].split("/")[0], r.get("label")) for r in items if not r["id"].startswith("pacs/")})
    dev_labels = set(rng.sample(labels, int(len(labels) * fraction)))
    dev_pacs = {r["id"] for r in items if r["id"].startswith("pacs/") and rng.random() < fraction}
    is_dev = [(r["id"].split("/")[0], r.get("label")) in dev_labels or r["id"] in dev_pacs for r in items]
    return [r for r, d in zip(items, is_dev) if not d], [r for r, d in zip(items, is_dev) if d]


def img_key(item: dict, view: str = "") -> str:
    return f"{item['file']}|{view}"


def build_tasks(items: list[dict], flip: bool = False) -> list[Task]:
    """With `flip`, Sketchy pairs are added mirrored together (sketch and photo, as a pair of its own)
    and PACS queries and photos also as mirror images."""
    photos = [r for r in items if r["style"] == "photo"]
    by_id = {r["id"]: r for r in items}
    pacs_photos = defaultdict(list)
    for r in photos:
        if r["id"].startswith("pacs/"):
            pacs_photos[r["label"]].append(img_key(r))
    tasks = []
    sk = [r for r in items if r["id"].startswith("sketchy/") and r["style"] == "sketch"
          and f"sketchy/photo/{r['group']}" in by_id]
    views = ("", "hflip") if flip else ("",)
    tasks.append(Task("sketch->photo", "image", "image", [img_key(r, v) for v in views for r in sk],
                      [[img_key(by_id[f"sketchy/photo/{r['group']}"], v)] for v in views for r in sk],
                      [f"{r['group']}|{v}" for v in views for r in sk]))
    if flip:
        for label in pacs_photos:
            pacs_photos[label] += [k.replace("|", "|hflip") for k in pacs_photos[label]]
    pq = [r for r in items if r["id"].startswith("pacs/") and r["style"] != "photo" and pacs_photos[r["label"]]]
    pq += [r for r in photos if r["id"].startswith("pacs/")]  # photo->photo keeps classes tight
    tasks.append(Task("pacs style->photo", "image", "image", [img_key(r, v) for v in views for r in pq],
                      [pacs_photos[r["label"]] for v in views for r in pq], [r["label"] for v in views for r in pq]))
    lr = [(r, v) for r in photos for v in LOWRES_VIEWS]
    tasks.append(Task("lowres->photo", "image", "image", [img_key(r, v) for r, v in lr],
                      [[img_key(r)] for r, _ in lr], [r["id"] for r, _ in lr]))
    tasks.append(Task("word->photo", "text", "image", [CLASS_PROMPT.format(r["label"]) for r in photos],
                      [[img_key(r)] for r in photos], [r["label"] for r in photos]))
    dd = [r for r in items if r["style"] == "doodle"]
    tasks.append(Task("doodle->word", "image", "text", [img_key(r) for r in dd],
                      [[f"a drawing of a {r['label']}"] for r in dd], [r["label"] for r in dd]))
    return [t for t in tasks if t.queries]


class Features:
    """Cached tower outputs as tensors, addressed by image key or text."""

    def __init__(self, cache: TowerCache, image_keys: list[str], texts: list[str]) -> None:
        self.row = {k: i for i, k in enumerate(image_keys)}
        self.arrays = {name: torch.from_numpy(a) for name, a in cache.get(image_keys).items()}
        self.trow = {t: i for i, t in enumerate(texts)}
        self.text = torch.from_numpy(text_embeddings(texts))

    def image(self, keys: list[str]) -> dict[str, torch.Tensor]:
        rows = torch.tensor([self.row[k] for k in keys])
        return {name: a[rows] for name, a in self.arrays.items()}

    def texts(self, texts: list[str]) -> torch.Tensor:
        return self.text[torch.tensor([self.trow[t] for t in texts])]


def learned(heads: LiteHeads, feats: Features, kind: str, refs: list[str], dropout: float = 0.0) -> torch.Tensor:
    if kind == "text":
        return heads.text_learned(feats.texts(refs))
    return heads.image_learned(F.dropout(heads.head_input(feats.image(refs)), dropout, heads.training))


def fit_standardisation(heads: LiteHeads, feats: Features, keys: list[str]) -> None:
    """Per-dimension mean/std of the image head's input over the training images."""
    with torch.no_grad():
        heads.feat_mean.zero_()
        heads.feat_std.fill_(1.0)
        x = heads.head_input(feats.image(keys))
        heads.feat_mean.copy_(x.mean(0))
        heads.feat_std.copy_(x.std(0) + 1e-3)


def fit_space(heads: LiteHeads, feats: Features, items: list[dict]) -> None:
    """The heads' instance part: PCA over the training photos (what a gallery holds)."""
    with torch.no_grad():
        heads.fit_space(heads.head_input(feats.image([img_key(r) for r in items if r["style"] == "photo"])))


def multi_positive_nce(q: torch.Tensor, t: torch.Tensor, keys: list[str], temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same key is a positive (soft uniform target)."""
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    k = torch.tensor([ids[x] for x in keys])
    pos = (k[:, None] == k[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    logits = q @ t.T / temperature
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


def task_refs(tasks: list[Task], kind: str) -> list[str]:
    """Every image key (kind "image") or text (kind "text") the tasks use, sorted."""
    refs = set()
    for t in tasks:
        if t.query_kind == kind:
            refs.update(t.queries)
        if t.target_kind == kind:
            refs.update(r for candidates in t.targets for r in candidates)
    return sorted(refs)


def new_heads(heads_cfg: HeadsConfig, class_text: torch.Tensor, seed: int) -> LiteHeads:
    """Freshly initialised heads; seeded, so each fit starts the same whatever ran before it."""
    torch.manual_seed(seed)
    return LiteHeads(heads_cfg, class_text)


def train_heads(heads: LiteHeads, tasks: list[Task], feats: Features, cfg: TrainConfig) -> LiteHeads:
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    fit_standardisation(heads, feats, task_refs(tasks, "image"))
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    heads.train()
    for step in range(cfg.steps):
        losses = {}
        for task in tasks:
            idx = rng.sample(range(len(task.queries)), min(cfg.batch, len(task.queries)))
            q = learned(heads, feats, task.query_kind, [task.queries[i] for i in idx], cfg.feat_dropout)
            t = learned(heads, feats, task.target_kind, [rng.choice(task.targets[i]) for i in idx],
                        cfg.feat_dropout)
            losses[task.name] = multi_positive_nce(q, t, [task.keys[i] for i in idx], cfg.temperature)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.3f (%s)", step, loss.item(),
                     ", ".join(f"{k} {v.item():.2f}" for k, v in losses.items()))
    return heads.eval()


# ---------------------------------------------------------------- picking the mixes on dev
# Phrasings of dev class words unlike the training prompt, so the text side is chosen for free text.
DEV_PHRASES = ("{}", "the {} is next to something", "a blurry shot of a {}", "someone took a picture of a {}")


def dev_benchmarks(dev: list[dict]) -> dict[str, tuple[list, list, list[set]]]:
    """Small retrieval tasks on the dev split: name -> (query refs, gallery refs, relevant sets).

    Image queries: "sketch" (instance), "pacs" (class), "lowres" (instance). Text queries: "words"
    (held-out ImageNet class prompts -> their photo), "phrases" (the same classes in `DEV_PHRASES`),
    "sketchy words" / "pacs words" (class words in several phrasings -> every photo of the class).
    """
    photos = [r for r in dev if r["style"] == "photo"]
    benches = {}
    sk_ph = [r for r in photos if r["id"].startswith("sketchy/")]
    sk = [r for r in dev if r["id"].startswith("sketchy/") and r["style"] == "sketch"]
    benches["sketch"] = ([("image", img_key(r)) for r in sk], [img_key(r) for r in sk_ph],
                         [{img_key(p) for p in sk_ph if p["group"] == r["group"]} for r in sk])
    pc_ph = [r for r in photos if r["id"].startswith("pacs/")]
    pc = [r for r in dev if r["id"].startswith("pacs/") and r["style"] != "photo"]
    benches["pacs"] = ([("image", img_key(r)) for r in pc], [img_key(r) for r in pc_ph],
                       [{img_key(p) for p in pc_ph if p["label"] == r["label"]} for r in pc])
    im = [r for r in photos if r["id"].startswith("imagenet/")]
    benches["words"] = ([("text", CLASS_PROMPT.format(r["label"])) for r in im], [img_key(r) for r in im],
                        [{img_key(r)} for r in im])
    benches["phrases"] = ([("text", t.format(r["label"])) for r in im for t in DEV_PHRASES],
                          [img_key(r) for r in im], [{img_key(r)} for r in im for _ in DEV_PHRASES])
    for name, group in (("sketchy words", sk_ph), ("pacs words", pc_ph)):
        qs = [(label, t) for label in sorted({r["label"] for r in group}) for t in (CLASS_PROMPT, *DEV_PHRASES)]
        benches[name] = ([("text", t.format(label)) for label, t in qs], [img_key(r) for r in group],
                         [{img_key(r) for r in group if r["label"] == label} for label, _ in qs])
    benches["lowres"] = ([("image", img_key(r, "tiny32")) for r in sk_ph], [img_key(r) for r in sk_ph],
                         [{img_key(r)} for r in sk_ph])
    # keep the queries that have something to find
    return {name: ([q for q, rel in zip(qs, rels) if rel], gallery, [rel for rel in rels if rel])
            for name, (qs, gallery, rels) in benches.items()}


IMAGE_DEV = (("sketch", "R@10"), ("pacs", "mAP"), ("lowres", "R@1"))
TEXT_DEV = (("words", "R@1"), ("phrases", "R@1"), ("sketchy words", "mAP"), ("pacs words", "mAP"))


def embed_queries(heads: LiteHeads, feats: Features, queries: list[tuple[str, str]]) -> np.ndarray:
    """Vectors of dev queries, ("text" | "image", key) pairs of one kind, under `heads.cfg`."""
    keys = [r for _, r in queries]
    with torch.no_grad():
        return (heads.embed_text(feats.texts(keys)) if queries[0][0] == "text" else
                heads.embed_image(feats.image(keys))).numpy()


def embed_gallery(heads: LiteHeads, feats: Features, keys: list[str]) -> np.ndarray:
    with torch.no_grad():
        return heads.embed_image(feats.image(keys)).numpy()


def score_mix(q: np.ndarray, g: np.ndarray, bench: tuple, metric: str) -> float:
    _, gallery, relevant = bench
    ranked = rank_all(q, g)
    return mean_metrics([query_metrics([gallery[j] for j in row], rel) for row, rel in zip(ranked, relevant)])[metric]


def pick_mixes(heads: LiteHeads, feats: Features, dev: list[dict]) -> HeadsConfig:
    """Choose the bridge/learned mixes, the text temperature and the MiniLM share on the dev split.

    Image-to-image (dev sketch R@10, PACS mAP, low-res R@1) depends on `image_mix` and `minilm_mix`;
    text-to-image (`TEXT_DEV`, averaged into one text figure) on all four. The chosen point maximises
    the mean of the three image figures and the text figure. Image vectors depend only on
    (`minilm_mix`, `image_mix`) and text vectors only on (`minilm_mix`, `text_mix`, temperature), so
    each is computed once per setting it depends on.
    """
    b = dev_benchmarks(dev)
    image_benches = [(b[n], m) for n, m in IMAGE_DEV if b[n][0]]
    text_benches = [(b[n], m) for n, m in TEXT_DEV if b[n][0]]
    if not text_benches or not image_benches:
        log.warning("dev split too small to pick mixes; keeping %s", heads.cfg)
        return heads.cfg
    base, best, best_score = heads.cfg, heads.cfg, -1.0
    text_grid = [(text_mix, tt) for text_mix in (0.8, 0.9, 0.95, 0.98, 1.0) for tt in (0.01, 0.02, 0.03, 0.05)]
    for minilm_mix in (0.0, 0.2, 0.4, 0.6):
        text_q = {}
        for text_mix, tt in text_grid:
            heads.cfg = replace(base, text_mix=text_mix, text_temperature=tt, minilm_mix=minilm_mix)
            text_q[text_mix, tt] = [embed_queries(heads, feats, bench[0]) for bench, _ in text_benches]
        for image_mix in (0.02, 0.05, 0.1, 0.2):
            heads.cfg = replace(base, image_mix=image_mix, minilm_mix=minilm_mix)
            image_scores = [score_mix(embed_queries(heads, feats, bench[0]), embed_gallery(heads, feats, bench[1]),
                                      bench, metric) for bench, metric in image_benches]
            galleries = [embed_gallery(heads, feats, bench[1]) for bench, _ in text_benches]
            for text_mix, tt in text_grid:
                text_score = np.mean([score_mix(q, g, bench, metric) for q, g, (bench, metric)
                                      in zip(text_q[text_mix, tt], galleries, text_benches)])
                score = float(np.mean([*image_scores, text_score]))
                log.debug("dev image_mix=%.2f text_mix=%.2f text_temperature=%.2f minilm_mix=%.1f: %.4f",
                          image_mix, text_mix, tt, minilm_mix, score)
                if score > best_score:
                    best_score = score
                    best = replace(base, image_mix=image_mix, text_mix=text_mix, text_temperature=tt,
                                   minilm_mix=minilm_mix)
            log.info("dev minilm_mix=%.1f image_mix=%.2f: image-to-image %s; best so far %.4f", minilm_mix, image_mix,
                     " ".join(f"{x:.3f}" for x in image_scores), best_score)
    heads.cfg = best
    return best


def train_encoder(data: str | Path, out: str | Path, cache_dir: str | Path,
                  cfg: TrainConfig | None = None, heads_cfg: HeadsConfig | None = None) -> Path:
    """Cache tower outputs, fit heads on the train split, pick mixes on dev, refit on all, save."""
    cfg, heads_cfg = cfg or TrainConfig(), heads_cfg or HeadsConfig()
    data = Path(data)
    items = read_items(data)
    if not items:
        raise ValueError(f"no train items found under {data} (expected {DATASETS} folders with items.jsonl)")
    tasks = build_tasks(items, cfg.flip)
    cache = TowerCache(Path(cache_dir) / "towers.npz")
    files, views = zip(*(k.rsplit("|", 1) for k in task_refs(tasks, "image")))
    bad_files = {k.rsplit("|", 1)[0] for k in cache.fill(files, views)}
    if bad_files:
        log.warning("leaving out %d unreadable images: %s", len(bad_files), sorted(bad_files)[:5])
        items = [r for r in items if r["file"] not in bad_files]
        tasks = build_tasks(items, cfg.flip)
    train, dev = split_dev(items, cfg.dev_fraction, cfg.seed)
    dev_texts = {ref for queries, _, _ in dev_benchmarks(dev).values() for kind, ref in queries if kind == "text"}
    feats = Features(cache, task_refs(tasks, "image"), sorted(dev_texts.union(task_refs(tasks, "text"))))
    prompts, definitions = imagenet_class_texts()
    # heads normalise the sum; cached in cache_dir, as the tower outputs are
    class_text = torch.from_numpy(text_embeddings(prompts, cache_dir) + text_embeddings(definitions, cache_dir))

    log.info("fitting on train minus dev (%d / %d items) to pick the mixes", len(train), len(dev))
    # the mixes weigh the bridge and learned parts; the instance part's share is fixed (HeadsConfig)
    dev_cfg = replace(heads_cfg, space_dim=0)
    heads = train_heads(new_heads(dev_cfg, class_text, cfg.seed), build_tasks(train, cfg.flip), feats, cfg)
    chosen = replace(pick_mixes(heads, feats, dev), space_dim=heads_cfg.space_dim, space_mix=heads_cfg.space_mix)
    log.info("chosen on dev: image_mix %.2f, text_mix %.2f, text_temperature %.2f, minilm_mix %.1f; "
             "refitting on all train items",
             chosen.image_mix, chosen.text_mix, chosen.text_temperature, chosen.minilm_mix)
    heads = train_heads(new_heads(chosen, class_text, cfg.seed), tasks, feats, cfg)
    fit_space(heads, feats, items)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    heads.save(out)
    log.info("saved %s", out)
    return out
