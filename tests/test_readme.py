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


def _model_table_rows() -> dict[tuple[str, str], str]:
    """{(model, kind): the row's text} of the README's "Bundled models" table."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {}
    for m in re.finditer(r"^\| `([\w.-]+)` \| (prior|eps|palette) \|(.*)$", text, re.M):
        rows[(m.group(1), m.group(2))] = m.group(3)
    return rows


def test_readme_model_table_agrees_with_the_cards():
    """Every bundled model has a README row that states its card's steps and images seen
    (the last training phase: ``{steps:,} steps`` and ``{images_seen / 1000:.0f}k``)."""
    import json

    models = Path(__file__).resolve().parents[1] / "models"
    rows = _model_table_rows()
    cards = sorted(models.glob("*/*.json"))
    checked = 0
    for card_path in cards:
        if card_path.stem not in ("prior", "eps", "palette"):
            continue
        card = json.loads(card_path.read_text())
        key = (card_path.parent.name, card_path.stem)
        assert key in rows, f"README's model table has no row for {key}"
        row = rows[key]
        assert f"{card['steps']:,} steps" in row, f"{key}: the card says {card['steps']:,} steps; README: {row}"
        assert f"{card['images_seen'] / 1000:.0f}k" in row, \
            f"{key}: the card says {card['images_seen']} images seen; README: {row}"
        for field in ("steps", "images_seen", "wall_time_s", "hardware", "precision", "command"):
            assert card.get(field) not in (None, ""), f"{card_path} does not state {field}"
        checked += 1
    assert checked >= 6, f"only {checked} bundled model cards found under {models}"
