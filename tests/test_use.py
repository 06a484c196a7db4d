"""Using a trained model: any image as input, predict.py, ONNX export, the app (API and browser)."""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONFIGS, ROOT, compose_train, write_image_tree
from resnet_onecycle.checkpoints import latest_trained_checkpoint
from resnet_onecycle.data.augment import normalize
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.inference import Classifier, ImageError, load_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A debug run on class-coloured images: its checkpoint, data and run dir."""
    from resnet_onecycle.tasks import train

    tmp = tmp_path_factory.mktemp("trained")
    tree = write_image_tree(tmp / "data", n_train=13, n_test=5)
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp / 'cache'}", "data.subset=null",
                         "data.test_subset=null", "data.batch_size=26", "callbacks.progress_bar.refresh_rate=0"], tmp)
    train(cfg)
    (tmp / "run" / ".hydra").mkdir(exist_ok=True)  # as Hydra saves it: the run dir's config
    (tmp / "run" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return tmp, tree, tmp / "run" / "checkpoints" / "last.ckpt"


def compose_task(name, overrides, out):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=[f"paths.root_dir={out}", f"paths.output_dir={out}/run", *overrides])


def test_any_image_becomes_the_models_input(tmp_path):
    def saved(image, name, **kwargs):
        path = tmp_path / name
        image.save(path, **kwargs)
        return load_image(path)

    kinds = {
        "gray.png": Image.new("L", (40, 40), 128), "palette.gif": Image.new("P", (32, 32), 3),
        "cmyk.jpg": Image.new("CMYK", (50, 50), (0, 255, 255, 0)), "rgb_large.png": Image.new("RGB", (300, 200), "green"),
        "sixteen.png": Image.fromarray(np.full((33, 33), 65535, np.uint16)),
    }
    for name, image in kinds.items():
        x = saved(image, name)
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8, name
    assert saved(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "clear.png").min() == 255  # transparent: over white
    assert saved(kinds["sixteen.png"], "sixteen2.png").min() == 255  # 16-bit white is 8-bit white
    assert saved(kinds["cmyk.jpg"], "red.jpg")[0].float().mean() > 200  # CMYK (0, 255, 255, 0) is red
    # left half red, right half blue, stored with EXIF orientation 6: shown rotated 90 degrees clockwise
    stored = Image.new("RGB", (64, 64), "red")
    stored.paste(Image.new("RGB", (32, 64), "blue"), (32, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = saved(stored, "exif.jpg", exif=exif.tobytes(), quality=95)
    assert rotated[0, :12].float().mean() > 200 and rotated[2, -12:].float().mean() > 200  # red on top, blue below
    # not square: the central square, not a stretched whole
    wide = Image.new("RGB", (96, 32), "black")
    wide.paste(Image.new("RGB", (32, 32), "white"), (32, 0))
    assert saved(wide, "wide.png").float().mean() > 250
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match=r"notes\.txt: not a readable image"):
        load_image(tmp_path / "notes.txt")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:40])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


def test_probabilities_are_the_modules_own_softmax(trained):
    from resnet_onecycle.checkpoints import read_checkpoint

    tmp, tree, ckpt = trained
    classifier = Classifier.load(ckpt)
    cfg = compose_train(["debug=fast"], tmp / "other")
    module = instantiate(cfg.model)
    module.load_state_dict(read_checkpoint(ckpt)["state_dict"])
    images = torch.stack([load_image(p) for p in sorted((tree / "test").rglob("*.png"))[:12]])
    with torch.no_grad():
        expected = module.classifier.eval()(normalize(images)).softmax(1)
    assert torch.allclose(classifier.probabilities(images), expected, atol=1e-6)
    top = classifier.top_k(classifier.probabilities(images), 99)  # capped at the 10 classes
    assert len(top[0]) == 10 and top[0][0][1] >= top[0][1][1]
    maps = classifier.gradcam(images[:3], [0, 1, 2], "layer2")
    assert maps.shape == (3, 32, 32) and maps.std() > 0 and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(ConfigError, match="layer='fc'"):
        classifier.gradcam(images[:1], [0], "fc")


def test_without_a_checkpoint_path_the_newest_is_used_or_the_error_says_how_to_train(trained, tmp_path):
    tmp, _, ckpt = trained
    assert latest_trained_checkpoint(tmp) == ckpt
    with pytest.raises(ConfigError, match=r"no checkpoints/last\.ckpt under .*python src/train\.py"):
        latest_trained_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"ckpt_path='.*nope\.ckpt': no such checkpoint file"):
        Classifier.load(tmp_path / "nope.ckpt")


def fake_run(log_dir: Path, name: str, mtime: float, **metrics) -> Path:
    """A run dir with a last.ckpt (its content unread here) and, with `metrics`, a metrics.json."""
    ckpt = log_dir / "train" / "runs" / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    if metrics:
        (ckpt.parent.parent / "metrics.json").write_text(json.dumps(metrics))
    os.utime(ckpt, (mtime, mtime))
    return ckpt


def test_without_a_checkpoint_path_the_newest_completed_run_is_chosen(tmp_path, capsys, caplog):
    completed = fake_run(tmp_path, "a", 1000, status="completed", **{"test/acc": 0.8712})
    fake_run(tmp_path, "b", 2000, status="interrupted", epochs=0)  # newer, barely trained
    fake_run(tmp_path, "c", 3000)  # newest, no metrics.json: not known to be finished
    assert latest_trained_checkpoint(tmp_path) == completed
    printed = capsys.readouterr().out
    assert "newest completed run's" in printed and "test/acc 0.8712" in printed
    only = tmp_path / "only"
    unfinished = fake_run(only, "b", 2000, status="interrupted", epochs=1)
    with caplog.at_level("WARNING"):
        assert latest_trained_checkpoint(only) == unfinished
    assert "no run under" in caplog.text and "interrupted after 1 epoch" in caplog.text


@pytest.mark.parametrize("override, named", [("top_k=abc", "top_k='abc'"), ("top_k=0", "top_k=0"), ("top_k=11", "top_k=11"),
                                             ("batch_size=0", "batch_size=0"), ("gradcam=true", "gradcam_layer='fc'"),
                                             ("device=abc", "device='abc'")])
def test_predict_refuses_bad_values_by_key(trained, tmp_path, override, named):
    from resnet_onecycle.tasks import predict

    _, tree, ckpt = trained
    image = sorted((tree / "test").rglob("*.png"))[0]
    cfg = compose_task("predict", [f"ckpt_path={ckpt}", f"inputs={image}", "gradcam_layer=fc", override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(named)):
        predict(cfg)
    assert not (tmp_path / "run" / "predictions.csv").exists()  # refused before any work


@pytest.mark.parametrize("port", ["abc", -5, 0, 70000])
def test_a_port_that_is_no_port_is_refused_by_key(port):
    from resnet_onecycle.app import check_port

    with pytest.raises(ConfigError, match=re.escape(f"app.port={port!r}")):
        check_port("127.0.0.1", port)


@pytest.mark.parametrize("opset, tolerance, named", [(7, 1e-5, "opset=7"), (999, 1e-5, "opset=999"), (18, 0, "tolerance=0")])
def test_export_refuses_bad_values_by_key_before_any_work(tmp_path, opset, tolerance, named):
    pytest.importorskip("onnx")
    from resnet_onecycle.onnx_export import export_checked

    with pytest.raises(ConfigError, match=re.escape(named)):
        export_checked(None, None, tmp_path, opset, tolerance, True, None)  # the classifier is not touched
    assert not list(tmp_path.iterdir())


def test_predict_writes_tables_and_overlays_and_lists_unreadable_files(trained, tmp_path):
    from resnet_onecycle.tasks import predict

    tmp, tree, ckpt = trained
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, source in enumerate(sorted((tree / "test").rglob("*.png"))[:3]):
        shutil.copy(source, folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "readme.txt").write_text("hello")
    cfg = compose_task("predict", [f"ckpt_path={ckpt}", f"inputs={folder}", "gradcam=true", "top_k=2"], tmp_path)
    from resnet_onecycle.classify_files import SomeUnreadable

    with pytest.raises(SomeUnreadable, match="2 of 5 files"):  # raised once the readable files are done
        predict(cfg)
    out = tmp_path / "run"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["images"] == 3 and summary["unreadable"] == 2
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "file,label_1,probability_1,label_2,probability_2" and len(rows) == 4
    found = json.loads((out / "predictions.json").read_text())
    assert {Path(u["file"]).name for u in found["unreadable"]} == {"broken.png", "readme.txt"}
    probabilities = Classifier.load(ckpt).probabilities(torch.stack([load_image(folder / f"{i}.png") for i in range(3)]))
    for row, p in zip(found["predictions"], probabilities):
        assert row["top_k"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-6)
    assert len(list((out / "gradcam").glob("*.png"))) == 3


@pytest.mark.slow
def test_predict_script_exits_1_after_predicting_the_readable_files(trained, tmp_path):
    tmp, tree, ckpt = trained
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes((next((tree / "test").rglob("*.png"))).read_bytes())
    (tmp_path / "in" / "b.txt").write_text("no")
    result = subprocess.run([sys.executable, "src/predict.py", f"ckpt_path={ckpt}", f"inputs={tmp_path / 'in'}",
                             f"paths.log_dir={tmp_path / 'logs'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "a.png" in result.stdout and "b.txt  unreadable" in result.stdout and "Traceback" not in result.stderr
    from resnet_onecycle.classify_files import input_files

    with pytest.raises(ConfigError, match=r"inputs='.*none': no such file.*give inputs=<image file \| folder \| glob>"):
        input_files(str(tmp_path / "none"))
    assert [p.name for p in input_files(str(tmp_path / "in" / "*.png"))] == ["a.png"]  # a glob


@pytest.mark.slow
def test_onnx_export_agrees_with_torch_at_batch_1_and_7(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from resnet_onecycle.tasks import export

    tmp, tree, ckpt = trained
    cfg = compose_task("export", [f"ckpt_path={ckpt}", "check_images=7", "measure_speed=false"], tmp_path)
    export(cfg)  # on the run's own test data, from its cache
    assert not (tmp_path / "data").exists()  # not decoded again under this command's default data dir
    record = json.loads((tmp_path / "run" / "model.export.json").read_text())
    assert [c["images"] for c in record["check"]["batches"]] == [1, 7]
    assert all(c["max_abs_logit_difference"] <= 1e-5 * max(1, c["max_abs_logit"]) and c["top1_agreement"] == 1.0
               for c in record["check"]["batches"])
    assert record["input"]["shape"] == ["batch", 3, 32, 32] and len(record["classes"]) == 10
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(["logits"], {"images": np.random.rand(5, 3, 32, 32).astype(np.float32)})[0].shape == (5, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(trained, tmp_path_factory):
    pytest.importorskip("gradio")
    tmp, tree, ckpt = trained
    port = free_port()
    logs = tmp_path_factory.mktemp("app")
    process = subprocess.Popen([sys.executable, "src/app.py", f"ckpt_path={ckpt}", f"app.port={port}", f"data_source={tree}",
                                f"paths.data_dir={tmp / 'cache'}", f"paths.log_dir={logs}"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(process.stdout.read()[-3000:])
            time.sleep(0.5)
    yield url, port, tree, ckpt
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_the_app_classifies_like_predict_through_its_api(app_url, tmp_path):
    from gradio_client import Client, handle_file

    url, _, tree, ckpt = app_url
    image = next((tree / "test").rglob("*.png"))
    client = Client(url, verbose=False)
    label, table, gallery, message = client.predict([handle_file(str(image))], 3, True, "layer2", 0.5,
                                                    "the predicted class", api_name="/classify")
    expected = Classifier.load(ckpt).top_k(Classifier.load(ckpt).probabilities(load_image(image)[None]), 3)[0]
    assert label["label"] == expected[0][0]
    assert [c["label"] for c in label["confidences"]] == [c for c, _ in expected]
    assert [c["confidence"] for c in label["confidences"]] == pytest.approx([p for _, p in expected], abs=1e-6)
    with Image.open(gallery[0]["image"]) as overlay:
        assert overlay.size == Image.open(image).size and np.asarray(overlay).std() > 0
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    *_, message = client.predict([handle_file(str(text))], 3, True, "layer2", 0.5, "the predicted class", api_name="/classify")
    assert "notes.txt: not a readable image" in message
    label, *_ = client.predict([handle_file(str(image))], 1, False, "layer2", 0.5, "the predicted class", api_name="/classify")
    assert label["label"] == expected[0][0]  # still serving
    pictures, heat, note = client.predict(5, "any", "any", api_name="/mistakes")
    assert len(pictures) == len(heat) <= 5 and "misclassified" in note


@pytest.mark.slow
def test_a_port_in_use_or_a_missing_checkpoint_is_refused_before_launch(app_url, tmp_path):
    pytest.importorskip("gradio")
    _, port, tree, ckpt = app_url
    busy = subprocess.run([sys.executable, "src/app.py", f"ckpt_path={ckpt}", f"app.port={port}",
                           f"paths.log_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert busy.returncode == 2 and f"app.port={port}" in busy.stderr and "Traceback" not in busy.stderr
    from resnet_onecycle.tasks import app

    with pytest.raises(ConfigError, match="no such checkpoint file"):  # before any server starts
        app(compose_task("app", [f"ckpt_path={tmp_path / 'x.ckpt'}", f"app.port={free_port()}"], tmp_path))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None or shutil.which("chromedriver") is None,
                    reason="no Chromium and chromedriver here (.ci/run installs Debian's chromium and chromium-driver)")
@pytest.mark.slow
def test_the_app_in_a_real_browser_shows_the_predicted_label(app_url, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, tree, ckpt = app_url
    image = next((tree / "test").rglob("*.png"))
    expected = Classifier.load(ckpt).top_k(Classifier.load(ckpt).probabilities(load_image(image)[None]), 1)[0][0][0]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        driver.find_elements(By.CSS_SELECTOR, "input[type=file]")[0].send_keys(str(image))
        time.sleep(2)
        driver.execute_script("arguments[0].click();", driver.find_element(By.ID, "classify"))
        wait.until(lambda d: expected in d.find_element(By.ID, "prediction").text)
        time.sleep(1)
        shot = tmp_path / "app.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("APP_SCREENSHOT"):  # how docs/app.png is made: APP_SCREENSHOT=docs/app.png pytest -k browser
            shutil.copy(shot, ROOT / os.environ["APP_SCREENSHOT"])
    finally:
        driver.quit()


def test_a_missing_extra_names_its_install_command(trained, tmp_path, monkeypatch):
    from resnet_onecycle.tasks import app, export

    _, _, ckpt = trained
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"needs the `app` extra \(gradio is not installed\): pip install -e '\.\[app\]'"):
        app(compose_task("app", [f"ckpt_path={ckpt}"], tmp_path))
    with pytest.raises(ConfigError, match=r"needs the `export` extra \(onnxruntime is not installed\)"):
        export(compose_task("export", [f"ckpt_path={ckpt}"], tmp_path))


def test_bad_values_of_the_model_commands_name_the_key(trained, tmp_path, monkeypatch):
    from resnet_onecycle import onnx_export
    from resnet_onecycle.tasks import export, predict

    tmp, tree, ckpt = trained
    with pytest.raises(ConfigError, match=r"inputs is missing: give inputs=<image file \| folder \| glob>"):
        predict(compose_task("predict", [f"ckpt_path={ckpt}"], tmp_path))
    with pytest.raises(ConfigError, match=r"check_images=1 must be a whole number >= 2"):
        export(compose_task("export", [f"ckpt_path={ckpt}", "check_images=1"], tmp_path))
    pytest.importorskip("onnxruntime")
    real = onnx_export.compare
    monkeypatch.setattr(onnx_export, "compare", lambda *a: {**real(*a), "max_abs_logit_difference": 1.0})  # a bad file
    cfg = compose_task("export", [f"ckpt_path={ckpt}", f"data_source={tree}", f"paths.data_dir={tmp / 'cache'}",
                                  "check_images=3", "measure_speed=false"], tmp_path / "bad")
    with pytest.raises(onnx_export.ExportMismatch, match=r"model\.onnx: onnxruntime disagrees with PyTorch beyond tolerance"):
        export(cfg)
    assert json.loads((tmp_path / "bad" / "run" / "model.export.json").read_text())["status"] == "mismatch"
