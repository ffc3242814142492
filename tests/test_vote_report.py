"""What the votes say (search/vote_report.py), the arena's systems (search/arena.py) and the vote store's
schema 2 migration, on real SQLite stores: figures against a hand-computed example, Bradley-Terry on simulated
systems of known strength, an old database read after the migration, the vote-report command."""
from __future__ import annotations

import json
import math
import random
import sqlite3
import uuid
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from search.cli import main as cli
from search.votes.arena import System, baseline_side, draw_pair, parse_arena, parse_system, vote_systems
from search.votes.report import (
    LiveResults,
    load_votes,
    query_kind,
    render_markdown,
    sign_test,
    summary,
    wilson,
)
from search.votes.store import SCHEMA_VERSION, RankedId, Vote, VoteStore, read_votes, vote_to_record, write_votes

T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def vote(choice: str, baseline: str = "A", *, text: str | None = "a cat", style: str | None = None,
         image: str | None = None, t: float = T0, systems: tuple[str, str] | None = None,
         encoder: str = "lite@abc123", index: str = "idx1/0001") -> Vote:
    return Vote(uuid.uuid4().hex, t, "session", text, image, None, style, (RankedId("x", 0.9),),
                (RankedId("y", 0.8),), baseline, choice, "0.2.0", encoder, index, {"k": 1},
                *(systems or (None, None)))


def store_with(tmp_path: Path, votes: list[Vote]) -> list[Vote]:
    """Record the votes in a real store (images saved first) and read them back."""
    with VoteStore(tmp_path / "data") as store:
        for v in votes:
            store.record(v)
        return store.votes()


@pytest.fixture
def image_hash(tmp_path: Path) -> str:
    with VoteStore(tmp_path / "data") as store:
        return store.save_query_image(Image.new("RGB", (8, 8), "red"))


def hand_example(image: str) -> list[Vote]:
    """7 aligned wins, 3 baseline wins, 2 ties, 1 both bad; the baseline on either side; several kinds."""
    votes = []
    t = T0
    for n, (preferred, kind) in enumerate(
            [("aligned", "text")] * 4 + [("aligned", "sketch 0.91 · cartoon 0.06"), ("aligned", "doodle 0.70"),
                                         ("aligned", "lowres 0.80 · photo 0.20")]
            + [("baseline", "text"), ("baseline", "painting 0.66"), ("baseline", "photo 0.95")]
            + [("tie", "text"), ("tie", "cartoon 0.77")] + [("both_bad", "text")]):
        base = "AB"[n % 2]
        choice = {"aligned": "B" if base == "A" else "A", "baseline": base}.get(preferred, preferred)
        img = (dict(text=None, style=kind, image=image) if kind != "text" else {})
        votes.append(vote(choice, base, t=t, **img))
        t += 1800  # half an hour apart: 13 votes over 6 hours
    return votes


