"""The loop closes, end to end (issue 21): simulated visitors vote through the real app, `train-align --votes`
learns from their export, and the retrained encoder's single-stage ranking agrees with held-out votes more.

    python benchmarks/vote_loop.py [--work DIR] [--photos 300] [--votes 100,300,1000] [--heldout 300]

1. Gallery: --photos ImageNet `train` photos of ../shared/data (one per class) and, beside each, one degraded
   copy of a held-out degradation type (search/degradations.py HELD_OUT_DEGRADATIONS: types the aesthetic
   scorer and train-align's lists never saw), as PNG. Classes are split in two halves: the visitors' training
   queries ask for one half, the held-out votes for the other.
2. The real app: `python app.py --gallery GALLERY` in a subprocess (its own --cache-dir/--data-dir, generous
   per-visitor limits), used only through gradio_client, as a visitor: /search (a class name in a few
   phrasings, default settings) then /vote with consent True, by --visitors threads (one Client = one session).
3. Simulated visitors with a known preference: a side's utility is the DCG of its top 12 with gain 1 for
   the query's original photo, -0.5 for its degraded copy (a broken version is worse than none) and 0 for
   anything else; both sides equal -> tie (both bad if both are worthless); else the visitor picks A with
   probability sigmoid((u_A - u_B) / --noise), so some votes go against the preference.
4. `python -m search export-votes`, then for N in --votes: `python -m search train-align --votes` on the first
   N training votes (small data: the training-class photos plus a few PACS/Sketchy photos; --steps), and
   N = 0 (no votes: the same lists only) as the control.
5. Agreement with the held-out votes (other classes; never trained on) of each encoder's single-stage
   ranking (cosine of the lite heads, through the trained aesthetic gate). Vote agreement: the encoder judges
   the two lists shown by the rank-discounted sum of its own scores of their top 10 (the list its kNN ranking
   would put first scores highest) and agrees when it picks the visitor's side. Pair agreement: of the item
   pairs a decisive vote states (the winner side's top 10 over the loser's, items both show left out, as
   train-align reads a vote; plus every pair the sides order oppositely), the share it scores the winner's way.
Prints the time of each phase and the table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from search.config import PROJECT_ROOT
from search.training.degradations import HELD_OUT_DEGRADATIONS
from search.votes.store import Vote, read_votes, write_votes

APP = PROJECT_ROOT / "app.py"
STARTUP_TIMEOUT = 900
GENEROUS_LIMITS = {"VISUAL_SEARCH_SEARCHES_PER_MINUTE": "100000", "VISUAL_SEARCH_VOTES_PER_MINUTE": "100000"}
PHRASINGS = ("{}", "a {}", "a photo of a {}", "show me a {}", "picture of a {}")
GAIN_ORIGINAL, GAIN_COPY = 1.0, -0.5
TOP = 10  # a vote compares the top this-many items of each side (train-align's AlignConfig.vote_top)


# ---------------------------------------------------------------- 1. the gallery
def make_gallery(data: Path, out: Path, photos: int, seed: int) -> dict[str, dict]:
    """out/orig/<wnid>.jpg + out/copy/<wnid>.png; returns gallery id -> {label, original, photo file}."""
    rows = [json.loads(line) for line in (data / "imagenet" / "items.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "train" and r.get("style") == "photo"]
    rng = random.Random(seed)
    rows = sorted(rng.sample(rows, min(photos, len(rows))), key=lambda r: r["id"])
    meta: dict[str, dict] = {}
    (out / "orig").mkdir(parents=True, exist_ok=True)
    (out / "copy").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        src = data / "imagenet" / r["path"]
        name = Path(r["path"]).stem
        orig, copy = out / "orig" / f"{name}.jpg", out / "copy" / f"{name}.png"
        deg = HELD_OUT_DEGRADATIONS[rng.randrange(len(HELD_OUT_DEGRADATIONS))]
        if not copy.exists():
            shutil.copyfile(src, orig)
            with Image.open(src) as im:
                deg(im.convert("RGB"), seed + i).save(copy)
        meta[f"orig/{name}.jpg"] = {"label": r["label"], "original": True, "photo": r, "degradation": deg.id}
        meta[f"copy/{name}.png"] = {"label": r["label"], "original": False, "photo": r, "degradation": deg.id}
    return meta


def make_align_data(data: Path, out: Path, photos: list[dict], others: int, seed: int) -> Path:
    """A small --data folder for train-align: the given ImageNet photos, plus `others` train photos of PACS and
    of Sketchy each (paths made absolute, so nothing is copied)."""
    rng = random.Random(seed)
    for ds in ("imagenet", "pacs", "sketchy"):
        if ds == "imagenet":
            rows = photos
        else:
            rows = [json.loads(line) for line in (data / ds / "items.jsonl").read_text().splitlines()]
            rows = [r for r in rows if r.get("split") == "train" and r.get("style") == "photo"]
            rows = rng.sample(rows, min(others, len(rows)))
        (out / ds).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({**r, "path": str((data / ds / r["path"]).resolve())}) for r in rows]
        (out / ds / "items.jsonl").write_text("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------- 2. the app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def launch(gallery: Path, cache: Path, data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **GENEROUS_LIMITS}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(APP), "--gallery", str(gallery), "--port", str(port),
                                 "--cache-dir", str(cache), "--data-dir", str(data_dir), "--concurrency", "4"],
                                cwd=log.parent, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not answers(url):
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"app.py did not answer within {STARTUP_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, url


def served_ids(cache: Path) -> dict[str, str]:
    """{served thumbnail (or image) file name: gallery id} of the index the app built under its cache."""
    (meta,) = cache.glob("indexes/*/index.json")
    snapshot = meta.parent / json.loads(meta.read_text())["snapshot"]
    rows = [json.loads(line) for line in (snapshot / "items.jsonl").read_text().splitlines() if line.strip()]
    return {Path(r.get("thumbnail") or r["path"]).name: r["id"] for r in rows}


# ---------------------------------------------------------------- 3. the visitors
def utility(ids: list[str], label: str, meta: dict[str, dict]) -> float:
    """DCG of a side for a visitor who wants the original photo of `label` and dislikes its degraded copy."""
    u = 0.0
    for rank, i in enumerate(ids):
        m = meta.get(i)
        if m and m["label"] == label:
            u += (GAIN_ORIGINAL if m["original"] else GAIN_COPY) / math.log2(rank + 2)
    return u


def choose(u_a: float, u_b: float, noise: float, rng: random.Random) -> str:
    if abs(u_a - u_b) < 1e-9:
        return "both_bad" if max(u_a, u_b) <= 0 else "tie"
    return "A" if rng.random() < 1 / (1 + math.exp(-(u_a - u_b) / noise)) else "B"


def cast_votes(url: str, cache: Path, tasks: list[tuple[str, str, int]], meta: dict[str, dict], visitors: int,
               noise: float, seed: int) -> list[dict]:
    """Each task (query text, label, seq) is one visitor search + vote through the API; returns what was done."""
    from gradio_client import Client

    names: dict[str, str] = {}
    lock = threading.Lock()
    local = threading.local()
    done: list[dict] = []

    def id_of(result: dict) -> str:
        image = result["image"]
        name = Path(image["path"] if isinstance(image, dict) else image).name
        with lock:
            if name not in names:
                names.update(served_ids(cache))
        return names[name]

    def run(task: tuple[str, str, int]) -> None:
        text, label, seq = task
        if not hasattr(local, "client"):
            local.client = Client(url, verbose=False, download_files=False)
        c = local.client
        rng = random.Random(seed * 1_000_003 + seq)
        # text, sketch, upload, text weight, results per side, aesthetic weight, rephrase, dedup, show scores
        a, b, _, _ = c.predict(text, None, None, 0.5, 12, 0.5, True, True, False, api_name="/search")
        ids_a, ids_b = [id_of(r) for r in a], [id_of(r) for r in b]
        choice = choose(utility(ids_a, label, meta), utility(ids_b, label, meta), noise, rng)
        reveal = c.predict(choice, True, api_name="/vote")
        if "Thanks!" not in reveal:
            raise RuntimeError(f"vote not acknowledged: {reveal!r}")
        with lock:
            done.append({"seq": seq, "text": text, "label": label, "choice": choice})
            if len(done) % 100 == 0:
                print(f"  {len(done)} / {len(tasks)} votes", flush=True)

    with ThreadPoolExecutor(visitors) as pool:
        for f in [pool.submit(run, t) for t in tasks]:
            f.result()
    return done


# ---------------------------------------------------------------- 5. agreement with held-out votes
def vote_item_pairs(vote: Vote) -> list[tuple[str, str]]:
    """(preferred, dispreferred) gallery ids a decisive vote states: the winner's top TOP items over the
    loser's (items both show left out: train-align's vote_pairs), and every pair of items both sides show in
    opposite orders, the winner's order."""
    if vote.choice not in ("A", "B"):
        return []
    win, lose = (vote.side_a, vote.side_b) if vote.choice == "A" else (vote.side_b, vote.side_a)
    w, lo = [r.id for r in win[:TOP]], [r.id for r in lose[:TOP]]
    pairs = [(x, y) for x in w if x not in lo for y in lo if y not in w]
    pos_w, pos_l = {x: i for i, x in enumerate(w)}, {x: i for i, x in enumerate(lo)}
    both = [x for x in w if x in pos_l]
    pairs += [(x, y) for x in both for y in both if pos_w[x] < pos_w[y] and pos_l[x] > pos_l[y]]
    return pairs


