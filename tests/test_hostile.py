"""Hostile and broken files: no code from data, no file served that was not asked for, each image on its own."""

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import compose_train, write_image_tree
from resnet_onecycle.errors import ConfigError
from resnet_onecycle.inference import ImageError, load_image


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims `width` x `height` pixels and holds almost nothing: a bomb's shape, a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_each_bad_image_is_named_alone(tmp_path):
    bomb = png_header(tmp_path / "bomb.png", 30000, 30000)  # past PIL's own limit: its DecompressionBombError
    with pytest.raises(ImageError, match=r"bomb\.png: not a readable image \(DecompressionBombError"):
        load_image(bomb)
    big = png_header(tmp_path / "big.png", 9000, 9000)  # under PIL's limit, past ours: refused from the header
    with pytest.raises(ImageError, match=r"big\.png: 9000x9000 pixels, past the cap of 64,000,000"):
        load_image(big)
    with pytest.raises(ImageError, match=r"big\.png: 9000x9000 pixels, past the cap of 1,000"):
        load_image(big, max_pixels=1000)
    device = tmp_path / "device.png"
    device.symlink_to("/dev/zero")  # a read of it would never end
    with pytest.raises(ImageError, match=r"device\.png: not a regular file"):
        load_image(device)
    cut = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(ImageError) as raised:
        load_image(cut)
    assert raised.value.reason.count("(") == raised.value.reason.count(")")  # a balanced message
    assert str(tmp_path) not in raised.value.reason  # the reason names no path: the app shows it to others


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    import resnet_onecycle.inference as inference

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (2048, 1536), (10, 120, 200)).save(photo, quality=90)
    seen = []
    real = inference.to_input
    monkeypatch.setattr(inference, "to_input", lambda image: seen.append(image.size) or real(image))
    assert load_image(photo).shape == (3, 32, 32)
    assert seen == [(512, 384)]  # 1/4 of each side: the smallest JPEG scale still 256 wide, 1/16 of the pixels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from resnet_onecycle.tasks import train

    tmp = tmp_path_factory.mktemp("hostile")
    tree = write_image_tree(tmp / "data", n_train=13, n_test=5)
    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp / 'cache'}", "data.subset=null",
                         "data.test_subset=null", "data.batch_size=26", "callbacks.progress_bar.refresh_rate=0",
                         "analysis.enabled=false"], tmp)
    train(cfg)
    return tmp, tree, tmp / "run" / "checkpoints" / "last.ckpt"


def test_predict_streams_in_batches_and_one_bad_file_spoils_no_other(trained, tmp_path, monkeypatch):
    import json

    from test_use import compose_task

    import resnet_onecycle.classify_files as classify_files
    from resnet_onecycle.classify_files import SomeUnreadable
    from resnet_onecycle.tasks import predict

    _, tree, ckpt = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i, image in enumerate(sorted((tree / "test").rglob("*.png"))[:5]):
        (folder / f"{i}.png").write_bytes(image.read_bytes())
    png_header(folder / "bomb.png", 30000, 30000)
    (folder / "device.png").symlink_to("/dev/zero")
    batches = []
    real = classify_files.read_images
    monkeypatch.setattr(classify_files, "read_images", lambda files, cap: batches.append(len(files)) or real(files, cap))
    cfg = compose_task("predict", [f"ckpt_path={ckpt}", f"inputs={folder}", "batch_size=2"], tmp_path)
    with pytest.raises(SomeUnreadable, match="2 of 7 files"):
        predict(cfg)
    assert max(batches) == 2 and sum(batches) == 7  # read two files at a time, never all at once
    rows = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # every good image, the bad ones beside them
    written = json.loads((tmp_path / "run" / "predictions.json").read_text())
    found = {Path(u["file"]).name: u["error"] for u in written["unreadable"]}
    assert "DecompressionBombError" in found["bomb.png"] and found["device.png"] == "not a regular file"


def test_the_app_names_a_bad_upload_by_its_own_name_and_answers_the_others(trained, tmp_path):
    from resnet_onecycle.app import Handlers
    from resnet_onecycle.inference import Classifier

    _, tree, ckpt = trained
    uploads = tmp_path / "gradio" / "3f1c9a"  # where a server keeps an upload: not the user's business
    uploads.mkdir(parents=True)
    good = uploads / "cat.png"
    good.write_bytes(next((tree / "test").rglob("*.png")).read_bytes())
    bomb = png_header(uploads / "bomb.png", 30000, 30000)
    label, table, _, message = Handlers(Classifier.load(ckpt), None).classify([str(good), str(bomb)], 3, False,
                                                                               "layer2", 0.5, "the predicted class")
    assert label and [row[0] for row in table] == ["cat.png"]
    assert message.startswith("bomb.png: not a readable image (DecompressionBombError") and str(uploads) not in message


