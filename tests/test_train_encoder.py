"""Training the lite heads: the loss, the dev split, and a short real run on a tiny data folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFilter, ImageOps

from models import create_encoder
from search.training.encoder import TrainConfig, multi_positive_nce, split_dev, train_encoder

SKIMAGE_DATA = Path(skimage.data.__file__).parent
PHOTOS = {"cat": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg", "astronaut": "astronaut.png",
          "motorcycle": "motorcycle_left.png", "coins": "coins.png"}


def photo(file: str) -> Image.Image:
    return Image.open(SKIMAGE_DATA / file).convert("RGB")


def test_nce_is_low_when_pairs_align_and_counts_same_key_as_positive() -> None:
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    aligned = multi_positive_nce(q, q, [str(i) for i in range(8)], 0.05)
    shuffled = multi_positive_nce(q, q.roll(1, 0), [str(i) for i in range(8)], 0.05)
    assert aligned < 0.1 < shuffled
    # two rows with the same key: matching either target is right, so swapping them costs nothing extra
    keys = ["a", "a", "b", "c"]
    t = q[:4].clone()
    t[[0, 1]] = t[[1, 0]]
    assert multi_positive_nce(q[:4], t, keys, 0.05) < multi_positive_nce(q[:4], t, ["a", "x", "b", "c"], 0.05)


def test_dev_split_holds_out_whole_classes() -> None:
    items = [{"id": f"sketchy/photo/{c}{i}", "label": c, "style": "photo"} for c in "abcdefghij" for i in range(3)]
    items += [{"id": f"pacs/photo/x/{i}", "label": "x", "style": "photo"} for i in range(50)]
    train, dev = split_dev(items, 0.2, seed=0)
    assert {r["label"] for r in train if r["id"].startswith("sketchy")}.isdisjoint(
        {r["label"] for r in dev if r["id"].startswith("sketchy")})
    assert len(train) + len(dev) == len(items) and 0 < len(dev) < len(items)


def _write(folder: Path, rel: str, image: Image.Image) -> str:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    image.save(folder / rel)
    return rel


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four training datasets' layout, made from package photos: edge maps stand in for sketches."""
    root = tmp_path_factory.mktemp("data")
    rows: dict[str, list[dict]] = {"sketchy": [], "pacs": [], "imagenet": [], "quickdraw": []}
    for label, file in PHOTOS.items():
        name, image = Path(file).stem, photo(file)
        sketch = ImageOps.invert(image.convert("L").filter(ImageFilter.FIND_EDGES)).convert("RGB")
        rows["sketchy"] += [
            {"id": f"sketchy/photo/{name}", "path": _write(root / "sketchy", f"photo/{name}.jpg", image),
             "style": "photo", "label": label, "group": name, "split": "train"},
            {"id": f"sketchy/sketch/{name}", "path": _write(root / "sketchy", f"sketch/{name}.png", sketch),
             "style": "sketch", "label": label, "group": name, "split": "train"}]
        rows["pacs"] += [
            {"id": f"pacs/photo/{name}", "path": _write(root / "pacs", f"photo/{name}.jpg", image),
             "style": "photo", "label": label, "split": "train"},
            {"id": f"pacs/painting/{name}", "path": _write(root / "pacs", f"painting/{name}.jpg",
                                                           ImageOps.posterize(image, 2)),
             "style": "painting", "label": label, "split": "train"}]
        rows["imagenet"].append({"id": f"imagenet/{name}", "path": _write(root / "imagenet", f"{name}.jpg", image),
                                 "style": "photo", "label": label, "split": "train"})
        rows["quickdraw"].append({"id": f"quickdraw/{name}", "path": _write(root / "quickdraw", f"{name}.png", sketch),
                                  "style": "doodle", "label": label, "split": "train"})
    for ds, items in rows.items():
        (root / ds / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


@pytest.mark.slow
def test_train_encoder_writes_heads_the_registry_loads(tiny_data: Path, tmp_path: Path) -> None:
    out = train_encoder(tiny_data, tmp_path / "heads.pt", tmp_path / "cache",
                        cfg=TrainConfig(steps=30, batch=16, dev_fraction=0.3))
    enc = create_encoder("lite", weights=str(out))
    photos = [photo(f) for f in PHOTOS.values()]
    vecs = enc.encode_images(photos)
    assert vecs.shape == (len(PHOTOS), enc.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the heads learned the training pairs: each edge-map sketch finds its own photo
    sketches = [ImageOps.invert(p.convert("L").filter(ImageFilter.FIND_EDGES)).convert("RGB") for p in photos]
    ranked = np.argsort(-(enc.encode_images(sketches) @ vecs.T), axis=1)
    assert (ranked[:, 0] == np.arange(len(PHOTOS))).mean() >= 0.8
    # a second run reuses the cached tower outputs (same file, no new rows)
    cache = tmp_path / "cache" / "towers.npz"
    stamp = cache.stat().st_mtime_ns
    texts = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("texts-*.npy")}
    assert len(texts) == 2  # the class prompts and definitions, embedded once
    train_encoder(tiny_data, tmp_path / "heads2.pt", tmp_path / "cache", cfg=TrainConfig(steps=5, batch=16))
    assert cache.stat().st_mtime_ns == stamp
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("texts-*.npy")} == texts
