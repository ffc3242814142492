"""Querybank normalisation: the committed bank, hub scores, and hub-corrected rankings through the real engine
(real lite encoder, real FAISS index of package photos)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SKIMAGE_DATA, pencil_sketch, photo

from models import get_encoder
from models.query_bank import QueryBank
from models.style import STYLES
from search.engine import SearchEngine
from search.hubness import HubCorrected
from search.pipeline import rank_queries
from search.rankings import RankSettings, expand_queries
from search.types import GalleryItem, Query

NAMES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg",
         "hubble_deep_field.jpg", "coins.png", "camera.png", "brick.png", "grass.png", "ihc.png"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SearchEngine:
    items = [GalleryItem(n.split(".")[0], SKIMAGE_DATA / n) for n in NAMES]
    eng, _ = SearchEngine.build(items, "lite", tmp_path_factory.mktemp("qb") / "index", scorer=None)
    return eng


def test_the_committed_bank_fits_the_encoder() -> None:
    enc = get_encoder("lite")
    bank = enc.query_bank
    assert bank is not None and set(bank.vectors) == set(STYLES) - {"photo"}
    assert bank.dim == enc.heads.out_dim and 0 < bank.k and 0 < bank.beta
    for vecs in bank.vectors.values():
        assert len(vecs) >= bank.k
        np.testing.assert_allclose(np.linalg.norm(vecs.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_hub_scores_are_the_mean_of_the_nearest_bank_queries(engine: SearchEngine) -> None:
    bank = engine.encoder.query_bank
    g = engine.gallery.vectors(list(range(len(engine.gallery))))
    hub = engine.gallery.hubness(bank)
    assert hub.shape == (len(NAMES), len(STYLES)) and engine.gallery.hubness(bank) is hub  # computed once
    assert not hub[:, STYLES.index("photo")].any()
    for s, vecs in bank.vectors.items():
        sims = g @ vecs.astype(np.float32).T
        want = np.sort(sims, 1)[:, -bank.k:].mean(1)
        np.testing.assert_allclose(hub[:, STYLES.index(s)], want, atol=1e-5)
    # a pure photo mixture costs nothing; a sketch mixture costs beta * the sketch hub score
    mix = np.eye(len(STYLES), dtype=np.float32)[[STYLES.index("photo"), STYLES.index("sketch")]]
    pen = bank.penalty(hub, mix)
    assert not pen[0].any()
    np.testing.assert_allclose(pen[1], bank.beta * hub[:, STYLES.index("sketch")], atol=1e-6)


def test_a_sketch_query_ranks_by_similarity_minus_hubness(engine: SearchEngine) -> None:
    query = Query(image=pencil_sketch(photo("coffee.png")))
    enc = engine.encode(query)
    assert enc.style_weights is not None and STYLES[int(enc.style_weights.argmax())] == "sketch"
    settings = RankSettings(k=len(NAMES))
    got = engine.search(query, k=len(NAMES))
    # the oracle: expanded query, cosine minus beta * (mixture . hub scores), sorted
    q = expand_queries(enc.vector[None], engine.gallery, settings.expand, settings.expand_alpha)[0]
    g = engine.gallery.vectors(list(range(len(engine.gallery))))
    bank = engine.encoder.query_bank
    score = g @ q - bank.beta * engine.gallery.hubness(bank) @ enc.style_weights
    assert [h.row for h in got] == np.argsort(-score, kind="stable").tolist()
    np.testing.assert_allclose([h.score for h in got], np.sort(score)[::-1], atol=1e-5)
    # without the bank the same vector ranks by cosine alone; the worst hub can only lose places
    plain = rank_queries("baseline", enc.vector[None], engine.gallery, settings, [True], {})[0]
    hub_row = int(np.argmax(engine.gallery.hubness(bank)[:, STYLES.index("sketch")]))
    rank = {h.row: h.rank for h in got}, {h.row: h.rank for h in plain}
    assert rank[0][hub_row] >= rank[1][hub_row]


def test_text_queries_and_unconditioned_queries_are_never_normalised(engine: SearchEngine) -> None:
    text = Query(text="a cup of coffee")
    assert engine.encode(text).style_weights is None
    settings = RankSettings(k=len(NAMES))
    vec = engine.encode(text).vector
    got = engine.search(text, k=len(NAMES))
    want = engine.gallery.search(vec[None], len(NAMES))[0]
    assert [(h.row, h.score) for h in got] == [(h.row, h.score) for h in want]
    sketch = Query(image=pencil_sketch(photo("coffee.png")))
    assert engine.encode(sketch, style=False).style_weights is None   # style off: no bank either
    # a fused query counts its image's share of the hub scores
    fused = engine.encode(Query(text="a cup", image=sketch.image, text_weight=0.75))
    np.testing.assert_allclose(fused.style_weights, 0.25 * fused.style_probs, atol=1e-6)
    assert rank_queries("baseline", vec[None], engine.gallery, settings, [False], {},
                        np.zeros((1, len(STYLES)), np.float32), engine.encoder.query_bank)[0] == got


def test_hub_corrected_search_reorders_a_pool_and_keeps_rankings_complete(engine: SearchEngine) -> None:
    n = len(engine.gallery)
    penalties = np.zeros((1, n), np.float32)
    penalties[0, 0] = 10.0                          # row 0 falls to the bottom of every ranking
    q = engine.gallery.vectors([0])
    view = HubCorrected(engine.gallery, penalties)
    full = view.search(q, n)[0]
    assert len(full) == n and full[-1].row == 0 and [h.rank for h in full] == list(range(1, n + 1))
    assert [h.row for h in view.search(q, 3)[0]] == [h.row for h in full[:3]]
    assert engine.gallery.search(q, 1)[0][0].row == 0   # the gallery itself is untouched


def test_bank_save_load_and_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((20, 8)).astype(np.float32)
    bank = QueryBank({"sketch": vecs / np.linalg.norm(vecs, axis=1, keepdims=True)}, k=3, beta=0.5)
    bank.save(tmp_path / "b.npz")
    back = QueryBank.load(tmp_path / "b.npz")
    assert (back.k, back.beta, set(back.vectors)) == (3, 0.5, {"sketch"})
    np.testing.assert_allclose(back.vectors["sketch"], bank.vectors["sketch"], atol=1e-3)   # stored as fp16
    with pytest.raises(ValueError, match="no photo queries"):
        QueryBank({"photo": vecs})
    with pytest.raises(ValueError, match=r"styles \['oil'\] are not among"):
        QueryBank({"oil": vecs})
    with pytest.raises(ValueError, match="differ in size"):
        QueryBank({"sketch": vecs, "doodle": vecs[:, :4]})


@pytest.mark.slow
def test_query_bank_command_encodes_train_queries_as_the_engine_does(tmp_path: Path) -> None:
    """`python -m search query-bank` on a tiny data folder: pencil sketches of package photos (train) and the
    photos themselves (whose 16x mosaics and 32-px thumbnails become the low-res queries)."""
    from search.cli import main

    root = tmp_path / "data" / "pacs"
    root.mkdir(parents=True)
    rows = []
    for i, name in enumerate(NAMES[:4]):
        photo(name).save(root / f"p{i}.png")
        pencil_sketch(photo(name)).save(root / f"s{i}.png")
        rows += [{"id": f"pacs/p{i}", "path": f"p{i}.png", "style": "photo", "label": "x", "split": "train"},
                 {"id": f"pacs/s{i}", "path": f"s{i}.png", "style": "sketch", "label": "x", "split": "train"},
                 {"id": f"pacs/t{i}", "path": f"s{i}.png", "style": "sketch", "label": "x", "split": "test"}]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bank.npz"
    assert main(["query-bank", "--data", str(tmp_path / "data"), "--out", str(out), "--per-style", "3"]) == 0
    bank = QueryBank.load(out)
    assert {s: len(v) for s, v in bank.vectors.items()} == {"sketch": 3, "lowres": 3}   # test rows never used
    enc = get_encoder("lite")
    want = np.stack([enc.encode_query_tensors(enc.preprocess(pencil_sketch(photo(n)))[None])[0][0]
                     for n in NAMES[:4]])
    got = bank.vectors["sketch"].astype(np.float32)
    assert np.abs(got @ want.T).max(1).min() > 0.999     # every banked sketch is one of the encoded train sketches