def test_export_never_replaces_a_file_unasked_nor_writes_through_a_link(tmp_path):
    pytest.importorskip("onnx")
    from resnet_onecycle.files import written_whole
    from resnet_onecycle.onnx_export import export_checked

    (tmp_path / "model.onnx").write_bytes(b"someone's model")
    with pytest.raises(ConfigError, match=r"model\.onnx exists: give overwrite=true"):
        export_checked(None, None, tmp_path, 18, 1e-5, False, None)  # refused before any work
    assert (tmp_path / "model.onnx").read_bytes() == b"someone's model"

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    linked = tmp_path / "out"
    linked.mkdir()
    (linked / "model.onnx").symlink_to(victim)
    (linked / ".model.onnx.partial").symlink_to(victim)  # a link planted where the new file is written first
    with written_whole(linked / "model.onnx", "report") as file:
        file.write(b"the new model")
    assert victim.read_bytes() == b"precious"
    assert not (linked / "model.onnx").is_symlink() and (linked / "model.onnx").read_bytes() == b"the new model"


def test_a_run_dir_that_cannot_be_written_is_one_error_line(tmp_path, monkeypatch, capsys):
    from resnet_onecycle import launching

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exited:
        launching.make_dir_or_exit(str(tmp_path / "run"), "run dir")
    assert exited.value.code == 2 and "cannot create the run dir" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["inputs=my photo (1).jpg"], ["quotes", """'inputs="my photo (1).jpg"'"""]),
    (["inputs=été.jpg"], ["""'inputs="été.jpg"'"""]),
    (["inputs=a,b.jpg"], ["needs -m", """'inputs="a,b.jpg"'"""]),
    (["inputs=my", "photo.jpg"], ["""'inputs="my photo.jpg"'"""]),  # a space the shell split
])
def test_a_value_that_needs_quotes_is_shown_quoted(args, words):
    from test_first_contact import command_line_error

    problem = command_line_error("predict", args)
    for word in words:
        assert word in problem, (word, problem)
    assert command_line_error("predict", ['inputs="my photo (1).jpg"']) is None  # the quoted form passes


def test_the_quoted_form_is_what_hydra_reads(tmp_path):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from resnet_onecycle.overrides import quoted
    for value in ("my photo (1).jpg", "it's é,#.jpg"):
        typed = shlex.split(quoted(f"inputs={value}"))  # as a shell hands it over
        assert OverridesParser.create().parse_overrides(typed)[0].value() == value




@pytest.mark.slow
def test_the_app_serves_only_what_its_pages_show_caps_uploads_and_removes_them(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file
    from test_use import free_port

    from conftest import ROOT
    from resnet_onecycle.tasks import train

    tree = write_image_tree(tmp_path / "data", n_train=13, n_test=5)
    from omegaconf import OmegaConf

    cfg = compose_train(["debug=fast", f"data.source={tree}", f"paths.data_dir={tmp_path / 'cache'}", "data.subset=null",
                         "data.test_subset=null", "data.batch_size=26", "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    train(cfg)
    run, port, uploads = tmp_path / "run", free_port(), tmp_path / "gradio-tmp"
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "train.log").write_text("the run's log\n")
    app = subprocess.Popen([sys.executable, "src/app.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                            f"app.port={port}", f"data_source={tree}", f"paths.data_dir={tmp_path / 'cache'}",
                            f"paths.log_dir={tmp_path / 'logs'}", "app.max_file_size=1mb"], cwd=ROOT,
                           env={**os.environ, "GRADIO_TEMP_DIR": str(uploads)}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"

    def status(path: Path) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert app.poll() is None, app.stdout.read()[-3000:]
                time.sleep(0.5)
        for private in (run / "checkpoints" / "last.ckpt", run / ".hydra" / "config.yaml", run / "train.log",
                        run / "metrics.json", run / "curves.png"):
            assert status(private) in (403, 404), private  # the run dir is not served, pictures included
        (served,) = (tmp_path / "logs" / "app" / "runs").glob("*/served")
        assert status(served / "report" / "curves.png") == 200  # the Model tab's copy is
        assert not list(served.parent.glob("*.ckpt")) and (served / "report" / "report.md").is_file()

        client = Client(url, verbose=False)
        big = tmp_path / "big.png"
        big.write_bytes(b"\0" * 2_000_000)
        with pytest.raises(Exception):  # over app.max_file_size: refused at the upload
            client.predict([handle_file(str(big))], 3, False, "layer2", 0.5, "the predicted class", api_name="/classify")
        image = next((tree / "test").rglob("*.png"))
        label, *_ = client.predict([handle_file(str(image))], 3, False, "layer2", 0.5, "the predicted class",
                                   api_name="/classify")
        assert label["label"]
        assert [p for p in uploads.rglob("*.png") if p.name == image.name]  # the upload is kept while the app runs
    finally:
        app.send_signal(signal.SIGTERM)  # what a service manager sends: a clean stop
        app.wait(timeout=60)
    assert not [p for p in uploads.rglob("*") if p.is_file() and p.name == image.name]  # and removed when it stops
