"""Vote store: validation, no lost votes under threads and processes, restart, export round trips, Hub sync."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import multiprocessing
import random
import socket
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli import main as cli
from search.index.images import to_rgb
from search.votes.store import (
    CHOICES,
    SCHEMA_VERSION,
    ImageQuotaExceeded,
    RankedId,
    Vote,
    VoteStore,
    export_votes,
    read_votes,
    vote_from_record,
    vote_to_record,
    write_votes,
)


def make_vote(n: int, **overrides) -> Vote:
    """A plausible vote; `n` seeds its content, the vote_id is fresh."""
    rng = random.Random(n)
    ids = [f"img{j:03d}" for j in rng.sample(range(500), 6)]

    def ranking() -> tuple[RankedId, ...]:
        return tuple(RankedId(i, rng.uniform(-1, 1), rng.choice([None, rng.uniform(1, 10)]))
                     for i in rng.sample(ids, len(ids)))

    values = dict(vote_id=uuid.uuid4().hex, time=1.7e9 + n + rng.random(), session=f"session{n % 7}",
                  query_text=f"a dog on a beach {n} — ünïcode", query_image=None, rephrased=f"a photo of a dog {n}",
                  style="sketch 0.91 · cartoon 0.06", side_a=ranking(), side_b=ranking(),
                  baseline_side=rng.choice("AB"), choice=rng.choice(CHOICES), app_version="0.1.0",
                  encoder="lite:1a2b3c", index="snapshot-0003",
                  settings={"k": 6, "aesthetic_weight": rng.choice([0.0, 0.5]), "dedup": True})
    values.update(overrides)
    return Vote(**values)


# ---------------------------------------------------------------- the Vote value
@pytest.mark.parametrize(("overrides", "message"), [
    ({"choice": "a"}, r"choice must be one of A, B, tie, both_bad, got 'a'"),
    ({"baseline_side": "C"}, r"baseline_side must be 'A' or 'B'"),
    ({"query_text": "  ", "query_image": None}, r"a vote needs its query: give query_text, query_image, or both"),
    ({"query_image": "photo.png"}, r"query_image must be the sha256 hex returned by VoteStore.save_query_image"),
    ({"vote_id": "42"}, r"vote_id must be 32 lowercase hex digits \(uuid.uuid4\(\).hex\)"),
    ({"time": float("nan")}, r"vote time must be finite"),
    ({"time": -5}, r"vote time must be unix seconds"),
    ({"session": ""}, r"vote session must be a non-empty string"),
    ({"side_b": ()}, r"side_b must be a non-empty sequence of RankedId"),
    ({"side_a": ({"id": "x", "score": 1.0},)}, r"side_a must be a non-empty sequence of RankedId"),
    ({"settings": {"k": float("inf")}}, r"settings must be JSON-serialisable"),
    ({"settings": {"fn": print}}, r"settings must be JSON-serialisable"),
    ({"encoder": None}, r"vote encoder must be a string"),
])
def test_vote_rejects_bad_fields(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_vote(0, **overrides)


def test_ranked_id_validates_and_coerces_numpy_scores() -> None:
    r = RankedId("x", np.float32(0.5), np.float64(6.25))
    assert type(r.score) is float and type(r.aesthetic) is float and (r.score, r.aesthetic) == (0.5, 6.25)
    with pytest.raises(ValueError, match=r"score of 'x' must be finite"):
        RankedId("x", float("nan"))
    with pytest.raises(ValueError, match=r"ranked id must be a non-empty string"):
        RankedId("", 1.0)
    with pytest.raises(ValueError, match=r"aesthetic score of 'x' must be a number"):
        RankedId("x", 1.0, "high")


@pytest.mark.parametrize(("baseline_side", "choice", "preferred"), [
    ("A", "A", "baseline"), ("A", "B", "aligned"), ("B", "A", "aligned"), ("B", "B", "baseline"),
    ("A", "tie", "tie"), ("B", "both_bad", "both_bad"),
])
def test_preferred_reveals_which_ranking_won(baseline_side: str, choice: str, preferred: str) -> None:
    assert make_vote(1, baseline_side=baseline_side, choice=choice).preferred == preferred


def test_vote_keeps_its_own_copy_of_settings_and_rankings() -> None:
    settings, side = {"k": 6}, [RankedId("x", 1.0)]
    vote = make_vote(2, settings=settings, side_a=side)
    settings["k"], side[0] = 99, RankedId("y", 0.0)
    assert vote.settings == {"k": 6} and vote.side_a == (RankedId("x", 1.0),)


# ---------------------------------------------------------------- the store
def test_record_get_count_in_time_order_and_idempotent(tmp_path: Path) -> None:
    votes = [make_vote(n) for n in (5, 1, 3, 2, 4)]
    with VoteStore(tmp_path) as store:
        assert [store.record(v) for v in votes] == [True] * 5
        assert store.record(votes[0]) is False  # a retried request
        assert store.record(make_vote(9, vote_id=votes[1].vote_id)) is False  # first write wins
        assert store.count() == 5
        assert store.votes() == sorted(votes, key=lambda v: v.time)
        assert store.get(votes[1].vote_id) == votes[1]
        assert store.get(uuid.uuid4().hex) is None
        with pytest.raises(TypeError, match=r"record\(\) takes a Vote, got dict"):
            store.record(vote_to_record(votes[0]))
        with pytest.raises(ValueError, match=r"names query image f{64}, which is not in .*images: store it with "
                                             r"save_query_image\(\) first"):
            store.record(make_vote(6, query_image="f" * 64))
        assert store.count() == 5


def test_votes_survive_reopening_and_schema_is_versioned(tmp_path: Path) -> None:
    votes = [make_vote(n) for n in range(10)]
    store = VoteStore(tmp_path)
    for v in votes:
        store.record(v)
    store.close()
    store.close()  # idempotent
    db = sqlite3.connect(tmp_path / "votes.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    with VoteStore(tmp_path) as store:
        assert store.votes() == votes and store.integrity_check() == "ok"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]  # not added twice
    db.execute("UPDATE schema_version SET version = 7")
    db.commit()
    with pytest.raises(OSError, match=r"vote schema version 7, newer than this app's 2: upgrade the app"):
        VoteStore(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "votes.db").write_bytes(b"not a database" * 100)
    with pytest.raises(OSError, match=r"votes.db is not a usable votes database \(file is not a database\): "
                                      r"move it aside"):
        VoteStore(tmp_path / "other")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "CMYK"])
def test_save_query_image_is_content_addressed_and_atomic(tmp_path: Path, mode: str) -> None:
    ramp = np.linspace(0, 255, 40 * 30 * len(mode)).reshape(40, 30, len(mode)).astype(np.uint8)  # smooth: WebP keeps it
    image = Image.fromarray(ramp.squeeze(), mode=mode)
    with VoteStore(tmp_path) as store:
        digest = store.save_query_image(image)
        path = store.image_path(digest)
        assert path.suffix == ".webp" and hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert store.save_query_image(image.copy()) == digest
        assert store.save_query_image(image.rotate(90, expand=True)) != digest
        with Image.open(path) as saved:
            expected = np.asarray(to_rgb(image), np.float32)  # transparency on white, as the app sees it
            assert saved.format == "WEBP" and saved.size == (30, 40)
            assert np.abs(np.asarray(saved.convert("RGB"), np.float32) - expected).mean() < 6
        assert sorted(p.name for p in store.images_dir.iterdir()) == sorted(
            {f"{digest}.webp", f"{store.save_query_image(image.rotate(90, expand=True))}.webp"})  # no temp files
        store.record(make_vote(3, query_text=None, query_image=digest))
        assert store.votes()[0].query_image == digest


def test_a_stored_query_image_is_small_and_bounded_by_a_quota(tmp_path: Path) -> None:
    grain = np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)  # 36 MB as PNG
    with VoteStore(tmp_path, images_quota_bytes=3_000_000) as store:
        digest = store.save_query_image(Image.fromarray(grain))
        with Image.open(store.image_path(digest)) as saved:
            assert saved.size == (1024, 768)
        assert store.image_path(digest).stat().st_size < 1_000_000
        store.save_query_image(Image.fromarray(grain[:, ::-1]))
        with pytest.raises(ImageQuotaExceeded, match=r"storage for query images is full \(3 MB\)"):
            for n in range(2, 8):
                store.save_query_image(Image.fromarray(np.roll(grain, n, axis=0)))
        assert sum(p.stat().st_size for p in store.images_dir.iterdir()) <= 3_000_000
        legacy = store.images_dir / f"{'0' * 64}.png"  # an image stored by app versions before 0.3
        Image.new("RGB", (4, 4)).save(legacy)
        assert store.image_path("0" * 64) == legacy


@pytest.mark.slow
def test_sixteen_threads_lose_no_vote(tmp_path: Path) -> None:
    threads_n, per_thread = 16, 50
    batches = [[make_vote(t * 1000 + i) for i in range(per_thread)] for t in range(threads_n)]
    new_counts = [0] * threads_n
    errors: list[BaseException] = []
    store = VoteStore(tmp_path)
    start = threading.Barrier(threads_n)

    def client(t: int) -> None:
        try:
            start.wait()
            for v in batches[t]:
                new_counts[t] += store.record(v)
            for v in batches[(t + 1) % threads_n][:5]:  # retries racing the neighbour's first writes
                new_counts[t] += store.record(v)
        except BaseException as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    assert errors == []
    expected = {v.vote_id: v for batch in batches for v in batch}
    assert sum(new_counts) == len(expected) == threads_n * per_thread  # each recorded exactly once
    assert store.count() == len(expected) and store.integrity_check() == "ok"
    store.close()
    with VoteStore(tmp_path) as reopened:
        assert {v.vote_id: v for v in reopened.votes()} == expected
    logging.getLogger(__name__).info("16 threads: %.0f votes/s", len(expected) / elapsed)


def _process_client(data_dir: str, votes: list[Vote], retries: list[Vote], go, results) -> None:  # noqa: ANN001
    """One app process (spawned): opens the store when all are ready, records its votes and some retries."""
    go.wait()
    store = VoteStore(data_dir)
    new = sum(store.record(v) for v in votes) + sum(store.record(v) for v in retries)
    store.close()
    results.put(new)


@pytest.mark.slow
def test_four_processes_lose_no_vote(tmp_path: Path) -> None:
    procs_n, per_proc = 4, 50
    batches = [[make_vote(p * 1000 + i) for i in range(per_proc)] for p in range(procs_n)]
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like separate app replicas
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_client, args=(str(tmp_path), batches[p], batches[(p + 1) % procs_n][:10],
                                                        go, results)) for p in range(procs_n)]
    for p in procs:
        p.start()
    go.set()  # all open the fresh database at once: schema creation and WAL switch race too
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * procs_n
    new_counts = [results.get(timeout=5) for _ in procs]
    expected = {v.vote_id: v for batch in batches for v in batch}
    assert sum(new_counts) == len(expected) == procs_n * per_proc
    with VoteStore(tmp_path) as store:
        assert {v.vote_id: v for v in store.votes()} == expected
        assert store.integrity_check() == "ok"


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_round_trip(tmp_path: Path, suffix: str) -> None:
    with VoteStore(tmp_path / "data") as store:
        digest = store.save_query_image(Image.new("L", (5, 5)))
        votes = [make_vote(n) for n in range(20)] + [make_vote(20, query_text=None, query_image=digest)]
        for v in votes:
            store.record(v)
        out = tmp_path / "out" / f"votes{suffix}"
        assert store.export(out) == len(votes)
    assert read_votes(out) == sorted(votes, key=lambda v: v.time)
    assert export_votes(tmp_path / "data", tmp_path / f"again{suffix}") == len(votes)
    assert read_votes(tmp_path) == read_votes(out)  # a folder of exports: each vote once
    assert not list((tmp_path / "out").glob(".*"))  # no temp file left behind


def test_export_shapes_load_with_pyarrow_and_datasets(tmp_path: Path) -> None:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    votes = [make_vote(n) for n in range(5)]
    write_votes(votes, tmp_path / "votes.jsonl")
    write_votes(votes, tmp_path / "votes.parquet")
    table = pq.read_table(tmp_path / "votes.parquet")
    assert table.num_rows == 5 and table.column_names[-1] == "preferred"
    assert str(table.schema.field("side_a").type) == \
        "list<element: struct<id: string, score: double, aesthetic: double>>"
    assert pj.read_json(tmp_path / "votes.jsonl").num_rows == 5
    first = json.loads((tmp_path / "votes.jsonl").read_text().splitlines()[0])
    assert first["side_a"][0].keys() == {"id", "score", "aesthetic"} and json.loads(first["settings"])["k"] == 6
    assert table.to_pylist()[0] == first
    datasets = pytest.importorskip("datasets")
    for builder, name in (("json", "votes.jsonl"), ("parquet", "votes.parquet")):
        ds = datasets.load_dataset(builder, data_files=str(tmp_path / name), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        assert ds.num_rows == 5 and ds[0]["vote_id"] == votes[0].vote_id
        assert ds[3]["preferred"] == votes[3].preferred and ds[3]["side_b"][0]["id"] == votes[3].side_b[0].id


def test_export_and_read_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"name the file \*\.jsonl or \*\.parquet"):
        write_votes([make_vote(0)], tmp_path / "votes.csv")
    with pytest.raises(ValueError, match=r"expected a \.jsonl or \.parquet export, or a folder of them"):
        read_votes(tmp_path / "votes.csv")
    with pytest.raises(FileNotFoundError, match=r"no votes database at .*: pass the app's --data-dir"):
        export_votes(tmp_path / "nowhere", tmp_path / "votes.jsonl")
    assert not (tmp_path / "nowhere").exists()
    good, bad = vote_to_record(make_vote(0)), vote_to_record(make_vote(1))
    del bad["side_b"]
    path = tmp_path / "votes.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"votes.jsonl:3: not a vote record: vote record lacks side_b"):
        read_votes(path)
    flipped = vote_to_record(make_vote(0, baseline_side="A", choice="A"))
    path.write_text(json.dumps(dict(flipped, preferred="aligned")) + "\n")
    with pytest.raises(ValueError, match=r"preferred='aligned' contradicts choice 'A' with baseline on side 'A'"):
        read_votes(path)


def test_export_votes_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    votes = [make_vote(n) for n in range(3)]
    with VoteStore(tmp_path / "data") as store:
        for v in votes:
            store.record(v)
    out = tmp_path / "votes.parquet"
    assert cli(["export-votes", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"3 vote(s) written to {out}"
    assert read_votes(out) == votes
    with pytest.raises(SystemExit) as exit_info:
        cli(["export-votes", "--data-dir", str(tmp_path / "missing"), "--out", str(out)])
    assert exit_info.value.code == 2 and "no votes database" in capsys.readouterr().err


# ---------------------------------------------------------------- Hub sync
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeHub(ThreadingHTTPServer):
    """The three Hub endpoints a CommitScheduler uses (create repo, preupload, commit), on 127.0.0.1;
    keeps the latest committed content of each file."""

    def __init__(self, port: int = 0) -> None:
        self.files: dict[str, bytes] = {}
        super().__init__(("127.0.0.1", port), _FakeHubHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def votes(self) -> list[Vote]:
        files = dict(self.files)  # a snapshot: the server thread may be adding a commit
        lines = b"".join(v for k, v in sorted(files.items()) if k.startswith("votes/")).decode().splitlines()
        return sorted((vote_from_record(json.loads(line)) for line in lines), key=lambda v: v.time)


class _FakeHubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        hub: FakeHub = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://127.0.0.1:{hub.server_port}/datasets/me/votes"
        if self.path == "/api/repos/create":
            out = {"url": base, "name": "me/votes"}
        elif self.path == "/api/datasets/me/votes/preupload/main":
            out = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in json.loads(body)["files"]]}
        elif self.path == "/api/datasets/me/votes/commit/main":
            for line in body.splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    hub.files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            out = {"commitUrl": f"{base}/commit/{'a' * 40}", "commitOid": "a" * 40}
        else:
            self.send_error(404)
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _wait_for(condition, seconds: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_unreachable_hub_never_blocks_or_loses_a_vote(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="search.votes.store")
    store = VoteStore(tmp_path, hub_repo="me/votes", hub_token="hf_test",
                      hub_endpoint=f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    digest = store.save_query_image(Image.new("RGB", (8, 8), "red"))
    votes = [make_vote(n, query_image=digest if n % 2 else None) for n in range(10)]
    t0 = time.perf_counter()
    assert all(store.record(v) for v in votes)
    assert time.perf_counter() - t0 < 5.0  # no network wait on the vote path
    assert _wait_for(lambda: "vote sync to Hub dataset me/votes unavailable" in caplog.text)
    assert store._hub is not None and store._hub.scheduler is None
    assert store.votes() == votes
    assert read_votes(tmp_path / "hub" / "votes") == votes  # queued as JSON lines for a later push
    assert (tmp_path / "hub" / "images" / f"{digest}.webp").read_bytes() == store.image_path(digest).read_bytes()
    t0 = time.perf_counter()
    store.close()
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.slow
def test_votes_reach_the_hub_once_it_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the "Hub" here is on 127.0.0.1
    port = _free_port()
    store = VoteStore(tmp_path, hub_repo="me/votes", hub_token="hf_test", hub_every_minutes=0.01,
                      hub_endpoint=f"http://127.0.0.1:{port}")  # down at start; retried every 0.6 s
    digest = store.save_query_image(Image.new("RGB", (8, 8), "blue"))
    early = [make_vote(n, query_image=digest) for n in range(3)]
    for v in early:
        store.record(v)
    hub = FakeHub(port)
    try:
        assert _wait_for(lambda: hub.votes() == early)
        late = [make_vote(n) for n in range(3, 6)]
        for v in late:
            store.record(v)
        store.close()  # pushes what is pending
        assert hub.votes() == early + late
        assert hub.files[f"images/{digest}.webp"] == store.image_path(digest).read_bytes()
        assert not any(k.endswith(".db") or k.endswith("-wal") for k in hub.files)
    finally:
        hub.shutdown()
        hub.server_close()


def test_hub_sync_needs_a_token(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with (caplog.at_level(logging.WARNING, logger="search.votes.store"),
          VoteStore(tmp_path, hub_repo="me/votes") as store):
        assert store.record(make_vote(0))
    assert "votes are not synced to me/votes: no Hub token (set HF_TOKEN)" in caplog.text
    assert not (tmp_path / "hub").exists()
