"""A uint8 .npz cache per source in `data_dir`, so each source is decoded once.

The cache records which source (path, size, modification time) and which cache version made
it; a cache that does not match is rebuilt from the source, and one that does not load is rebuilt
with a warning, never trusted. It is written whole or not at all (`files.written_whole`), so a
killed run or a full disk leaves the cache that was there. Processes that find it missing at the
same moment (two shells, a parallel sweep) take turns on a lock beside it: the first decodes, the
others read what it wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from resnet_onecycle.data.sources import SPLITS, Split, check_source, load_source
from resnet_onecycle.files import write_error, written_whole

log = logging.getLogger(__name__)

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


def read_cache(path: Path, identity: dict) -> tuple[dict[str, Split] | None, str | None]:
    """(the cached splits, None), or (None, why not) when the cache is stale or damaged; (None,
    None) when there is none."""
    if not path.exists():
        return None, None
    try:
        with np.load(path) as npz:
            if json.loads(str(npz["identity"])) != identity:
                return None, "stale"
            splits = {s: Split(npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS}
    except Exception as error:  # noqa: BLE001 - a cache that does not load is rebuilt
        return None, f"{type(error).__name__}: {error}"
    for split in splits.values():
        if split.images.dtype != np.uint8 or split.images.shape[1:] != (3, 32, 32) or len(split.images) != len(split.labels):
            return None, "arrays of the wrong shape"
    return splits, None


def write_cache(path: Path, identity: dict, splits: dict[str, Split]) -> None:
    arrays = {f"{s}_{field}": getattr(splits[s], field) for s in SPLITS for field in ("images", "labels")}
    with written_whole(path, "cache") as f:
        np.savez(f, identity=json.dumps(identity), **arrays)


@contextmanager
def locked(path: Path):
    """The cache's lock (`.<name>.lock` beside it), held while it is read again and built."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(lock, "a")
    except OSError as error:
        raise write_error(lock, error) from error
    with file:
        fcntl.flock(file, fcntl.LOCK_EX)  # let go by the system if the holder is killed
        yield


def load_cached(source: str, data_dir: str | Path) -> tuple[dict[str, Split], Path, bool]:
    """(splits, cache path, whether it was rebuilt). Decodes the source only when needed."""
    identity = source_identity(source)
    path = cache_path(source, Path(data_dir))
    splits, _ = read_cache(path, identity)
    if splits is not None:
        return splits, path, False
    with locked(path):
        splits, problem = read_cache(path, identity)  # another process may have built it meanwhile
        if splits is not None:
            return splits, path, False
        if problem == "stale":
            log.info("The data cache %s was made from another version of %s: rebuilding it.", path, source)
        elif problem:
            log.warning("The data cache %s is damaged (%s): rebuilding it from %s.", path, problem, source)
        log.info("Decoding %s into the cache %s (once for this source).", source, path)
        splits = load_source(source, data_dir)
        write_cache(path, identity, splits)
    return splits, path, True
