"""The feature encoder behind the encoder Frechet distance: exactpost.nets.encoder (architecture,
loading), exactpost.training.encoder (training), exactpost.inference.zoo.find_encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exactpost.inference import zoo
from exactpost.training import encoder as enc
from exactpost.io.checkpoint import CheckpointError, save_checkpoint

SMALL = dict(channels=(4, 8, 8), batch_size=16, lr=1e-2, warmup=2, progress=False)


def _two_class_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Class 0: noisy reddish images; class 1: noisy bluish images (uint8 8x8; flips and
    shifts keep the classes apart, as a pooled CNN needs)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 2).numpy() * 7 + 3  # label values 3 and 10: remapped to 0, 1
    x = 60 + 40 * torch.rand(n, 3, 8, 8, generator=g)
    left = torch.from_numpy(labels == 3)
    x[left, 0] += 120
    x[~left, 2] += 120
    return x.round().clamp(0, 255).to(torch.uint8), labels


def test_encoder_learns_a_separable_task_and_reports_held_out_accuracy(tmp_path):
    imgs, labels = _two_class_images(64, 0)
    test_imgs, test_labels = _two_class_images(32, 1)
    model, card = enc.train_encoder(imgs, labels, tmp_path / "enc", steps=40, eval_images=test_imgs,
                                    eval_labels=test_labels, **SMALL)
    # chance is 0.5
    assert card["metrics"]["eval_accuracy"] >= 0.9
    assert card["classes"] == [3, 10]
    feats = model.features(enc.to_float(test_imgs))
    assert feats.shape == (32, 8) and torch.isfinite(feats).all()


def test_killed_encoder_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    imgs, labels = _two_class_images(48, 2)
    full, _ = enc.train_encoder(imgs, labels, tmp_path / "full", steps=20, checkpoint_every=5, **SMALL)

    calls = {"n": 0}
    real = enc.F.cross_entropy

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 13:  # killed between the checkpoints at steps 10 and 15
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(enc.F, "cross_entropy", dying)
    with pytest.raises(KeyboardInterrupt):
        enc.train_encoder(imgs, labels, tmp_path / "killed", steps=20, checkpoint_every=5, **SMALL)
    monkeypatch.setattr(enc.F, "cross_entropy", real)
    with pytest.raises(CheckpointError, match="unfinished"):
        enc.load_encoder(tmp_path / "killed")
    resumed, _ = enc.train_encoder(imgs, labels, tmp_path / "killed", steps=20, checkpoint_every=5, **SMALL)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    again, card = enc.train_encoder(imgs, labels, tmp_path / "killed", steps=20, checkpoint_every=5, **SMALL)
    assert card["steps_done"] == 20  # a finished run is loaded, not retrained
    with pytest.raises(CheckpointError, match="other settings"):
        enc.train_encoder(imgs, labels, tmp_path / "killed", steps=30, checkpoint_every=5, **SMALL)


def test_find_and_load_encoder(tmp_path, monkeypatch):
    imgs, labels = _two_class_images(32, 3)
    enc.train_encoder(imgs, labels, tmp_path / "fam" / "encoder", steps=3, **SMALL)
    monkeypatch.setenv("EXACTPOST_MODELS", str(tmp_path))
    found = zoo.find_encoder("fam")
    assert isinstance(found, enc.Encoder) and found.feature_dim == 8
    assert zoo.find_encoder(tmp_path / "fam" / "encoder") is not None
    assert zoo.find_encoder("no-such-family") is None
    save_checkpoint(tmp_path / "other", {"w": torch.zeros(2)}, {"kind": "prior"})
    with pytest.raises(CheckpointError, match="not an exactpost encoder"):
        enc.load_encoder(tmp_path / "other")


def test_bad_labels_are_refused(tmp_path):
    imgs, labels = _two_class_images(8, 4)
    with pytest.raises(ValueError, match="labels"):
        enc.train_encoder(imgs, labels[:5], tmp_path / "e", steps=1, **SMALL)
    with pytest.raises(ValueError, match="two classes"):
        enc.train_encoder(imgs, np.zeros(8, dtype=np.int64), tmp_path / "e", steps=1, **SMALL)


def test_train_encoder_command_and_its_input_errors(tmp_path, capsys):
    from exactpost.app.cli import main

    imgs, labels = _two_class_images(40, 5)
    data = tmp_path / "d.npz"
    np.savez(data, images=imgs.permute(0, 2, 3, 1).numpy(), lab=labels, split=np.arange(40) % 4 == 0)
    out = tmp_path / "enc"
    args = ["train-encoder", "--data", str(data), "--labels", "lab", "--data-split", "0", "--eval-split", "1",
            "--image-size", "8", "--channels", "4,8,8", "--steps", "30", "--batch-size", "16", "--lr", "1e-2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    card = enc.load_encoder(out).card
    assert card["command"].startswith("exactpost train-encoder") and card["data"]["split"] == [0]
    assert card["metrics"]["eval_images"] == 10 and card["training"]["n_train"] == 30
    assert card["wall_time_s"] > 0 and "torch" in card["hardware"]
    assert "held-out accuracy" in capsys.readouterr().out
    assert main(args[:4] + ["nope"] + args[5:]) == 2  # unknown label key
    assert main(args[:2] + [str(tmp_path / "missing.npz")] + args[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("exactpost: error:") for line in err)
