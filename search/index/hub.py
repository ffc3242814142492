"""The one module that knows the Hugging Face Hub: galleries from Hub datasets, prebuilt indexes fetched from Hub
dataset repos, and publishing an index directory to one.

    hf://datasets/OWNER/NAME[:SPLIT]   a gallery: a dataset with an Image column (and an optional caption column),
                                       loaded with `datasets`; its images are written once under the index directory
    hf://datasets/OWNER/NAME[@REV]     an index: a dataset repo holding what `python -m search index` writes, fetched
                                       once with `huggingface_hub.snapshot_download` into the Hugging Face cache

Offline, both use what the caches hold, and otherwise fail within seconds (`HubOfflineError`), naming the local
alternatives. The same code reads local copies laid out as on the Hub:

* `VISUAL_SEARCH_HUB_DIR=DIR`: DIR/OWNER/NAME (or DIR/datasets/OWNER/NAME) is the repo's files, e.g. a git clone;
* `HF_HUB_CACHE` / `HF_HOME`: the Hugging Face cache layout (what `snapshot_download` and Spaces' `preload_from_hub`
  write), read with `snapshot_download(local_files_only=True)`;
* a local dataset folder or file in a format `datasets` writes (`Dataset.to_parquet`, `push_to_hub`'s
  `data/train-00000-of-00001.parquet`, `save_to_disk`) given as the gallery source itself.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

from models import OfflineError
from models.openclip import HUB_HOST, _hub_reachable
from search.types import GalleryItem, Skipped

log = logging.getLogger(__name__)

PREFIX = "hf://datasets/"
LOCAL_ENV = "VISUAL_SEARCH_HUB_DIR"   # a folder of Hub repos as plain files: DIR/OWNER/NAME/...
CAPTION_COLUMNS = ("caption", "text", "captions", "sentences", "description")
ID_COLUMNS = ("id", "image_id", "example_id")
LABEL_COLUMNS = ("label", "labels")
# PIL format -> file extension of the images written out (anything else is skipped: the indexer could not read it)
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                     "MPO": ".jpg"}
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubOfflineError(OfflineError, OSError):
    """Something must come from the Hugging Face Hub, the Hub cannot be reached and no local copy exists.
    An OSError too, so callers that report bad sources (app.py) report this one the same way."""


# ---------------------------------------------------------------- specs
def is_hub_spec(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str, sep: str) -> tuple[str, str | None]:
    """"hf://datasets/OWNER/NAME<sep>EXTRA" -> ("OWNER/NAME", "EXTRA" or None)."""
    rest = spec[len(PREFIX):].strip("/") if is_hub_spec(spec) else ""
    repo, _, extra = rest.partition(sep)
    if not _REPO.match(repo):
        raise ValueError(f"{spec!r}: expected {PREFIX}OWNER/NAME{sep}... (a Hugging Face dataset repo)")
    return repo, extra or None


def is_dataset_source(source: str | Path) -> bool:
    """A gallery source this module reads: an hf://datasets/ spec, a .parquet file, or a folder `datasets` wrote
    (`save_to_disk`: dataset_info.json/state.json or dataset_dict.json; Parquet files at its top or in data/)."""
    if is_hub_spec(source):
        return True
    path = Path(source)
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    if not path.is_dir():
        return False
    if any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return True
    return any(path.glob("*.parquet")) or any(path.glob("data/*.parquet"))


# ---------------------------------------------------------------- locating a repo's files
def local_mirror(repo: str) -> Path | None:
    """The repo's folder under $VISUAL_SEARCH_HUB_DIR, if that is set and holds it."""
    root = os.environ.get(LOCAL_ENV)
    if not root:
        return None
    for cand in (Path(root) / repo, Path(root) / "datasets" / repo):
        if cand.is_dir():
            return cand
    return None


