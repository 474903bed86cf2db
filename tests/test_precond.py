"""EDM preconditioning: coefficients against hand-computed values, limits, the wrapper's
algebra, conditioning checks, and the interpolant / EPS adapters."""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear
from exactpost.nets import EDMPrecond, UNet, UNetConfig, as_denoiser, as_eps_network, edm_coefficients, loss_weight

from nets_helpers import TINY, gen, perturb  # noqa: E402


# (sigma, c_skip, c_out, c_in, c_noise) for sigma_data = 0.5, worked by hand:
# sigma = 0.5: var = 0.5 -> c_skip 0.5, c_out 0.25/sqrt(0.5) = 0.353553..., c_in sqrt(2), log(0.5)/4
# sigma = 1.5: var = 2.5 -> c_skip 0.1, c_out 0.75/sqrt(2.5) = 0.474341..., c_in 1/sqrt(2.5)
# sigma = 1.2: var = 1.69 -> c_skip 0.25/1.69, c_out 0.6/1.3, c_in 1/1.3
HAND = [
    (0.5, 0.5, 0.3535533905932738, 1.4142135623730951, -0.17328679513998632),
    (1.5, 0.1, 0.4743416490252569, 0.6324555320336759, 0.10136627702704110),
    (1.2, 0.25 / 1.69, 0.6 / 1.3, 1 / 1.3, math.log(1.2) / 4),
]


@pytest.mark.parametrize("sigma,c_skip,c_out,c_in,c_noise", HAND)
def test_coefficients_hand_computed(sigma, c_skip, c_out, c_in, c_noise):
    got = edm_coefficients(sigma, 0.5)
    for g, w in zip(got, (c_skip, c_out, c_in, c_noise)):
        assert float(g) == pytest.approx(w, rel=1e-12, abs=1e-15)
    assert loss_weight(sigma, 0.5) == pytest.approx(1 / c_out**2, rel=1e-12)


def test_coefficient_limits_and_identities():
    s = torch.tensor([1e-6, 1e-3, 0.1, 1.0, 10.0, 80.0, 1e6], dtype=torch.float64)
    sd = 0.5
    c_skip, c_out, c_in, _ = edm_coefficients(s, sd)
    assert c_skip[0] == pytest.approx(1.0, abs=1e-11) and c_out[0] == pytest.approx(0.0, abs=1e-5)
    assert c_skip[-1] == pytest.approx(0.0, abs=1e-12) and c_out[-1] == pytest.approx(sd, rel=1e-9)
    # c_skip^2 sd^2 ... EDM's unit-variance target: c_out^2 = sd^2 (1 - c_skip) and c_in^2 (sigma^2 + sd^2) = 1
    assert torch.allclose(c_out**2, sd**2 * (1 - c_skip), rtol=1e-12)
    assert torch.allclose(c_in**2 * (s**2 + sd**2), torch.ones_like(s), rtol=1e-12)
    w = loss_weight(s, sd)
    assert isinstance(w, torch.Tensor) and torch.allclose(w * c_out**2, torch.ones_like(s), rtol=1e-12)


def test_forward_equals_formula_and_limits():
    unet = perturb(UNet(TINY.replace(cond_channels=2), generator=gen()))
    pre = EDMPrecond(unet, sigma_data=0.5)
    x = torch.randn(3, 3, 32, 32, generator=gen(2))
    cond = torch.randn(3, 2, 32, 32, generator=gen(3))
    sigma = torch.tensor([0.02, 1.0, 30.0])
    c_skip, c_out, c_in, c_noise = (c.float().reshape(-1, 1, 1, 1) for c in edm_coefficients(sigma, 0.5))
    # cond enters unscaled, the image scaled by c_in
    F_x = unet(torch.cat([c_in * x, cond], 1), c_noise.flatten())
    want = c_skip * x + c_out * F_x
    got = pre(x, sigma, cond=cond)
    assert torch.allclose(got, want, atol=1e-6)
    # a float sigma broadcasts
    assert torch.allclose(pre(x, 1.0, cond=cond)[1], got[1], atol=1e-6)
    # a fresh network (zero output layer) is D = c_skip x: identity at tiny sigma, 0 at huge sigma
    fresh = EDMPrecond(UNet(TINY, generator=gen()))
    assert torch.allclose(fresh(x, 1e-4), x, atol=1e-7)
    assert fresh(x, 1e4).abs().max() < 1e-7


def test_condition_is_not_scaled_by_c_in():
    unet = perturb(UNet(TINY.replace(cond_channels=3), generator=gen()))
    pre = EDMPrecond(unet)
    x = torch.randn(1, 3, 32, 32, generator=gen(4))
    cond = torch.randn(1, 3, 32, 32, generator=gen(5))
    sigma = 7.0
    c_skip, c_out, c_in, c_noise = (float(c) for c in edm_coefficients(sigma, 0.5))
    scaled = c_skip * x + c_out * unet(torch.cat([c_in * x, c_in * cond], 1), torch.tensor([c_noise]))
    unscaled = c_skip * x + c_out * unet(torch.cat([c_in * x, cond], 1), torch.tensor([c_noise]))
    got = pre(x, sigma, cond=cond)
    assert torch.allclose(got, unscaled, atol=1e-6)
    assert not torch.allclose(got, scaled, atol=1e-4)