def agreement(votes: list[Vote], score) -> tuple[float, float, int, int]:  # noqa: ANN001
    """(vote agreement, pair agreement, decisive votes, item pairs) of an encoder, `score(text, ids) -> scores`.

    Vote agreement: the encoder, as a judge, prefers the side whose top TOP items it scores higher, rank-
    discounted (sum of score / log2(rank + 2), the DCG of its own similarities); a vote agrees when that is
    the visitor's side (half at equality). Its single-stage ranking is exactly the list that maximises this,
    so before alignment (lite) it always prefers the plain kNN side. Pair agreement: the share of the vote's
    item pairs (`vote_item_pairs`) it scores the winner's way."""
    per_vote, n_pairs, n_agree = [], 0, 0
    disc = 1 / np.log2(np.arange(TOP) + 2)
    for v in votes:
        if v.choice not in ("A", "B"):
            continue
        win, lose = (v.side_a, v.side_b) if v.choice == "A" else (v.side_b, v.side_a)
        w, lo = [r.id for r in win[:TOP]], [r.id for r in lose[:TOP]]
        pairs = vote_item_pairs(v)
        ids = sorted({*w, *lo})
        s = dict(zip(ids, score(v.query_text, ids)))
        dw, dl = (float(np.dot([s[i] for i in side], disc[: len(side)])) for side in (w, lo))
        per_vote.append(1.0 if dw > dl else 0.5 if dw == dl else 0.0)
        n_pairs += len(pairs)
        n_agree += sum(s[x] > s[y] for x, y in pairs)
    return (float(np.mean(per_vote)) if per_vote else math.nan, n_agree / max(n_pairs, 1), len(per_vote), n_pairs)


