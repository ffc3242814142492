"""Blind A/B preference votes: a durable SQLite store, JSONL/Parquet export and optional Hub sync.

The store is the only copy of what visitors told us, so every design choice favours not losing a vote:
WAL mode with `synchronous=FULL` (a committed vote survives a power cut), one `BEGIN IMMEDIATE`
transaction per vote (writers queue on the database lock instead of failing mid-transaction), a
`busy_timeout` so other processes wait rather than error, and a client-made `vote_id` primary key so a
retried request is recorded once. Hub sync only ever reads what is already committed locally.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image

from search.config import QUERY_MAX_SIDE
from search.index.images import shrink, to_rgb, to_webp
from search.votes.sync import HubSync

logger = logging.getLogger(__name__)

CHOICES = ("A", "B", "tie", "both_bad")
SCHEMA_VERSION = 2                # 2: system_a, system_b (the arena's systems shown; NULL before)
BUSY_TIMEOUT_MS = 60_000          # a writer waits this long for the lock before giving up (never seen near it)
_HEX32 = re.compile(r"[0-9a-f]{32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RankedId:
    id: str                        # gallery item id
    score: float                   # the ranking's score for it (higher = better)
    aesthetic: float | None = None  # aesthetic score, when a scorer ran

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"ranked id must be a non-empty string, got {self.id!r}")
        object.__setattr__(self, "score", _finite(self.score, f"score of {self.id!r}"))
        if self.aesthetic is not None:
            object.__setattr__(self, "aesthetic", _finite(self.aesthetic, f"aesthetic score of {self.id!r}"))


@dataclass(frozen=True)
class Vote:
    vote_id: str                   # uuid4 hex made by the client: the primary key, so a retry is stored once
    time: float                    # unix seconds
    session: str                   # anonymous session id
    query_text: str | None         # text query, if any
    query_image: str | None        # sha256 hex of the query image saved by VoteStore.save_query_image, if any
    rephrased: str | None          # the rephrased text the aligned ranking used
    style: str | None              # detected query style, e.g. "sketch 0.91 · cartoon 0.06"
    side_a: tuple[RankedId, ...]   # ranking shown on side A, best first
    side_b: tuple[RankedId, ...]   # ranking shown on side B, best first
    baseline_side: str             # "A" or "B": the side that showed the baseline ranking
    choice: str                    # one of CHOICES
    app_version: str               # app version that served the query
    encoder: str                   # encoder fingerprint
    index: str                     # index fingerprint / snapshot
    settings: dict                 # JSON-serialisable search settings, e.g. {"k": 12, "dedup": true}
    # the systems shown on each side (search/arena.py: "ENCODER:RANKING[:KEY=VALUE...]", e.g. "lite:aligned"),
    # both or neither; None (votes before the arena, and the default app): baseline vs aligned of `encoder`,
    # the baseline on `baseline_side`
    system_a: str | None = None
    system_b: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vote_id, str) or not _HEX32.fullmatch(self.vote_id):
            raise ValueError(f"vote_id must be 32 lowercase hex digits (uuid.uuid4().hex), got {self.vote_id!r}")
        object.__setattr__(self, "time", _finite(self.time, "vote time"))
        if self.time <= 0:
            raise ValueError(f"vote time must be unix seconds (time.time()), got {self.time!r}")
        if not isinstance(self.session, str) or not self.session:
            raise ValueError("vote session must be a non-empty string (the anonymous session id)")
        text = self.query_text.strip() if isinstance(self.query_text, str) else self.query_text
        object.__setattr__(self, "query_text", text or None)
        if self.query_image is not None and not (isinstance(self.query_image, str)
                                                 and _SHA256.fullmatch(self.query_image)):
            raise ValueError(f"query_image must be the sha256 hex returned by VoteStore.save_query_image, "
                             f"got {self.query_image!r}")
        if self.query_text is None and self.query_image is None:
            raise ValueError("a vote needs its query: give query_text, query_image, or both")
        for name in ("side_a", "side_b"):
            ranking = tuple(getattr(self, name))
            if not ranking or not all(isinstance(r, RankedId) for r in ranking):
                raise ValueError(f"{name} must be a non-empty sequence of RankedId (the ranking shown), "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, ranking)
        if self.baseline_side not in ("A", "B"):
            raise ValueError(f"baseline_side must be 'A' or 'B', got {self.baseline_side!r}")
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {self.choice!r}")
        for name in ("app_version", "encoder", "index", "rephrased", "style"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (value is None and name in ("rephrased", "style")):
                raise ValueError(f"vote {name} must be a string, got {value!r}")
        if not isinstance(self.settings, dict):
            raise ValueError(f"vote settings must be a dict, got {type(self.settings).__name__}")
        try:  # a private normalised copy: the stored vote equals the one read back, and the caller can't mutate it
            settings = json.loads(json.dumps(self.settings, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"vote settings must be JSON-serialisable (str keys, finite numbers): {e}") from e
        object.__setattr__(self, "settings", settings)
        if (self.system_a is None) != (self.system_b is None):
            raise ValueError("give both system_a and system_b (the systems shown on A and B), or neither")
        for name in ("system_a", "system_b"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"vote {name} must be a non-empty string (a system such as 'lite:aligned'), "
                                 f"got {value!r}")

    @property
    def systems(self) -> dict[str, str] | None:
        """{"A": system shown on A, "B": ...}, or None for a vote that does not name them."""
        return None if self.system_a is None else {"A": self.system_a, "B": self.system_b}

    @property
    def preferred(self) -> str:
        """Which ranking won: "baseline", "aligned", "tie" or "both_bad"."""
        if self.choice in ("tie", "both_bad"):
            return self.choice
        return "baseline" if self.choice == self.baseline_side else "aligned"


def _finite(value: Any, what: str) -> float:
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):  # numpy scalars welcome
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


# ---------------------------------------------------------------- flat records (export, Hub lines, DB rows)
_FIELDS = tuple(f.name for f in fields(Vote))
_OPTIONAL = ("system_a", "system_b")  # added in schema 2: records written before lack them (read as None)


def vote_to_record(vote: Vote) -> dict[str, Any]:
    """A flat JSON-serialisable dict: rankings as lists of {id, score, aesthetic}, settings as a JSON string
    (its keys change between app versions; one string column loads in every Parquet/`datasets` reader)."""
    record = {name: getattr(vote, name) for name in _FIELDS}
    for side in ("side_a", "side_b"):
        record[side] = [{"id": r.id, "score": r.score, "aesthetic": r.aesthetic} for r in record[side]]
    record["settings"] = json.dumps(vote.settings, sort_keys=True)
    record["preferred"] = vote.preferred
    return record


def vote_from_record(record: dict[str, Any]) -> Vote:
    """Inverse of `vote_to_record` (also accepts settings as a dict, and a record without `preferred`)."""
    missing = [name for name in _FIELDS if name not in record and name not in _OPTIONAL]
    if missing:
        raise ValueError(f"vote record lacks {', '.join(missing)}: is this a file written by export-votes?")
    values = {name: record.get(name) for name in _FIELDS}
    for side in ("side_a", "side_b"):
        if not isinstance(values[side], list):
            raise ValueError(f"{side} must be a list of {{id, score, aesthetic}}, got {values[side]!r}")
        values[side] = tuple(RankedId(r["id"], r["score"], r.get("aesthetic")) for r in values[side])
    if isinstance(values["settings"], str):
        values["settings"] = json.loads(values["settings"])
    vote = Vote(**values)
    if record.get("preferred") not in (None, vote.preferred):
        raise ValueError(f"vote {vote.vote_id}: preferred={record['preferred']!r} contradicts choice "
                         f"{vote.choice!r} with baseline on side {vote.baseline_side!r}")
    return vote


def _db_row(vote: Vote) -> dict[str, Any]:
    row = vote_to_record(vote)
    del row["preferred"]  # derived, not stored
    row["side_a"], row["side_b"] = json.dumps(row["side_a"]), json.dumps(row["side_b"])
    return row


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    vote_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    session TEXT NOT NULL,
    query_text TEXT,
    query_image TEXT,
    rephrased TEXT,
    style TEXT,
    side_a TEXT NOT NULL,          -- JSON list of {{id, score, aesthetic}}
    side_b TEXT NOT NULL,
    baseline_side TEXT NOT NULL CHECK (baseline_side IN ('A', 'B')),
    choice TEXT NOT NULL CHECK (choice IN ({", ".join(f"'{c}'" for c in CHOICES)})),
    app_version TEXT NOT NULL,
    encoder TEXT NOT NULL,
    "index" TEXT NOT NULL,
    settings TEXT NOT NULL,        -- JSON object
    system_a TEXT,                 -- schema 2: the systems shown (NULL: baseline vs aligned)
    system_b TEXT
);
CREATE INDEX IF NOT EXISTS votes_by_time ON votes (time);
"""
_COLUMNS = ", ".join(f'"{name}"' for name in _FIELDS)
_INSERT = (f"INSERT INTO votes ({_COLUMNS}) VALUES ({', '.join(':' + n for n in _FIELDS)}) "
           "ON CONFLICT (vote_id) DO NOTHING")  # not INSERT OR IGNORE: that would also swallow CHECK failures


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a database of an older schema to SCHEMA_VERSION, inside the caller's transaction (so processes
    opening it at once migrate it once). Only columns are added: an older row reads with them NULL."""
    columns = {name for _, name, *_ in conn.execute("PRAGMA table_info(votes)")}
    for name in _OPTIONAL:  # 1 -> 2: the arena's systems
        if name not in columns:
            conn.execute(f"ALTER TABLE votes ADD COLUMN {name} TEXT")
    conn.execute("DELETE FROM schema_version")
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    logger.info("votes database migrated from schema %d to %d", version, SCHEMA_VERSION)


def _vote_from_db(row: tuple) -> Vote:
    record = dict(zip(_FIELDS, row))
    record["side_a"], record["side_b"] = json.loads(record["side_a"]), json.loads(record["side_b"])
    return vote_from_record(record)


# ---------------------------------------------------------------- the store
class ImageQuotaExceeded(OSError):
    """Storing one more query image would take more disk than the store's quota allows."""


