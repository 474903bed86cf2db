"""Checkpoints: round trip, integrity checks (sha256, truncation, foreign files, card keys,
architecture mismatch), atomic writes, and bit-identical resume of a training run."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from exactpost.nets import EDMPrecond, UNet, UNetConfig
from exactpost.io import checkpoint as ckpt
from exactpost.io.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    pack_state,
    save_checkpoint,
    unpack_state,
)

TINY = UNetConfig(image_size=16, base_width=8, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                  attn_head_channels=8)


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 5, generator=g)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b16": torch.randn(7, generator=g).to(torch.bfloat16),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "scalar": torch.tensor(2.5),
        "view_t": base.t(),  # non-contiguous
        "view_row": base[1],  # shares storage with view_t
    }


def test_round_trip(tmp_path):
    tensors = sample_tensors()
    card = {"config": TINY.to_dict(), "note": "hello", "nested": {"a": [1, 2.5, None, True]}}
    base = save_checkpoint(tmp_path / "sub" / "model", tensors, card)
    w, c = checkpoint_paths(base)
    assert w.exists() and c.exists() and w.name == "model.safetensors" and c.name == "model.json"
    got, got_card = load_checkpoint(tmp_path / "sub" / "model.json")  # either file name works
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    for k, v in card.items():
        assert got_card[k] == json.loads(json.dumps(v))
    assert got_card["format_version"] == ckpt.FORMAT_VERSION and len(got_card["sha256"]) == 64
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]


def test_card_must_be_json_and_tensors_must_be_tensors(tmp_path):
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "m", {"a": torch.zeros(1)}, {"bad": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a torch.Tensor"):
        save_checkpoint(tmp_path / "m", {"a": [1, 2]}, {})
    assert not list(tmp_path.iterdir())


def test_modified_weights_fail_sha(tmp_path):
    save_checkpoint(tmp_path / "m", sample_tensors(), {})
    w, _ = checkpoint_paths(tmp_path / "m")
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01  # flip one bit inside the tensor data, same size
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"m\.safetensors fails its sha256 check") as e:
        load_checkpoint(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_truncated_weights(tmp_path):
    save_checkpoint(tmp_path / "m", sample_tensors(), {})
    w, c = checkpoint_paths(tmp_path / "m")
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"m\.safetensors is \d+ bytes but its card says \d+ \(truncated"):
        load_checkpoint(tmp_path / "m")
    # without the size field the sha256 still catches it
    card = json.loads(c.read_text())
    del card["weights_bytes"]
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "m")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing")
    # a safetensors file without our card
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="missing card .*foreign.json"):
        load_checkpoint(tmp_path / "foreign")
    # random bytes under both names, card not JSON
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
    (tmp_path / "junk.json").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="junk.json is not valid JSON"):
        load_checkpoint(tmp_path / "junk")
    # a JSON card that is not ours
    (tmp_path / "junk.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"lacks required keys \['format_version', 'sha256'\]"):
        load_checkpoint(tmp_path / "junk")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not an object"):
        load_checkpoint(tmp_path / "junk")
    # our card, someone else's weights file put in place
    save_checkpoint(tmp_path / "m", {"a": torch.ones(3)}, {})
    (tmp_path / "m.safetensors").write_bytes((tmp_path / "foreign.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_checkpoint(tmp_path / "m")
    # weights file deleted
    save_checkpoint(tmp_path / "n", {"a": torch.ones(3)}, {})
    (tmp_path / "n.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights file"):
        load_checkpoint(tmp_path / "n")


def test_random_bytes_with_matching_card_are_not_safetensors(tmp_path):
    # a card whose sha256 matches garbage: parsing must still fail cleanly, no unpickling
    save_checkpoint(tmp_path / "m", {"a": torch.ones(3)}, {})
    w, c = checkpoint_paths(tmp_path / "m")
    junk = os.urandom(300)
    w.write_bytes(junk)
    card = json.loads(c.read_text())
    import hashlib

    card.update(sha256=hashlib.sha256(junk).hexdigest(), weights_bytes=len(junk))
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "m")


def test_future_format_version_rejected(tmp_path):
    save_checkpoint(tmp_path / "m", {"a": torch.ones(3)}, {})
    _, c = checkpoint_paths(tmp_path / "m")
    card = json.loads(c.read_text())
    card["format_version"] = ckpt.FORMAT_VERSION + 1
    c.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "m")


def test_expect_mismatch_names_key_and_values(tmp_path):
    pre = EDMPrecond(UNet(TINY, generator=torch.Generator().manual_seed(0)))
    save_checkpoint(tmp_path / "m", dict(pre.state_dict()), {"model": pre.to_dict(), "task": "sr4"})
    load_checkpoint(tmp_path / "m", expect={"model": pre.to_dict(), "task": "sr4"})  # matches (tuples vs lists too)
    other = EDMPrecond(UNet(TINY.replace(base_width=16), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(CheckpointError, match=r"model\.unet\.base_width is 8 but expected 16"):
        load_checkpoint(tmp_path / "m", expect={"model": other.to_dict()})
    with pytest.raises(CheckpointError, match=r"channel_mults\[1\] is 2 but expected 4"):
        load_checkpoint(tmp_path / "m", expect={"model": {**pre.to_dict(), "unet": TINY.replace(channel_mults=(1, 4)).to_dict()}})
    with pytest.raises(CheckpointError, match="task is 'sr4' but expected 'deblur-gauss'"):
        load_checkpoint(tmp_path / "m", expect={"task": "deblur-gauss"})
    with pytest.raises(CheckpointError, match="has no key 'epochs'"):
        load_checkpoint(tmp_path / "m", expect={"epochs": 3})


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    old = {"a": torch.arange(5.0)}
    save_checkpoint(tmp_path / "m", old, {"version": "old"})
    real = ckpt._write_all
    calls = []

    def half_then_fail(f, data):
        calls.append(len(data))
        if len(calls) == 2:  # the card: write half of it, then die
            f.write(data[: len(data) // 2])
            raise OSError("disk full")
        real(f, data)

    monkeypatch.setattr(ckpt, "_write_all", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "m", {"a": torch.zeros(50)}, {"version": "new"})
    monkeypatch.setattr(ckpt, "_write_all", real)
    assert len(calls) == 2
    tensors, card = load_checkpoint(tmp_path / "m")
    assert card["version"] == "old" and torch.equal(tensors["a"], old["a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # temp files removed


def test_crash_between_renames_is_detected_not_loaded(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "m", {"a": torch.arange(5.0)}, {"version": "old"})
    real = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_once)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path / "m", {"a": torch.zeros(5)}, {"version": "new"})
    monkeypatch.setattr(ckpt.os, "replace", real)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


# ---------------------------------------------------------------------------------------
# training state
# ---------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """A model whose forward uses dropout (global torch RNG) so resume must restore it."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.l2 = nn.Linear(16, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.calls += 1
        return self.l2(self.drop(torch.tanh(self.l1(x))))