def _alternatives(kind: str) -> str:
    if kind == "gallery":
        local = ("index a local folder, .zip or manifest instead (--gallery FOLDER / python -m search index "
                 "FOLDER --out DIR), or serve a local index directory (--index DIR)")
    elif kind == "index":
        local = ("serve a local index directory instead (--index DIR, built with python -m search index SOURCE "
                 "--out DIR), or index a local folder (--gallery FOLDER)")
    else:
        return "serve the index locally meanwhile (python app.py --index DIR)"
    return (f"{local}; or point {LOCAL_ENV} at a folder holding OWNER/NAME laid out as on the Hub; or run once with "
            "internet access so the Hugging Face cache holds it")


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _offline(what: str, kind: str, cause: BaseException | None = None) -> HubOfflineError:
    why = "HF_HUB_OFFLINE is set" if _env_offline() else f"{HUB_HOST} is unreachable"
    detail = f" ({type(cause).__name__})" if cause is not None else ""
    return HubOfflineError(f"cannot download {what}: {why} and it is not in the local Hugging Face cache"
                           f"{detail}. Alternatives: {_alternatives(kind)}.")


def snapshot(repo: str, revision: str | None = None, kind: str = "index",
             allow_patterns: list[str] | None = None) -> Path:
    """The local folder of a dataset repo's files: $VISUAL_SEARCH_HUB_DIR's copy, else `snapshot_download` (online:
    fetches what is missing; offline: the cached snapshot, within seconds), else HubOfflineError."""
    mirror = local_mirror(repo)
    if mirror is not None:
        return mirror
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at import (tests and Spaces set it)
    online = _hub_reachable()
    try:
        path = snapshot_download(repo, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                                 local_files_only=not online, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as e:
        raise _offline(f"the Hugging Face dataset {repo}", kind, e) from e
    return Path(path)


# ---------------------------------------------------------------- galleries from datasets
def dataset_gallery(source: str | Path, extract_to: str | Path | None) -> tuple[list[GalleryItem], list[Skipped]]:
    """An hf://datasets/OWNER/NAME[:SPLIT] spec, or a local dataset (Parquet / save_to_disk) -> gallery items.

    Each row's image (the first Image-feature column) is written once under `extract_to` (a file that is already
    there with the same size is kept, so re-indexing re-uses its vector); its caption comes from the first of
    CAPTION_COLUMNS present (the first of a list), its id from ID_COLUMNS when unique, else the row number.
    SPLIT defaults to "train" (else the only or first split); "train+test" joins splits."""
    if extract_to is None:
        raise ValueError(f"gallery source {source}: a dataset needs a folder to write its images to")
    ds, name = load_gallery_dataset(source)
    return write_dataset_images(ds, Path(extract_to), name)


def load_gallery_dataset(source: str | Path):  # noqa: ANN201 (datasets.Dataset; imported lazily)
    """-> (one datasets.Dataset, a readable name for it)."""
    import datasets

    split = None
    if is_hub_spec(source):
        repo, split = parse_spec(str(source), ":")
        mirror = local_mirror(repo)
        if mirror is not None:
            local = mirror
        elif _hub_reachable():
            log.info("loading the Hugging Face dataset %s (split %s)", repo, split or "default")
            return _one_split(lambda s: datasets.load_dataset(repo, split=s), split, repo), repo
        else:  # offline: the repo's files in the Hugging Face cache, read as a local dataset ...
            try:
                local = snapshot(repo, kind="gallery")
            except HubOfflineError:
                if not datasets.config.HF_HUB_OFFLINE:  # read when `datasets` was imported
                    raise
                try:  # ... or what `datasets` cached of it (it looks there, without retries, in offline mode)
                    return _one_split(lambda s: datasets.load_dataset(repo, split=s), split, repo), repo
                except Exception as e:  # noqa: BLE001 - any failure here means "not cached"
                    raise _offline(f"the Hugging Face dataset {repo}", "gallery", e) from e
        name = repo
    else:
        local, name = Path(source), Path(source).name
    if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
        return _one_split(lambda s: _from_disk(datasets, local, s), split, name), name
    files = str(local) if local.is_file() else None
    return _one_split(lambda s: datasets.load_dataset("parquet", data_files=files, split=s) if files
                      else datasets.load_dataset(str(local), split=s), split, name), name


def _from_disk(datasets, path: Path, split: str | None):  # noqa: ANN001, ANN202
    ds = datasets.load_from_disk(str(path))
    if split is None or isinstance(ds, datasets.Dataset):
        return ds
    return datasets.concatenate_datasets([ds[s] for s in split.split("+")])


def _one_split(load, split: str | None, name: str):  # noqa: ANN001, ANN202
    import datasets

    ds = load(split)
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if not ds:
            raise ValueError(f"dataset {name} has no splits")
        chosen = "train" if "train" in ds else next(iter(ds))
        if len(ds) > 1:
            log.info("dataset %s: using split %r of %s (choose one with :SPLIT)", name, chosen, sorted(ds))
        ds = ds[chosen]
    return ds


def image_column(features: dict) -> str:
    import datasets

    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(f"the dataset has no Image column (columns: {', '.join(features) or 'none'})")


def write_dataset_images(ds, target: Path, name: str = "dataset") -> tuple[list[GalleryItem], list[Skipped]]:  # noqa: ANN001
    """Rows of a datasets.Dataset -> image files under `target` + gallery items."""
    import datasets

    image_col = image_column(ds.features)
    caption_col = next((c for c in CAPTION_COLUMNS if c in ds.features), None)
    label_col = next((c for c in LABEL_COLUMNS if isinstance(ds.features.get(c), datasets.ClassLabel)), None)
    id_col = next((c for c in ID_COLUMNS if c in ds.features), None)
    cols = [c for c in (image_col, caption_col, label_col, id_col) if c]
    ds = ds.select_columns(list(dict.fromkeys(cols))).cast_column(image_col, datasets.Image(decode=False))
    if id_col is not None:
        ids = [str(v) for v in ds[id_col]]
        if len(set(ids)) != len(ids) or any("/" in i or i in ("", ".", "..") for i in ids):
            id_col = None
    names = ds.features[label_col].names if label_col else None
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    items, skipped = [], []
    width = max(6, len(str(len(ds))))
    for n, row in enumerate(ds):
        item_id = str(row[id_col]) if id_col else f"{n:0{width}d}"
        where = f"{name}[{n}]"
        try:
            data = _image_bytes(row[image_col])
            ext = _extension(data)
        except ValueError as e:
            skipped.append(Skipped(where, str(e)))
            continue
        digest = hashlib.sha1(item_id.encode()).hexdigest()[:8]  # ids need not be file names
        dest = target / f"{n:0{width}d}-{digest}{ext}"
        _write_once(dest, data)
        label = names[row[label_col]] if names and isinstance(row[label_col], int) and row[label_col] >= 0 else None
        items.append(GalleryItem(item_id, dest, _caption(row.get(caption_col)) if caption_col else None, label))
    if not items:
        raise ValueError(f"dataset {name} holds no readable images ({len(skipped)} rows skipped)")
    log.info("dataset %s: %d images under %s (%d skipped)", name, len(items), target, len(skipped))
    return items, skipped


def _image_bytes(value: dict | None) -> bytes:
    if not value:
        raise ValueError("no image")
    if value.get("bytes"):
        return value["bytes"]
    path = value.get("path")
    if path and Path(path).is_file():
        return Path(path).read_bytes()
    raise ValueError(f"image not embedded and its file {Path(path).name if path else '?'} is missing")


def _extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError("not a readable image") from e
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"unsupported image format {fmt}")
    return FORMAT_EXTENSIONS[fmt]


