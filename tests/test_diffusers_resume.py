"""Resuming an interrupted diffusers fine-tuning (exactpost.backbones.finetune).

A tiny random UNet2DModel with dropout (so torch's global generator matters) is fine-tuned
6 EPS steps from the CLI, checkpointing every 2 steps:

* uninterrupted;
* stopped by SIGTERM during step 3 (the state is saved after step 3, exit 128 + 15), then
  the same command: it continues from step 3;
* crashed during step 5 (the last checkpoint is step 4; step 5's work is lost), then the same
  command: it continues from step 4;

and both end with the exported weights, the EMA, the optimiser state and the data order equal
bit for bit to the uninterrupted run's. A rerun that changes what the run learns (the seed)
is refused in one line, exit 2.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

pytest.importorskip("diffusers")

from backbone_helpers import save_flat, tiny_unet  # noqa: E402
from exactpost.backbones import finetune as ft  # noqa: E402
from exactpost.app.cli import main  # noqa: E402
from exactpost.io.checkpoint import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    save_flat(root / "prior", tiny_unet(size=8, dropout=0.1))
    return root


def command(env, run: str, *extra: str) -> list[str]:
    return ["finetune", "--init-from", str(env / "prior"), "--objective", "eps", "--data", str(env / "data.npz"),
            "--run-dir", str(env / run), "--steps", "6", "--checkpoint-every", "2", "--batch-size", "4",
            "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "1", "--no-progress", *extra]


def interrupt_at(monkeypatch, call: int, action=None) -> list:
    """Run ``action`` inside the ``call``-th loss evaluation (1-based); returns the list that
    counts the evaluations (the steps trained)."""
    real, calls = ft.loss_on_batch, []

    def loss(model, batch):
        calls.append(1)
        if len(calls) == call:
            action()
        return real(model, batch)

    monkeypatch.setattr(ft, "loss_on_batch", loss)
    return calls


def state(env, run: str) -> dict:
    tensors, card = load_checkpoint(env / run / "state")
    return {"tensors": tensors, "step": card["train_state"]["step"]}


def weights(env, run: str) -> bytes:
    return (env / run / "model" / "diffusion_pytorch_model.safetensors").read_bytes()


def assert_same_run(env, run: str) -> None:
    assert weights(env, run) == weights(env, "full")  # the exported EMA weights, bit for bit
    a, b = state(env, run), state(env, "full")
    assert a["step"] == b["step"] == 6 and a["tensors"].keys() == b["tensors"].keys()
    for k in a["tensors"]:  # weights, EMA, AdamW moments, generators, data order
        assert a["tensors"][k].equal(b["tensors"][k]), k
    card = json.loads((env / run / "model" / "exactpost.json").read_text())
    assert card["steps"] == 6 and card["images_seen"] == 24


def test_uninterrupted_reference(env):
    assert main(command(env, "full")) == 0


def test_stopped_by_sigterm_then_resumed(env, monkeypatch, capsys):
    interrupt_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    rc = main(command(env, "term"))
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM and "rerun the same command to resume" in err
    assert state(env, "term")["step"] == 3  # saved at the step the signal came, not only at 2
    monkeypatch.undo()
    calls = interrupt_at(monkeypatch, 0)
    assert main(command(env, "term")) == 0
    assert len(calls) == 3  # steps 4-6 only: it resumed, it did not start again
    assert_same_run(env, "term")


def test_crashed_then_resumed_from_the_last_checkpoint(env, monkeypatch, capsys):
    def crash():
        raise MemoryError("simulated crash during step 5")

    interrupt_at(monkeypatch, 5, crash)
    assert main(command(env, "crash")) != 0
    capsys.readouterr()
    assert state(env, "crash")["step"] == 4
    monkeypatch.undo()
    calls = interrupt_at(monkeypatch, 0)
    assert main(command(env, "crash")) == 0
    assert len(calls) == 2  # steps 5-6 only
    assert_same_run(env, "crash")


def test_a_rerun_that_changes_the_problem_is_refused(env, capsys):
    rc = main(command(env, "full", "--seed", "7"))
    err = capsys.readouterr().err
    assert rc == 2 and "seed" in err and len(err.strip().splitlines()) == 1


def test_a_finished_run_without_its_state_is_not_trained_again(env, capsys):
    """The finished run's state removed, the same command refuses in one line (exit 2)
    instead of fine-tuning from step 0 over the exported model folder."""
    assert main(command(env, "final", "--steps", "2")) == 0
    for name in ("state.json", "state.safetensors"):
        (env / "final" / name).unlink()
    kept = weights(env, "final")
    capsys.readouterr()
    rc = main(command(env, "final", "--steps", "2"))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "already holds a trained model (model/exactpost.json)" in err
    assert weights(env, "final") == kept and not (env / "final" / "state.json").exists()


def test_bf16_precision_as_in_exactposts_trainer(env):
    from safetensors.torch import load_file

    assert main(command(env, "bf16", "--precision", "bf16", "--steps", "2")) == 0
    assert main(command(env, "fp32", "--precision", "fp32", "--steps", "2")) == 0
    cards = {p: json.loads((env / p / "model" / "exactpost.json").read_text()) for p in ("bf16", "fp32")}
    assert cards["bf16"]["precision"] == "bf16" and cards["fp32"]["precision"] == "fp32"
    a = load_file(str(env / "bf16" / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(env / "fp32" / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == b[k].dtype for k, v in a.items())  # float32 master weights either way
    assert all(bool(v.isfinite().all()) for v in a.values())
    assert any(not v.equal(b[k]) for k, v in a.items())  # bf16 autocast really ran
