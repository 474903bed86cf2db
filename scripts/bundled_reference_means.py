"""Write the bundled models' 1-NFE posterior means on a fixed synthetic input, one per
(family, kind, task): the reference ``tests/test_bundled_models.py`` compares against, so a
refactor of the conditioning or task-embedding path that changes what a bundled model
computes fails a test.

    .venv/bin/python scripts/bundled_reference_means.py tests/data/bundled_reference_means.npz

The file written before the x_reg conditioning refactor (commit d57edbe, old conditioning
kinds) showed that such checkpoints restore as before; since the x_reg EPS and Palette models
were bundled its references no longer matched any bundled weights (the test skipped them), so
it was rewritten (2026-12-03) for the bundled x_reg models: the test again guards what they compute.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from exactpost.io.atomic import write_atomic
from exactpost.inference.restoration import eps_restore, palette_restore
from exactpost.core.tasks import make_operator, simulate, task_names
from exactpost.nets import load_model

FAMILIES = ("faces-32", "cifar10-32")


def reference_means(families=FAMILIES, kinds=("eps", "palette"), tasks=None) -> dict[str, np.ndarray]:
    """{"family/kind/task": mean [1, 3, 32, 32]} for a fixed input, operator and noise, and
    {"family/kind/sha256": the weights' digest} (the test compares only the same weights)."""
    out = {}
    for fam in families:
        x0 = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        for kind in kinds:
            net, card = load_model(f"models/{fam}/{kind}")
            out[f"{fam}/{kind}/sha256"] = np.array(card["sha256"])
            restore = eps_restore if kind == "eps" else palette_restore
            for task in tasks or task_names():
                g = torch.Generator().manual_seed(1)
                op = make_operator(task, 1, (3, 32, 32), generator=g)
                y = simulate(op, x0, 0.05, generator=g)
                out[f"{fam}/{kind}/{task}"] = restore(net, card, op, y, 0.05, task, n_samples=0, nfe=20,
                                                      generator=g).mean.numpy()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the .npz to write (tests/data/bundled_reference_means.npz)")
    args = ap.parse_args(argv)
    if not args.out.endswith(".npz"):
        ap.error(f"{args.out}: the reference file must end in .npz")
    torch.set_num_threads(1)
    means = reference_means()
    write_atomic(args.out, lambda f: np.savez_compressed(f, **means))


if __name__ == "__main__":
    main()
