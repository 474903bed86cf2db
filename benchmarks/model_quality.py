"""Quality of a bundled model on held-out test images, per task (issue 4's targets).

For each task of the registry, on ``--n`` test images (seed 0, sigma_y 0.05; operators and
noise drawn exactly as ``exactpost demo`` draws them):

- ``lmmse``: the exact linear MMSE estimate under a Gaussian prior N(m, S) fitted to the
  model's training images (mean and full covariance; ``exactpost.priors.gaussian``);
- ``eps``: the EPS network's 1-NFE posterior mean, and 4 posterior samples at 20 NFE;
- ``palette``: the Palette network's 4 samples at a budget of 100 NFE (EDM Heun spends 2 N - 1:
  99) and its 1-call mean.

Scores: PSNR/SSIM of the means, CRPS of the 4 samples (fair estimator, [-1, 1] units).
Targets: EPS mean PSNR > LMMSE PSNR on every task; EPS CRPS (20 NFE) < Palette CRPS
(100 NFE) on at least four of the five tasks.

Writes ``benchmarks/results/model_quality_<model>.json`` and ``.md``; with ``--update-cards``
also stores the table in the model cards (``quality``). Example (faces, 100 test images)::

    python benchmarks/model_quality.py --model faces-32 --data ../shared/data/faces64.npz \\
        --train-split 0 --test-split 2 --n 100 --update-cards
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from exactpost.inference import zoo
from exactpost.app.demo import task_seed
from exactpost.io.images import save_text
from exactpost.priors.gaussian import GaussianPrior
from exactpost.core.metrics import crps, psnr, ssim
from exactpost.inference.restoration import eps_restore, palette_restore
from exactpost.core.tasks import make_operator, simulate, task_names
from exactpost.io.images import load_images, parse_split, to_float

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(args: argparse.Namespace) -> dict:
    eps_entry = zoo.find_model(args.model, "eps")
    pal_entry = zoo.find_model(args.model, "palette") if not args.skip_palette else None
    eps_net = zoo.load(eps_entry)
    size = eps_net.config.image_size
    train = to_float(load_images(args.data, args.train_key, parse_split(args.train_split), size))
    test = to_float(load_images(args.data, args.test_key, parse_split(args.test_split), size))[: args.n]
    lmmse_key = dict(data=str(args.data), train_key=args.train_key, train_split=args.train_split, test_key=args.test_key,
                     test_split=args.test_split, n=len(test), seed=args.seed, sigma_y=args.sigma_y, size=size)
    cache = Path(args.lmmse_cache) if args.lmmse_cache else None
    cached = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    if cached.get("key") != lmmse_key:
        cached = {"key": lmmse_key, "rows": {}}
    gauss = None
    pal_net = zoo.load(pal_entry) if pal_entry else None
    rows = []
    for task in args.tasks or task_names():
        g = torch.Generator().manual_seed(task_seed(args.seed, task))
        op = make_operator(task, len(test), tuple(test.shape[1:]), generator=g)
        y = simulate(op, test, args.sigma_y, generator=g)
        row: dict = {"task": task}
        if task not in cached["rows"]:
            if gauss is None:
                t = time.perf_counter()
                gauss = GaussianPrior.fit(train)
                print(f"Gaussian prior fitted to {len(train)} training images in {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            est, info = gauss.lmmse(op, y, args.sigma_y)
            est = est.float()
            cached["rows"][task] = dict(
                lmmse_psnr=float(psnr(est, test).mean()), lmmse_ssim=float(ssim(est, test).mean()),
                lmmse_cg_iterations=info.iterations, lmmse_cg_residual=info.relative_residual,
                lmmse_seconds=time.perf_counter() - t)
            if cache:
                save_text(cache, json.dumps(cached, indent=2) + "\n")
        row.update(cached["rows"][task])
        if args.only_lmmse:
            rows.append(row)
            print(json.dumps(row))
            continue
        res = eps_restore(eps_net, eps_entry.card, op, y, args.sigma_y, task, n_samples=4, nfe=20, generator=g)
        row.update(eps_mean_psnr=float(psnr(res.mean, test).mean()), eps_mean_ssim=float(ssim(res.mean, test).mean()),
                   eps_crps=float(crps(res.samples, test).mean()), eps_nfe=res.nfe_sample,
                   eps_sample_psnr=float(torch.stack([psnr(s, test) for s in res.samples]).mean()),
                   eps_seconds_per_image=res.seconds / len(test), eps_sampler=res.settings)
        if pal_net is not None:
            pres = palette_restore(pal_net, pal_entry.card, op, y, args.sigma_y, task, n_samples=4, nfe=100,
                                   generator=g)
            row.update(palette_mean_psnr=float(psnr(pres.mean, test).mean()),
                       palette_crps=float(crps(pres.samples, test).mean()), palette_nfe=pres.nfe_sample,
                       palette_sample_psnr=float(torch.stack([psnr(s, test) for s in pres.samples]).mean()),
                       palette_seconds_per_image=pres.seconds / len(test))
        rows.append(row)
        print(json.dumps(row))
    if args.only_lmmse:
        return {"rows": rows}
    eps_beats_lmmse = [r["task"] for r in rows if r["eps_mean_psnr"] > r["lmmse_psnr"]]
    eps_beats_palette = [r["task"] for r in rows if "palette_crps" in r and r["eps_crps"] < r["palette_crps"]]
    return dict(
        model=args.model, eps_sha256=eps_entry.card.get("sha256"), eps_steps=eps_entry.card.get("steps"),
        palette_sha256=pal_entry.card.get("sha256") if pal_entry else None,
        palette_steps=pal_entry.card.get("steps") if pal_entry else None,
        data=dict(path=str(args.data), train_key=args.train_key, train_split=args.train_split,
                  test_key=args.test_key, test_split=args.test_split, n=len(test), train_images=len(train)),
        seed=args.seed, sigma_y=args.sigma_y, rows=rows,
        eps_mean_beats_lmmse=eps_beats_lmmse, eps_crps_beats_palette=eps_beats_palette,
        targets=dict(lmmse_every_task=len(eps_beats_lmmse) == len(rows),
                     palette_at_least_4=len(eps_beats_palette) >= min(4, len(rows))),
        command=args.command, hardware=f"{torch.get_num_threads()} threads, torch {torch.__version__}",
    )


def _nfe(res: dict, method: str) -> str:
    """The NFE per sample ``method`` actually spent (one value, or the distinct values)."""
    used = sorted({r[f"{method}_nfe"] for r in res["rows"] if f"{method}_nfe" in r})
    return "/".join(map(str, used)) or "-"


def _palette_measured(res: dict) -> bool:
    return any("palette_crps" in r for r in res["rows"])


def _palette_verdict(res: dict) -> str:
    """'EPS CRPS beats Palette on k/n (target >= 4)', or that Palette was not measured
    (--skip-palette), rather than a 0/n that reads like a loss."""
    if not _palette_measured(res):
        return "Palette not measured (--skip-palette), so no EPS-vs-Palette CRPS count"
    return f"EPS CRPS beats Palette on {len(res['eps_crps_beats_palette'])}/{len(res['rows'])} (target >= 4)"


def markdown(res: dict) -> str:
    palette = (f"Palette {res['palette_steps']} steps" if _palette_measured(res) else "Palette not measured")
    lines = [f"# Model quality: {res['model']} (EPS {res['eps_steps']} steps, {palette})",
             "", f"{res['data']['n']} test images, seed {res['seed']}, sigma_y {res['sigma_y']}. "
             "PSNR (dB) of the posterior means; CRPS of 4 samples ([-1, 1] units, lower is better). "
             "LMMSE: exact linear MMSE under a Gaussian prior fitted to the "
             f"{res['data']['train_images']} training images.", "",
             f"| task | LMMSE PSNR | EPS mean PSNR (1 NFE) | EPS sample PSNR | EPS CRPS ({_nfe(res, 'eps')} NFE) | "
             f"Palette mean PSNR | Palette CRPS ({_nfe(res, 'palette')} NFE) |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        pal = (f"{r['palette_mean_psnr']:.2f} | {r['palette_crps']:.4f}" if "palette_crps" in r else "- | -")
        lines.append(f"| {r['task']} | {r['lmmse_psnr']:.2f} | {r['eps_mean_psnr']:.2f} | {r['eps_sample_psnr']:.2f} "
                     f"| {r['eps_crps']:.4f} | {pal} |")
    n = len(res["rows"])
    lines += ["", f"EPS mean beats LMMSE on {len(res['eps_mean_beats_lmmse'])}/{n} tasks (target {n}/{n}); "
              f"{_palette_verdict(res)}.", "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def update_cards(res: dict) -> None:
    """Write the result as the ``quality`` entry of the EPS card, and of the Palette card when
    Palette was measured (with --skip-palette its card keeps its own earlier entry)."""
    summary = (f"test n={res['data']['n']}: EPS mean > LMMSE on {len(res['eps_mean_beats_lmmse'])}/{len(res['rows'])}"
               f" tasks, {_palette_verdict(res)}")
    for kind in ("eps", "palette") if _palette_measured(res) else ("eps",):
        entry = zoo.find_model(res["model"], kind)
        card_path = entry.path.with_suffix(".json")
        card = json.loads(card_path.read_text())
        card["quality"] = dict(summary=summary, rows=res["rows"], data=res["data"], seed=res["seed"],
                               sigma_y=res["sigma_y"], command=res["command"])
        save_text(card_path, json.dumps(card, indent=2) + "\n")


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--data", required=True)
    ap.add_argument("--train-key", default=None)
    ap.add_argument("--train-split", default=None)
    ap.add_argument("--test-key", default=None)
    ap.add_argument("--test-split", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--tasks", type=lambda s: s.split(","), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-palette", action="store_true")
    ap.add_argument("--update-cards", action="store_true")
    ap.add_argument("--lmmse-cache", default=None, help="JSON file: reuse the LMMSE rows computed for the same "
                                                         "data, images, seed and sigma_y (they do not depend on the model)")
    ap.add_argument("--only-lmmse", action="store_true", help="compute (and cache) the LMMSE rows only")
    ap.add_argument("--out", default=None, help="results prefix (default benchmarks/results/model_quality_<model>)")
    args = ap.parse_args()
    args.command = "python benchmarks/model_quality.py " + " ".join(sys.argv[1:])
    torch.set_num_threads(args.threads)
    res = evaluate(args)
    if args.only_lmmse:
        return
    out = Path(args.out) if args.out else RESULTS / f"model_quality_{args.model}"
    save_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    save_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    if args.update_cards:
        update_cards(res)


if __name__ == "__main__":
    main()
