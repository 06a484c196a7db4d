"""A uint8 .npz cache per source in `data_dir`, so each source is decoded once.

The cache records which source (path, size, modification time) and which cache version made
it; a cache that does not match, or does not load, is rebuilt from the source, never trusted.
It is written to a temporary file and renamed, so a killed run leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from resnet_onecycle.data.sources import SPLITS, Split, check_source, load_source

CACHE_VERSION = 1


def source_identity(source: str) -> dict:
    if source == "download":
        return {"source": "download", "version": CACHE_VERSION}
    path = check_source(source).resolve()
    if path.is_dir():  # a folder's own mtime misses changes deeper down: fingerprint every file
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"source": str(path), "files": digest.hexdigest(), "version": CACHE_VERSION}
    stat = path.stat()
    return {"source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": CACHE_VERSION}


def cache_path(source: str, data_dir: Path) -> Path:
    name = "download" if source == "download" else Path(source).name.split(".")[0]
    digest = hashlib.sha256(str(Path(source).expanduser().resolve()).encode()).hexdigest()[:10]
    return Path(data_dir) / f"cifar10-{name}-{digest}.npz"


def read_cache(path: Path, identity: dict) -> dict[str, Split] | None:
    """The cached splits, or None when the cache is missing, stale or damaged."""
    try:
        with np.load(path) as npz:
            if json.loads(str(npz["identity"])) != identity:
                return None
            splits = {s: Split(npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS}
    except Exception:  # noqa: BLE001 - a cache that does not load is rebuilt
        return None
    for split in splits.values():
        if split.images.dtype != np.uint8 or split.images.shape[1:] != (3, 32, 32) or len(split.images) != len(split.labels):
            return None
    return splits


def write_cache(path: Path, identity: dict, splits: dict[str, Split]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{field}": getattr(splits[s], field) for s in SPLITS for field in ("images", "labels")}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, identity=json.dumps(identity), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(source: str, data_dir: str | Path) -> tuple[dict[str, Split], Path, bool]:
    """(splits, cache path, whether it was rebuilt). Decodes the source only when needed."""
    data_dir = Path(data_dir)
    identity = source_identity(source)
    path = cache_path(source, data_dir)
    splits = read_cache(path, identity)
    if splits is not None:
        return splits, path, False
    splits = load_source(source, data_dir)
    write_cache(path, identity, splits)
    return splits, path, True
