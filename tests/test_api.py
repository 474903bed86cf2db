"""The one-call API: exactpost.load / Measurement / Model.restore (doctests included)."""

from __future__ import annotations

import doctest

import pytest
import torch

import exactpost
import exactpost.inference.api
from exactpost.inference.restoration import eps_restore
from exactpost.core.tasks import make_operator, simulate
from exactpost.nets import load_model


def test_the_api_doctests_run():
    result = doctest.testmod(exactpost.inference.api)
    assert result.attempted >= 5 and result.failed == 0


def test_methods_name_every_method():
    assert exactpost.methods()[:2] == ["eps", "palette"]
    assert {"zero-shot-pivot", "dps", "pigdm", "ddnm", "ddrm", "daps", "mpgd"} <= set(exactpost.methods())


def test_restore_equals_the_lower_level_call_and_takes_every_form_of_y():
    model = exactpost.load("faces-32")
    x0 = model.demo_images()[:2]
    m = exactpost.Measurement.simulate("sr4", x0, 0.05, generator=torch.Generator().manual_seed(0))
    got = model.restore(m, samples=2, nfe=6, generator=torch.Generator().manual_seed(3))
    net, card = load_model(model.entries["eps"].path)
    want = eps_restore(net, card, m.op, m.y, 0.05, "sr4", n_samples=2, nfe=6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got.mean, want.mean) and torch.equal(got.samples, want.samples) and got.nfe == 6
    by_name = model.restore(m.y, "sr4", sigma_y=0.05, samples=2, nfe=6, generator=torch.Generator().manual_seed(3))
    by_op = model.restore(m.y, m.op, sigma_y=0.05, task="sr4", samples=2, nfe=6,
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(by_name.samples, got.samples) and torch.equal(by_op.samples, got.samples)


def test_one_checkpoint_by_path_restores_with_its_own_method(models_env):
    root = models_env
    model = exactpost.load(str(root / "tiny-32" / "palette"))
    assert list(model.entries) == ["palette"]
    x0 = torch.zeros(1, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    op = make_operator("inpaint-box", 1, (3, 32, 32), generator=g)
    res = model.restore(simulate(op, x0, 0.05, generator=g), op, sigma_y=0.05, task="inpaint-box", samples=2,
                        nfe=3, method="palette", generator=g)
    assert res.samples.shape == (2, 1, 3, 32, 32) and torch.isfinite(res.samples).all()
    with pytest.raises(ValueError, match="has no eps network"):
        model.restore(simulate(op, x0, 0.05, generator=g), op, sigma_y=0.05, task="inpaint-box")


@pytest.mark.parametrize("call,needle", [
    (lambda m, y, op: m.restore(y, "inpaint-random", sigma_y=0.05), "pass the operator"),
    (lambda m, y, op: m.restore(y, op), "pass sigma_y"),
    (lambda m, y, op: m.restore(y, op, sigma_y=0.05), "pass task="),
    (lambda m, y, op: m.restore(y, op, sigma_y=0.05, task="sr4", method="dsp"), "unknown method 'dsp'"),
    (lambda m, y, op: m.restore(exactpost.Measurement(op, y, 0.05, "inpaint-random"), "sr4"), "carries its operator"),
    (lambda m, y, op: exactpost.Measurement(op, y, -1.0), "sigma_y must be >= 0"),
    (lambda m, y, op: exactpost.Measurement(op, y[:, :, :8], 0.05), "expects"),
])
def test_bad_calls_say_what_is_wrong(call, needle):
    model = exactpost.load("faces-32")
    g = torch.Generator().manual_seed(0)
    op = make_operator("inpaint-random", 1, (3, 32, 32), generator=g)
    y = simulate(op, torch.zeros(1, 3, 32, 32), 0.05, generator=g)
    with pytest.raises(ValueError, match=needle):
        call(model, y, op)