def _write_once(dest: Path, data: bytes) -> None:
    """Keep an existing file of the same size (its mtime too: the index re-uses its vector)."""
    if dest.is_file() and dest.stat().st_size == len(data):
        return
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _caption(value: object) -> str | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("raw") or value.get("text") or value.get("caption")
    return (value.strip() or None) if isinstance(value, str) else None


# ---------------------------------------------------------------- prebuilt indexes
def resolve_index(spec: str | Path, cache_dir: str | Path | None = None) -> Path:
    """An index directory, or hf://datasets/OWNER/NAME[@REVISION] -> the local index directory.

    A Hub index is fetched once into the Hugging Face cache (offline: the cached copy), then given as real files
    under `cache_dir`/hub (hard links to the cache's blobs, so no second copy): the cache's snapshot files are
    symlinks into blobs/, and a web server that resolves links (Gradio) would refuse the thumbnails."""
    if not is_hub_spec(spec):
        return Path(spec)
    repo, revision = parse_spec(str(spec), "@")
    snap = snapshot(repo, revision, kind="index")
    if not (snap / "index.json").is_file():
        raise FileNotFoundError(f"{spec} holds no index (index.json is missing); publish one with: "
                                f"python -m search publish-index DIR --repo {repo}")
    if local_mirror(repo) is not None or not any(p.is_symlink() for p in _walk(snap)):
        return snap
    if cache_dir is None:
        from search.config import CACHE_DIR

        cache_dir = CACHE_DIR
    return _materialise(snap, Path(cache_dir) / "hub" / repo.replace("/", "--") / snap.name)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, _, files in os.walk(root):
        for f in files:
            yield Path(dirpath) / f


