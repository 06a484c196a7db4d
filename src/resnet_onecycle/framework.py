"""Every reach into a framework's private API, one small function each.

None of these has a public equivalent in lightning 2.6 or torch 2.x; if a release renames one,
this file is the only place to mend.
"""

from __future__ import annotations


def tensorboard_writer(logger):
    """The TensorBoard logger's file writer, to add the HParams summaries by hand: Lightning's
    `log_hyperparams(params, metrics)` would log the final metrics a second time, at step 0."""
    return logger.experiment._get_file_writer()


def one_cycle_peak_step(scheduler_state: dict) -> int:
    """The step at which a saved OneCycleLR state peaks: its state holds no public `pct_start`."""
    return round(scheduler_state["_schedule_phases"][0]["end_step"])


def compile_counters(since: dict[str, int] | None = None) -> dict[str, int]:
    """torch.compile's counts: graphs compiled (recompiles included), graph breaks, the times CUDA
    graphs were skipped, the compile caches' hits and misses, and the seconds spent compiling.
    Process-wide: with `since`, an earlier reading, those since then.
    Empty where this torch does not keep them (torch keeps them in `torch._dynamo` only)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    from torch._dynamo.utils import compilation_time_metrics

    now = {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
           "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
           "fxgraph_cache_hits": counters["inductor"]["fxgraph_cache_hit"],
           "fxgraph_cache_misses": counters["inductor"]["fxgraph_cache_miss"],
           "autograd_cache_hits": counters["aot_autograd"]["autograd_cache_hit"],
           "autograd_cache_misses": counters["aot_autograd"]["autograd_cache_miss"],
           # seconds: compiling each frame, and the backward graphs, which compile at their first call
           "compile_time_s": sum(sum(compilation_time_metrics.get(key, ()))
                                 for key in ("_compile.compile_inner", "backward._backward_impl"))}
    since = since or {}
    return {key: round(value - since.get(key, 0), 3) if key == "compile_time_s" else value - since.get(key, 0)
            for key, value in now.items()}


def keep_average_on(averaging, device) -> None:
    """Where Lightning's WeightAveraging keeps its average, unless given: its `device` argument,
    which only the strategy knows once the callback is built."""
    if averaging._device is None:
        averaging._device = device


def inductor_default_cache_dir() -> str:
    """The directory torch's compile caches use when TORCHINDUCTOR_CACHE_DIR is not set: torch
    writes it into that variable on import, so the variable alone does not say who chose it."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()


def hydra_arguments(argv: list[str]):
    """The command line parsed as `hydra.main` parses it, by Hydra's own parser (kept private in
    hydra 1.3), so that the check before Hydra runs reads every flag as Hydra will."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(argv)
