"""`python -m search train-adapters`: fit the `lite` style adapters (FreestyleRet step 3) on `train` splits.

The style adapters (models/style_adapters.py) learn to make a styled query's tower outputs look like
those of the photos it should find: a sketch like its photo, a PACS painting, cartoon or sketch, or a
doodle, like photos of its class, a mosaic or thumbnail like its original. Tower and heads stay frozen,
so every photo (the gallery) keeps its embedding. A training query is conditioned on its known style
(one-hot); at search time the mixture detected from its Gram descriptors takes that place.

The loss lives in the frozen tower's own feature space, not in the heads' output: InfoNCE on the heads'
standardised input (unit length) against every target photo of the task, plus the KL divergence from
the positives' mean ImageNet class distribution. Through the heads there is nothing to learn, because
they were fitted on these same pairs and have memorised them (train sketch->photo loss ~0.2); the
tower's feature space was never fitted to them, so what is learned there carries over to unseen
classes (held-out Sketchy classes: sketch R@10 0.25 -> 0.39-0.41 on a dev split).
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.lite import LiteHeads, late_outputs, load_image_tower
from models.style import STYLES
from models.style_adapters import SHALLOW_SHAPE, StyleAdapters
from search.training.encoder import Task, build_tasks, img_key, read_items
from search.training.tower_cache import SHALLOW_CACHE, SHALLOW_DIMS, TowerCache, shallow_outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterConfig:
    rank: int = 8
    steps: int = 350            # with TASK_SHARES (dev PACS painting mAP 0.950; 0.925 with 200 steps at the old shares)
    batch: int = 48             # queries per step, shared by the tasks in proportion to TASK_SHARES
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1    # InfoNCE temperature on cosines of standardised tower features
    kl_weight: float = 1.0      # weight of the class-distribution KL term
    seed: int = 0


# Share of each step's queries per task.
# PACS has the largest share: its class-level targets (every photo of the class) keep improving with more
# steps, while Sketchy's instance targets saturate by 200 steps (dev sketch R@10 0.41 at 200 and 400).
TASK_SHARES = {"sketch->photo": 0.3, "pacs style->photo": 0.5, "lowres->photo": 0.12, "doodle->photo": 0.08}


def query_styles(items: list[dict]) -> dict[str, str]:
    """Image key ("file|view") -> its style; the mosaic / 32-px views of photos are "lowres"."""
    out = {}
    for r in items:
        for view in ("", "hflip"):
            out[f"{r['file']}|{view}"] = r["style"]
        for view in ("mosaic16", "tiny32"):
            out[f"{r['file']}|{view}"] = "lowres"
    return out


def alignment_tasks(items: list[dict]) -> list[Task]:
    """The image->photo tasks of `build_tasks` (mirrored pairs too), keeping the queries that are not photos,
    and doodle -> every train photo of its class (QuickDraw has no photos; its classes recur in the others)."""
    style_of = query_styles(items)
    out = []
    for t in (t for t in build_tasks(items, flip=True) if t.name in TASK_SHARES):
        keep = [i for i, q in enumerate(t.queries) if style_of[q] != "photo"]
        if keep:
            out.append(Task(t.name, t.query_kind, t.target_kind, [t.queries[i] for i in keep],
                            [t.targets[i] for i in keep], [t.keys[i] for i in keep]))
    photos = defaultdict(list)
    for r in items:
        if r["style"] == "photo" and r.get("label"):
            photos[r["label"]].append(img_key(r))
    doodles = [r for r in items if r["style"] == "doodle" and photos.get(r.get("label"))]
    if doodles:
        out.append(Task("doodle->photo", "image", "image", [img_key(r) for r in doodles],
                        [photos[r["label"]] for r in doodles], [r["label"] for r in doodles]))
    return out


def onehot(styles: list[str]) -> torch.Tensor:
    m = torch.zeros(len(styles), len(STYLES))
    m[torch.arange(len(styles)), torch.tensor([STYLES.index(s) for s in styles])] = 1.0
    return m


@dataclass
class AlignTask:
    """Queries (shallow maps + styles) and the frozen tower outputs of the photos they should match."""

    name: str
    shallow: torch.Tensor                  # (N, 40, 28, 28) query maps, float16
    styles: list[str]                      # (N,) each query's style
    targets: dict[str, torch.Tensor]       # tower outputs of the M target photos (FEATURE_DIMS names)
    positives: list[list[int]]             # per query, its rows in `targets`


class Aligner:
    """The alignment loss: targets in the fixed space (standardised heads input, unit length) + class KL."""

    def __init__(self, heads: LiteHeads, task: AlignTask, cfg: AdapterConfig) -> None:
        self.heads, self.task, self.cfg = heads, task, cfg
        with torch.no_grad():
            self.z = self.space(task.targets)
            self.log_p = task.targets["logits"].log_softmax(-1)

    def space(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.heads.head_input(feats), dim=-1)

    def loss(self, feats: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor:
        target = torch.zeros(len(idx), len(self.z))
        for j, i in enumerate(idx):
            target[j, self.task.positives[i]] = 1.0 / len(self.task.positives[i])
        nce = torch.sum(-target * (self.space(feats) @ self.z.T / self.cfg.temperature).log_softmax(1), 1).mean()
        kl = F.kl_div(feats["logits"].log_softmax(-1), target @ self.log_p.exp(), reduction="batchmean")
        return nce + self.cfg.kl_weight * kl


def fit_adapters(tower: nn.Module, heads: LiteHeads, tasks: list[AlignTask],
                 cfg: AdapterConfig) -> StyleAdapters:
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    adapters = StyleAdapters.for_tower(tower, cfg.rank)
    aligners = [Aligner(heads, t, cfg) for t in tasks]
    shares = {t.name: TASK_SHARES.get(t.name, 1.0 / len(tasks)) for t in tasks}
    total = sum(shares.values())
    opt = torch.optim.AdamW(adapters.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    sizes = [min(len(t.styles), max(1, round(cfg.batch * shares[t.name] / total))) for t in tasks]
    for step in range(cfg.steps):
        picks = [rng.sample(range(len(t.styles)), n) for t, n in zip(tasks, sizes)]
        x = torch.cat([t.shallow[idx].float() for t, idx in zip(tasks, picks)])
        x = x.contiguous(memory_format=torch.channels_last)
        feats = late_outputs(tower, x, adapters, onehot([t.styles[i] for t, idx in zip(tasks, picks) for i in idx]))
        losses, at = {}, 0
        for a, idx in zip(aligners, picks):
            losses[a.task.name] = a.loss({k: v[at : at + len(idx)] for k, v in feats.items()}, idx)
            at += len(idx)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            log.info("step %d loss %.3f (%s)", step, loss.item(),
                     ", ".join(f"{k} {v.item():.2f}" for k, v in losses.items()))
    return adapters.eval().requires_grad_(False)


def load_align_tasks(items: list[dict], cache_dir: Path) -> list[AlignTask]:
    """Fill the tower caches (shallow maps of the queries, outputs of the targets) and build the tasks."""
    tasks = alignment_tasks(items)
    outputs = TowerCache(cache_dir / "towers.npz")
    shallow = TowerCache(cache_dir / SHALLOW_CACHE, shallow_outputs, SHALLOW_DIMS)
    targets = sorted({r for t in tasks for candidates in t.targets for r in candidates})
    queries = sorted({q for t in tasks for q in t.queries})
    bad = set(outputs.fill(*zip(*(k.rsplit("|", 1) for k in targets))))
    bad |= set(shallow.fill(*zip(*(k.rsplit("|", 1) for k in queries))))
    if bad:
        log.warning("leaving out %d unreadable images: %s", len(bad), sorted(bad)[:5])
    style_of = query_styles(items)
    out = []
    for t in tasks:
        refs = sorted({r for candidates in t.targets for r in candidates} - bad)
        row = {r: i for i, r in enumerate(refs)}
        keep = [i for i, q in enumerate(t.queries) if q not in bad and any(r in row for r in t.targets[i])]
        keys = [t.queries[i] for i in keep]
        maps = torch.from_numpy(shallow.arrays["shallow"][[shallow.index[k] for k in keys]])
        out.append(AlignTask(t.name, maps.view(len(keys), *SHALLOW_SHAPE), [style_of[k] for k in keys],
                             {k: torch.from_numpy(v) for k, v in outputs.get(refs).items()},
                             [[row[r] for r in t.targets[i] if r in row] for i in keep]))
        log.info("%s: %d queries, %d target photos", t.name, len(keys), len(refs))
    return out


def train_adapters(data: str | Path, heads_path: str | Path, out: str | Path, cache_dir: str | Path,
                   cfg: AdapterConfig | None = None) -> Path:
    """Fit the tower adapters on the train items of `data` and save them to `out`."""
    cfg = cfg or AdapterConfig()
    items = read_items(Path(data))
    if not items:
        raise ValueError(f"no train items found under {data}")
    tasks = load_align_tasks(items, Path(cache_dir))
    adapters = fit_adapters(load_image_tower(), LiteHeads.load(heads_path), tasks, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adapters.save(out)
    log.info("saved %s", out)
    return out