def _materialise(snap: Path, dest: Path) -> Path:
    """Real files at `dest` for the (symlinked) snapshot `snap`: hard links where possible, else copies."""
    if (dest / "index.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    for f in _walk(snap):
        out = tmp / f.relative_to(snap)
        out.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(f.resolve(), out)
    try:
        tmp.replace(dest)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---------------------------------------------------------------- publishing
def stage_index(index_dir: str | Path, out: str | Path, with_images: bool = False) -> list[str]:
    """Copy what a published index needs from `index_dir` to `out` (hard links for the large files); return the
    staged files, relative. Kept: index.json, the current snapshot, thumbs/ (and files/, the images extracted under
    the index, with `with_images`). Left out: partial/ checkpoints, index.log, older snapshots, temporary files.
    Server paths are removed: absolute image paths become relative names (an app serving the index falls back to
    the thumbnail when an original is missing), the rows' re-use keys keep only size and mtime, and a local source
    is named by its folder name."""
    from search.index.gallery_index import FLAGGED_FILE, FOLDERS_FILE, META_FILE, GalleryIndex, _dirs_of, read_meta

    index_dir, out = Path(index_dir).resolve(), Path(out)
    meta = read_meta(index_dir)
    if meta is None:
        raise ValueError(f"{index_dir} is not an index directory ({META_FILE} is missing); build one with: "
                         f"python -m search index SOURCE --out {index_dir}")
    GalleryIndex.load(index_dir)  # refuses an index whose files disagree
    source_dir = Path(meta.source).resolve() if meta.source and not is_hub_spec(meta.source) \
        and Path(meta.source).is_absolute() else None
    snap = index_dir / meta.snapshot

    def public(path: str) -> str:
        p = Path(path)
        if not p.is_absolute():
            return p.as_posix()
        for root in (index_dir, source_dir):
            if root is not None and root in p.parents:
                return p.relative_to(root).as_posix()
        return p.name

    rows = []
    for line in (snap / "items.jsonl").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            row = json.loads(line)
            row["path"] = public(row["path"])
            size, mtime = row["key"].rsplit("|", 2)[1:]
            row["key"] = f"{row['path']}|{size}|{mtime}"
            rows.append(row)
    skipped = []
    skipped_file = snap / "skipped.jsonl"
    for line in skipped_file.read_text(encoding="utf-8").split("\n") if skipped_file.is_file() else []:
        if line.strip():
            s = json.loads(line)
            where, sep, rest = s["where"].partition("!")  # "archive.zip!entry", "manifest.csv:3", a path
            path, colon, n = where.rpartition(":") if re.search(r":\d+$", where) else (where, "", "")
            s["where"] = public(path) + colon + n + sep + rest
            skipped.append(s)

    out.mkdir(parents=True, exist_ok=True)
    staged: list[str] = []

    def put(rel: str, text: str | None = None, src: Path | None = None) -> None:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            dst.write_text(text, encoding="utf-8")
        else:
            _link_or_copy(src, dst)
        staged.append(rel)

    source = meta.source if meta.source is None or is_hub_spec(meta.source) else Path(meta.source).name
    put(META_FILE, json.dumps(asdict(replace(meta, source=source)), indent=2) + "\n")
    s = meta.snapshot
    put(f"{s}/items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    put(f"{s}/skipped.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in skipped))
    put(f"{s}/{FOLDERS_FILE}", json.dumps(_dirs_of(rows), ensure_ascii=False) + "\n")
    for name in ("vectors.npy", "faiss.index", FLAGGED_FILE):
        if (snap / name).is_file():
            put(f"{s}/{name}", src=snap / name)
    for thumb in sorted({r["thumbnail"] for r in rows if r.get("thumbnail")}):
        put(thumb, src=index_dir / thumb)
    if with_images:
        for r in rows:
            if r["path"].startswith("files/") and (index_dir / r["path"]).is_file():
                put(r["path"], src=index_dir / r["path"])
    put("README.md", _card(meta, len(rows), source))
    return staged


