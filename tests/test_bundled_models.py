"""The models shipped in models/: complete cards, loadable weights, held-out data, size budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exactpost.inference import zoo

ROOT = Path(__file__).resolve().parents[1] / "models"
ENTRIES = zoo.list_models(ROOT)
CARD_KEYS = ("command", "data", "steps", "images_seen", "wall_time_s", "hardware", "sha256", "model", "objective")


def test_faces_32_ships_an_eps_network_and_demo_images():
    kinds = {e.kind for e in ENTRIES if e.name == "faces-32"}
    assert {"prior", "eps"} <= kinds
    imgs = zoo.demo_images("faces-32", ROOT)
    assert imgs.dtype.name == "uint8" and imgs.shape[1:] == (32, 32, 3) and len(imgs) >= 8


def test_models_folder_stays_under_80_mb():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 80e6, f"models/ holds {total / 1e6:.1f} MB"


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.name}-{e.kind}" for e in ENTRIES])
def test_card_is_complete_and_weights_load(entry):
    missing = [k for k in CARD_KEYS if k not in entry.card]
    assert not missing, f"{entry.path}.json lacks {missing}"
    assert entry.card["objective"]["kind"] == entry.kind
    data = entry.card["data"]
    if "faces64" in str(data["path"]):
        assert data["split"] == [0], "faces models train on split 0 only (1 = validation, 2 = test)"
    if "cifar10" in str(data["path"]):
        assert data["key"] == "train_images", "cifar10 models train on the train split only"
    net = zoo.load(entry)  # digest checked, safetensors only
    assert sum(p.numel() for p in net.parameters()) == entry.card["params"]
    if entry.kind != "prior":
        assert entry.card.get("init_from"), "EPS/Palette networks are fine-tuned from the bundled prior"


def test_bundled_demo_runs_on_one_task(tmp_path, monkeypatch):
    from exactpost.app.demo import run_demo

    monkeypatch.setenv(zoo.ENV_VAR, str(ROOT))
    res = run_demo("faces-32", tasks=["inpaint-box"], n_images=2, n_samples=2, nfe=4, out=tmp_path / "d",
                   progress=False)
    row = res["tasks"][0]
    assert row["nfe_sample"] == 4 and torch.isfinite(torch.tensor(row["psnr_mean"]))
    assert (tmp_path / "d" / "inpaint-box.png").is_file()


@pytest.mark.parametrize("name", zoo.model_names(ROOT))
def test_each_family_ships_a_feature_encoder_better_than_chance(name):
    from exactpost.inference.zoo import find_encoder

    enc = find_encoder(ROOT / name / "encoder")
    assert enc is not None, f"models/{name} has no encoder (exactpost train-encoder)"
    m, classes = enc.card["metrics"], len(enc.card["classes"])
    assert m["eval_images"] >= 500 and m["eval_accuracy"] > 3.0 / classes  # held-out, far above chance
    assert enc.features(torch.zeros(2, 3, 32, 32)).shape == (2, enc.feature_dim)


REFERENCE = Path(__file__).resolve().parent / "data" / "bundled_reference_means.npz"


def _reference_keys() -> list[str]:
    import numpy as np

    with np.load(REFERENCE, allow_pickle=False) as z:
        return sorted(k for k in z.files if not k.endswith("/sha256"))


@pytest.mark.parametrize("key", _reference_keys())
def test_bundled_model_restores_as_before_the_conditioning_refactor(key):
    """The 1-NFE means of the bundled EPS/Palette models on a fixed input equal those the code
    before the x_reg refactor computed (scripts/bundled_reference_means.py, run at d57edbe):
    the old conditioning kinds and task ids restore exactly as before. A model re-bundled since
    (other weights) is skipped by name, visibly."""
    import importlib.util

    import numpy as np

    fam, kind, task = key.split("/")
    with np.load(REFERENCE, allow_pickle=False) as z:
        want, sha = z[key], str(z[f"{fam}/{kind}/sha256"])
    entry = next(e for e in ENTRIES if e.name == fam and e.kind == kind)
    if entry.card["sha256"] != sha:
        pytest.skip(f"{fam}/{kind} was re-bundled after the reference was written")
    spec = importlib.util.spec_from_file_location("bundled_ref", ROOT.parent / "scripts" / "bundled_reference_means.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got = mod.reference_means(families=(fam,), kinds=(kind,), tasks=(task,))[key]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