def make_run(seed: int = 0):
    torch.manual_seed(seed)  # test code only: fixes the fresh model's initial weights
    model = Tiny()
    ema = Tiny()
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = torch.Generator().manual_seed(123)
    return model, ema, opt, sched, data


def train_steps(model, ema, opt, sched, data, n):
    for _ in range(n):
        x = torch.randn(8, 6, generator=data)
        y = torch.randn(8, 2, generator=data)
        # Python's and NumPy's global RNGs too (a random loss scale), so resume must restore them
        loss = ((model(x) - y) ** 2).mean() * (1 + 0.1 * float(np.random.rand()) + 0.1 * random.random())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 0.1)


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_resume_is_bit_identical(tmp_path):
    model, ema, opt, sched, data = make_run()
    train_steps(model, ema, opt, sched, data, 3)
    assert isinstance(opt.state_dict()["state"][0]["step"], torch.Tensor)  # recent torch: tensor step
    tensors, part = pack_state(model=model, ema=ema, optimizer=opt, scheduler_state=sched.state_dict(), step=3,
                               rng={"data": data}, extra={"losses": [0.5, 0.25], "best": torch.tensor([1.0])})
    save_checkpoint(tmp_path / "run", tensors, {"arch": "tiny", **part})
    assert "optim.state.0.exp_avg" in tensors and "model.l1.weight" in tensors and "ema.l2.bias" in tensors
    assert "rng.torch" in tensors and "rng.gen.data" in tensors and tensors["rng.torch"].dtype == torch.uint8

    train_steps(model, ema, opt, sched, data, 3)
    ref_model, ref_ema, ref_opt = weights(model), weights(ema), opt.state_dict()

    # a fresh process-like start: different initial weights and disturbed global RNGs
    model2, ema2, opt2, sched2, data2 = make_run(seed=99)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    tensors2, card2 = load_checkpoint(tmp_path / "run", expect={"arch": "tiny"})
    info = unpack_state(tensors2, card2, model=model2, ema=ema2, optimizer=opt2, rng={"data": data2})
    sched2.load_state_dict(info["scheduler_state"])
    assert info["step"] == 3 and info["extra"]["losses"] == [0.5, 0.25] and torch.equal(info["extra"]["best"], torch.tensor([1.0]))
    train_steps(model2, ema2, opt2, sched2, data2, 3)

    for ref, got in ((ref_model, model2), (ref_ema, ema2)):
        for k, v in ref.items():
            assert torch.equal(got.state_dict()[k], v), k
    s_ref, s_got = ref_opt["state"], opt2.state_dict()["state"]
    for i in s_ref:
        for name in s_ref[i]:
            assert torch.equal(s_got[i][name], s_ref[i][name]), (i, name)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_resume_without_global_rng_differs(tmp_path):
    """Guards the test above: dropout really draws from the global RNG, so skipping its
    restoration must change the result (otherwise the bit-identity test proves little)."""
    model, ema, opt, sched, data = make_run()
    train_steps(model, ema, opt, sched, data, 3)
    tensors, part = pack_state(model=model, ema=ema, optimizer=opt, scheduler_state=sched.state_dict(), step=3,
                               rng={"data": data})
    train_steps(model, ema, opt, sched, data, 3)
    model2, ema2, opt2, sched2, data2 = make_run(seed=99)
    torch.manual_seed(7)
    info = unpack_state(tensors, part, model=model2, ema=ema2, optimizer=opt2, rng={"data": data2},
                        restore_global_rng=False)
    sched2.load_state_dict(info["scheduler_state"])
    train_steps(model2, ema2, opt2, sched2, data2, 3)
    assert not torch.equal(model2.l1.weight, model.l1.weight)