class VoteStore:
    """Votes in `data_dir/votes.db` (SQLite, WAL), query images in `data_dir/images/<sha256>.webp`.

    One connection per store, shared by threads under a lock (measured against a connection per thread in
    benchmarks/vote_store_stress.py); several processes may open the same directory at once.
    """

    def __init__(self, data_dir: str | Path, hub_repo: str | None = None, hub_token: str | None = None, *,
                 hub_every_minutes: float = 5.0, hub_endpoint: str | None = None,
                 images_quota_bytes: int | None = None) -> None:
        """`images_quota_bytes`: stored query images may take this much disk (None: no limit)."""
        self.data_dir = Path(data_dir).expanduser()
        self.images_dir = self.data_dir / "images"
        self.path = self.data_dir / "votes.db"
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            _probe_write(self.images_dir)
        except OSError as e:
            raise OSError(f"cannot store votes in {self.data_dir}: it is not writable ({e.strerror or e}); "
                          "pass a writable --data-dir (env VISUAL_SEARCH_DATA)") from e
        self.images_quota = images_quota_bytes
        self._images_bytes = sum(p.stat().st_size for p in self.images_dir.iterdir() if p.is_file())
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._hub: HubSync | None = None
        token = hub_token or os.environ.get("HF_TOKEN")
        if hub_repo and token:
            self._hub = HubSync(self.data_dir / "hub", hub_repo, token, hub_every_minutes, hub_endpoint)
        elif hub_repo:
            logger.warning("votes are not synced to %s: no Hub token (set HF_TOKEN)", hub_repo)

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.OperationalError as e:  # read-only file, unwritable folder, a directory in its place
            raise OSError(f"cannot store votes in {self.path} ({e}): pass a writable --data-dir "
                          "(env VISUAL_SEARCH_DATA)") from e
        except sqlite3.DatabaseError as e:
            raise OSError(f"{self.path} is not a usable votes database ({e}): move it aside to start a new one, "
                          f"or use another --data-dir") from e

    def _open(self) -> sqlite3.Connection:
        # timeout= is SQLite's busy_timeout: a writer waits for another's transaction instead of failing
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:  # switching a new file to WAL can report "locked" while another process does the same
            try:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                    raise OSError(f"{self.path}: SQLite refused WAL mode (is it on a network file system?)")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous = FULL")  # in WAL, NORMAL may drop the last commits on power loss
        with _transaction(conn):
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            versions = [v for (v,) in conn.execute("SELECT version FROM schema_version")]
            if not versions:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif max(versions) > SCHEMA_VERSION:
                raise OSError(f"{self.path} has vote schema version {max(versions)}, newer than this app's "
                              f"{SCHEMA_VERSION}: upgrade the app (or use another --data-dir)")
            elif max(versions) < SCHEMA_VERSION:
                _migrate(conn, max(versions))
            # a write that is rolled back: a read-only database fails here, at start, not at the first vote
            conn.execute("DELETE FROM votes WHERE vote_id = ''")

    def save_query_image(self, image: Image.Image | bytes) -> str:
        """Store a query image under images/<sha256 of its bytes>.webp (atomic); return the hash.

        A PIL image is shrunk to QUERY_MAX_SIDE and encoded as WebP; bytes are stored as given (the app keeps
        the WebP it made at query time). Raises ImageQuotaExceeded when the images would outgrow the quota."""
        data = image if isinstance(image, bytes) else to_webp(shrink(to_rgb(image), QUERY_MAX_SIDE))
        digest = hashlib.sha256(data).hexdigest()
        path = self.images_dir / f"{digest}.webp"
        if not path.exists():
            with self._lock:
                if self.images_quota is not None and self._images_bytes + len(data) > self.images_quota:
                    raise ImageQuotaExceeded(f"the server's storage for query images is full "
                                             f"({self.images_quota / 1e6:,.0f} MB)")
                self._images_bytes += len(data)
            _atomic_write(path, data)
        return digest

    def image_path(self, digest: str) -> Path:
        """Where the query image with this hash is stored (WebP; PNG for votes of app versions before 0.3)."""
        webp = self.images_dir / f"{digest}.webp"
        legacy = self.images_dir / f"{digest}.png"
        return legacy if not webp.exists() and legacy.exists() else webp

    def record(self, vote: Vote) -> bool:
        """Store a vote in one transaction. True if new, False if its vote_id was already stored (first wins)."""
        if not isinstance(vote, Vote):
            raise TypeError(f"record() takes a Vote, got {type(vote).__name__}")
        if vote.query_image and not self.image_path(vote.query_image).is_file():
            raise ValueError(f"vote {vote.vote_id} names query image {vote.query_image}, which is not in "
                             f"{self.images_dir}: store it with save_query_image() first")
        row = _db_row(vote)
        with self._lock, _transaction(self._conn):
            new = self._conn.execute(_INSERT, row).rowcount == 1
        if new and self._hub is not None:
            image = self.image_path(vote.query_image) if vote.query_image else None
            self._hub.append(vote_to_record(vote), image)
        return new

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def votes(self) -> list[Vote]:
        """Every vote, in time order (ties in recording order)."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM votes ORDER BY time, rowid").fetchall()
        return [_vote_from_db(r) for r in rows]

    def get(self, vote_id: str) -> Vote | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM votes WHERE vote_id = ?", (vote_id,)).fetchone()
        return _vote_from_db(row) if row else None

    def integrity_check(self) -> str:
        """SQLite's own check of the database file: "ok" when sound."""
        with self._lock:
            return "\n".join(r[0] for r in self._conn.execute("PRAGMA integrity_check"))

    def export(self, out: str | Path) -> int:
        """Write every vote to a .jsonl or .parquet file (chosen by suffix, written atomically); return rows."""
        return write_votes(self.votes(), out)

    def close(self) -> None:
        """Close the database (idempotent); with Hub sync, push what is pending and stop the scheduler."""
        if self._hub is not None:
            self._hub.close()
        with self._lock:
            self._conn.close()

    def __enter__(self) -> VoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so busy_timeout applies (a deferred
    transaction that reads first can fail with SQLITE_BUSY at once when it tries to write)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT, so the connection stays usable
            conn.execute("ROLLBACK")
        raise


