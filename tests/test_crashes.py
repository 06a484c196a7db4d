"""Failures no signal handler sees: SIGKILL at chosen moments, a full disk, files cut short or
garbled, two runs on one cold cache. Real processes and real faults; the moments are reached
through `files.pause_point` (RESNET_ONECYCLE_PAUSE)."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import ROOT, write_image_tree
from resnet_onecycle.checkpoints import resumable_checkpoint
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.rundir import resume_problem

# 3 epochs of 15 steps, deterministic, pictures and all
COMMON = ["debug=fast", "data.subset=null", "data.test_subset=null", "data.batch_size=4", "trainer.max_epochs=3",
          "trainer.deterministic=true", "callbacks.progress_bar.refresh_rate=0"]
COMPARED = ("test/acc", "test/loss", "train/loss", "train/acc", "val/acc", "val/acc_best", "global_steps", "epochs")


def train_command(*overrides) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "train.py"), *overrides]


def train(*overrides, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(*overrides), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def paused(flag: Path, point: str, *overrides) -> subprocess.Popen:
    """A training process that stops at `point` (kind[:n]); returns once it waits there."""
    env = {**os.environ, "RESNET_ONECYCLE_PAUSE": point, "RESNET_ONECYCLE_PAUSE_FLAG": str(flag)}
    process = subprocess.Popen(train_command(*overrides), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"never reached {point}: {process.communicate()[1][-2000:]}")
        time.sleep(0.02)
    return process


def kill(process: subprocess.Popen, flag: Path) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    flag.unlink()


def status(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["status"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_image_tree(tmp_path_factory.mktemp("crash-data") / "data")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The metrics of the same run, never stopped (in this process: the same numbers, sooner)."""
    from conftest import compose_train
    from resnet_onecycle.tasks import train as train_here

    tmp = tmp_path_factory.mktemp("reference")
    train_here(compose_train([*COMMON, f"data.source={data}", f"paths.data_dir={tmp / 'cache'}"], tmp))
    return json.loads((tmp / "run" / "metrics.json").read_text())


def assert_same_end(run: Path, reference: dict) -> None:
    got = json.loads((run / "metrics.json").read_text())
    assert got["status"] == "completed"
    for key in COMPARED:
        assert got[key] == reference[key], key
    assert got["per_class_accuracy"] == reference["per_class_accuracy"]


@pytest.mark.slow
def test_killed_at_each_moment_a_run_reads_running_and_resumes_to_the_same_end(tmp_path, data, reference):
    """SIGKILL while the cache is written, while a checkpoint is written (training goes on beside
    the writer), while the pictures are written and while the final metrics.json is written; after
    each, resume= goes on from the newest complete checkpoint (from the start when there is none),
    and the run ends as one that never stopped."""
    run, cache, flag = tmp_path / "run", tmp_path / "cache", tmp_path / "paused"
    first = [*COMMON, f"data.source={data}", f"paths.data_dir={cache}", f"hydra.run.dir={run}"]
    resume = [f"resume={run}", f"paths.data_dir={cache}", "callbacks.progress_bar.refresh_rate=0"]

    kill(paused(flag, "cache", *first), flag)  # the cold cache, written but not yet in place
    assert status(run) == "running"
    assert not list(cache.glob("*.npz")) and not (run / "checkpoints").exists()

    process = paused(flag, "checkpoint:2", *resume)  # the second epoch's best-epoch checkpoint
    assert [p.name for p in cache.glob("*.npz")]  # the cache is built by now
    kill(process, flag)
    assert status(run) == "running"
    assert list((run / "checkpoints").glob(".*.partial"))  # the write that was cut short, never mistaken for one
    # last.ckpt is not due yet (callbacks.last_checkpoint.every_s): the first epoch's best is the newest
    assert {p.name for p in (run / "checkpoints").glob("*.ckpt")} == {"epoch000.ckpt"}

    kill(paused(flag, "picture:2", *resume), flag)  # training done, testing done, some pictures written
    assert status(run) == "running" and not (run / "misclassified.png").exists()

    process = paused(flag, "metrics:2", *resume)  # all else written, metrics.json about to say completed
    assert (run / "report.md").is_file() and (run / ".metrics.json.partial").is_file()
    kill(process, flag)
    assert status(run) == "running"


    done = train(*resume)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_end(run, reference)
    assert {p.name for p in run.glob("*.png")} >= {"curves.png", "misclassified.png", "gradcam.png", "confusion_matrix.png"}
    assert not list(run.glob(".*.partial"))


