"""Background sync of committed votes to a Hugging Face dataset repo (huggingface_hub.CommitScheduler).

Follows the Hub's "scheduled uploads" recipe: each vote is appended as a JSON line to a file in a watched
folder, under the scheduler's lock, and the scheduler commits the folder every few minutes. The Hub is
never on a vote's path: connecting happens in a background thread, retried every period while the Hub is
unreachable, and lines written meanwhile wait in the folder until a push succeeds (this run or the next).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class HubSync:
    """`folder/votes/<uuid>.jsonl` (one file per store, so replicas never write the same file) and
    `folder/images/<sha256>.png` (query images of synced votes), pushed to `repo` (repo_type="dataset")."""

    def __init__(self, folder: Path, repo: str, token: str, every_minutes: float = 5.0,
                 endpoint: str | None = None) -> None:
        if not every_minutes > 0:
            raise ValueError(f"Hub sync period must be positive minutes, got {every_minutes!r}")
        self.folder, self.repo, self.token = folder, repo, token
        self.every_minutes, self.endpoint = every_minutes, endpoint
        self.file = folder / "votes" / f"{uuid.uuid4().hex}.jsonl"
        self.file.parent.mkdir(parents=True, exist_ok=True)
        (folder / "images").mkdir(exist_ok=True)
        self.scheduler = None          # a CommitScheduler once the Hub answered
        self._lock = threading.Lock()  # orders appends; taken before the scheduler's own lock
        self._stopped = threading.Event()
        threading.Thread(target=self._connect, name="vote-hub-sync", daemon=True).start()

    def _connect(self) -> None:
        from huggingface_hub import CommitScheduler, HfApi

        while not self._stopped.is_set():
            try:  # creates the repo if needed: needs the network and a valid token
                scheduler = CommitScheduler(repo_id=self.repo, repo_type="dataset", folder_path=self.folder,
                                            every=self.every_minutes, token=self.token,
                                            hf_api=HfApi(endpoint=self.endpoint, token=self.token))
            except Exception as e:  # any Hub failure (network, auth, rate limit): votes stay local, retry later
                logger.warning("vote sync to Hub dataset %s unavailable (%s: %s); votes are kept in %s, "
                               "retrying in %g min", self.repo, type(e).__name__, e, self.folder, self.every_minutes)
                self._stopped.wait(self.every_minutes * 60)
                continue
            with self._lock:
                self.scheduler = scheduler
            if self._stopped.is_set():
                scheduler.stop()
            logger.info("votes sync to Hub dataset %s every %g min", self.repo, self.every_minutes)
            return

    def append(self, record: dict[str, Any], image: Path | None) -> None:
        """Queue a vote that is already committed locally; a failure is logged, never raised (the vote is safe)."""
        with self._lock, (self.scheduler.lock if self.scheduler else nullcontext()):
            try:
                with self.file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                if image is not None:
                    _link_or_copy(image, self.folder / "images" / image.name)
            except OSError as e:
                logger.error("vote %s is stored locally but not queued for the Hub: %s", record.get("vote_id"), e)

    def close(self, timeout: float = 30.0) -> None:
        """Push what is pending (waiting at most `timeout` s) and stop the scheduler."""
        self._stopped.set()
        with self._lock:
            scheduler, self.scheduler = self.scheduler, None
        if scheduler is None:
            return
        try:
            scheduler.trigger().result(timeout=timeout)
        except Exception as e:  # the Hub may be down at shutdown: the lines stay in the folder for the next run
            logger.warning("last vote push to %s failed (%s: %s); pending votes stay in %s",
                           self.repo, type(e).__name__, e, self.folder)
        scheduler.stop()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Content-addressed files never change, so a hard link is a safe, free copy."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this file system: copy, then rename so a push never sees half a file
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
