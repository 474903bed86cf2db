"""The README's Python example runs as written (so the documentation cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def test_readme_python_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README lost its Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x0.shape == (1000, 8) and out.nfe == 99
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([1000, 8]) 99" in capsys.readouterr().out


def test_readme_bundled_model_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "the README lost its bundled-model example"
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.x0.shape == (4, 3, 32, 32) and out.nfe + 1 == 20
    assert bool(torch.isfinite(out.x0).all())
    assert "torch.Size([4, 3, 32, 32]) 20" in capsys.readouterr().out
