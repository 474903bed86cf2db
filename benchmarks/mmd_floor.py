"""Why the image benchmark's Markdown tables have no MMD column: its noise floor at N = 100.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/mmd_floor.py [--data ../shared/data/faces64.npz] \\
        [--n 100] [--out benchmarks/results]

``exactpost bench images`` computes an unbiased MMD^2 in pixel space (paired U-statistic,
Gaussian kernel, bandwidth h = median pairwise distance of the truth images; metrics.mmd2_paired)
between the first sample of every image and the N truth images. This script measures the same
statistic, against the same N test images, for sets whose distance from the truth is known:
``n`` *other* real test images (the right distribution: what the statistic reads when nothing
is wrong, its noise floor), the truth with small and large pixel noise, a 4x box blur of it, and
the mean image repeated, at h, h / 2 and h / 4. Writes ``mmd_floor.json`` and ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from exactpost.io.images import load_images, save_text, to_float  # noqa: E402
from exactpost.core.metrics import median_bandwidth, mmd2_paired  # noqa: E402

SCALES = (1.0, 0.5, 0.25)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/faces64.npz", help="an .npz with a test split (split 2)")
    ap.add_argument("--n", type=int, default=100, help="images per set (the image benchmark's default: 100)")
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
    args = ap.parse_args(argv)
    x = to_float(load_images(args.data, split=2, image_size=32))[: 2 * args.n].double()
    if len(x) < 2 * args.n:
        raise SystemExit(f"{args.data} has {len(x)} test images; need 2 x --n = {2 * args.n}")
    truth, other = x[: args.n], x[args.n:]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(truth.shape, generator=g, dtype=torch.float64)
    blur = F.avg_pool2d(truth, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    sets = {"other real test images (right distribution: the noise floor)": other,
            "truth + pixel noise 0.1": truth + 0.1 * noise, "truth + pixel noise 0.3": truth + 0.3 * noise,
            "4x box-blurred truth": blur, "the mean image, N times": truth.mean(0, keepdim=True).expand_as(truth)}
    h = median_bandwidth(truth, truth)
    rows = {name: [mmd2_paired(s, truth, h * f) for f in SCALES] for name, s in sets.items()}
    command = "python benchmarks/mmd_floor.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_text(out / "mmd_floor.json", json.dumps(dict(command=command, data=args.data, n=args.n, bandwidth=h,
                                                      scales=SCALES, mmd2=rows), indent=2) + "\n")
    md = [f"# MMD^2 noise floor at N = {args.n} ({Path(args.data).name}, test split, 32x32)", "",
          f"`{command}`", "", f"Median bandwidth h = {h:.2f}. Unbiased paired MMD^2 (metrics.mmd2_paired) "
          "against the same N truth images.", "",
          "| set | " + " | ".join(f"h x {f:g}" for f in SCALES) + " |", "|---" * (len(SCALES) + 1) + "|"]
    md += [f"| {name} | " + " | ".join(f"{v:+.5f}" for v in vals) + " |" for name, vals in rows.items()]
    save_text(out / "mmd_floor.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