def test_unpack_errors(tmp_path):
    model, ema, opt, _, data = make_run()
    tensors, part = pack_state(model=model, step=1)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        unpack_state(tensors, part, optimizer=opt)
    with pytest.raises(CheckpointError, match="no state for it"):
        unpack_state(tensors, part, rng={"data": data})
    with pytest.raises(CheckpointError, match="no 'train_state' entry"):
        unpack_state(tensors, {"arch": "x"}, model=model)
    other = nn.Sequential(nn.Linear(6, 2))
    with pytest.raises(CheckpointError, match="do not fit the given module"):
        unpack_state(tensors, part, model=other)
    bad = dict(tensors)
    bad["model.l1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"model.l1.weight has shape \(3, 3\)"):
        unpack_state(bad, part, model=Tiny())
    with pytest.raises(ValueError, match="cannot store a set"):
        pack_state(extra={"s": {1, 2}})


def test_unet_state_through_checkpoint(tmp_path):
    """A whole EDMPrecond survives the trip and computes the same output."""
    g = torch.Generator().manual_seed(0)
    pre = EDMPrecond(UNet(TINY.replace(num_tasks=2, sigma_y_embedding=True, embedding_type="fourier"), generator=g))
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    tensors, part = pack_state(model=pre, capture_global_rng=False)
    save_checkpoint(tmp_path / "pre", tensors, {"model": pre.to_dict(), **part})
    t2, card = load_checkpoint(tmp_path / "pre", expect={"model": pre.to_dict()})
    pre2 = EDMPrecond.from_dict(card["model"], generator=torch.Generator().manual_seed(5))
    unpack_state(t2, card, model=pre2)
    x = torch.randn(2, 3, 16, 16, generator=g)
    assert torch.equal(pre2(x, 0.7, task_id=1, sigma_y=0.05), pre(x, 0.7, task_id=1, sigma_y=0.05))


def test_plain_number_optimizer_state_and_nested_structures(tmp_path):
    """Old-style optimizer state (a float ``step``), int dict keys, tuples and tensors nested
    in ``extra`` come back with their types; the global RNG streams continue exactly."""
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for st in opt.state.values():
        st["step"] = 1.0  # torch < 1.12 stored a plain number
    extra = {"hist": {3: (1, 2.5), "x": [torch.arange(3), None]}, "__weird": "ok"}
    tensors, part = pack_state(model=model, optimizer=opt, extra=extra, step=7)
    assert "optim.state.0.step" not in tensors and "optim.state.0.exp_avg" in tensors
    save_checkpoint(tmp_path / "s", tensors, part)
    want_py, want_np, want_torch = random.random(), np.random.rand(), torch.rand(1)

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    t2, card = load_checkpoint(tmp_path / "s")
    opt2 = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=1e-3)
    info = unpack_state(t2, card, optimizer=opt2)
    assert random.random() == want_py and np.random.rand() == want_np and torch.equal(torch.rand(1), want_torch)
    assert info["step"] == 7
    assert card["train_state"]["optimizer"]["state"]["__dict__"][0][1]["step"] == 1.0  # stored as a JSON number
    assert all(float(s["step"]) == 1.0 for s in opt2.state_dict()["state"].values())  # (torch makes it a tensor)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    got = info["extra"]
    assert got["__weird"] == "ok" and got["hist"][3] == (1, 2.5)
    assert torch.equal(got["hist"]["x"][0], torch.arange(3)) and got["hist"]["x"][1] is None
