"""Benchmarks for style words in text queries (docs/style_text.md), in the shared benchmark folder format.

    python benchmarks/style_text_benchmarks.py [--data ../shared/data] [--out /tmp/style-text-benchmarks]
    python benchmarks/style_text_benchmarks.py --tune      # also: dev mAP per style weight (choose it here)
    python benchmarks/style_text_benchmarks.py --evaluate  # also: test figures, style words off vs on

Writes, under --out (never in the repo; gallery paths point at --data, relative to each folder):
* `pacs-style-text/`: every PACS `test` image (photo, painting, cartoon, sketch x 7 classes) as the gallery;
  queries "a {style} of a {class}" (and a synonym: "a pencil drawing of a dog", "an oil painting of a dog", ...),
  relevant = the images of that style and class. Reported per named style.
* `wikiart-movements/`: every WikiArt `test` painting; queries that only name a movement ("impressionism",
  "an impressionist painting", "a painting in the style of impressionism"), relevant = its paintings.
* the same two from the train items held out of the style probe's fitting (`-dev` suffix), and
  `imagenet-photo-dev/` ("a photo of a {class}" on held-out train photos; "photo" is no longer a style word,
  models/style_words.py, so this one ranks as without style words).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from models.style_words import MOVEMENTS
from search.config import PROJECT_ROOT
from search.training.style_words import is_dev, read_items

STYLE_TEMPLATES = {
    "photo": ("a photo of {a} {c}", "a photograph of {a} {c}"),
    "painting": ("a painting of {a} {c}", "an oil painting of {a} {c}"),
    "cartoon": ("a cartoon of {a} {c}", "{a} {c} in clip art"),
    "sketch": ("a sketch of {a} {c}", "a pencil drawing of {a} {c}"),
}
# movement label -> (noun, adjective) as a query would name it
MOVEMENT_NAMES = {
    "art nouveau": ("art nouveau", "art nouveau"),
    "baroque": ("baroque", "baroque"),
    "expressionism": ("expressionism", "expressionist"),
    "impressionism": ("impressionism", "impressionist"),
    "post-impressionism": ("post-impressionism", "post-impressionist"),
    "romanticism": ("romanticism", "romantic"),
    "symbolism": ("symbolism", "symbolist"),
}
MOVEMENT_TEMPLATES = ("{noun}", "{an} {adj} painting", "a painting in the style of {noun}")


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def in_split(row: dict, split: str) -> bool:
    """`test`: the test split; `dev`: the train items held out of fitting."""
    return row.get("split") == "test" if split == "test" else row.get("split") == "train" and is_dev(row["id"])


def gallery_rows(items: list[dict], folder: Path) -> list[dict]:
    return [{"id": r["id"], "path": os.path.relpath(r["file"], folder), "style": r["style"],
             **({"label": r["label"]} if r.get("label") else {}),
             **({"art_style": r["art_style"]} if r.get("art_style") else {})} for r in items]


def write(folder: Path, gallery: list[dict], queries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("gallery.jsonl", gallery), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{folder}: {len(gallery)} images, {len(queries)} queries")
    return folder


def pacs_benchmark(data: Path, out: Path, split: str) -> Path:
    folder = out / ("pacs-style-text" + ("-dev" if split == "dev" else ""))
    items = [r for r in read_items(data, "pacs") if in_split(r, split)]
    queries = []
    for style, templates in STYLE_TEMPLATES.items():
        for c in sorted({r["label"] for r in items}):
            relevant = [r["id"] for r in items if r["style"] == style and r["label"] == c]
            for n, t in enumerate(templates):
                queries.append({"id": f"{style}/{c}/{n}", "style": style, "text": t.format(a=article(c), c=c),
                                "relevant": relevant})
    return write(folder, gallery_rows(items, folder), queries)


def wikiart_benchmark(data: Path, out: Path, split: str) -> Path:
    folder = out / ("wikiart-movements" + ("-dev" if split == "dev" else ""))
    items = [r for r in read_items(data, "wikiart") if in_split(r, split) and r.get("art_style")]
    queries = []
    for label, art_style in MOVEMENTS.items():
        noun, adj = MOVEMENT_NAMES[label]
        relevant = [r["id"] for r in items if r["art_style"] == art_style]
        for n, t in enumerate(MOVEMENT_TEMPLATES):
            queries.append({"id": f"{label}/{n}", "style": label, "text": t.format(noun=noun, adj=adj, an=article(adj)),
                            "relevant": relevant})
    return write(folder, gallery_rows(items, folder), queries)


def imagenet_photo_benchmark(data: Path, out: Path) -> Path:
    folder = out / "imagenet-photo-dev"
    items = [r for r in read_items(data, "imagenet") if in_split(r, "dev")]
    queries = [{"id": f"{r['id']}#name", "style": "text", "text": f"a photo of {article(r['label'])} {r['label']}",
                "relevant": [r["id"]]} for r in items]
    return write(folder, gallery_rows(items, folder), queries)


def build(data: Path, out: Path) -> dict[str, Path]:
    benches = {}
    for split in ("dev", "test"):
        for make in (pacs_benchmark, wikiart_benchmark):
            folder = make(data, out, split)
            benches[folder.name] = folder
    folder = imagenet_photo_benchmark(data, out)
    benches[folder.name] = folder
    return benches


def m_ap(result) -> tuple[float, dict[str, float]]:  # noqa: ANN001
    return result.overall["mAP"], {s: m["mAP"] for s, m in sorted(result.by_style.items())}


def tune(benches: dict[str, Path], weights: tuple[float, ...], saturations: tuple[float, ...]) -> None:
    """Dev mAP of each dev benchmark per style weight and saturation, content searched with the text without its
    style words ("strip") or as typed ("full"). Weight 0 is today's ranking (the text as typed, no style)."""
    from dataclasses import replace

    from models import get_encoder
    from models.style_words import LABELS, read_style
    from search.config import CACHE_DIR
    from search.engine import cache_index_dir
    from search.evaluation.benchmark import load_benchmark
    from search.evaluation.metrics import query_metrics
    from search.index.faiss_index import IndexSpec
    from search.index.gallery_index import build_index
    from search.style_text import style_probe_for

    enc = get_encoder("lite")
    probe = style_probe_for(enc)
    names = [n for n in benches if n.endswith("-dev")]
    data = {}
    for n in names:  # the gallery as `visual-search eval` indexes it (and caches it)
        bench = load_benchmark(benches[n])
        index, _ = build_index(bench.gallery, cache_index_dir(CACHE_DIR, f"bench-{bench.root.resolve()}", enc), enc,
                               spec=IndexSpec("Flat"), source=str(bench.root))
        ids = [r["id"] for r in index.rows]
        vecs = np.asarray(index.index.vectors, np.float32)
        reads = [read_style(q.text) for q in bench.queries]
        full = vecs @ enc.encode_texts([q.text for q in bench.queries]).T
        strip = vecs @ enc.encode_texts([r.content or q.text if r else q.text
                                         for q, r in zip(bench.queries, reads)]).T
        data[n] = (bench.queries, ids, reads, full.T, strip.T, vecs)
    print(f"{'weight':>7}{'satur.':>7}{'content':>8}" + "".join(f"{n:>24}" for n in names))
    for w in weights:
        for sat in saturations if w else (1.0,):
            matches = {n: replace(probe, saturation=sat).matches(data[n][5]) for n in names}
            for content in ("strip", "full") if w else ("full",):
                row = []
                for n in names:
                    queries, ids, reads, full, strip, _ = data[n]
                    scores = (strip if content == "strip" else full).copy()
                    for i, r in enumerate(reads):
                        if r and w:
                            scores[i] += w * matches[n][:, LABELS.index(r.label)]
                    aps = [query_metrics([ids[j] for j in np.argsort(-s, kind="stable")], q.relevant)["mAP"]
                           for q, s in zip(queries, scores)]
                    row.append(float(np.mean(aps)))
                print(f"{w:>7.2f}{sat:>7.2f}{content:>8}" + "".join(f"{v:>24.3f}" for v in row), flush=True)


