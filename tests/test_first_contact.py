"""A command-line mistake ends in one `error:` paragraph with exit code 2, naming the key and the fix."""

import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from conftest import ROOT
from resnet_onecycle.cli import command_line_problem
from resnet_onecycle.framework import hydra_arguments


def command_line_error(config: str, args: list[str]) -> str | None:
    return command_line_problem(config, hydra_arguments(args))


def train(*overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "src/train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Error in call to target" not in result.stderr
    assert result.stderr.strip().startswith("error:") or "\nerror: " in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.mark.parametrize("config, args, words", [
    ("train", ["model.scheduler.max_lrr=0.05"], ["model.scheduler.max_lrr is not a config key",
                                                  "did you mean model.scheduler.max_lr?"]),
    ("train", ["-m", "model.scheduler.max_lr=0.01,0.02", "data.batchsize=3"], ["did you mean data.batch_size?"]),
    ("train", ["+model.scheduler.max_lrr=0.05"], ["takes no argument 'max_lrr'", "did you mean model.scheduler.max_lr?"]),
    ("train", ["trainer=gpux"], ["trainer=gpux: no such option in trainer", "cpu, ddp, default, gpu"]),
    ("train", ["experiment=fastest"], ["choose one of: cpu_fast, cpu_quick, fast, fast_15s, fast_best, original"]),
    ("train", ["data.batch_size"], ["write key=value"]),
    ("eval", ["ckpt_path=x.ckpt", "model.net.widht=0.25"], ["did you mean model.net.width?"]),
    ("find_lr", ["lr_find.maxlr=5"], ["did you mean lr_find.max_lr?"]),
    ("train", ["-m", "model.scheduler.max_lr=0.01,0.02", "--cfg", "job"], ["-m and --cfg together", "drop -m"]),
    ("train", ["-cn", "eval", "model.net.widht=0.25"], ["did you mean model.net.width?"]),  # Hydra's flags count
    ("train", ["--config-name=find_lr", "lr_find.maxlr=5"], ["did you mean lr_find.max_lr?"]),
])
def test_command_line_mistakes_name_the_key_and_the_fix(config, args, words):
    problem = command_line_error(config, args)
    assert problem is not None
    for word in words:
        assert word in problem, (word, problem)


@pytest.mark.parametrize("args", [["-m", "model.scheduler.max_lr=0.01,0.02", "+trainer.max_time=00:00:01:00"],
                                  ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "experiment=cpu_fast"],
                                  ["--help"], ["experiment=fast", "--cfg", "job", "--resolve"]])
def test_good_command_lines_pass_the_check(args):
    assert command_line_error("train", args) is None