def make_scorer(gallery: Path, meta: dict[str, dict], cache: Path, gate_path: Path | None,
                texts: dict[str, np.ndarray]):  # noqa: ANN201
    """score(text, ids) of the lite heads' single-stage ranking, through the gate at `gate_path` if given;
    `texts`: query text -> its MiniLM vector (all computed at once: the text tower loads per call)."""
    import torch

    from models.aesthetic_gate import AestheticGate
    from search.training.align import TowerBank, embed_images, load_reference
    from search.training.tower_cache import TowerCache

    ref = load_reference("lite")
    tc = TowerCache(cache / "towers-vote-gallery.npz")
    files = {i: str((gallery / i).resolve()) for i in meta}
    bad = tc.fill(list(files.values()), [""] * len(files))
    if bad:
        raise RuntimeError(f"unreadable gallery images: {bad[:3]}")
    gate = AestheticGate.load(gate_path) if gate_path else None
    ids = sorted(files)
    emb = dict(zip(ids, embed_images(ref, TowerBank([tc]), [f"{files[i]}|" for i in ids], gate).numpy()))
    names = sorted(texts)
    with torch.no_grad():
        q = ref.embed_text(torch.from_numpy(np.stack([texts[t] for t in names])))
        q = (q if gate is None else gate.pad_query(q)).numpy()
    query = dict(zip(names, q))

    def score(text: str, items: list[str]) -> list[float]:
        return [float(query[text] @ emb[i]) for i in items]
    return score