# ---------------------------------------------------------------- statistics by hand
def test_report_figures_equal_a_hand_computed_example(tmp_path: Path, image_hash: str) -> None:
    votes = store_with(tmp_path, hand_example(image_hash))
    assert Counter(v.preferred for v in votes) == {"aligned": 7, "baseline": 3, "tie": 2, "both_bad": 1}
    r = summary(votes, bootstrap=200)
    t = r.overall
    assert (r.n, t.aligned, t.baseline, t.tie, t.both_bad, t.decisive) == (13, 7, 3, 2, 1, 10)
    # Wilson, z = 1.96, p = 0.7, n = 10: centre (0.7 + 1.9208/10) / (1 + 3.8415/10) = 0.6445,
    # half-width 1.96 / 1.38415 * sqrt(0.7 * 0.3 / 10 + 3.8415 / 400) = 0.2477
    assert t.aligned_rate.estimate == 0.7
    assert (round(t.aligned_rate.low, 3), round(t.aligned_rate.high, 3)) == (0.397, 0.892)
    assert (round(t.baseline_rate.low, 3), round(t.baseline_rate.high, 3)) == (0.108, 0.603)
    assert t.tie_share.estimate == 2 / 13 and t.both_bad_share.estimate == 1 / 13
    # sign test: 2 * P(X >= 7 | n=10, 1/2) = 2 * (120 + 45 + 10 + 1) / 1024
    assert t.p_value == 2 * 176 / 1024 == 0.34375 and not t.significant
    kinds = dict(r.by_kind)
    assert list(kinds) == ["text", "sketch", "painting", "cartoon", "low-res", "photo"]
    assert (kinds["text"].aligned, kinds["text"].baseline, kinds["text"].tie, kinds["text"].both_bad) == (4, 1, 1, 1)
    assert (kinds["sketch"].aligned, kinds["sketch"].n) == (2, 2)  # a doodle is a sketch
    assert kinds["low-res"].aligned == 1 and kinds["painting"].baseline == kinds["photo"].baseline == 1
    assert kinds["cartoon"].tie == 1
    assert r.by_version == (("lite@abc123 · idx1/0001", t),)
    assert r.bucket == "hour" and sum(b.tally.n for b in r.over_time) == 13 and r.over_time[-1].cumulative == t
    # the default two-system arena is baseline vs aligned again
    assert [s.system for s in r.systems] == ["lite:aligned", "lite:baseline"]
    (pair,) = r.pairs
    assert (pair.first, pair.first_wins, pair.second_wins, pair.ties, pair.both_bad) == ("lite:aligned", 7, 3, 2, 1)
    assert r.systems[0].wins == 7 and r.systems[0].losses == 3 and r.systems[0].ties == 3
    md = render_markdown(r)
    assert "| aligned wins (of 10 decisive) | 70.0 % | 39.7–89.2 % |" in md
    assert "| ties (of all 13) | 15.4 % |" in md and "| both bad (of all 13) | 7.7 % |" in md
    assert "p = 0.344" in md and "not significant at the 5 % level" in md
    assert "| sketch | 2 | 2 | 0 | 100.0 % (34.2–100.0) |" in md


def test_wilson_and_sign_test_edges() -> None:
    assert math.isnan(wilson(0, 0).estimate) and (wilson(0, 0).low, wilson(0, 0).high) == (0.0, 1.0)
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == sign_test(0, 10) == 2 / 1024
    assert sign_test(60, 40) == pytest.approx(0.0569, abs=5e-4)  # scipy.stats.binomtest(60, 100).pvalue


def test_query_kind_is_one_mapping(image_hash: str) -> None:
    def kind(style: str | None, text: str | None = None) -> str:
        return query_kind(vote("A", text=text, style=style, image=image_hash))

    assert query_kind(vote("A")) == "text"
    assert kind("sketch 0.91 · cartoon 0.06") == kind("doodle 0.5 · sketch 0.4") == "sketch"
    assert kind("lowres 0.9") == "low-res" and kind("photo 0.6 · lowres 0.3") == "photo"
    assert kind("painting 0.8", text="a dog") == "painting"  # text + image: the image's kind
    assert kind(None) == "image"  # an encoder that reads no style


# ---------------------------------------------------------------- Bradley-Terry
def test_bradley_terry_recovers_three_systems_of_known_strength(tmp_path: Path) -> None:
    systems = parse_arena("lite:baseline,lite:aligned,lite-aligned:baseline")
    strength = {"lite:baseline": 0.0, "lite:aligned": 0.25, "lite-aligned:baseline": 0.5}  # log10 strengths
    rng = random.Random(7)
    votes = []
    for n in range(600):
        a, b = draw_pair(systems, rng)
        p_a = 1 / (1 + 10 ** (strength[str(b)] - strength[str(a)]))
        choice = "tie" if rng.random() < 0.1 else "A" if rng.random() < p_a else "B"
        votes.append(vote(choice, baseline_side((a, b), systems), t=T0 + n, systems=(str(a), str(b))))
    votes = store_with(tmp_path, votes)
    assert {v.systems["A"] for v in votes} == set(strength)
    r = summary(votes, bootstrap=300)
    assert [s.system for s in r.systems] == ["lite-aligned:baseline", "lite:aligned", "lite:baseline"]
    assert all(s.low < s.score < s.high for s in r.systems)
    assert sum(s.games for s in r.systems) == 2 * 600 and r.arena and len(r.pairs) == 3
    # these ties are drawn at random, whatever the strengths: counted half, they pull the scores together;
    # left out, the fit is unbiased and the truth (on the report's scale) lies inside each bootstrap interval
    excluded = summary(votes, bootstrap=300, ties="exclude")
    assert [s.system for s in excluded.systems] == [s.system for s in r.systems]
    mean = sum(strength.values()) / 3
    for s in excluded.systems:
        truth = 1000 + 400 * (strength[s.system] - mean)
        assert s.low <= truth <= s.high, (s, truth)
    assert "a tie or a both-bad vote counts half a win" in render_markdown(r)
    assert "ties and both-bad votes are left out" in render_markdown(excluded)