def test_a_config_dir_given_with_cd_is_searched_too(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ntrainer:\n  max_epochs: 3\n")
    assert command_line_error("train", ["-cd", str(tmp_path), "experiment=mine"]) is None
    assert "no such option in experiment" in command_line_error("train", ["experiment=mine"])


def test_one_check_names_the_key_the_value_and_what_it_must_be():
    from resnet_onecycle.errors import ConfigError, check

    check("a", 3, low=1)
    check("a", None, low=1, optional=True)
    check("b", 0.5, float, low=0, below=1)
    check("c", "flip", choices=("none", "flip"))
    for value, kind, bounds, words in [
        (True, int, {}, ["a=True", "whole number"]),        # a bool is no number
        (2.5, int, {}, ["a=2.5", "whole number"]),
        ("2", float, {}, ["a='2'", "a number"]),
        (0, float, {"above": 0}, ["a=0", "> 0"]),
        (1, float, {"low": 0, "below": 1}, ["a=1", ">= 0 and < 1"]),
        (None, int, {"low": 1}, ["a=None", ">= 1"]),
    ]:
        with pytest.raises(ConfigError) as raised:
            check("a", value, kind, fix="e.g. a=1", **bounds)
        for word in [*words, "e.g. a=1"]:
            assert word in str(raised.value), (word, str(raised.value))
    with pytest.raises(ConfigError, match=r"c='wrap': use none, flip"):
        check("c", "wrap", choices=("none", "flip"))


def probed(script: str, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """`python src/<script> ...`, and whether it imported Lightning (which takes seconds)."""
    probe = ("import atexit, runpy, sys; atexit.register(lambda: print('lightning imported:', 'lightning' in sys.modules));"
             f" sys.argv[0] = 'src/{script}'; runpy.run_path('src/{script}', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    *printed, last = result.stdout.strip().split("\n")
    assert last.startswith("lightning imported:"), result.stdout[-2000:]
    return subprocess.CompletedProcess(result.args, result.returncode, "\n".join(printed), result.stderr), \
        last.endswith("True")


def test_a_command_line_mistake_is_one_error_line_and_exit_2_before_any_run_dir(tmp_path):
    result, imported = probed("train.py", "model.scheduler.max_lrr=0.05", f"paths.log_dir={tmp_path}")
    refused(result, "did you mean model.scheduler.max_lr?")
    assert result.stderr.count("\n") == 1 and not any(tmp_path.iterdir())  # one line; no run dir made
    assert not imported  # named before the long imports


def test_a_recipe_prints_without_running_or_importing_lightning(tmp_path):
    result, imported = probed("train.py", "experiment=fast", f"paths.log_dir={tmp_path}", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["scheduler"]["max_lr"] == 0.4 and printed["trainer"]["max_epochs"] == 24
    assert not imported and not any(tmp_path.iterdir())


@pytest.mark.parametrize("script, usage", [
    ("train.py", "python src/train.py [group=option ...]"), ("eval.py", "python src/eval.py ckpt_path="),
    ("find_lr.py", "python src/find_lr.py"), ("predict.py", "python src/predict.py inputs="),
    ("app.py", "python src/app.py"), ("export.py", "python src/export.py")])
def test_each_scripts_help_opens_with_what_it_does_and_how_to_call_it(script, usage):
    result, imported = probed(script, "--help")
    assert result.returncode == 0 and not imported, result.stderr[-2000:]
    header = result.stdout.split("== Configuration groups ==")[0]
    assert usage in header and "powered by Hydra" not in header
    assert f"task_name: {script.removesuffix('.py')}" in result.stdout  # the config follows


@pytest.mark.slow
def test_bad_values_inside_components_are_the_projects_error_not_hydras(tmp_path, image_tree):
    result = train("debug=fast", "model.compile=fast", f"data.source={image_tree}", f"paths.log_dir={tmp_path}",
                   f"paths.data_dir={tmp_path / 'cache'}")
    refused(result, "model.compile='fast'", "reduce-overhead")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: trainer=gpu works here")
@pytest.mark.slow
def test_a_gpu_trainer_without_a_gpu_names_the_fix(tmp_path, image_tree):
    result = train("trainer=gpu", f"data.source={image_tree}", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path / 'c'}")
    refused(result, "needs a CUDA GPU", "trainer=default")


@pytest.mark.slow
def test_hydra_full_error_still_shows_the_whole_trace(tmp_path):
    result = train("model.scheduler.max_lrr=0.05", f"paths.log_dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "max_lrr" in result.stderr


class Crash(L.Callback):
    """A warning, then a crash that no check foresees, at the first training step."""

    def on_train_batch_start(self, *args) -> None:
        import warnings

        warnings.warn("the disk is slow", UserWarning)
        raise RuntimeError("the disk went away")


@pytest.mark.slow
def test_a_refused_run_leaves_no_dir_and_a_crash_says_so_in_metrics_and_the_log(tmp_path, image_tree):
    common = ["debug=fast", "data.subset=null", "data.test_subset=null", "data.batch_size=8", f"data.source={image_tree}",
              f"paths.data_dir={tmp_path / 'cache'}"]
    result = train(*common, "model.compile=fast", f"paths.log_dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "model.compile='fast'" in result.stderr
    assert not list((tmp_path / "a" / "train" / "runs").iterdir())  # a refused command leaves no run dir

    # 8 steps an epoch against a logging interval of 50: a warning of Lightning's that says nothing here
    crash = ["+callbacks.crash._target_=test_first_contact.Crash", f"paths.log_dir={tmp_path / 'b'}",
             "trainer.log_every_n_steps=50"]
    result = train(*common, *crash, env={"PYTHONPATH": str(ROOT / "tests")})
    assert result.returncode == 1 and "the disk went away" in result.stderr
    (run_dir,) = (tmp_path / "b" / "train" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "RuntimeError: the disk went away" in metrics["error"]
    log = (run_dir / "train.log").read_text()
    assert "the disk went away" in log and "the disk is slow" in log  # the error and the warning
    assert "smaller than the logging interval" not in result.stderr + log


def checked_values():
    """(what to build or run with one bad value, the key=value its error must name), one per checked key."""
    from omegaconf import OmegaConf

    from resnet_onecycle.app import serve
    from resnet_onecycle.callbacks import ProgressBar, RunLength, Throughput
    from resnet_onecycle.classify_files import check_settings
    from resnet_onecycle.lr_find import run_lr_find
    from resnet_onecycle.resume import DivergenceGuard

    def app(**bad):
        settings = {"misclassified": 20, "delete_uploads_after_s": 3600, "share": False, "analytics": False, **bad}
        return lambda: serve(None, None, None, None, OmegaConf.create(settings))  # checked before any use

    def range_test(**bad):
        cfg = OmegaConf.create({"lr_find": {"min_lr": 1e-4, "max_lr": 10.0, "num_training": 100,
                                            "early_stop_threshold": 4.0, **bad}})
        return lambda: run_lr_find(cfg, None, "/nowhere")

    return [
        (lambda: RunLength(after_s=-1), "callbacks.run_length.after_s=-1"),
        (lambda: ProgressBar(refresh_s="often"), "callbacks.progress_bar.refresh_s='often'"),
        (lambda: Throughput(peak_flops=0), "callbacks.throughput.peak_flops=0"),
        (lambda: DivergenceGuard(check_every_n_steps=0), "callbacks.divergence_guard.check_every_n_steps=0"),
        (app(misclassified=0), "app.misclassified=0"),
        (app(delete_uploads_after_s=-1), "app.delete_uploads_after_s=-1"),
        (app(share="yes"), "app.share='yes'"),
        (app(analytics=1), "app.analytics=1"),
        (range_test(max_lr=1e-5), "lr_find.max_lr=1e-05"),
        (range_test(num_training=1), "lr_find.num_training=1"),
        (range_test(early_stop_threshold=0.5), "lr_find.early_stop_threshold=0.5"),
        (lambda: check_settings(10, 3, 8, None, 0), "max_pixels=0"),
    ]


@pytest.mark.parametrize("index", range(12))
def test_every_checked_value_is_refused_naming_its_key(index):
    from resnet_onecycle.errors import ConfigError

    build, named = checked_values()[index]
    with pytest.raises(ConfigError) as raised:
        build()
    assert str(raised.value).startswith(named), (named, str(raised.value))


@pytest.mark.parametrize("overwrite, measure_speed, named", [("yes", True, "overwrite='yes'"),
                                                             (False, "fast", "measure_speed='fast'")])
def test_export_settings_name_their_key(tmp_path, overwrite, measure_speed, named):
    pytest.importorskip("onnx")
    from resnet_onecycle.errors import ConfigError
    from resnet_onecycle.onnx_export import export_checked

    with pytest.raises(ConfigError, match=named):
        export_checked(None, None, tmp_path, 18, 1e-5, measure_speed, None, overwrite)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_a_cuda_device_without_a_gpu_says_so():
    from resnet_onecycle.errors import ConfigError
    from resnet_onecycle.inference import device_of

    with pytest.raises(ConfigError, match=r"device='cuda': no CUDA GPU is visible here; use device=cpu"):
        device_of("cuda")