def test_cond_validation():
    pre_c = EDMPrecond(UNet(TINY.replace(cond_channels=2), generator=gen()))
    pre_u = EDMPrecond(UNet(TINY, generator=gen()))
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="expects cond with 2 channels"):
        pre_c(x, 1.0)
    with pytest.raises(ValueError, match=r"cond must have shape \[2, 2, 32, 32\]"):
        pre_c(x, 1.0, cond=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="cond_channels=0"):
        pre_u(x, 1.0, cond=torch.zeros(2, 2, 32, 32))
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pre_u(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="sigma must be a float or have shape"):
        pre_u(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3, H, W\]"):
        pre_u(torch.zeros(2, 4, 32, 32), 1.0)
    with pytest.raises(ValueError, match="out_channels == in_channels"):
        EDMPrecond(UNet(TINY.replace(out_channels=1), generator=gen()))


def test_to_dict_round_trip():
    pre = EDMPrecond(UNet(TINY.replace(num_tasks=3), generator=gen()), sigma_data=0.6)
    again = EDMPrecond.from_dict(pre.to_dict(), generator=gen())
    assert again.to_dict() == pre.to_dict() and again.sigma_data == 0.6
    with pytest.raises(ValueError, match="not an EDMPrecond description"):
        EDMPrecond.from_dict({"unet": {}})


@pytest.mark.parametrize("interp,t", [(EDM(), 2.0), (VPLinear(), 0.4), (VPCosine(), 0.6), (RectifiedFlow(), 0.7)])
def test_as_denoiser_divides_by_a_and_uses_sigma(interp, t):
    pre = EDMPrecond(perturb(UNet(TINY, generator=gen())))
    D = as_denoiser(pre, interp)
    x_t = torch.randn(2, 3, 32, 32, generator=gen(6))
    a, sigma = float(interp.a(t)), float(interp.sigma(t))
    want = pre(x_t / a, sigma)
    assert torch.allclose(D(x_t, t), want, atol=1e-5)
    assert torch.allclose(D(x_t, torch.tensor([t, t])), want, atol=1e-5)
    if not isinstance(interp, EDM):
        assert a != pytest.approx(1.0)  # the test distinguishes x_t from x_t / a


def test_as_denoiser_rejects_conditioned_network_and_eps_adapter():
    pre = EDMPrecond(perturb(UNet(TINY.replace(cond_channels=3, num_tasks=2), generator=gen())))
    with pytest.raises(ValueError, match="without conditioning channels"):
        as_denoiser(pre, EDM())
    net = as_eps_network(pre, task_id=1)
    mu = torch.randn(2, 3, 32, 32, generator=gen(7))
    cond = torch.randn(2, 3, 32, 32, generator=gen(8))
    sigma = torch.tensor([0.3, 3.0])
    assert torch.equal(net(mu, cond, sigma), pre(mu, sigma, cond=cond, task_id=1))


# --- the Gaussian skip ----------------------------------------------------------------------------
def test_gaussian_skip_network_replaces_only_the_skip_term_and_keeps_old_cards():
    """D_gauss(x, skip) = skip + c_out F = D_scalar(x) - c_skip x + skip with the same weights;
    the scalar network's description has no ``skip`` entry (cards written before the option
    load and compare unchanged), the Gaussian one round-trips."""
    unet = perturb(UNet(TINY.replace(cond_channels=2), generator=gen()))
    scalar, gauss = EDMPrecond(unet), EDMPrecond(unet, skip="gaussian")
    x = torch.randn(3, 3, 32, 32, generator=gen(2))
    cond = torch.randn(3, 2, 32, 32, generator=gen(3))
    skip = torch.randn(3, 3, 32, 32, generator=gen(4))
    sigma = torch.tensor([0.02, 1.0, 80.0])
    c_skip = edm_coefficients(sigma, 0.5)[0].float().reshape(-1, 1, 1, 1)
    want = scalar(x, sigma, cond=cond) - c_skip * x + skip
    assert torch.allclose(gauss(x, sigma, cond=cond, skip=skip), want, atol=1e-5)
    assert "skip" not in scalar.to_dict()
    again = EDMPrecond.from_dict(gauss.to_dict())
    assert again.skip == "gaussian" and EDMPrecond.from_dict(scalar.to_dict()).skip == "scalar"
    with pytest.raises(ValueError, match="has the Gaussian skip: pass skip"):
        gauss(x, sigma, cond=cond)
    with pytest.raises(ValueError, match="scalar skip; drop skip"):
        scalar(x, sigma, cond=cond, skip=skip)
    with pytest.raises(ValueError, match="skip must be one of scalar, gaussian"):
        EDMPrecond(unet, skip="diagonal")


def test_as_eps_network_computes_the_gaussian_skip_from_the_operator():
    """as_eps_network(gaussian net, op=...) passes gaussian_skip(pivot, sigma, op, sigma_y);
    without the operator it refuses."""
    from exactpost.core.skip import gaussian_skip
    from exactpost.operators import Inpainting, random_mask

    unet = perturb(UNet(TINY.replace(cond_channels=2), generator=gen()))
    gauss = EDMPrecond(unet, skip="gaussian")
    op = Inpainting(random_mask(32, 0.5, 2, gen(5)), 3)
    mu = torch.randn(2, 3, 32, 32, generator=gen(6))
    cond = torch.randn(2, 2, 32, 32, generator=gen(7))
    sigma = torch.tensor([80.0, 0.5])
    want = gauss(mu, sigma, cond=cond, skip=gaussian_skip(mu, sigma, op, 0.05))
    assert torch.equal(as_eps_network(gauss, op=op, op_sigma_y=0.05)(mu, cond, sigma), want)
    with pytest.raises(ValueError, match="give as_eps_network the operator"):
        as_eps_network(gauss)
