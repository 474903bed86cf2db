"""The README's Python example runs as written (so the documentation cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_one_call_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks and "exactpost.load" in blocks[0], "the README lost its one-call example"
    assert len(blocks[0].strip().splitlines()) <= 6
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    res = namespace["res"]
    assert res.mean.shape == (4, 3, 32, 32) and res.samples.shape == (4, 4, 3, 32, 32) and res.nfe == 20
    assert "torch.Size([4, 3, 32, 32]) torch.Size([4, 4, 3, 32, 32]) torch.Size([4, 3, 32, 32]) 20" in capsys.readouterr().out


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "the README lost its Python example"
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x0.shape == (1000, 8) and out.nfe == 99
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([1000, 8]) 99" in capsys.readouterr().out


def test_readme_bundled_model_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3, "the README lost its bundled-model example"
    namespace: dict = {}
    exec(compile(blocks[2], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x0.shape == (4, 3, 32, 32) and out.nfe + 1 == 20
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([4, 3, 32, 32]) 20" in capsys.readouterr().out