@pytest.mark.slow
def test_killed_between_two_timed_saves_a_run_resumes_from_the_last_and_ends_the_same(tmp_path, data, reference):
    """last.ckpt every step (every_s=0), no best-epoch checkpoint: SIGKILL while the save after the
    37th step is written (mid-way through the last epoch) leaves the 36th step's, and resume= from
    it ends as the run that never stopped, the last epoch's train/acc included."""
    run, flag = tmp_path / "run", tmp_path / "paused"
    first = [*COMMON, f"data.source={data}", f"paths.data_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}",
             "callbacks.last_checkpoint.every_s=0", "callbacks.model_checkpoint=null"]
    kill(paused(flag, "checkpoint:37", *first), flag)
    assert status(run) == "running"
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 36 and saved["epoch"] == 2  # 6 of the last epoch's 15 steps

    done = train(f"resume={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_end(run, reference)


# --- a full disk: a small tmpfs -------------------------------------------------------------------


@contextmanager
def small_disk(path: Path, size: str = "8m"):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the full-disk tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(disk: Path) -> Path:
    """Takes every free byte of `disk` into one file, which is returned."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return ballast


@pytest.mark.slow
def test_a_full_disk_stops_the_run_naming_the_file_and_keeps_the_last_checkpoint(tmp_path, data):
    run, cache, flag = tmp_path / "run", tmp_path / "cache", tmp_path / "paused"
    with small_disk(run / "checkpoints") as disk:
        # the first epoch's checkpoint written, then the disk fills before the next
        process = paused(flag, "checkpoint:1", *COMMON, f"data.source={data}", f"paths.data_dir={cache}",
                         f"hydra.run.dir={run}")
        fill(disk)
        flag.unlink()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1, stderr[-2000:]
        assert f"error: could not write {disk}/" in stderr and "No space left on device" in stderr
        assert "resume=" in stderr and "Traceback" not in stderr
        assert status(run) == "failed" and "No space left on device" in json.loads((run / "metrics.json").read_text())["error"]
        assert not list(disk.glob(".*.partial"))  # nothing a later run could take for a checkpoint
        # the first epoch's, whole (last.ckpt was not due yet)
        assert torch.load(disk / "epoch000.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0
        # what resume= would go on from, once there is space (the kill test above resumes to the end)
        assert resume_problem(str(run)) is None and resumable_checkpoint(run) == disk / "epoch000.ckpt"


def test_writes_on_a_full_disk_name_the_file_and_keep_what_was_there(tmp_path, image_tree):
    import matplotlib.pyplot as plt

    from resnet_onecycle.callbacks import AsyncCheckpointWrites
    from resnet_onecycle.data.cache import cache_path, load_cached, read_cache, source_identity, write_cache
    from resnet_onecycle.files import WriteError, save_figure
    from resnet_onecycle.summary import write_metrics

    with small_disk(tmp_path / "disk", "2m") as disk:
        splits, cache, _ = load_cached(str(image_tree), disk)
        write_metrics(disk, {"status": "completed"})
        writes = AsyncCheckpointWrites()
        writes.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, disk / "epoch000.ckpt")
        writes.wait()
        figure = plt.figure()
        save_figure(figure, disk / "curves.png")
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        fill(disk)

        for name, attempt in (("metrics.json", lambda: write_metrics(disk, {"status": "completed", "test/acc": 0.5})),
                              (cache.name, lambda: write_cache(cache, source_identity(str(image_tree)), splits)),
                              ("curves.png", lambda: save_figure(figure, disk / "curves.png"))):
            with pytest.raises(WriteError, match=f"could not write {disk / name}: No space left on device"):
                attempt()
        # a new best checkpoint that fails, then the removal of the old one that was queued after it
        writes.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}}, disk / "epoch001.ckpt")
        with pytest.raises(WriteError, match=f"could not write {disk / 'epoch001.ckpt'}: No space left on device"):
            writes.remove_checkpoint(disk / "epoch000.ckpt")  # raises here if the write has failed already
            writes.wait()
        plt.close(figure)

        assert {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "ballast"} == before  # all kept, no partial
        assert read_cache(cache_path(str(image_tree), disk), source_identity(str(image_tree)))[0] is not None
        assert torch.equal(torch.load(disk / "epoch000.ckpt", weights_only=True)["state_dict"]["w"], torch.ones(3))


# --- files cut short or garbled -----------------------------------------------------------------


def test_checkpoints_cut_short_and_a_garbled_run_config_are_named_with_what_to_do(tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose_train
    from resnet_onecycle.checkpoints import checkpoint_problem, read_checkpoint
    from resnet_onecycle.inference import Classifier
    from resnet_onecycle.models import MixedResNet
    from resnet_onecycle.rundir import resumed_config
    from resnet_onecycle.tasks import check_task_keys

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_train(["debug=fast"], tmp_path / "composed"), run / ".hydra" / "config.yaml")
    (run / "checkpoints").mkdir()
    state = {f"net.{k}": v for k, v in MixedResNet(0.125).state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0}, run / "checkpoints" / "epoch000.ckpt")
    whole = (run / "checkpoints" / "epoch000.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # cut short, and the newest
    last = run / "checkpoints" / "last.ckpt"

    resumed = resumed_config(compose_train([f"resume={run}"], tmp_path / "again"), [f"resume={run}"], set())
    assert resumed.ckpt_path == str(last)
    with pytest.raises(ConfigError) as refused:
        check_task_keys(resumed)
    message = str(refused.value)
    assert f"{last} cannot be read as a checkpoint" in message and "cut short" in message
    assert f"python src/train.py resume={run} ckpt_path={run / 'checkpoints'}/<one of them>" in message
    assert "(epoch000.ckpt)" in message
    resumed = resumed_config(compose_train([f"resume={run}", f"ckpt_path={run / 'checkpoints' / 'epoch000.ckpt'}"],
                                           tmp_path / "again"), [f"resume={run}"], set())
    check_task_keys(resumed)  # the best one is whole: resume goes on from it
    with pytest.raises(ConfigError, match=f"ckpt_path=.*: give a checkpoint of that run, under {run}/checkpoints/"):
        resumed_config(compose_train([f"resume={run}", f"ckpt_path={tmp_path / 'elsewhere.ckpt'}"], tmp_path / "again"),
                       [], set())
    alone = tmp_path / "alone" / "checkpoints" / "last.ckpt"
    alone.parent.mkdir(parents=True)
    alone.write_bytes(whole[:100])
    assert f"there is no other checkpoint: delete it, and resume={tmp_path / 'alone'} starts the run again" in \
        checkpoint_problem(alone, str(tmp_path / "alone"))

    for load in (read_checkpoint, Classifier.load):  # eval.py; predict.py, export.py and the app
        with pytest.raises(ConfigError, match=f"{last} cannot be read as a checkpoint .* ckpt_path={run / 'checkpoints'}/<one"):
            load(last)
    assert Classifier.load(run / "checkpoints" / "epoch000.ckpt").net is not None

    auto = compose_train(["debug=fast", "model.scheduler.max_lr=auto"], tmp_path / "composed")
    OmegaConf.save(auto, run / ".hydra" / "config.yaml")
    (run / "lr_find.json").write_text('{"suggested_max_lr": 0.0')  # cut short
    with pytest.raises(ConfigError, match=f"{run / 'lr_find.json'} cannot be read .* delete it"):
        resumed_config(compose_train([f"resume={run}"], tmp_path / "again"), [], set())

    for garbled in ("model: {net: [unclosed\n", "just a sentence\n"):
        (run / ".hydra" / "config.yaml").write_text(garbled)
        for attempt in (lambda: resumed_config(compose_train([f"resume={run}"], tmp_path / "again"), [], set()),
                        lambda: Classifier.load(run / "checkpoints" / "epoch000.ckpt")):
            with pytest.raises(ConfigError, match=f"{run / '.hydra' / 'config.yaml'} cannot be read as the run's config"):
                attempt()


# --- two runs at once on one cold cache -------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_on_a_cold_cache_decode_it_once_and_both_train_on_the_whole_of_it(tmp_path, data):
    """The first run stops with its cache written beside the target, not yet moved; the second
    starts meanwhile. It must neither read the unfinished file nor decode again: it waits for the
    first's, then both train on the same data."""
    from resnet_onecycle.data.cache import cache_path, read_cache, source_identity

    cache, flag = tmp_path / "cache", tmp_path / "paused"
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*COMMON, f"data.source={data}", f"paths.data_dir={cache}", "trainer.max_epochs=2", "analysis.enabled=false"]
    first = paused(flag, "cache", *args, f"hydra.run.dir={one}")
    second = subprocess.Popen(train_command(*args, f"hydra.run.dir={two}"), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (two / "metrics.json").exists() and time.time() < deadline:  # its checks passed: the data comes next
        time.sleep(0.05)
    time.sleep(3)
    assert not list(cache.glob("*.npz"))  # the second did not write one of its own meanwhile
    flag.unlink()
    for process in (first, second):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (one, two)]
    assert [m["status"] for m in metrics] == ["completed", "completed"]
    assert metrics[0]["train_images"] == metrics[1]["train_images"] == 60
    assert metrics[0]["test/acc"] == metrics[1]["test/acc"]  # the same data, the same run
    assert ["Decoding" in (run / "train.log").read_text() for run in (one, two)] == [True, False]
    assert [p.name for p in cache.glob("*.npz")] == [cache_path(str(data), cache).name]
    assert not list(cache.glob(".*.partial"))
    assert read_cache(cache_path(str(data), cache), source_identity(str(data)))[0] is not None