def check_writable(data_dir: str | Path) -> None:
    """OSError unless votes could be stored under `data_dir`, found without creating anything: the folder (or
    the nearest one that exists above it) takes a new file, and an existing votes.db opens for writing."""
    data_dir = Path(data_dir).expanduser()
    existing = next(p for p in (data_dir / "images", *(data_dir / "images").parents) if p.exists())
    try:
        _probe_write(existing)
        if (data_dir / "votes.db").exists():
            with open(data_dir / "votes.db", "r+b"):
                pass
    except OSError as e:
        raise OSError(f"cannot store votes in {data_dir}: it is not writable ({e.strerror or e}); "
                      "pass a writable --data-dir (env VISUAL_SEARCH_DATA)") from e


def _probe_write(folder: Path) -> None:
    """Raise OSError unless a file can be created, written and removed in `folder`."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- export files
def _parquet_schema():  # noqa: ANN202 (pyarrow is imported lazily)
    import pyarrow as pa

    ranking = pa.list_(pa.struct([("id", pa.string()), ("score", pa.float64()), ("aesthetic", pa.float64())]))
    types = {"time": pa.float64(), "side_a": ranking, "side_b": ranking}
    return pa.schema([(name, types.get(name, pa.string())) for name in (*_FIELDS, "preferred")])


def write_votes(votes: list[Vote], out: str | Path) -> int:
    """Write votes as JSONL (one flat record a line) or Parquet, by the file's suffix, atomically."""
    out = Path(out)
    records = [vote_to_record(v) for v in votes]
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        _atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    elif out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(records, schema=_parquet_schema()), buf)
        _atomic_write(out, buf.getvalue().to_pybytes())
    else:
        raise ValueError(f"cannot export votes to {out}: name the file *.jsonl or *.parquet")
    return len(records)


def export_votes(data_dir: str | Path, out: str | Path) -> int:
    """Export the votes of an existing data directory (never creates one); return rows written."""
    db = Path(data_dir).expanduser() / "votes.db"
    if not db.is_file():
        raise FileNotFoundError(f"no votes database at {db}: pass the app's --data-dir")
    with VoteStore(data_dir) as store:
        return store.export(out)


def read_votes(path: str | Path) -> list[Vote]:
    """Votes from an export (.jsonl/.parquet) or a folder of them (e.g. a downloaded Hub dataset), in time
    order, each vote_id once."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".parquet"))
    elif path.suffix in (".jsonl", ".parquet"):
        files = [path]
    else:
        raise ValueError(f"cannot read votes from {path}: expected a .jsonl or .parquet export, or a folder of them")
    by_id: dict[str, Vote] = {}
    for file in files:
        for vote in _read_file(file):
            by_id.setdefault(vote.vote_id, vote)
    return sorted(by_id.values(), key=lambda v: v.time)


def _read_file(path: Path) -> list[Vote]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [vote_from_record(r) for r in pq.read_table(path).to_pylist()]
    votes = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                votes.append(vote_from_record(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a vote record: {e}") from e
    return votes
