"""Task registry: operators of every task at 32x32 and 64x64, reproducibility from a seed,
the defaults of DESIGN.md (mask ratio, box side, kernel sizes/widths), and simulate()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from exactpost.operators import AveragePoolSR, FFTBlur, Inpainting, gaussian_kernel
from exactpost.core.tasks import TASKS, TaskSpec, get_task, make_operator, simulate, task_names

SIZES = [32, 64]
RANDOM_TASKS = ["inpaint-random", "inpaint-box", "deblur-motion"]


def params(op) -> torch.Tensor:
    """The random parameter of an operator (mask or kernel), float64."""
    if isinstance(op, Inpainting):
        return op.mask.to(torch.float64)
    if isinstance(op, FFTBlur):
        return op.kernel.to(torch.float64)
    raise TypeError(type(op))


def test_registry():
    assert task_names() == ["inpaint-random", "inpaint-box", "sr4", "deblur-gauss",
                            "deblur-motion"]
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name and spec.description
        assert spec.sigma_y == 0.05
        assert spec.random_per_sample == (name in RANDOM_TASKS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["sr4"].sigma_y = 0.1


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="unknown task 'sr8'.*inpaint-random.*deblur-motion"):
        make_operator("sr8", 2)
    with pytest.raises(ValueError, match="known tasks"):
        get_task("denoise")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_builds(task, size):
    b = 3
    op = make_operator(task, b, (3, size, size), generator=0)
    assert op.in_shape == (3, size, size)
    assert op.batch_size == (b if task in RANDOM_TASKS else None)
    x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = op.A(x)
    want_out = (3, size // 4, size // 4) if task == "sr4" else (3, size, size)
    assert tuple(y.shape[1:]) == want_out and torch.isfinite(y).all()
    assert tuple(op.At(y).shape) == tuple(x.shape)
    # the exact solve is consistent: (rho I + A^T A) solve(v) = v
    r = op.solve(x, 0.05**2)
    assert torch.allclose(0.05**2 * r + op.At(op.A(r)), x, atol=1e-4)


@pytest.mark.parametrize("task", RANDOM_TASKS)
def test_reproducible_from_seed_and_varies_with_it(task):
    a = make_operator(task, 4, (3, 32, 32), generator=torch.Generator().manual_seed(5))
    b = make_operator(task, 4, (3, 32, 32), generator=5)  # an int seed is the same
    c = make_operator(task, 4, (3, 32, 32), generator=6)
    assert torch.equal(params(a), params(b))
    assert not torch.equal(params(a), params(c))
    p = params(a)  # one draw per sample: the samples differ
    for i in range(1, 4):
        assert not torch.equal(p[0], p[i])


@pytest.mark.parametrize("size", SIZES)
def test_inpaint_random_defaults(size):
    op = make_operator("inpaint-random", 4, (3, size, size), generator=1)
    assert isinstance(op, Inpainting) and op.mask.shape == (4, 1, size, size)  # all channels
    missing = (~op.mask).to(torch.float64).mean(dim=(1, 2, 3))
    assert torch.allclose(missing, torch.full((4,), round(0.7 * size * size) / size**2,
                                              dtype=torch.float64))
    assert abs(float(missing[0]) - 0.7) < 1e-3
    x = torch.randn(4, 3, size, size)
    y = op.A(x)
    assert torch.equal(y[:, 0] == 0, y[:, 1] == 0) and torch.equal(y[:, 0] == 0, y[:, 2] == 0)


@pytest.mark.parametrize("size,side", [(32, 16), (64, 32)])
def test_inpaint_box_defaults(size, side):
    op = make_operator("inpaint-box", 8, (3, size, size), generator=2)
    corners = set()
    for i in range(8):
        rows, cols = torch.nonzero(~op.mask[i, 0], as_tuple=True)
        assert len(rows) == side * side  # one full square, not clipped by the border
        r0, c0 = int(rows.min()), int(cols.min())
        assert int(rows.max()) - r0 == side - 1 and int(cols.max()) - c0 == side - 1
        assert 0 <= r0 <= size - side and 0 <= c0 <= size - side
        corners.add((r0, c0))
    assert len(corners) > 1  # random positions


@pytest.mark.parametrize("size,std,ksize", [(32, 1.0, 9), (64, 1.5, 13)])
def test_deblur_gauss_defaults(size, std, ksize):
    op = make_operator("deblur-gauss", 2, (3, size, size))
    assert isinstance(op, FFTBlur) and op.kernel_size == (ksize, ksize)
    assert torch.allclose(op.kernel, gaussian_kernel(ksize, std), rtol=0, atol=1e-15)
    assert abs(float(op.kernel.sum()) - 1) < 1e-12 and bool((op.kernel >= 0).all())


@pytest.mark.parametrize("size,ksize", [(32, 9), (64, 13)])
def test_deblur_motion_defaults(size, ksize):
    op = make_operator("deblur-motion", 4, (3, size, size), generator=3)
    k = op.kernel
    assert isinstance(op, FFTBlur) and k.shape == (4, ksize, ksize)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.ones(4, dtype=k.dtype))
    assert bool((k >= 0).all())
    for i in range(1, 4):
        assert not torch.allclose(k[0], k[i])


def test_sr4_and_kernel_size_rule_for_other_sizes():
    op = make_operator("sr4", 2, (1, 32, 32))
    assert isinstance(op, AveragePoolSR) and op.out_shape == (1, 8, 8)
    spec = get_task("deblur-gauss")
    assert [spec.kernel_size(n) for n in (8, 16, 32, 64, 128)] == [5, 7, 9, 13, 19]
    assert spec.kernel_size(4) == 3 and spec.kernel_size(3) == 3  # never above the image
    op = make_operator("deblur-motion", 2, (3, 16, 24), generator=0)
    assert op.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="not divisible"):
        make_operator("sr4", 2, (3, 30, 30))
    with pytest.raises(ValueError, match="batch_size"):
        make_operator("inpaint-box", 0)
    with pytest.raises(ValueError, match="image_shape"):
        make_operator("inpaint-box", 2, (32, 32))


@pytest.mark.parametrize("task", list(TASKS))
def test_simulate_noise_level_and_reproducibility(task):
    b, size = 4, 32
    op = make_operator(task, b, (3, size, size), generator=0)
    x0 = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = simulate(op, x0, 0.05, generator=7)
    assert y.shape == op.A(x0).shape and y.dtype == x0.dtype
    noise = y - op.A(x0)
    if isinstance(op, Inpainting):
        observed = op.mask.expand_as(noise)
        assert bool((noise[~observed] == 0).all()) and bool((y[~observed] == 0).all())
        noise = noise[observed]
    assert abs(float(noise.std()) / 0.05 - 1) < 0.05
    assert torch.equal(y, simulate(op, x0, 0.05, generator=7))
    assert not torch.equal(y, simulate(op, x0, 0.05, generator=8))
    assert torch.equal(simulate(op, x0, 0.0, generator=7), op.A(x0))


def test_simulate_per_sample_sigma_and_errors():
    op = make_operator("sr4", 2, (3, 32, 32))
    x0 = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    y = simulate(op, x0, torch.tensor([0.0, 0.1]), generator=0)
    assert float(y[0].abs().max()) == 0 and abs(float(y[1].std()) / 0.1 - 1) < 0.15
    with pytest.raises(ValueError, match="sigma_y must be finite and >= 0"):
        simulate(op, x0, -0.01)
    with pytest.raises(ValueError, match="sigma_y must be finite and >= 0"):
        simulate(op, x0, float("inf"))
    with pytest.raises(ValueError, match="sigma_y must be a float or have shape"):
        simulate(op, x0, torch.ones(3))
    bad = x0.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        simulate(op, bad, 0.05)
    with pytest.raises(ValueError, match="expects"):
        simulate(op, torch.zeros(2, 1, 32, 32), 0.05)
    with pytest.raises(ValueError, match="generator"):
        simulate(op, x0, 0.05, generator="seed")