def test_bradley_terry_is_finite_when_a_system_never_wins(tmp_path: Path) -> None:
    votes = [vote("A", t=T0 + n, systems=("lite:aligned", "lite:baseline")) for n in range(20)]
    r = summary(store_with(tmp_path, votes), bootstrap=50)
    assert [s.system for s in r.systems] == ["lite:aligned", "lite:baseline"]
    assert all(math.isfinite(x) for s in r.systems for x in (s.score, s.low, s.high))


# ---------------------------------------------------------------- arena systems
def test_arena_systems_parse_draw_and_name_old_votes() -> None:
    systems = parse_arena("lite:baseline, lite:aligned:dedup=false:aesthetic_weight=0.8 ,lite-aligned:baseline")
    assert systems[1] == System("lite", "aligned", (("aesthetic_weight", 0.8), ("dedup", False)))
    assert str(systems[1]) == "lite:aligned:aesthetic_weight=0.8:dedup=false"
    assert parse_system(str(systems[1])) == systems[1]
    assert systems[1].rank_settings(__import__("search.rankings").rankings.RankSettings(k=5)).dedup is False
    for bad, message in [("lite", "not ENCODER:RANKING"), ("lite:best,lite:baseline", "unknown ranking 'best'"),
                         ("nope:baseline,lite:baseline", "unknown encoder 'nope'"),
                         ("lite:aligned:k=3,lite:baseline", "unknown setting 'k'"),
                         ("lite:aligned:aesthetic_weight=2,lite:baseline", "aesthetic_weight must be in 0..1"),
                         ("lite:baseline,lite:baseline", "listed twice"), ("lite:baseline", "at least two")]:
        with pytest.raises(ValueError, match=message):
            parse_arena(bad)
    rng = random.Random(0)
    drawn = Counter(tuple(map(str, draw_pair(systems, rng))) for _ in range(6000))
    assert len(drawn) == 6 and all(900 < n < 1100 for n in drawn.values())  # 6 ordered pairs, 1000 each
    assert baseline_side((systems[2], systems[0]), systems) == "B"
    assert vote_systems(vote("A", "B")) == ("lite:aligned", "lite:baseline")
    assert vote_systems(vote("A", systems=("x:baseline", "y:aligned"))) == ("x:baseline", "y:aligned")
    with pytest.raises(ValueError, match="give both system_a and system_b"):
        vote("A", systems=("lite:aligned", None))


