"""Cost per image of every method at NFE = 100, as a ratio to bare unconditional sampling.

The full measurement (issue 5; run with nothing else on the machine, e.g. training paused)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/cost.py \\
        --threads 1 --repeats 5 --batch 16 --nfe 100 --task deblur-motion

(about 10 minutes on the 2-core development machine). A quick check of the script itself::

    .venv/bin/python benchmarks/cost.py --nfe 10 --repeats 1 --out /tmp/cost_quick

What is timed, on one batch of ``--batch`` 32x32 images (the bundled demo images of
``--model``, tiled to the batch), measurements of ``--task`` with sigma_y 0.05 (operator and
noise drawn from a generator seeded ``task_seed(seed, task)``); every method does one
posterior sample per image:

* ``bare``: unconditional sampling of the prior (``models/<model>/prior`` via
  ``as_denoiser(net, EDM())``): one call at sigma_max from noise, then the ``--eps-sampler``
  (default :data:`exactpost.core.sampler_spec.DEFAULT`, DPM-Solver++(2M), one NFE per level) with
  ``nfe - 1`` NFE started from N(that call, sigma_max^2 I) -- the unconditional twin of
  ``eps``, so that both use the same solver and the same network calls;
* ``eps``: :func:`exactpost.inference.restoration.eps_restore` with ``n_samples=1, nfe=nfe`` and the
  ``--eps-sampler`` (the 1-NFE posterior mean + an ``nfe - 1``-NFE run on the EPS posterior
  denoiser; includes the conditioning A^T y and every pivot);
* ``palette``: :func:`exactpost.inference.restoration.palette_restore` with ``n_samples=1`` and
  ``nfe - 1`` for the sample and its default sampler (EDM Heun, 2 N - 1 NFE, so it may use
  one call fewer);
* every method of :data:`exactpost.baselines.METHODS` through ``run_method(..., nfe=nfe,
  task=task)`` on the prior, with the settings tuned by ``benchmarks/tune_baselines.py``
  where ``--tuned`` has them (step sizes hardly change the cost). Methods that backpropagate
  (DPS, PiGDM) run under ``torch.enable_grad()``, the others under ``torch.no_grad()``; the
  network parameters are frozen (``requires_grad=False``) for every method.

Timing: a warm-up run of every method first, then ``--repeats`` rounds, each running every
method once (interleaved; the order rotates by one method per round so no method always follows
the same one), wall time by ``time.perf_counter``. Reported: the median seconds per image
(median run time / batch) and its ratio to the median of ``bare`` from the same run; the NFE
and backward passes each method actually used.

Peak memory: each method runs once more in a fresh subprocess (``--child METHOD``) that loads
the same models and data and builds the same measurement; then it resets its peak resident set
size to the current one (Linux: ``5`` written to ``/proc/self/clear_refs``), runs the method
once and reads the peak, ``VmHWM`` of ``/proc/self/status`` (KiB). The table gives that peak
and the peak minus the RSS just before the run (the method's own working memory: activations,
autograd's saved tensors, the sampler's buffers), so the loading peak cannot hide it. Where
the reset is not possible, the lifetime ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is used
and the extra is taken against a baseline child (``none``) that loads everything and runs
nothing (the JSON's ``memory_method`` says which).

Targets (paper, B200 GPU, ImageNet-64): EPS <= 1.02x (paper 1.006x); the baselines cost DPS
2.29x, PiGDM 2.43x, DAPS 2.18x, DDNM 1.34x, MPGD 1.35x. Writes ``cost.json`` and ``cost.md``
to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER_RATIOS = {"eps": 1.006, "ddnm": 1.34, "mpgd": 1.35, "daps": 2.18, "dps": 2.29, "pigdm": 2.43}
EXTRA = ("bare", "eps", "palette")
SIGMA_MAX = 80.0


def all_methods() -> list[str]:
    """``bare``, ``eps``, ``palette`` and every registered zero-shot method."""
    from exactpost.baselines import METHODS

    return list(EXTRA) + list(METHODS)


@dataclass
class Setup:
    """The loaded models and the measurement every method is timed on."""

    prior_net: torch.nn.Module
    eps: Optional[tuple[torch.nn.Module, dict]]
    palette: Optional[tuple[torch.nn.Module, dict]]
    op: Any
    y: torch.Tensor
    x: torch.Tensor
    task: str
    sigma_y: float
    tuned: dict
    models: dict  # kind -> {sha256, steps, params} of the loaded checkpoints
    eps_sampler: str = ""  # sampler spec of eps and bare (exactpost.core.sampler_spec); "": DEFAULT


def _freeze(net: torch.nn.Module) -> torch.nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_setup(args: argparse.Namespace, methods: Sequence[str]) -> Setup:
    """Load the prior (and the EPS / Palette networks if ``methods`` needs them), the images
    and the measurement."""
    from exactpost.inference import zoo
    from exactpost.app.demo import task_seed
    from exactpost.core.tasks import make_operator, simulate
    from exactpost.io.images import resize_uint8, to_float, to_nchw_uint8

    prior_entry = zoo.find_model(args.model, "prior")
    prior = _freeze(zoo.load(prior_entry))
    nets: dict[str, Optional[tuple[torch.nn.Module, dict]]] = {}
    models = {"prior": prior_entry.card}
    for kind in ("eps", "palette"):
        if kind in methods:
            entry = zoo.find_model(args.model, kind)
            nets[kind] = (_freeze(zoo.load(entry)), entry.card)
            models[kind] = entry.card
        else:
            nets[kind] = None
    models = {k: dict(sha256=c.get("sha256"), steps=c.get("steps"), params=c.get("params")) for k, c in models.items()}
    size = prior.config.image_size
    imgs = to_nchw_uint8(zoo.demo_images(args.model), "demo images")
    if imgs.shape[-1] != size:
        imgs = resize_uint8(imgs, size)
    reps = -(-args.batch // len(imgs))
    x = to_float(imgs.repeat(reps, 1, 1, 1)[: args.batch])
    g = torch.Generator().manual_seed(task_seed(args.seed, args.task))
    op = make_operator(args.task, args.batch, tuple(x.shape[1:]), generator=g)
    y = simulate(op, x, args.sigma_y, generator=g)
    tuned: dict = {}
    if args.tuned and Path(args.tuned).is_file():
        sys.path.insert(0, str(HERE))
        from tune_baselines import load_tuned

        tuned = load_tuned(args.tuned)
    return Setup(prior, nets["eps"], nets["palette"], op, y, x, args.task, args.sigma_y, tuned, models,
                 eps_sampler=args.eps_sampler)


def make_runner(method: str, s: Setup, nfe: int) -> Callable[[torch.Generator], dict]:
    """A function generator -> {nfe, backward_passes, settings} that runs ``method`` once."""
    from exactpost.baselines import get_method, run_method
    from exactpost.core.interpolants import EDM
    from exactpost.nets.precond import as_denoiser
    from exactpost.inference.restoration import eps_restore, palette_restore
    from exactpost.core.sampler_spec import DEFAULT, parse_spec

    shape = tuple(s.x.shape)
    prior = as_denoiser(s.prior_net, EDM())
    spec = parse_spec(s.eps_sampler) if s.eps_sampler else DEFAULT
    if method == "bare":
        def run(g: torch.Generator) -> dict:
            with torch.no_grad():
                e = torch.randn(shape, generator=g)
                mean = prior(SIGMA_MAX * e, SIGMA_MAX)
                out = spec.run(prior, shape, nfe - 1, SIGMA_MAX, generator=g, init_mean=mean)
            return dict(nfe=1 + out.nfe, backward_passes=0,
                        settings=dict(sampler=spec.name, levels=spec.levels_for_nfe(nfe - 1),
                                      start="one call at sigma_max, then the sampler"))
        return run
    if method == "eps":
        net, card = s.eps

        def run(g: torch.Generator) -> dict:
            res = eps_restore(net, card, s.op, s.y, s.sigma_y, s.task, n_samples=1, nfe=nfe, generator=g,
                              sampler=spec)
            return dict(nfe=res.nfe_sample, backward_passes=0, settings=res.settings)
        return run
    if method == "palette":
        net, card = s.palette

        def run(g: torch.Generator) -> dict:
            res = palette_restore(net, card, s.op, s.y, s.sigma_y, s.task, n_samples=1, nfe=nfe - 1, generator=g)
            return dict(nfe=res.nfe_mean + res.nfe_sample, backward_passes=0, settings=res.settings)
        return run
    spec = get_method(method)
    settings = dict(s.tuned.get(method, {}).get(s.task, {}))

    def run(g: torch.Generator) -> dict:
        with torch.enable_grad() if spec.uses_backprop else torch.no_grad():
            res = run_method(method, prior, s.op, s.y, s.sigma_y, shape, interpolant=EDM(), nfe=nfe, generator=g,
                             task=s.task, **settings)
        return dict(nfe=res.nfe, backward_passes=res.backward_passes,
                    settings=dict(res.settings, tuned=settings or None))
    return run


def time_methods(s: Setup, methods: Sequence[str], nfe: int, repeats: int, seed: int, log=print) -> dict:
    """Warm-up, then ``repeats`` interleaved rounds; {method: {seconds: [...], nfe, ...}}."""
    runners = {m: make_runner(m, s, nfe) for m in methods}
    out: dict[str, dict] = {}
    for m in methods:  # warm-up (also records NFE, backward passes and settings)
        t0 = time.perf_counter()
        info = runners[m](torch.Generator().manual_seed(seed))
        out[m] = dict(info, seconds=[], warmup_seconds=time.perf_counter() - t0)
        log(f"warm-up {m:16s} {out[m]['warmup_seconds']:7.2f} s  ({info['nfe']} NFE, "
            f"{info['backward_passes']} backward)")
    for r in range(repeats):
        order = list(methods[r % len(methods):]) + list(methods[: r % len(methods)])
        for m in order:
            g = torch.Generator().manual_seed(seed + 1 + r)
            t0 = time.perf_counter()
            runners[m](g)
            out[m]["seconds"].append(time.perf_counter() - t0)
        log(f"round {r + 1}/{repeats}: " + ", ".join(f"{m} {out[m]['seconds'][-1]:.2f}s" for m in methods))
    return out


def _proc_status_kib(field: str) -> Optional[int]:
    """A KiB field of /proc/self/status (``VmRSS``: current RSS, ``VmHWM``: peak RSS since the
    start or the last reset), None where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to
    /proc/self/clear_refs); False where that is not possible. (ru_maxrss also keeps the peak of
    exited threads, so it cannot be reset reliably and is used only as the fallback.)"""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_main(args: argparse.Namespace, methods: Sequence[str]) -> None:
    """Subprocess entry: load the models of ``methods`` (the parent's list, so every child holds
    the same models), reset the peak RSS, run ``args.child`` once (``none``: nothing) and print
    the peak RSS of the run, the RSS just before it and whether the reset worked."""
    import gc

    s = load_setup(args, methods)
    runner = None if args.child == "none" else make_runner(args.child, s, args.nfe)
    gc.collect()
    before = _proc_status_kib("VmRSS")
    reset = _reset_peak() and _proc_status_kib("VmHWM") is not None
    if runner is not None:
        runner(torch.Generator().manual_seed(args.seed))
    peak = _proc_status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK_RSS_KIB " + json.dumps(dict(peak=peak, before=before, reset=reset)), flush=True)


def measure_memory(args: argparse.Namespace, methods: Sequence[str], log=print) -> dict:
    """Per method (and the baseline child ``none``) in a fresh subprocess: {peak, before, reset}
    in KiB (see the module docstring)."""
    base_cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--task", args.task,
                "--batch", str(args.batch), "--nfe", str(args.nfe), "--seed", str(args.seed),
                "--sigma-y", str(args.sigma_y), "--threads", str(args.threads), "--tuned", args.tuned or "",
                "--eps-sampler", args.eps_sampler,
                "--methods", ",".join(methods)]
    out: dict[str, dict] = {}
    for m in ["none"] + list(methods):
        t0 = time.perf_counter()
        proc = subprocess.run(base_cmd + ["--child", m], capture_output=True, text=True, env=dict(os.environ))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_RSS_KIB ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child {m} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        out[m] = json.loads(lines[-1].split(" ", 1)[1])
        log(f"memory {m:16s} peak {out[m]['peak'] / 1024:8.1f} MiB, before the run "
            f"{(out[m]['before'] or 0) / 1024:8.1f} MiB ({time.perf_counter() - t0:.1f} s)")
    return out


def method_memory(mem: dict, m: str) -> dict:
    """Peak and extra memory (MiB) of method ``m``: with the peak reset after loading, extra =
    peak of the run - RSS before it; otherwise extra = lifetime peak - the ``none`` child's."""
    r = mem[m]
    if r["reset"] and r["before"] is not None:
        return dict(peak_rss_mib=r["peak"] / 1024, extra_rss_mib=(r["peak"] - r["before"]) / 1024,
                    memory_method="VmHWM reset after loading (clear_refs); extra = VmHWM after the run - VmRSS before it")
    return dict(peak_rss_mib=r["peak"] / 1024, extra_rss_mib=(r["peak"] - mem["none"]["peak"]) / 1024,
                memory_method="lifetime ru_maxrss; extra = peak - peak of a child that only loads")


