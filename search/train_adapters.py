"""`python -m search train-adapters`: fit the `lite` style adapters (FreestyleRet step 3) on `train` splits.

The heads stay frozen, so photo and text embeddings (the gallery and its targets) do not move; only the
per-style adapters of the image head learn, with the same multi-positive InfoNCE and the same
cross-style tasks as the heads (sketch -> its photo, PACS sketch/painting/cartoon -> same-class photos,
low-res -> its photo, doodle -> class words). A training query is conditioned on its known style
(one-hot); at search time the mixture detected from its Gram descriptors takes that place.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from models.lite import LiteHeads
from models.style import STYLES
from models.style_adapters import StyleAdapters

from .tower_cache import TowerCache
from .train_encoder import Features, Task, build_tasks, multi_positive_nce, read_items, task_refs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = 32
    steps: int = 400
    batch: int = 256            # pairs per task per step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    feat_dropout: float = 0.2
    seed: int = 0


def query_styles(items: list[dict]) -> dict[str, str]:
    """Image key ("file|view") -> its style; the mosaic / 32-px views of photos are "lowres"."""
    out = {}
    for r in items:
        for view in ("", "hflip"):
            out[f"{r['file']}|{view}"] = r["style"]
        for view in ("mosaic16", "tiny32"):
            out[f"{r['file']}|{view}"] = "lowres"
    return out


def styled_tasks(tasks: list[Task], style_of: dict[str, str]) -> list[Task]:
    """Image-query tasks, keeping the queries that are not photos (photos have no adapter)."""
    out = []
    for t in tasks:
        if t.query_kind != "image":
            continue
        keep = [i for i, q in enumerate(t.queries) if style_of[q] != "photo"]
        if keep:
            out.append(Task(t.name, t.query_kind, t.target_kind, [t.queries[i] for i in keep],
                            [t.targets[i] for i in keep], [t.keys[i] for i in keep]))
    return out


def onehot(keys: list[str], style_of: dict[str, str]) -> torch.Tensor:
    m = torch.zeros(len(keys), len(STYLES))
    m[torch.arange(len(keys)), torch.tensor([STYLES.index(style_of[k]) for k in keys])] = 1.0
    return m


def train_adapters(data: str | Path, heads_path: str | Path, out: str | Path, cache_dir: str | Path,
                   cfg: AdapterConfig | None = None) -> Path:
    cfg = cfg or AdapterConfig()
    items = read_items(Path(data))
    if not items:
        raise ValueError(f"no train items found under {data}")
    heads = LiteHeads.load(heads_path)
    style_of = query_styles(items)
    tasks = build_tasks(items, flip=True)
    cache = TowerCache(Path(cache_dir) / "towers.npz")
    files, views = zip(*(k.rsplit("|", 1) for k in task_refs(tasks, "image")))
    bad = {k.rsplit("|", 1)[0] for k in cache.fill(files, views)}
    if bad:
        log.warning("leaving out %d unreadable images", len(bad))
        items = [r for r in items if r["file"] not in bad]
        tasks = build_tasks(items, flip=True)
    tasks = styled_tasks(tasks, style_of)
    feats = Features(cache, task_refs(tasks, "image"), task_refs(tasks, "text"))

    first = heads.image_head[0]
    adapters = StyleAdapters(first.in_features, first.out_features, cfg.rank)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(adapters.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    for step in range(cfg.steps):
        losses = {}
        for t in tasks:
            idx = rng.sample(range(len(t.queries)), min(cfg.batch, len(t.queries)))
            qk = [t.queries[i] for i in idx]
            x = F.dropout(heads.head_input(feats.image(qk)), cfg.feat_dropout, True)
            q = heads.image_learned(x, adapters, onehot(qk, style_of))
            targets = [rng.choice(t.targets[i]) for i in idx]
            with torch.no_grad():  # frozen targets: the gallery side never changes
                tv = (heads.text_learned(feats.texts(targets)) if t.target_kind == "text"
                      else heads.image_learned(heads.head_input(feats.image(targets))))
            losses[t.name] = multi_positive_nce(q, tv, [t.keys[i] for i in idx], cfg.temperature)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.3f (%s)", step, loss.item(),
                     ", ".join(f"{k} {v.item():.2f}" for k, v in losses.items()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adapters.eval().save(out)
    log.info("saved %s", out)
    return out
