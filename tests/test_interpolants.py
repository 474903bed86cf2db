"""Interpolants: coefficients, derivatives (against autograd), sigma <-> t round trips."""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear, get_interpolant

ALL = [EDM(), VPLinear(), VPCosine(), RectifiedFlow()]
TIMES = {
    "edm": [0.01, 0.5, 3.0, 70.0],
    "vp-linear": [0.01, 0.2, 0.7, 1.0, 1.3],
    "vp-cosine": [0.01, 0.2, 0.7, 0.95],
    "flow": [0.01, 0.3, 0.8, 0.99],
}


@pytest.mark.parametrize("interp", ALL, ids=lambda i: i.name)
def test_derivatives_match_autograd(interp):
    t = torch.tensor(TIMES[interp.name], dtype=torch.float64, requires_grad=True)
    for f, df in [(interp._a, interp.da), (interp._s, interp.ds)]:
        (grad,) = torch.autograd.grad((f(t) + 0 * t).sum(), t)
        torch.testing.assert_close(df(t.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("interp", ALL, ids=lambda i: i.name)
def test_sigma_round_trip(interp):
    t = torch.tensor(TIMES[interp.name], dtype=torch.float64)
    sigma = interp.sigma(t)
    torch.testing.assert_close(interp.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-12)
    # float in, float out
    assert isinstance(interp.sigma(TIMES[interp.name][1]), float)


@pytest.mark.parametrize("interp", [VPLinear(), VPCosine()], ids=lambda i: i.name)
def test_variance_preserving(interp):
    t = torch.tensor(TIMES[interp.name], dtype=torch.float64)
    torch.testing.assert_close(interp.a(t) ** 2 + interp.s(t) ** 2, torch.ones_like(t))


def test_known_values():
    assert EDM().sigma(2.5) == 2.5
    assert RectifiedFlow().sigma(0.5) == pytest.approx(1.0)
    # DDPM linear schedule: abar(1) = exp(-(0.1 + 9.95))
    assert VPLinear().a(1.0) ** 2 == pytest.approx(math.exp(-10.05), rel=1e-12)
    # cosine schedule starts at a = 1 exactly
    assert VPCosine().a(0.0) == pytest.approx(1.0, abs=1e-15)


def test_velocity_is_interpolant_derivative():
    """With the true x0 and e, the velocity formula returns d/dt (a x0 + s e)."""
    g = torch.Generator().manual_seed(0)
    x0, e = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    for interp in ALL:
        t = torch.full((4,), TIMES[interp.name][1], dtype=torch.float64)
        a, s = interp.a(t)[:, None], interp.s(t)[:, None]
        v = interp.velocity(a * x0 + s * e, x0, t)
        torch.testing.assert_close(v, interp.da(t)[:, None] * x0 + interp.ds(t)[:, None] * e)


def test_edm_float_path_returns_the_tensor_paths_values():
    """EDM answers a(t) and t(sigma) for Python floats without tensors: the same values as
    its tensor path (bit for bit) and the same error for sigma <= 0."""
    edm = EDM()
    for v in (1e-3, 0.5, 2.0 / 3.0, 80.0, 157.2831):
        t64 = torch.tensor(v, dtype=torch.float64)
        assert edm.a(v) == float(edm._a(t64)) and isinstance(edm.a(v), float)
        assert edm.t_of_sigma(v) == float(edm._t_of_sigma(t64)) and isinstance(edm.t_of_sigma(v), float)
    assert torch.equal(edm.a(torch.tensor([0.5, 2.0])), torch.ones(2))  # tensors: unchanged
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="sigma must be > 0"):
            edm.t_of_sigma(bad)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown interpolant"):
        get_interpolant("ve-magic")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        VPLinear().t_of_sigma(0.0)
    with pytest.raises(ValueError, match="beta_min"):
        VPLinear(beta_min=-1.0)