def summarize(timing: dict, memory: Optional[dict], batch: int) -> list[dict]:
    """One row per method: median s/image, ratio to bare, NFE, backward passes, memory."""
    bare = statistics.median(timing["bare"]["seconds"]) if "bare" in timing else None
    rows = []
    for m, t in timing.items():
        med = statistics.median(t["seconds"])
        row = dict(method=m, nfe=t["nfe"], backward_passes=t["backward_passes"], median_seconds=med,
                   seconds_per_image=med / batch, ratio=med / bare if bare else None,
                   min_seconds=min(t["seconds"]), max_seconds=max(t["seconds"]), runs=t["seconds"],
                   warmup_seconds=t["warmup_seconds"], paper_ratio=PAPER_RATIOS.get(m), settings=t["settings"])
        if memory is not None:
            row.update(method_memory(memory, m))
        rows.append(row)
    return rows


def markdown(res: dict) -> str:
    """The Markdown report of a cost run."""
    mem = res["memory"] is not None
    lines = ["# Cost per image at NFE = %d (ratio to bare unconditional sampling)" % res["nfe"], "",
             f"{res['machine']}; batch {res['batch']} of {res['image_size']}x{res['image_size']} images, task "
             f"{res['task']}, sigma_y {res['sigma_y']}, model {res['model']}; median of {res['repeats']} interleaved "
             f"rounds after a warm-up. {res['note']}", "",
             "| method | NFE | backward passes | s / image (median) | ratio to bare | paper ratio (GPU) |"
             + (" peak RSS of the run (MiB) | extra over the loaded state (MiB) |" if mem else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if mem else "")]
    for r in res["rows"]:
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-"
        paper = f"{r['paper_ratio']}x" if r["paper_ratio"] else "-"
        line = (f"| {r['method']} | {r['nfe']} | {r['backward_passes']} | {r['seconds_per_image']:.4f} | {ratio} "
                f"| {paper} |")
        if mem:
            line += f" {r['peak_rss_mib']:.0f} | {r['extra_rss_mib']:.0f} |"
        lines.append(line)
    eps = next((r for r in res["rows"] if r["method"] == "eps"), None)
    if eps is not None and eps["ratio"] is not None:
        lines += ["", f"EPS: {eps['ratio']:.3f}x the bare sampler (target <= 1.02x: "
                  f"{'met' if eps['ratio'] <= 1.02 else 'missed'})."]
    tuned = f"the tuned settings of {Path(res['tuned']).name}" if res["tuned"] else "the registry defaults"
    if not mem:
        memory = "Memory: not measured (--no-memory)."
    elif res["memory_method"] and "reset" in res["memory_method"]:
        memory = ("Memory: a fresh subprocess per method loads the models and data, resets its peak RSS (VmHWM, "
                  "Linux clear_refs), runs the method once and reads VmHWM; 'extra' = that peak - the RSS just "
                  "before the run.")
    else:
        memory = ("Memory: a fresh subprocess per method loads the models and data, runs the method once and reads "
                  "its lifetime ru_maxrss; 'extra' = that peak - the peak of a subprocess that only loads.")
    lines += ["", f"bare / eps: one network call at sigma_max, then the EPS sampler {res['eps_sampler']} "
              "(exactpost.core.sampler_spec) with NFE - 1 (eps: the 1-NFE posterior mean and the pivot at every call; "
              "bare: the same solver on the prior, unconditionally); palette: its 1-call mean and an EDM Heun "
              "sample (its default). "
              f"Registry methods: run_method(nfe=NFE, task=task) with {tuned}. {memory}", "",
              f"Command: `{res['command']}` ({res['date']}, torch {res['torch']}).", ""]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--task", default="deblur-motion",
                    help="task of the measurement (default: deblur-motion, whose pivot costs most)")
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of bare,eps,palette and the registry methods (default: all; "
                         "bare is always added, it is the reference)")
    ap.add_argument("--tuned", default=str(RESULTS / "baseline_tuning.json"),
                    help="tuned settings (benchmarks/tune_baselines.py); '' or a missing file: registry defaults")
    ap.add_argument("--eps-sampler", default=None, metavar="SPEC",
                    help="sampler of eps and of the bare reference, an exactpost.core.sampler_spec spec "
                         "(default: exactpost.core.sampler_spec.DEFAULT, the measured EPS default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method peak-memory subprocesses")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.nfe < 2:
        ap.error("--nfe must be >= 2 (one call at sigma_max plus a sampler run)")
    from exactpost.core.sampler_spec import DEFAULT, parse_spec

    try:
        args.eps_sampler = parse_spec(args.eps_sampler).name if args.eps_sampler else DEFAULT.name
    except ValueError as err:
        ap.error(str(err))
    args.command = "python benchmarks/cost.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    known = all_methods()
    methods = known if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "bare" not in methods:
        methods = ["bare"] + methods
    if args.child is not None:
        child_main(args, methods)
        return None
    s = load_setup(args, methods)
    t0 = time.perf_counter()
    timing = time_methods(s, methods, args.nfe, args.repeats, args.seed)
    memory = None if args.no_memory else measure_memory(args, methods)
    rows = summarize(timing, memory, args.batch)
    res = dict(rows=rows, nfe=args.nfe, batch=args.batch, repeats=args.repeats, task=args.task, sigma_y=args.sigma_y,
               model=args.model, checkpoints=s.models, image_size=int(s.x.shape[-1]), threads=torch.get_num_threads(),
               tuned=args.tuned if s.tuned else None, memory=memory, eps_sampler=args.eps_sampler,
               memory_method=None if memory is None else rows[0].get("memory_method"),
               machine=f"{platform.machine()} CPU ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)",
               torch=torch.__version__, date=time.strftime("%Y-%m-%d %H:%M"), command=args.command,
               note=("Seconds per image = median run time / batch; ratio = median run time / bare's median from "
                     "the same run."), seconds=time.perf_counter() - t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "cost.md").write_text(markdown(res))
    for r in rows:
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-"
        print(f"{r['method']:16s} {r['nfe']:4d} NFE {r['backward_passes']:4d} bwd  {r['seconds_per_image']:.4f} s/img  "
              f"{ratio}" + (f"  peak {r['peak_rss_mib']:.0f} MiB (+{r['extra_rss_mib']:.0f})" if memory else ""))
    print(f"EPS and bare sampler: {args.eps_sampler}")
    print(f"wrote {out / 'cost.md'} ({res['seconds']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