def _card(meta, count: int, source: str | None) -> str:  # noqa: ANN001
    return (f"---\ntags:\n- visual-search-index\n---\n# Visual search index\n\n"
            f"A prebuilt index of {count:,} images for the visual-search demo: FAISS index, vectors and thumbnails.\n\n"
            f"- source: `{source or 'unknown'}` (see its dataset card for the images' licence)\n"
            f"- encoder: `{meta.fingerprint}`; aesthetic scorer: `{meta.scorer or 'none'}`\n"
            f"- built: {meta.updated}\n\n"
            "Serve it with `python app.py --index hf://datasets/<this repo>` "
            "or query it with `python -m search query hf://datasets/<this repo> --text \"a red bicycle\"`.\n")


def publish_index(index_dir: str | Path, repo: str, private: bool = False, with_images: bool = False,
                  token: str | None = None, dry_run: bool = False) -> str:
    """Upload an index directory to the Hub dataset repo `repo` (created if missing): `stage_index`'s files, in one
    commit that also deletes the repo's files of an earlier index (older snapshots, thumbnails no longer used).
    -> the repo's URL (with `dry_run`, the staging folder: nothing is uploaded)."""
    from search.index.gallery_index import META_FILE, read_meta

    if not _REPO.match(repo):
        raise ValueError(f"--repo {repo!r}: expected OWNER/NAME")
    if read_meta(Path(index_dir)) is None:  # before any network: a wrong folder is the likelier mistake
        raise ValueError(f"{index_dir} is not an index directory ({META_FILE} is missing); build one with: "
                         f"python -m search index SOURCE --out {index_dir}")
    if not dry_run and not _hub_reachable():
        raise _offline_publish(repo)
    stage = Path(tempfile.mkdtemp(prefix="publish-index-"))
    try:
        files = stage_index(index_dir, stage, with_images)
        log.info("publishing %d files from %s to %s", len(files), index_dir, repo)
        if dry_run:
            return str(stage)
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi(token=token)
        try:
            url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=stage,
                              commit_message=f"Index of {count_label(files)}",
                              delete_patterns=["snapshot-*", "thumbs/*", "files/*"])
        except HfHubHTTPError as e:  # the Hub answered: no token, no write access, a bad name, ...
            status = getattr(getattr(e, "response", None), "status_code", None)
            hint = " (a write token is needed: `hf auth login` or HF_TOKEN)" if status in (401, 403) else ""
            raise PermissionError(f"cannot publish to {repo}: {e}{hint}") from e
        except OSError as e:  # connection errors, offline mode (OfflineModeIsEnabled is a ConnectionError)
            raise _offline_publish(repo, e) from e
        return str(url)
    finally:
        if not dry_run:
            shutil.rmtree(stage, ignore_errors=True)


def count_label(files: list[str]) -> str:
    thumbs = sum(f.startswith("thumbs/") for f in files)
    return f"{thumbs} images" if thumbs else f"{len(files)} files"


def _offline_publish(repo: str, cause: BaseException | None = None) -> HubOfflineError:
    why = "HF_HUB_OFFLINE is set" if _env_offline() else f"{HUB_HOST} is unreachable"
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return HubOfflineError(f"cannot publish to {repo}: {why}{detail}. Publish later with internet access; meanwhile "
                           f"{_alternatives('publish')} (python -m search publish-index DIR --repo {repo} "
                           "--dry-run shows what would be uploaded).")
