"""torch.compile's caches in the run's named directory: another torch's cache is cleared, and a
damaged entry is rebuilt with a warning, never an error (cold and warm runs: test_train.py)."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from resnet_onecycle import compile_cache

# A tiny function through inductor, guarded as the module's net is; prints its result and the
# cache counters. Run in fresh processes: a process keeps what it loaded in memory.
SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import torch
    from torch._dynamo.utils import counters
    from resnet_onecycle import compile_cache
    logging.basicConfig(level=logging.WARNING)
    compile_cache.use(sys.argv[1])
    f = compile_cache.guarded(torch.compile(lambda x: (x * 2 + 1).relu(), dynamic=False))
    print(json.dumps({"out": f(torch.arange(-2.0, 3.0)).tolist(), "hits": counters["inductor"]["fxgraph_cache_hit"],
                      "misses": counters["inductor"]["fxgraph_cache_miss"]}))
""")


def compile_in_new_process(cache) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path):
    cache = tmp_path / "cache"
    cold, _ = compile_in_new_process(cache)
    warm, _ = compile_in_new_process(cache)
    assert cold["misses"] >= 1 and warm["hits"] >= 1 and warm["misses"] == 0
    libraries = list(cache.rglob("*.so"))
    assert libraries
    for library in libraries:  # kernels that no longer load: torch itself raises on these
        library.write_bytes(b"not a library")
    again, stderr = compile_in_new_process(cache)
    assert again["out"] == cold["out"] == [0.0, 0.0, 1.0, 3.0, 5.0]
    assert "has an entry that does not load" in stderr and str(cache) in stderr
    assert all(b"not a library" not in p.read_bytes() for p in cache.rglob("*.so"))  # compiled afresh


def test_a_cache_made_by_another_torch_is_cleared_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache = tmp_path / "cache"
    (cache / "fxgraph").mkdir(parents=True)
    (cache / "fxgraph" / "entry").write_text("old")
    (cache / compile_cache.STAMP).write_text(json.dumps({"torch": "1.0.0", "python": "3.8.0"}))
    with caplog.at_level(logging.WARNING):
        assert compile_cache.use(cache) == cache.resolve()
    assert "was made by" in caplog.text and "1.0.0" in caplog.text
    assert not (cache / "fxgraph").exists()
    assert json.loads((cache / compile_cache.STAMP).read_text())["torch"] == torch.__version__
    caplog.clear()
    compile_cache.use(cache)  # its own: kept, no warning
    assert "was made by" not in caplog.text


def test_a_cache_dir_the_environment_names_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.use(tmp_path / "project") == tmp_path / "mine"
    assert not (tmp_path / "project").exists()
