"""The one conditioning path (exactpost.core.conditioning): x_reg against a dense float64 solve for
every operator family, the documented channel layouts, kinds that extend others, operators
that differ only in the kernel giving different inputs, and task-embedding ids that training
and inference cannot disagree on."""

from __future__ import annotations

import pytest
import torch

from exactpost.core import conditioning as C
from exactpost.operators import FFTBlur, motion_kernel
from exactpost.core.tasks import make_operator, simulate, task_names
from test_operators import ALL, _pinv_rtol, batch_of, build, dense_batched


def _dense_xreg(op, y: torch.Tensor, sigma_y: torch.Tensor) -> torch.Tensor:
    """(rho0 I + M^T M)^{-1} M^T y per sample (rho0 > 0), or pinv(M) y (rho0 = 0, singular values
    below the operator's documented cut-off dropped), float64."""
    M = dense_batched(op)
    rtol = _pinv_rtol(op, M)
    B, _, d = M.shape
    out = []
    for b in range(B):
        rho0 = float(sigma_y[b] / C.SIGMA_DATA) ** 2
        yb = y[b].reshape(-1).to(torch.float64)
        if rho0 > 0:
            out.append(torch.linalg.solve(rho0 * torch.eye(d, dtype=torch.float64) + M[b].T @ M[b], M[b].T @ yb))
        else:
            out.append(torch.linalg.pinv(M[b], rtol=rtol) @ yb)
    return torch.stack(out).reshape((B,) + tuple(op.in_shape))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("sigma_y", ["per-sample", "zero"])
def test_xreg_equals_a_dense_float64_solve(name, sigma_y):
    op = build(name, 8)
    B = batch_of(op)
    g = torch.Generator().manual_seed(3)
    y = torch.randn((B,) + tuple(op.out_shape), generator=g, dtype=torch.float64)
    sy = torch.tensor([0.05, 0.2][:B], dtype=torch.float64) if sigma_y == "per-sample" else torch.zeros(B, dtype=torch.float64)
    got = C.regularized_backprojection(op, y, sy)
    want = _dense_xreg(op, y, sy)
    tol = 1e-6 if name.startswith("cg") else 1e-9
    assert float((got - want).abs().max() / want.abs().max()) < tol


def test_xreg_for_inpainting_is_the_masked_image_shrunk_by_the_wiener_factor():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    op = make_operator("inpaint-random", 2, (3, 16, 16), generator=1)
    y = op.A(x)
    xreg = C.regularized_backprojection(op, y, 0.05)
    mask = C.certainty_map(op, 2)
    factor = 1 / (1 + (0.05 / C.SIGMA_DATA) ** 2)
    torch.testing.assert_close(xreg, factor * mask * x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", list(C.KINDS))
@pytest.mark.parametrize("task", task_names())
def test_every_kind_has_its_documented_channels(kind, task):
    g = torch.Generator().manual_seed(0)
    op = make_operator(task, 2, (3, 16, 16), generator=g)
    y = simulate(op, torch.zeros(2, 3, 16, 16), 0.05, generator=g)
    cond = C.build_conditioning(kind, op, y, 0.05)
    n = C.channels(kind)
    if n == 0:
        assert cond is None
        return
    assert cond.shape == (2, n, 16, 16) and cond.dtype == y.dtype
    parts = C.KINDS[kind][1]
    start = 0
    for part in parts:  # each part sits where the layout says, computed as documented
        width = C.PART_CHANNELS[part]
        want = {"aty": lambda: op.At(y), "mask": lambda: C.certainty_map(op, 2),
                "xreg": lambda: C.regularized_backprojection(op, y, 0.05)}[part]()
        torch.testing.assert_close(cond[:, start:start + width], want)
        start += width
    assert start == n


def test_defaults_and_extension():
    assert C.DEFAULT_KIND["eps"] == "pivot+aty+mask+xreg" and C.channels("pivot+aty+mask+xreg") == 7
    assert C.DEFAULT_KIND["palette"] == "xt+aty+mask+xreg" and not C.uses_pivot("xt+aty+mask+xreg")
    assert C.extends("pivot+aty+mask+xreg", "pivot+aty+mask") and C.extends("pivot+aty+mask", "pivot")
    assert not C.extends("pivot+aty+mask", "pivot+aty+mask+xreg")
    assert not C.extends("xt+aty+mask+xreg", "pivot+aty+mask")
    with pytest.raises(ValueError, match="unknown conditioning"):
        C.channels("pivot+kernel")


def test_two_motion_kernels_on_the_same_measurement_give_different_inputs():
    g = torch.Generator().manual_seed(0)
    k1, k2 = motion_kernel(9, 0.5, g), motion_kernel(9, 0.5, g)
    assert float((k1 - k2).abs().max()) > 1e-3
    y = torch.randn(1, 3, 32, 32, generator=g)
    xreg = [C.build_conditioning("pivot+aty+mask+xreg", FFTBlur(k, (3, 32, 32)), y, 0.05)[:, 4:] for k in (k1, k2)]
    assert float((xreg[0] - xreg[1]).abs().max()) > 0.1 * float(xreg[0].abs().max())
    # the old inputs' certainty map is the same constant for both kernels: it cannot tell them apart
    masks = [C.build_conditioning("pivot+aty+mask", FFTBlur(k, (3, 32, 32)), y, 0.05)[:, 3:] for k in (k1, k2)]
    torch.testing.assert_close(masks[0], masks[1], rtol=0, atol=1e-5)


def test_task_ids_come_from_one_function_and_the_card():
    assert [C.task_embedding_index(t) for t in task_names()] == list(range(len(task_names())))
    assert C.task_id_map(["sr4", "deblur-motion"]) == {"sr4": 2, "deblur-motion": 4}
    new_card = {"tasks": ["sr4"], "task_ids": {"sr4": 2}}
    old_card = {"tasks": ["sr4"]}  # written before the map: trained with the registry row
    assert C.card_task_index(new_card, "sr4") == 2 == C.card_task_index(old_card, "sr4")
    with pytest.raises(ValueError, match="trained for tasks sr4"):
        C.card_task_index(new_card, "inpaint-box")
    with pytest.raises(ValueError, match="unknown task"):
        C.task_embedding_index("denoise")
