"""Checkpoints written in the background (AsyncCheckpointWrites): what they hold, and in what order.

Writes are slowed down here, so that every later call finds them still queued.
"""

import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from torch import nn

from resnet_onecycle.callbacks import AsyncCheckpointWrites
from resnet_onecycle.files import WriteError


@pytest.fixture
def slow_writes(monkeypatch):
    # both the file writes here and Lightning's save (which AsyncCheckpointIO, the control, runs)
    for cls, name in ((AsyncCheckpointWrites, "write_file"), (TorchCheckpointIO, "save_checkpoint")):
        monkeypatch.setattr(cls, name, slowed(getattr(cls, name)))


def slowed(save):
    def slow_save(self, *args, **kwargs):
        time.sleep(0.5)
        save(self, *args, **kwargs)

    return slow_save


def test_a_checkpoint_holds_the_values_of_the_moment_it_was_asked_for(tmp_path, slow_writes):
    io = AsyncCheckpointWrites()
    weights = torch.zeros(3)
    io.save_checkpoint({"w": weights}, tmp_path / "a.ckpt")
    weights.add_(1)  # training goes on while the write is queued
    assert not (tmp_path / "a.ckpt").exists()  # the caller did not wait for the write
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.zeros(3))  # the load waited for it
    io.teardown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (copies to pinned memory queued on its stream)")
def test_cuda_tensors_reach_the_writer_on_the_host_with_the_values_of_the_moment(tmp_path, monkeypatch):
    devices, save = [], AsyncCheckpointWrites.write_file

    def recording_save(self, checkpoint, *args, **kwargs):
        devices.append(checkpoint["w"].device)
        save(self, checkpoint, *args, **kwargs)

    monkeypatch.setattr(AsyncCheckpointWrites, "write_file", recording_save)
    io = AsyncCheckpointWrites()
    weights = torch.full((1 << 22,), 7.0, device="cuda")
    torch.cuda._sleep(200_000_000)  # the GPU is busy: the copy to the host waits behind this in the stream
    io.save_checkpoint({"w": weights}, tmp_path / "a.ckpt")
    weights.add_(1)  # the next step, queued after the copy
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.full((1 << 22,), 7.0))
    assert devices == [torch.device("cpu")]  # the writer thread copied nothing from the GPU
    io.teardown()


def test_a_checkpoint_keeps_the_state_dicts_module_versions(tmp_path):
    io = AsyncCheckpointWrites()
    state_dict = nn.BatchNorm2d(3).state_dict()
    io.save_checkpoint({"state_dict": state_dict}, tmp_path / "a.ckpt")
    loaded = io.load_checkpoint(tmp_path / "a.ckpt")["state_dict"]
    assert loaded._metadata == state_dict._metadata == {"": {"version": 2}}
    io.teardown()


def test_writes_and_removals_keep_their_order(tmp_path, slow_writes):
    io = AsyncCheckpointWrites()
    for name in ("a.ckpt", "b.ckpt"):
        io.save_checkpoint({"name": name}, tmp_path / name)
    io.remove_checkpoint(tmp_path / "a.ckpt")  # asked for while a.ckpt's write is still queued
    io.save_checkpoint({"name": "b2"}, tmp_path / "b.ckpt")
    io.teardown()
    assert [p.name for p in tmp_path.iterdir()] == ["b.ckpt"]
    assert torch.load(tmp_path / "b.ckpt")["name"] == "b2"


def test_a_failed_write_is_raised_on_the_next_call(tmp_path):
    io = AsyncCheckpointWrites()
    (tmp_path / "file").write_text("not a folder")
    io.save_checkpoint({"w": torch.zeros(1)}, tmp_path / "file" / "a.ckpt")
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'file' / 'a.ckpt'}"):  # the OSError, named
        io.teardown()
    io.teardown()  # raised once


def test_a_failed_write_leaves_the_checkpoint_before_it_whole(tmp_path):
    io = AsyncCheckpointWrites()
    io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "last.ckpt")
    io.save_checkpoint({"w": torch.ones(3), "not picklable": lambda: None}, tmp_path / "last.ckpt")
    with pytest.raises(Exception, match="pickle"):
        io.wait()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["w"], torch.zeros(3))
    io.teardown()


def test_the_file_is_what_lightnings_own_save_writes(tmp_path):
    checkpoint = {"state_dict": nn.Linear(4, 2).state_dict(), "epoch": 3, "loops": {"fit_loop": {"x": [1, 2]}}}
    io = AsyncCheckpointWrites()
    io.save_checkpoint(checkpoint, tmp_path / "ours.ckpt")
    io.teardown()
    TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "lightnings.ckpt")
    assert (tmp_path / "ours.ckpt").read_bytes() == (tmp_path / "lightnings.ckpt").read_bytes()


def test_a_remote_path_is_written_by_lightnings_fsspec_save():
    fsspec = pytest.importorskip("fsspec")
    io = AsyncCheckpointWrites()
    io.save_checkpoint({"w": torch.arange(3)}, "memory://checkpoints/a.ckpt")
    assert torch.equal(io.load_checkpoint("memory://checkpoints/a.ckpt")["w"], torch.arange(3))
    io.teardown()
    fsspec.filesystem("memory").rm("/checkpoints", recursive=True)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("epoch_number", float(self.current_epoch))  # improves (max) every epoch

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("io, stale_files_left", [(AsyncCheckpointWrites, False), (AsyncCheckpointIO, True)])
def test_top_k_cleanup_deletes_every_older_best(tmp_path, slow_writes, io, stale_files_left):
    """Lightning's AsyncCheckpointIO (the control) removes at once, before the queued write lands,
    which leaves older 'best' files behind; here they are all gone."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="e{epoch}", monitor="epoch_number", mode="max",
                                 save_top_k=1, auto_insert_metric_name=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint], plugins=[io()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), data, data)
    assert any(p.name != "e2.ckpt" for p in tmp_path.iterdir()) == stale_files_left
    assert (tmp_path / "e2.ckpt").exists()


@pytest.mark.parametrize("every_s", [-1, "often", True])
def test_a_bad_last_checkpoint_interval_names_the_key_and_its_range(tmp_path, every_s):
    from resnet_onecycle.callbacks import LastCheckpoint
    from resnet_onecycle.errors import ConfigError

    with pytest.raises(ConfigError, match=r"callbacks\.last_checkpoint\.every_s=.*seconds"):
        LastCheckpoint(str(tmp_path), every_s=every_s)
    assert LastCheckpoint(str(tmp_path), every_s=0).every_s == 0  # after every step
