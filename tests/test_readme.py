"""The README's Python example runs as written (so the documentation cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def _run_block(index: int, what: str) -> dict:
    """Execute the README's ``index``-th Python block; its namespace."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) > index, f"the README lost its {what}"
    namespace: dict = {"__block__": blocks[index]}
    exec(compile(blocks[index], "README.md", "exec"), namespace)
    return namespace


def test_readme_one_call_example_runs(capsys):
    ns = _run_block(0, "one-call example")
    assert "exactpost.load" in ns["__block__"] and len(ns["__block__"].strip().splitlines()) <= 6
    res = ns["res"]
    assert res.mean.shape == (4, 3, 32, 32) and res.samples.shape == (4, 4, 3, 32, 32) and res.nfe == 20
    assert "torch.Size([4, 3, 32, 32]) torch.Size([4, 4, 3, 32, 32]) torch.Size([4, 3, 32, 32]) 20" in capsys.readouterr().out


def test_readme_python_example_runs(capsys):
    out = _run_block(1, "Python example")["out"]
    assert out.x0.shape == (1000, 8) and out.nfe == 99
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([1000, 8]) 99" in capsys.readouterr().out


def test_readme_bundled_model_example_runs(capsys):
    out = _run_block(2, "bundled-model example")["out"]
    assert out.x0.shape == (4, 3, 32, 32) and out.nfe + 1 == 20
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([4, 3, 32, 32]) 20" in capsys.readouterr().out
