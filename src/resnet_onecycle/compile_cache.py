"""torch.compile's caches on disk, in a directory the run names (`paths.compile_cache_dir`).

Inductor's FX graph cache, the AOTAutograd cache and the compiled kernels all live under
`TORCHINDUCTOR_CACHE_DIR`; pointing it at one directory lets a second compiled run, in another
process or a sweep's next job, load its graphs instead of compiling them. Where the environment
sets `TORCHINDUCTOR_CACHE_DIR` itself, that one is used.

A cache made by another torch or Python is cleared with a warning (a stamp file says which made
it). An entry torch cannot load (a pickle that does not read is a miss in torch itself; a kernel
library that does not load is an error there) is caught at the compiled call: the cache is
cleared with a warning and the graph compiled again, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from resnet_onecycle.framework import inductor_default_cache_dir

log = logging.getLogger(__name__)

STAMP = "resnet-onecycle-cache.json"


def maker() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version()}


def use(directory: str | Path) -> Path:
    """Points torch's compile caches at `directory` (or the environment's), cleared first when
    another torch or Python made it. Returns the directory in use."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and Path(chosen) != Path(inductor_default_cache_dir()):  # torch sets its default there on import
        return Path(chosen)
    path = Path(directory).expanduser().resolve()
    stamp = path / STAMP
    try:
        made_by = json.loads(stamp.read_text())
    except (OSError, ValueError):
        made_by = None
    if made_by != maker():  # another torch's, or new: cleared and stamped
        if path.is_dir() and any(path.iterdir()):
            log.warning("The compile cache %s was made by %s, not this %s: clearing it; this run compiles afresh.",
                        path, made_by or "an unknown version", maker())
        clear(path)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / STAMP).write_text(json.dumps(maker()) + "\n")


def damaged_entry(error: BaseException, path: Path) -> str | None:
    """The load error behind a compile failure when it names a file under `path`, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ImportError, OSError, EOFError, pickle.UnpicklingError)) and str(path) in str(error):
            return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        error = getattr(error, "inner_exception", None) or error.__cause__ or error.__context__
    return None


def guarded(compiled: Callable) -> Callable:
    """`compiled` (a torch.compile'd function), rebuilt once from a cleared cache when a call fails
    on a damaged cache entry; any other error is raised as it is."""
    def call(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as error:
            path = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/nonexistent"))
            problem = damaged_entry(error, path)
            if problem is None:
                raise
            log.warning("The compile cache %s has an entry that does not load (%s): clearing it and compiling "
                        "again.", path, problem)
            clear(path)
            torch.compiler.reset()
            return compiled(*args, **kwargs)

    return call


def report(setting, before: dict, device: torch.device) -> dict:
    """With `model.compile` on, what torch.compile did since `before` (a `compile_counters` reading),
    for metrics.json; a warning when CUDA graphs were asked for and skipped."""
    from resnet_onecycle.framework import compile_counters
    from resnet_onecycle.module import CUDA_GRAPH_MODES, compile_mode

    if not setting:
        return {}
    counts = compile_counters(since=before)
    mode = compile_mode(setting, device.type)
    if device.type == "cuda" and counts.get("cudagraph_skips") and mode in CUDA_GRAPH_MODES:
        log.warning("model.compile=%s: CUDA graphs were skipped %d times, so those graphs ran without them; "
                    "TORCH_LOGS=cudagraphs,perf_hints shows why.", setting, counts["cudagraph_skips"])
    return {"compile_time_s": counts.pop("compile_time_s", None),
            "compile": {"mode": mode, "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), **counts}}