# ---------------------------------------------------------------- the store's schema 2
OLD_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE votes (
    vote_id TEXT PRIMARY KEY, time REAL NOT NULL, session TEXT NOT NULL, query_text TEXT, query_image TEXT,
    rephrased TEXT, style TEXT, side_a TEXT NOT NULL, side_b TEXT NOT NULL,
    baseline_side TEXT NOT NULL CHECK (baseline_side IN ('A', 'B')),
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    app_version TEXT NOT NULL, encoder TEXT NOT NULL, "index" TEXT NOT NULL, settings TEXT NOT NULL
);
CREATE INDEX votes_by_time ON votes (time);
INSERT INTO schema_version (version) VALUES (1);
"""


def test_a_schema_1_database_opens_migrates_and_reads_with_systems_none(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "votes.db")
    db.executescript(OLD_SCHEMA)
    old = [vote("B", "A", t=T0 + n) for n in range(3)]
    for v in old:
        row = {k: val for k, val in vote_to_record(v).items() if k not in ("preferred", "system_a", "system_b")}
        row["side_a"], row["side_b"] = json.dumps(row["side_a"]), json.dumps(row["side_b"])
        db.execute(f"INSERT INTO votes ({', '.join(f'{chr(34)}{k}{chr(34)}' for k in row)}) "
                   f"VALUES ({', '.join('?' * len(row))})", list(row.values()))
    db.commit()
    db.close()
    with VoteStore(data) as store:
        got = store.votes()
        assert got == old and all(v.systems is None and v.system_a is None for v in got)
        new = vote("A", "B", t=T0 + 10, systems=("lite:baseline", "lite-aligned:baseline"))
        store.record(new)
        assert store.get(new.vote_id).systems == {"A": "lite:baseline", "B": "lite-aligned:baseline"}
        assert store.integrity_check() == "ok"
    db = sqlite3.connect(data / "votes.db")
    assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(2,)]
    assert {r[1] for r in db.execute("PRAGMA table_info(votes)")} >= {"system_a", "system_b"}
    db.close()
    with VoteStore(data) as store:  # opening again changes nothing
        assert len(store.votes()) == 4
    for suffix in (".jsonl", ".parquet"):  # exports carry the systems; an export without them reads as None
        write_votes([*old, new], tmp_path / f"votes{suffix}")
        assert read_votes(tmp_path / f"votes{suffix}")[-1].system_b == "lite-aligned:baseline"
    legacy = tmp_path / "legacy" / "old.jsonl"
    legacy.parent.mkdir()
    legacy.write_text("".join(json.dumps({k: v for k, v in vote_to_record(o).items()
                                          if k not in ("system_a", "system_b")}) + "\n" for o in old))
    assert [v.systems for v in read_votes(legacy)] == [None] * 3


# ---------------------------------------------------------------- the command and the live results
def test_vote_report_command_writes_markdown_and_plots(tmp_path: Path, image_hash: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    store_with(tmp_path, hand_example(image_hash))
    out = tmp_path / "report"
    assert cli(["vote-report", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--bootstrap", "100"]) == 0
    assert "13 vote(s)" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "70.0 %" in md and "p = 0.344" in md
    for name in ("win_rates", "by_kind", "by_version", "over_time", "arena"):
        assert f"]({name}.png)" in md
        with Image.open(out / f"{name}.png") as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 200
    write_votes(load_votes(tmp_path / "data"), tmp_path / "votes.parquet")
    assert cli(["vote-report", "--votes", str(tmp_path / "votes.parquet"), "--out", str(tmp_path / "r2"),
                "--bootstrap", "100"]) == 0
    assert (tmp_path / "r2" / "report.md").read_text() == md
    with pytest.raises(SystemExit):
        cli(["vote-report", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")])
    assert "no votes database" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_live_results_are_cached_and_follow_new_votes(tmp_path: Path) -> None:
    with VoteStore(tmp_path / "data") as store:
        reads = []

        def read() -> list[Vote]:
            reads.append(1)
            return store.votes()

        live = LiveResults(read, store.count, ttl=0.0, bootstrap=20)
        md, gallery = live.get()
        assert "No votes yet" in md and len(gallery) == 5 and all(isinstance(im, Image.Image) for im, _ in gallery)
        assert live.get()[0] == md and len(reads) == 1  # the count did not change: not read again
        store.record(vote("B", "A"))
        assert "1 vote(s)" in live.get()[0] and len(reads) == 2
        cached = LiveResults(read, store.count, ttl=3600, bootstrap=20)
        cached.get()
        store.record(vote("A", "A"))
        cached.get()
        assert len(reads) == 3  # within the ttl: the first result again


# ---------------------------------------------------------------- a drawn pair on real engines
def test_compare_pair_runs_each_system_on_its_own_engine(tmp_path: Path) -> None:
    from search.engine import SearchEngine
    from search.index.sources import default_gallery
    from search.rankings import RankSettings
    from search.types import Query
    from search.votes.arena import compare_pair, engines_for, shown_sides

    systems = parse_arena("lite:baseline,lite:aligned,lite-aligned:baseline")
    engines = engines_for(systems, lambda name: SearchEngine.build(default_gallery(), name, tmp_path / name,
                                                                   cache_dir=tmp_path)[0])
    assert set(engines) == {"lite", "lite-aligned"}
    query, settings = Query(text="a cat"), RankSettings(k=6)
    pc = compare_pair(engines, (systems[1], systems[0]), query, settings)
    c = engines["lite"].compare(query, settings)  # the default app's two sides
    assert [h.item.id for h in pc.a.hits] == [h.item.id for h in c.aligned]
    assert [h.item.id for h in pc.b.hits] == [h.item.id for h in c.baseline]
    assert pc.systems == ("lite:aligned", "lite:baseline") and pc.rephrased == c.rephrasing.rephrased
    assert pc.encoder == engines["lite"].encoder.fingerprint and pc.a.rephrased and pc.b.rephrased is None
    assert shown_sides(pc, systems) == ("B", pc.b.hits, pc.a.hits)  # lite:baseline, listed first, is on B
    mixed = compare_pair(engines, (systems[2], systems[0]), query, settings)
    assert len(mixed.a.hits) == len(mixed.b.hits) == 6 and mixed.encoder.count("@") == 2
    assert mixed.encoder.startswith("lite-aligned@") and "," in mixed.index


ARENA = "lite:baseline,lite:aligned:aesthetic_weight=1:dedup=false,lite:shift"


@pytest.mark.slow
def test_the_app_in_arena_mode_shows_drawn_pairs_and_stores_their_systems(app, tmp_path: Path) -> None:
    """`python app.py --arena ...` (sharing the session app's index): each query shows two of the systems,
    each side ranked as that system ranks it; the vote names both; the reveal says which was where."""
    from conftest import App
    from gradio_client import Client

    from search.engine import SearchEngine
    from search.rankings import RankSettings
    from search.types import Query

    systems = parse_arena(ARENA)
    (meta,) = app.cache_dir.glob("indexes/*/index.json")
    engine = SearchEngine.open(meta.parent)
    # what each system shows for the query (the aligned ranking also rephrases it: its ids are not compared)
    want = {str(s): [h.item.id for h in engine.search(Query(text="a cat"), k=5, ranking=s.ranking,
                                                        settings=s.rank_settings(RankSettings()))]
            for s in systems if s.ranking != "aligned"}
    with App(tmp_path, "--arena", ARENA, cache_dir=app.cache_dir) as arena:
        c = Client(arena.url, verbose=False, download_files=False)
        for _ in range(4):   # one visitor, four queries: a pair is drawn for each
            a, b, _, _ = c.predict("a cat", None, None, k=5, api_name="/search")
            before = {v.vote_id for v in arena.votes()}
            text = c.predict("A", True, api_name="/vote")
            (v,) = [v for v in arena.votes() if v.vote_id not in before]
            assert v.system_a != v.system_b and {v.system_a, v.system_b} <= {str(s) for s in systems}
            assert f"**A** was `{v.system_a}` and **B** was `{v.system_b}`" in text
            for side, name in ((a, v.system_a), (b, v.system_b)):
                if name in want:
                    assert [arena.id_of(r) for r in side] == want[name], name
    assert {v.system_a for v in load_votes(tmp_path / "data")} <= {str(s) for s in systems}


def test_a_bad_arena_stops_the_app_with_a_message() -> None:
    import subprocess
    import sys

    from conftest import APP

    out = subprocess.run([sys.executable, str(APP), "--arena", "lite:baseline,lite:nosuch"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "--arena" in out.stderr and "unknown ranking 'nosuch'" in out.stderr