def test_a_full_disk_under_a_library_write_is_named_too(tmp_path):
    """A write that is not the project's own (TensorBoard's events, a log) fails with a bare OSError."""
    import errno

    from resnet_onecycle.cli import as_user_error
    from resnet_onecycle.files import WriteError

    named = as_user_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "events")), tmp_path)
    unnamed = as_user_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert isinstance(named, WriteError) and f"could not write {tmp_path / 'events'}: No space left" in str(named)
    assert isinstance(unnamed, WriteError) and f"could not write {tmp_path}: No space left" in str(unnamed)
    other = OSError(errno.EIO, "Input/output error")
    assert as_user_error(other, tmp_path) is other  # anything else keeps its traceback


def test_a_sweep_summary_lists_a_killed_job_as_not_completed(tmp_path):
    from resnet_onecycle.sweep_summary import collect, write_markdown

    for job, metrics in enumerate(({"status": "completed", "test/acc": 0.5}, {"status": "running", "pid": 1})):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps(metrics))
    swept, rows = collect(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "running"]
    write_markdown(tmp_path / "summary.md", tmp_path, swept, rows)
    text = (tmp_path / "summary.md").read_text()
    assert "2 jobs, 1 completed" in text and "- job 1 (running)" in text


def test_a_read_only_disk_is_named_with_its_fix(tmp_path, image_tree):
    from resnet_onecycle.data.cache import load_cached
    from resnet_onecycle.files import WriteError
    from resnet_onecycle.summary import write_metrics

    with small_disk(tmp_path / "disk", "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(WriteError, match=f"could not write {disk / 'metrics.json'}: Read-only file system.*"
                                             "make that folder writable, or write elsewhere"):
            write_metrics(disk, {"status": "running"})
        with pytest.raises(WriteError, match=r"could not write .*/\.cifar10-.*\.npz\.lock: Read-only file system"):
            load_cached(str(image_tree), disk)  # the cache's lock, before any decoding
