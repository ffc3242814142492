"""What the votes say: `python -m search vote-report [--data-dir DIR | --votes FILE] --out DIR`.

Pure computation over a list of Vote (`summary(votes) -> ReportData`, frozen dataclasses), then two renderings
of the same figures: Markdown (`render_markdown`) and matplotlib plots (`figures`, `save_plots`, `plot_images`),
which the CLI writes as report.md + PNGs and the app's Results tab shows live (`LiveResults`). How to read it:
docs/votes.md.

* Win rates are over decisive votes (A or B); ties and both-bad are shares of all votes, shown apart. Every
  proportion has a 95 % Wilson score interval.
* Significance: a two-sided exact binomial (sign) test of the decisive votes against 50/50.
* Arena: systems (search/arena.py) ranked by Bradley-Terry strengths fitted with Hunter's MM algorithm, on an
  Elo-like scale (1000 + 400 log10 strength, mean 1000); a tie or a both-bad vote counts half a win to each
  side (`ties="half"`, as LMSYS's Chatbot Arena) or is left out (`ties="exclude"`); 95 % intervals from a
  bootstrap over votes. The default app's votes are the two-system arena ENCODER:baseline vs ENCODER:aligned.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.votes.arena import vote_systems
from search.votes.store import Vote

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

Z95 = 1.959963984540054          # the standard normal's 97.5 % quantile
ALPHA = 0.05                      # significance level of the sign test
KINDS = ("text", "sketch", "painting", "cartoon", "low-res", "photo")
# detected style (models.style.STYLES, the first of Vote.style) -> query kind
STYLE_KINDS = {"photo": "photo", "sketch": "sketch", "doodle": "sketch", "painting": "painting",
               "cartoon": "cartoon", "lowres": "low-res"}
UNKNOWN_IMAGE = "image"           # an image query of an encoder that detects no style
PLOTS = ("win_rates", "by_kind", "by_version", "over_time", "arena")


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    estimate: float               # k / n (nan when n = 0)
    low: float                    # 95 % Wilson score interval
    high: float


def wilson(k: float, n: float, z: float = Z95) -> Interval:
    """Proportion k/n with its Wilson score interval (Wilson 1927); n = 0 gives (nan, 0, 1)."""
    if n <= 0:
        return Interval(math.nan, 0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins vs losses against p = 1/2 (ties left out): the probability of a
    split at least as uneven as this one. 1.0 with no decisive vote."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class Tally:
    """Votes by which ranking won: Vote.preferred (the side opposite `baseline_side` is "aligned")."""

    aligned: int = 0
    baseline: int = 0
    tie: int = 0
    both_bad: int = 0

    @property
    def n(self) -> int:
        return self.aligned + self.baseline + self.tie + self.both_bad

    @property
    def decisive(self) -> int:
        return self.aligned + self.baseline

    @property
    def aligned_rate(self) -> Interval:
        """Aligned wins / decisive votes."""
        return wilson(self.aligned, self.decisive)

    @property
    def baseline_rate(self) -> Interval:
        return wilson(self.baseline, self.decisive)

    @property
    def tie_share(self) -> Interval:
        """Ties / all votes."""
        return wilson(self.tie, self.n)

    @property
    def both_bad_share(self) -> Interval:
        return wilson(self.both_bad, self.n)

    @property
    def p_value(self) -> float:
        """Sign test of aligned vs baseline wins."""
        return sign_test(self.aligned, self.baseline)

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def tally(votes: Sequence[Vote]) -> Tally:
    counts = {"aligned": 0, "baseline": 0, "tie": 0, "both_bad": 0}
    for v in votes:
        counts[v.preferred] += 1
    return Tally(**counts)


def query_kind(vote: Vote) -> str:
    """The one mapping of a vote to its query kind: "text" without a query image; else the first (most
    likely) detected style of the image (Vote.style, e.g. "sketch 0.91 · cartoon 0.06" -> "sketch"; doodles
    count as sketches); "image" for an image whose encoder detects no style. A text + image query counts as
    its image's kind; "more like this" (settings["more_like"]) as its gallery image's style."""
    if vote.query_image is None:
        return "text"
    top = (vote.style or "").split("·")[0].split()
    return STYLE_KINDS.get(top[0], UNKNOWN_IMAGE) if top else UNKNOWN_IMAGE


def version_of(vote: Vote) -> str:
    """The encoder and index version a vote was cast on."""
    return f"{vote.encoder} · {vote.index}"


# ---------------------------------------------------------------- Bradley-Terry
@dataclass(frozen=True)
class SystemScore:
    system: str                   # "ENCODER:RANKING[:KEY=VALUE...]"
    score: float                  # Bradley-Terry strength on the Elo-like scale (mean over systems 1000)
    low: float                    # 95 % bootstrap interval
    high: float
    wins: int
    losses: int
    ties: int                     # ties and both-bad votes
    games: int


@dataclass(frozen=True)
class PairTally:
    first: str                    # systems of the pair, in name order
    second: str
    first_wins: int
    second_wins: int
    ties: int
    both_bad: int

    @property
    def first_rate(self) -> Interval:
        return wilson(self.first_wins, self.first_wins + self.second_wins)

    @property
    def p_value(self) -> float:
        return sign_test(self.first_wins, self.second_wins)


def games(votes: Sequence[Vote]) -> list[tuple[str, str, float]]:
    """(system on A, system on B, A's result: 1 win, 0 loss, 0.5 tie or both bad) per vote."""
    result = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_bad": 0.5}
    return [(*vote_systems(v), result[v.choice]) for v in votes]


def bradley_terry(n_systems: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, prior: float = 0.01,
                  tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Bradley-Terry log10-strengths (mean 0), the maximum-likelihood fit by Newton's method (a few steps,
    where Hunter's MM algorithm crawls when few votes nearly separate the systems). Game g is between systems
    a[g] and b[g] with a[g]'s result score[g] (1, 0 or 0.5: half a win each). `prior`: a pseudo-game, half
    won by each, between every two systems, so a system that never won (or a pair never played) has a finite
    strength; it moves strengths by ~prior / games."""
    wins = np.zeros((n_systems, n_systems))            # wins[i, j]: i's (fractional) wins over j
    np.add.at(wins, (a, b), score)
    np.add.at(wins, (b, a), 1.0 - score)
    off = ~np.eye(n_systems, dtype=bool)
    wins = wins + prior / 2 * off
    played = wins + wins.T                             # games between i and j
    total = wins.sum(1)
    theta = np.zeros(n_systems)                        # natural-log strengths
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))   # p[i, j]: chance that i beats j
        grad = total - (played * p).sum(1)
        w = played * p * p.T
        hess = np.diag(w.sum(1)) - w                   # minus the Hessian: a graph Laplacian (theta's mean is free)
        step = np.clip(np.linalg.lstsq(hess, grad, rcond=None)[0], -2.0, 2.0)   # damped far from the optimum
        theta = theta + step - (theta + step).mean()
        if np.max(np.abs(step)) < tol:
            break
    return theta / np.log(10)


def rank_systems(votes: Sequence[Vote], ties: str = "half", bootstrap: int = 1000,
                 seed: int = 0) -> tuple[tuple[SystemScore, ...], tuple[PairTally, ...]]:
    """Bradley-Terry scores of the systems the votes name (best first) with bootstrap intervals, and the
    head-to-head tally of every pair that met. `ties`: "half" or "exclude"."""
    if ties not in ("half", "exclude"):
        raise ValueError(f"ties must be 'half' or 'exclude', got {ties!r}")
    g = games(votes)
    choices = [v.choice for v in votes]
    names = sorted({s for a, b, _ in g for s in (a, b)})
    if not names:
        return (), ()
    row = {s: i for i, s in enumerate(names)}
    a = np.array([row[x] for x, _, _ in g], int)
    b = np.array([row[y] for _, y, _ in g], int)
    score = np.array([r for _, _, r in g], float)
    keep = np.ones(len(g), bool) if ties == "half" else score != 0.5
    fit = bradley_terry(len(names), a[keep], b[keep], score[keep])
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(keep)
    samples = np.array([bradley_terry(len(names), a[s], b[s], score[s])
                        for s in (rng.choice(idx, len(idx)) for _ in range(bootstrap if len(idx) else 0))])
    low, high = (np.percentile(samples, [2.5, 97.5], axis=0) if len(samples) else (fit, fit))
    scale = lambda x: 1000 + 400 * x  # noqa: E731 (Elo-like: 400 points = 10:1 odds)
    out = []
    for i, name in enumerate(names):
        mine_a, mine_b = a == i, b == i
        w = int(((score == 1) & mine_a).sum() + ((score == 0) & mine_b).sum())
        lo = int(((score == 0) & mine_a).sum() + ((score == 1) & mine_b).sum())
        t = int(((score == 0.5) & (mine_a | mine_b)).sum())
        out.append(SystemScore(name, float(scale(fit[i])), float(scale(low[i])), float(scale(high[i])), w, lo, t,
                               w + lo + t))
    pairs: dict[tuple[str, str], list[int]] = {}
    for (x, y, r), choice in zip(g, choices):
        first, second = sorted((x, y))
        t = pairs.setdefault((first, second), [0, 0, 0, 0])
        if r == 0.5:
            t[2 if choice == "tie" else 3] += 1
        else:
            t[0 if (r == 1) == (x == first) else 1] += 1
    return (tuple(sorted(out, key=lambda s: -s.score)),
            tuple(PairTally(f, s, *t) for (f, s), t in sorted(pairs.items())))


# ---------------------------------------------------------------- the report
@dataclass(frozen=True)
class TimeBucket:
    start: float                  # unix seconds: start of the hour / day / week
    tally: Tally                  # votes in the bucket
    cumulative: Tally             # votes up to the bucket's end


@dataclass(frozen=True)
class ReportData:
    n: int
    first: float | None           # time of the first and last vote (unix seconds)
    last: float | None
    overall: Tally
    by_kind: tuple[tuple[str, Tally], ...]      # KINDS in order (then "image" if any), zero tallies included
    by_version: tuple[tuple[str, Tally], ...]   # encoder · index, in order of first vote
    bucket: str                                  # "minute", "hour", "day" or "week"
    over_time: tuple[TimeBucket, ...]
    systems: tuple[SystemScore, ...]             # Bradley-Terry, best first
    pairs: tuple[PairTally, ...]
    ties: str                                    # how Bradley-Terry counted ties: "half" or "exclude"
    bootstrap: int

    @property
    def arena(self) -> bool:
        """Whether the votes compare more than the default two systems."""
        return len(self.systems) > 2 or len(self.pairs) > 1


BUCKETS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}


def bucket_for(span_seconds: float) -> str:
    """Votes over at most 2 hours: per minute; 2 days: per hour; 90 days: per day; longer: per week."""
    if span_seconds <= 2 * 3600:
        return "minute"
    return "hour" if span_seconds <= 2 * 86_400 else "day" if span_seconds <= 90 * 86_400 else "week"


def summary(votes: Sequence[Vote], bootstrap: int = 1000, ties: str = "half", seed: int = 0) -> ReportData:
    """Every figure of the report, from the votes alone (deterministic given `seed`)."""
    votes = sorted(votes, key=lambda v: v.time)
    kinds: dict[str, list[Vote]] = {k: [] for k in KINDS}
    versions: dict[str, list[Vote]] = {}
    for v in votes:
        kinds.setdefault(query_kind(v), []).append(v)
        versions.setdefault(version_of(v), []).append(v)
    first, last = (votes[0].time, votes[-1].time) if votes else (None, None)
    bucket = bucket_for((last - first) if votes else 0.0)
    over_time, seen = [], []
    if votes:
        width = BUCKETS[bucket]
        by_start: dict[float, list[Vote]] = {}
        for v in votes:
            by_start.setdefault(math.floor(v.time / width) * width, []).append(v)
        for start, group in by_start.items():
            seen += group
            over_time.append(TimeBucket(float(start), tally(group), tally(seen)))
    systems, pairs = rank_systems(votes, ties, bootstrap, seed)
    return ReportData(len(votes), first, last, tally(votes), tuple((k, tally(vs)) for k, vs in kinds.items()),
                      tuple((k, tally(vs)) for k, vs in versions.items()), bucket, tuple(over_time), systems, pairs,
                      ties, bootstrap)


# ---------------------------------------------------------------- Markdown
def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f} %"


def _ci(i: Interval) -> str:
    return "—" if math.isnan(i.estimate) else f"{_pct(i.estimate)} ({100 * i.low:.1f}–{100 * i.high:.1f})"


def _range(i: Interval) -> str:
    return "—" if math.isnan(i.estimate) else f"{100 * i.low:.1f}–{100 * i.high:.1f} %"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _when(t: float, bucket: str = "minute") -> str:
    fmt = {"hour": "%Y-%m-%d %H:00", "day": "%Y-%m-%d", "week": "%Y-%m-%d"}.get(bucket, "%Y-%m-%d %H:%M")
    return datetime.fromtimestamp(t, timezone.utc).strftime(fmt)


def verdict(t: Tally) -> str:
    """One sentence: who wins, by how much, and how sure that is."""
    if t.decisive == 0:
        return "No decisive vote yet: nothing to compare."
    leader = "aligned" if t.aligned >= t.baseline else "baseline"
    rate = t.aligned_rate if leader == "aligned" else t.baseline_rate
    sig = (f"significant at the 5 % level (p = {_p(t.p_value)})" if t.significant
           else f"not significant at the 5 % level (p = {_p(t.p_value)}): more votes are needed")
    if t.aligned == t.baseline:
        return f"Aligned and baseline won equally often ({t.aligned} each): no preference (p = {_p(t.p_value)})."
    return (f"Visitors preferred the **{leader}** ranking in {_pct(rate.estimate)} of decisive votes "
            f"(95 % CI {100 * rate.low:.1f}–{100 * rate.high:.1f} %); the difference is {sig}.")


def _tally_table(rows: Sequence[tuple[str, Tally]], label: str) -> list[str]:
    out = [f"| {label} | votes | aligned wins | baseline wins | aligned win rate (95 % CI) | ties | both bad "
           "| sign test p |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, t in rows:
        out.append(f"| {name} | {t.n} | {t.aligned} | {t.baseline} | {_ci(t.aligned_rate)} | {t.tie} | "
                   f"{t.both_bad} | {_p(t.p_value) if t.decisive else '—'} |")
    return out


def render_markdown(report: ReportData, plots: Mapping[str, str] | None = None) -> str:
    """The report as Markdown; `plots`: plot name -> image link (the CLI's PNG files) to embed, if any."""
    plots = plots or {}

    def image(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({plots[name]})", ""] if name in plots else []

    t = report.overall
    lines = ["# What the votes say", ""]
    if not report.n:
        return "\n".join([*lines, "No votes yet.", ""])
    lines += [f"{report.n} vote(s) from {_when(report.first)} to {_when(report.last)} (UTC).", "",
              verdict(t), "", "## Win rates", "",
              "| | share | 95 % CI (Wilson) |", "|---|---:|---|",
              f"| aligned wins (of {t.decisive} decisive) | {_pct(t.aligned_rate.estimate)} | "
              f"{_range(t.aligned_rate)} |",
              f"| baseline wins (of {t.decisive} decisive) | {_pct(t.baseline_rate.estimate)} | "
              f"{_range(t.baseline_rate)} |",
              f"| ties (of all {t.n}) | {_pct(t.tie_share.estimate)} | {_range(t.tie_share)} |",
              f"| both bad (of all {t.n}) | {_pct(t.both_bad_share.estimate)} | "
              f"{_range(t.both_bad_share)} |", "",
              f"Counts: aligned {t.aligned}, baseline {t.baseline}, tie {t.tie}, both bad {t.both_bad}. "
              f"Sign test (two-sided exact binomial, decisive votes only, against 50 %): p = {_p(t.p_value)}.", ""]
    lines += image("win_rates", "win rates")
    lines += ["## By query kind", "", *_tally_table([r for r in report.by_kind if r[1].n or r[0] in KINDS],
                                                   "query kind"), ""]
    lines += image("by_kind", "aligned win rate by query kind")
    lines += ["## By encoder and index version", "", *_tally_table(report.by_version, "encoder · index"), ""]
    lines += image("by_version", "aligned win rate by version")
    lines += [f"## Over time (per {report.bucket}, UTC)", "",
              f"| {report.bucket} | votes | aligned | baseline | tie | both bad | aligned win rate so far (95 % CI) |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for b in report.over_time[-30:]:
        lines.append(f"| {_when(b.start, report.bucket)} | {b.tally.n} | {b.tally.aligned} | {b.tally.baseline} | "
                     f"{b.tally.tie} | {b.tally.both_bad} | {_ci(b.cumulative.aligned_rate)} |")
    if len(report.over_time) > 30:
        lines.append(f"| … {len(report.over_time) - 30} earlier {report.bucket}s in the plot | | | | | | |")
    lines += ["", *image("over_time", "votes over time")]
    ties = ("a tie or a both-bad vote counts half a win to each side" if report.ties == "half"
            else "ties and both-bad votes are left out")
    lines += ["## Systems (Bradley–Terry)", "",
              f"Strengths fitted to all pairwise votes (MM algorithm; {ties}), on an Elo-like scale (mean 1000; "
              f"+400 = 10:1 odds of winning); 95 % intervals from {report.bootstrap} bootstrap resamples of the votes."
              + ("" if report.arena else " With the default two systems this is baseline vs aligned again."), "",
              "| rank | system | score | 95 % CI | wins | losses | ties | votes |",
              "|---:|---|---:|---|---:|---:|---:|---:|"]
    for i, s in enumerate(report.systems, 1):
        lines.append(f"| {i} | `{s.system}` | {s.score:.0f} | {s.low:.0f}–{s.high:.0f} | {s.wins} | {s.losses} | "
                     f"{s.ties} | {s.games} |")
    lines += ["", "| pair | first wins | second wins | ties | both bad | first's win rate (95 % CI) | sign test p |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for pt in report.pairs:
        decisive = pt.first_wins + pt.second_wins
        lines.append(f"| `{pt.first}` vs `{pt.second}` | {pt.first_wins} | {pt.second_wins} | {pt.ties} | "
                     f"{pt.both_bad} | {_ci(pt.first_rate)} | {_p(pt.p_value) if decisive else '—'} |")
    lines += ["", *image("arena", "Bradley-Terry scores")]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- plots (matplotlib, no pyplot: thread-safe, Agg)
COLOURS = {"aligned": "#2b8cbe", "baseline": "#e6550d", "tie": "#969696", "both_bad": "#636363"}


def _figure(width: float = 7.0, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _err(intervals: Sequence[Interval]) -> np.ndarray:
    est = np.array([0.0 if math.isnan(i.estimate) else i.estimate for i in intervals])
    return np.array([est - [i.low for i in intervals], np.array([i.high for i in intervals]) - est]).clip(0)


def _rate_bars(ax, labels: Sequence[str], tallies: Sequence[Tally], title: str) -> None:  # noqa: ANN001
    rates = [t.aligned_rate if t.decisive else Interval(math.nan, 0.0, 0.0) for t in tallies]  # no bar, no whisker
    y = np.arange(len(labels))[::-1]
    est = [0.0 if math.isnan(r.estimate) else r.estimate for r in rates]
    ax.barh(y, est, xerr=_err(rates), color=COLOURS["aligned"], capsize=3, height=0.6)
    for yi, t, r in zip(y, tallies, rates):
        ax.text(r.high + 0.015 if t.decisive else 0.01, yi,
                f"n={t.decisive}" if t.decisive else "no decisive votes", va="center", fontsize=8)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, [s if len(s) <= 42 else s[:20] + "…" + s[-20:] for s in labels], fontsize=8)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("aligned win rate among decisive votes (95 % Wilson CI); dashed: no preference")
    ax.set_title(title, fontsize=10)


def figures(report: ReportData) -> dict[str, Figure]:
    """The plots of the report, by name (PLOTS), as matplotlib Figures (drawn with the Agg canvas)."""
    out = {}
    t = report.overall
    fig = _figure(7, 2.8)
    ax = fig.add_subplot()
    rows = [("aligned wins\n(of decisive)", t.aligned_rate, "aligned"),
            ("baseline wins\n(of decisive)", t.baseline_rate, "baseline"),
            ("ties\n(of all)", t.tie_share, "tie"), ("both bad\n(of all)", t.both_bad_share, "both_bad")]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, [0.0 if math.isnan(r.estimate) else r.estimate for _, r, _ in rows], xerr=_err([r for _, r, _ in rows]),
            color=[COLOURS[c] for _, _, c in rows], capsize=3, height=0.6)
    ax.set_yticks(y, [label for label, _, _ in rows], fontsize=8)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share with 95 % Wilson interval")
    ax.set_title(f"{report.n} votes · sign test p = {_p(t.p_value)}"
                 f"{' (significant)' if t.significant else ''}", fontsize=10)
    out["win_rates"] = fig

    kinds = [(k, tl) for k, tl in report.by_kind if tl.n or k in KINDS]
    fig = _figure(7, max(2.4, 0.45 * len(kinds) + 1.2))
    _rate_bars(fig.add_subplot(), [k for k, _ in kinds], [tl for _, tl in kinds], "By query kind")
    out["by_kind"] = fig

    fig = _figure(7, max(2.4, 0.45 * len(report.by_version) + 1.2))
    _rate_bars(fig.add_subplot(), [k for k, _ in report.by_version], [tl for _, tl in report.by_version],
               "By encoder · index version")
    out["by_version"] = fig

    fig = _figure(7, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.2])
    if report.over_time:
        width = BUCKETS[report.bucket]
        x = np.array([(b.start - report.over_time[0].start) / width for b in report.over_time])
        base = np.zeros(len(x))
        for key in ("aligned", "baseline", "tie", "both_bad"):
            h = np.array([getattr(b.tally, key) for b in report.over_time], float)
            top.bar(x, h, bottom=base, color=COLOURS[key], label=key.replace("_", " "), width=0.8)
            base += h
        top.set_ylim(0, max(1.0, base.max()) * 1.45)  # room for the legend above the bars
        top.legend(fontsize=7, ncol=4, loc="upper left")
        rates = [b.cumulative.aligned_rate for b in report.over_time]
        est = np.array([np.nan if math.isnan(r.estimate) else r.estimate for r in rates])
        bottom.plot(x, est, color=COLOURS["aligned"], marker="o", ms=3)
        bottom.fill_between(x, [r.low for r in rates], [r.high for r in rates], color=COLOURS["aligned"], alpha=0.2)
        bottom.set_xlabel(f"{report.bucket}s since {_when(report.over_time[0].start, report.bucket)} (UTC)")
    bottom.axhline(0.5, color="k", lw=0.8, ls="--")
    bottom.set_ylim(0, 1)
    top.set_ylabel("votes", fontsize=8)
    bottom.set_ylabel("aligned win rate\nso far (95 % CI)", fontsize=8)
    top.set_title(f"Votes per {report.bucket}", fontsize=10)
    out["over_time"] = fig

    fig = _figure(7, max(2.4, 0.5 * len(report.systems) + 1.2))
    ax = fig.add_subplot()
    if report.systems:
        y = np.arange(len(report.systems))[::-1]
        scores = np.array([s.score for s in report.systems])
        err = np.array([scores - [s.low for s in report.systems], [s.high for s in report.systems] - scores]).clip(0)
        ax.errorbar(scores, y, xerr=err, fmt="o", color=COLOURS["aligned"], capsize=4)
        ax.set_yticks(y, [s.system for s in report.systems], fontsize=8)
        ax.axvline(1000, color="k", lw=0.8, ls="--")
        ax.margins(y=0.3)
    ax.set_xlabel("Bradley–Terry score (Elo-like, 95 % bootstrap CI)")
    ax.set_title("Systems ranked by pairwise votes", fontsize=10)
    out["arena"] = fig
    return out


def _png(fig: Figure) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def save_plots(report: ReportData, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot as out_dir/<name>.png; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figures(report).items():
        paths[name] = out_dir / f"{name}.png"
        paths[name].write_bytes(_png(fig))
    return paths


def plot_images(report: ReportData) -> dict[str, Image.Image]:
    """The plots as PIL images (for gr.Image / gr.Gallery), by name."""
    import io

    from PIL import Image

    out = {}
    for name, fig in figures(report).items():
        with Image.open(io.BytesIO(_png(fig))) as im:
            out[name] = im.convert("RGB")
    return out


def write_report(votes: Sequence[Vote], out_dir: str | Path, bootstrap: int = 1000, ties: str = "half",
                 seed: int = 0) -> Path:
    """report.md and the PNG plots in `out_dir`; returns report.md's path."""
    out_dir = Path(out_dir)
    report = summary(votes, bootstrap, ties, seed)
    paths = save_plots(report, out_dir)
    md = out_dir / "report.md"
    md.write_text(render_markdown(report, {name: p.name for name, p in paths.items()}), encoding="utf-8")
    return md


def load_votes(data_dir: str | Path | None = None, votes: str | Path | None = None) -> list[Vote]:
    """Votes of an app's data directory (its votes.db; nothing is created) or of an export file/folder."""
    from search.votes.store import VoteStore, read_votes

    if (data_dir is None) == (votes is None):
        raise ValueError("give a data directory (--data-dir) or an export (--votes), not both")
    if votes is not None:
        return read_votes(votes)
    db = Path(data_dir).expanduser() / "votes.db"
    if not db.is_file():
        raise FileNotFoundError(f"no votes database at {db}: pass the app's --data-dir (or --votes FILE)")
    with VoteStore(data_dir) as store:
        return store.votes()


# ---------------------------------------------------------------- live, for the app's Results tab
class LiveResults:
    """The report of a running app's votes, recomputed at most every `ttl` seconds and only when the vote
    count changed: `get() -> (markdown, [(PIL image, caption), ...])` (a gr.Markdown and a gr.Gallery value).
    `read` returns the current votes (e.g. VoteStore.votes); `count` the current number (VoteStore.count)."""

    def __init__(self, read: Callable[[], list[Vote]], count: Callable[[], int] | None = None, ttl: float = 5.0,
                 bootstrap: int = 200) -> None:
        self.read, self.count, self.ttl, self.bootstrap = read, count, ttl, bootstrap
        self._lock = threading.Lock()
        self._at, self._n, self._value = -math.inf, -1, ("", [])

    def get(self) -> tuple[str, list[tuple[Image.Image, str]]]:
        with self._lock:  # one refresh at a time; others wait for it and share its result
            now = time.monotonic()
            if now - self._at < self.ttl:
                return self._value
            n = self.count() if self.count else -2
            if n != self._n or n == -2:
                report = summary(self.read(), bootstrap=self.bootstrap)
                captions = {"win_rates": "Win rates", "by_kind": "By query kind", "by_version": "By version",
                            "over_time": "Over time", "arena": "Systems (Bradley–Terry)"}
                images = plot_images(report)
                self._value = (render_markdown(report), [(images[k], captions[k]) for k in PLOTS])
                self._n = n
            self._at = time.monotonic()
            return self._value
