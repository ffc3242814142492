"""The only module that knows Ray: the embedding stage's missing shards on a Ray cluster (Ray Data).

A Ray Dataset holds one row per missing shard; `map_batches` runs them on a fixed pool of actors
(`ActorPoolStrategy`), each of which loads the encoder (and the aesthetic scorer) once and then writes whole
shards with the same function the local engine uses (`shards.embed_shard`), straight to SHARDS_DIR, which
must therefore be a folder every node sees (NFS, a mounted bucket). Nothing but each shard's name and counts
travels back to the driver, so the driver's memory does not grow with the gallery.

On a cluster with GPUs, `gpus_per_actor=1` reserves one per actor (Ray sets CUDA_VISIBLE_DEVICES for it);
note that the encoders of models/ run on the CPU today, so a GPU only pays once they move to CUDA.
Ray is imported here only, and only when `--engine ray` is asked for.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.index.shards import ShardTask

if TYPE_CHECKING:
    from models.safety import SafetyFilter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    actors: int = 2                 # actors in the pool, one model each
    cpus_per_actor: float = 1.0     # also the actor's torch threads
    gpus_per_actor: float = 0.0
    batch_size: int | None = None   # images per model forward (default: the encoder's)
    address: str | None = None      # None: a local cluster of this machine; "auto"; "ray://HOST:10001"


class ShardWriter:
    """A Ray Data actor: one encoder (and scorer) for its lifetime; a batch of shard tasks -> their counts."""

    def __init__(self, out: str, encoder: str, scorer: str | None, stale: Sequence[str], cpus: float,
                 batch_size: int | None, style: bool = True, safety: dict | None = None) -> None:
        import torch

        from models import get_encoder
        from models.safety import SafetyFilter
        from search.engine import make_scorer
        from search.index.shards import OldVectors, run_id

        torch.set_num_threads(max(1, int(cpus)))
        self.out = Path(out)
        self.encoder = get_encoder(encoder)
        self.scorer = make_scorer(scorer, self.encoder)
        self.safety = SafetyFilter(**safety) if safety else None  # each actor loads its own detector
        self.known = OldVectors(self.out, stale, run_id(self.encoder, self.scorer, style, self.safety))
        self.batch_size, self.style = batch_size, style

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from search.index.shards import embed_shard

        names, new, old = [], [], []
        for text in batch["task"]:
            task = ShardTask.from_json(str(text))
            n_new, n_old, _ = embed_shard(task, self.out, self.encoder, self.scorer, self.known, self.batch_size,
                                          self.style, self.safety)
            names.append(task.name)
            new.append(n_new)
            old.append(n_old)
        return {"name": np.array(names), "embedded": np.array(new, np.int64), "copied": np.array(old, np.int64)}


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join (or start) a Ray cluster once per process; a local one is started with this machine's CPUs."""
    import ray

    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def embed_with_ray(tasks: Sequence[ShardTask], out: Path, encoder: str, scorer: str | None, stale: Sequence[str],
                   opts: RayOptions, style: bool = True,
                   safety: SafetyFilter | None = None) -> Iterator[tuple[str, int, int]]:
    """Write `tasks`' shards under `out` on the cluster; yields (shard name, embedded, copied) as they finish."""
    import ray

    connect(opts.address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"task": t.to_json()} for t in tasks], override_num_blocks=len(tasks))
    done = ds.map_batches(
        ShardWriter,
        batch_size=1,                      # one shard per call: a shard is the unit of work and of resumption
        compute=ray.data.ActorPoolStrategy(size=max(1, min(opts.actors, len(tasks)))),
        fn_constructor_kwargs={"out": str(Path(out).resolve()), "encoder": encoder, "scorer": scorer,
                               "stale": list(stale), "cpus": opts.cpus_per_actor, "batch_size": opts.batch_size,
                               "style": style, "safety": safety and safety.settings},
        num_cpus=opts.cpus_per_actor,
        num_gpus=opts.gpus_per_actor or None,
    )
    for row in done.iter_rows():
        log.info("ray: wrote %s (%d embedded, %d copied)", row["name"], row["embedded"], row["copied"])
        yield str(row["name"]), int(row["embedded"]), int(row["copied"])
