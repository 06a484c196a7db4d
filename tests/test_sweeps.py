"""Hydra multirun sweeps: job dirs, the sweep summary, failing jobs, the launchers and named sweeps."""

import csv
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT


def sweep(tmp_path, image_tree, *overrides, timeout=600):
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "-m", "debug=fast", f"data.source={image_tree}",
         f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'cache'}",
         "data.subset=null", "data.test_subset=null", "data.batch_size=8", "callbacks.progress_bar.refresh_rate=0",
         "analysis.enabled=false", *overrides],  # no pictures: the sweep's own files are what is tested
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    return result, sweep_dir


def summary_rows(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_job_sweep_gives_two_job_dirs_and_a_summary(tmp_path, image_tree):
    result, sweep_dir = sweep(tmp_path, image_tree, "model.scheduler.max_lr=0.02,0.05")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep_dir / job / "metrics.json").is_file() and (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
    rows = summary_rows(sweep_dir)
    assert [(r["job"], r["model.scheduler.max_lr"], r["status"]) for r in rows] == [
        ("0", "0.02", "completed"), ("1", "0.05", "completed")]
    assert all(0 <= float(r["test_acc"]) <= 1 and float(r["wall_time_s"]) > 0 for r in rows)
    markdown = (sweep_dir / "summary.md").read_text()
    assert "2 jobs, 2 completed, swept: model.scheduler.max_lr" in markdown
    with Image.open(sweep_dir / "summary.png") as image:
        assert image.size[0] >= 600


@pytest.mark.slow
def test_a_failing_job_is_marked_and_the_others_still_run_in_parallel(tmp_path, image_tree):
    result, sweep_dir = sweep(tmp_path, image_tree, "hydra/launcher=parallel", "model.scheduler.max_lr=0.05,-1")
    assert result.returncode == 1
    assert "jobs [1] did not complete" in result.stderr
    rows = summary_rows(sweep_dir)
    assert [r["status"] for r in rows] == ["completed", "refused"]  # a bad value: refused
    assert "model.scheduler.max_lr=-1" in rows[1]["error"]  # the job's error names the value
    assert rows[0]["test_acc"] and not rows[1]["test_acc"]
    assert "Jobs that did not complete" in (sweep_dir / "summary.md").read_text()
    # two jobs at once on a cold cache: one whole cache, nothing half-written left
    assert [p.suffix for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [".npz"]
    assert not list((tmp_path / "cache").glob(".*.partial"))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path, image_tree):
    result, sweep_dir = sweep(tmp_path, image_tree, "hydra/launcher=local", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep_dir / ".submitit").is_dir()  # the jobs went through submitit
    rows = summary_rows(sweep_dir)
    assert [(r["seed"], r["status"]) for r in rows] == [("1", "completed"), ("2", "completed")]
    # each job takes every core (cpus_per_task unset), so they ran one after the other
    first_done = (sweep_dir / "0" / "metrics.json").stat().st_mtime
    second_started = min(p.stat().st_mtime for p in (sweep_dir / "1" / ".hydra").iterdir())
    assert second_started >= first_done


def test_parallel_jobs_share_the_cores_and_local_jobs_run_as_many_as_fit(monkeypatch):
    from omegaconf import OmegaConf

    import resnet_onecycle.launching as launching

    monkeypatch.setattr(launching, "cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launching.threads_per_job(OmegaConf.create({"_target_": joblib, "n_jobs": 2})) == 4
    assert launching.threads_per_job(OmegaConf.create({"_target_": joblib, "n_jobs": -1})) == 1  # a job per core
    assert launching.threads_per_job(OmegaConf.create({"_target_": local, "cpus_per_task": 2})) == 2
    assert launching.threads_per_job(OmegaConf.create({"_target_": local, "cpus_per_task": None})) is None
    for cpus, at_once in ((None, 1), (2, 4), (3, 2)):
        config = OmegaConf.create({"hydra": {"launcher": {"_target_": local, "cpus_per_task": cpus},
                                             "sweeper": {"max_batch_size": None}}})
        OmegaConf.set_readonly(config, True)
        launching.JobsAtOnce().on_multirun_start(config)
        assert config.hydra.sweeper.max_batch_size == at_once
    given = OmegaConf.create({"hydra": {"launcher": {"_target_": local}, "sweeper": {"max_batch_size": 3}}})
    launching.JobsAtOnce().on_multirun_start(given)
    assert given.hydra.sweeper.max_batch_size == 3  # a value given on the command line stays


@pytest.mark.slow
def test_optuna_sweep_runs_trials_and_summarizes_them(tmp_path, image_tree):
    result, sweep_dir = sweep(tmp_path, image_tree, "sweep=optuna", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep_dir / "optimization_results.yaml").is_file()
    rows = summary_rows(sweep_dir)
    assert len(rows) == 2 and {"model.scheduler.max_lr", "model.optimizer.weight_decay"} <= set(rows[0])
    assert all(0.005 <= float(r["model.scheduler.max_lr"]) <= 0.2 for r in rows)
    assert "setup plugin" not in result.stdout + result.stderr  # the database layer's chatter is off


@pytest.mark.parametrize("name, key, values", [("max_lr", "model.scheduler.max_lr", "0.01,0.02,0.05"),
                                               ("epochs", "trainer.max_epochs", "20,40")])
def test_named_sweeps_set_the_sweeper_params(name, key, values):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params[key] == values


def test_num_threads_is_a_whole_number_or_null():
    from omegaconf import OmegaConf

    from resnet_onecycle.errors import ConfigError
    from resnet_onecycle.launching import set_threads

    for bad in (0, "many", 1.5):
        with pytest.raises(ConfigError, match=rf"num_threads={bad!r} must be a whole number >= 1"):
            set_threads(OmegaConf.create({"num_threads": bad}))