# ---------------------------------------------------------------- the run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", help="working folder (kept; default a temporary one, removed)")
    ap.add_argument("--photos", type=int, default=300, help="ImageNet train photos in the gallery (+ a copy each)")
    ap.add_argument("--votes", default="100,300,1000", help="training vote counts to compare")
    ap.add_argument("--heldout", type=int, default=300, help="held-out votes (other classes)")
    ap.add_argument("--visitors", type=int, default=6, help="visitor threads")
    ap.add_argument("--noise", type=float, default=0.1, help="visitors' choice temperature (utility units)")
    ap.add_argument("--steps", type=int, default=300, help="train-align optimiser steps per fit")
    ap.add_argument("--others", type=int, default=150, help="PACS and Sketchy train photos each in train-align's data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = sorted(int(n) for n in args.votes.split(","))
    data = Path(args.data).resolve()
    work = Path(args.work or tempfile.mkdtemp(prefix="vote-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    py = sys.executable

    t0 = time.perf_counter()
    gallery = work / "gallery"
    meta = make_gallery(data, gallery, args.photos, args.seed)
    labels = sorted({m["label"] for m in meta.values()})
    rng = random.Random(args.seed)
    rng.shuffle(labels)
    train_labels, heldout_labels = set(labels[: len(labels) // 2]), set(labels[len(labels) // 2:])
    train_photos = [m["photo"] for i, m in meta.items() if m["original"] and m["label"] in train_labels]
    align_data = make_align_data(data, work / "align-data", train_photos, args.others, args.seed)
    times["gallery"] = time.perf_counter() - t0
    print(f"gallery: {len(meta)} images ({len(labels)} classes: {len(train_labels)} train, {len(heldout_labels)} "
          f"held out) in {times['gallery']:.0f} s", flush=True)

    votes_file = work / "votes-all.jsonl"
    if not votes_file.exists():
        t0 = time.perf_counter()
        cache, data_dir = work / "app-cache", work / "app-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        proc, url = launch(gallery, cache, data_dir, work / "app.log")
        times["app start (index the gallery)"] = time.perf_counter() - t0
        print(f"app answers on {url} after {times['app start (index the gallery)']:.0f} s", flush=True)
        try:
            tl, hl = sorted(train_labels), sorted(heldout_labels)
            tasks = [(rng.choice(PHRASINGS).format(lab), lab) for lab in (rng.choice(tl) for _ in range(max(counts)))]
            tasks += [(rng.choice(PHRASINGS).format(lab), lab) for lab in (rng.choice(hl) for _ in range(args.heldout))]
            rng.shuffle(tasks)
            t0 = time.perf_counter()
            done = cast_votes(url, cache, [(t, lab, i) for i, (t, lab) in enumerate(tasks)], meta, args.visitors,
                              args.noise, args.seed)
            times[f"{len(done)} search+vote through the app"] = time.perf_counter() - t0
            print(f"{len(done)} votes in {times[f'{len(done)} search+vote through the app']:.0f} s "
                  f"({args.visitors} visitor threads): {dict(Counter(d['choice'] for d in done))}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        t0 = time.perf_counter()
        subprocess.run([py, "-m", "search", "export-votes", "--data-dir", str(data_dir), "--out", str(votes_file)],
                       cwd=PROJECT_ROOT, check=True)
        subprocess.run([py, "-m", "search", "vote-report", "--votes", str(votes_file), "--out",
                        str(work / "report")], cwd=PROJECT_ROOT, check=True)
        times["export + vote-report"] = time.perf_counter() - t0

    votes = read_votes(votes_file)
    label_of = {}
    for phr in PHRASINGS:
        for lab in labels:
            label_of[phr.format(lab)] = lab
    train_votes = [v for v in votes if label_of[v.query_text] in train_labels]
    heldout_votes = [v for v in votes if label_of[v.query_text] in heldout_labels]
    print(f"exported {len(votes)} votes: {len(train_votes)} training, {len(heldout_votes)} held out; preferred "
          f"{dict(Counter(v.preferred for v in votes))}", flush=True)

    gates: dict[int, Path] = {}
    align_cache = work / "align-cache"
    for n in [0, *counts]:
        gate = work / "gates" / f"gate-{n}.pt"
        gates[n] = gate
        if gate.exists():
            continue
        cmd = [py, "-m", "search", "train-align", "--data", str(align_data), "--out", str(gate), "--cache-dir",
               str(align_cache), "--steps", str(args.steps), "--seed", str(args.seed)]
        if n:
            subset = work / "votes" / f"train-{n}.jsonl"
            write_votes(train_votes[:n], subset)
            cmd += ["--votes", str(subset), "--vote-gallery", str(gallery)]
        t0 = time.perf_counter()
        with open(work / f"train-align-{n}.log", "wb") as log:
            subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
        times[f"train-align, {n} votes"] = time.perf_counter() - t0
        print(f"train-align with {n} votes: {times[f'train-align, {n} votes']:.0f} s", flush=True)

    t0 = time.perf_counter()
    from search.training.tower_cache import text_embeddings

    names = sorted({v.query_text for v in votes})
    texts = dict(zip(names, text_embeddings(names)))
    rows = [("lite (reference, no gate)", "—", None,
             agreement(heldout_votes, make_scorer(gallery, meta, work, None, texts)))]
    for n, gate in gates.items():
        scorer = make_scorer(gallery, meta, work, gate, texts)
        rows.append(("lite + gate from train-align", n, agreement(train_votes[:n], scorer) if n else None,
                     agreement(heldout_votes, scorer)))
    times["agreement"] = time.perf_counter() - t0

    print("\nphase times:")
    for k, v in times.items():
        print(f"  {k}: {v:.0f} s")
    ref = rows[0][3]
    print(f"\nheld-out votes: {len(heldout_votes)} ({ref[2]} decisive, {ref[3]} item pairs); "
          f"visitors' noise {args.noise}; train-align --steps {args.steps}\n")
    print("| encoder (single-stage ranking) | training votes | held-out vote agreement | held-out pair agreement "
          "| pair agreement on its own training votes |")
    print("|---|---:|---:|---:|---:|")
    for name, n, train, (va, pa, _, _) in rows:
        print(f"| {name} | {n} | {va:.3f} | {pa:.3f} | {f'{train[1]:.3f}' if train else '—'} |")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nwork folder kept: {work} (report: {work / 'report' / 'report.md'})")


if __name__ == "__main__":
    main()