def evaluate_test(benches: dict[str, Path]) -> None:
    """Test figures: style words off (today) vs on, per named style."""
    from search.evaluation.evaluate import evaluate

    for n in ("pacs-style-text", "wikiart-movements"):
        off, on = (m_ap(evaluate(benches[n], style_words=s)) for s in (False, True))
        print(f"\n{n}: mAP, style words off -> on")
        for style in on[1]:
            print(f"  {style:<20}{off[1][style]:>7.3f}{on[1][style]:>7.3f}{on[1][style] - off[1][style]:>+8.3f}")
        print(f"  {'mean':<20}{off[0]:>7.3f}{on[0]:>7.3f}{on[0] - off[0]:>+8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="/tmp/style-text-benchmarks")
    parser.add_argument("--tune", action="store_true", help="dev mAP per style weight")
    parser.add_argument("--weights", default="0,0.02,0.05,0.1,0.2,0.3", help="weights --tune tries")
    parser.add_argument("--saturations", default="1,0.7,0.5,0.3", help="saturations --tune tries")
    parser.add_argument("--evaluate", action="store_true", help="test mAP, style words off vs on")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if out.is_relative_to(PROJECT_ROOT):
        raise SystemExit(f"--out {out} is inside the repository: write benchmarks elsewhere (e.g. /tmp)")
    benches = build(Path(args.data).resolve(), out)
    if args.tune:
        tune(benches, tuple(float(w) for w in args.weights.split(",")),
             tuple(float(s) for s in args.saturations.split(",")))
    if args.evaluate:
        evaluate_test(benches)


if __name__ == "__main__":
    main()
