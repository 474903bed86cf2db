"""Training throughput of the three objectives (prior, EPS, Palette) on CPU, and their cost
per step as a ratio to the prior's.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_throughput.py \\
        [--out benchmarks/results] [--steps 10] [--warmup 2] [--threads 2] \\
        [--configs tiny:32:64,tiny:64:16,small:32:64] [--no-memory]

A *step* is what one iteration of ``exactpost.training.loop.train`` does, built from the
loop's own pieces: the next batch of images (``BatchStream.next``: uint8 -> float, flips),
``make_batch`` (noise levels and noise; for EPS/Palette one operator per sample from the
five tasks mixed, the measurement y and the conditioning channels A^T y + certainty map;
for EPS the pivot), the forward pass with the EDM-weighted loss, backward, gradient-norm
clipping, the AdamW step and the EMA update. Each configuration (``preset:size:batch``)
builds the three objectives' networks side by side (``build_model``, from scratch) on the
same synthetic uint8 images, then runs ``warmup + steps`` rounds; in each round every
objective takes one step, in an order rotated from round to round, so that load changes on
a shared machine hit all three alike. Reported per objective: the median step time, images/s
(batch / median), the split of the step into data / make_batch / network+optimiser, and the
cost ratio to the prior as the median over rounds of (objective's step / prior's step in
the same round) -- a paired ratio, robust to the machine's load drifting between rounds.

Peak memory: each (configuration, objective) runs again in a fresh subprocess that builds
the same setup, resets the kernel's peak-RSS mark to the current RSS (``/proc/self/clear_refs``),
takes 3 steps and reports the growth of the peak resident set size (``VmHWM``, the quantity
``ru_maxrss`` reports). This counts what the process really holds -- activations, gradients,
AdamW moments (allocated at the first step), make_batch's temporaries -- including torch's
C++ allocations, which ``tracemalloc`` (Python allocations only) would miss. It is coarse
(allocator caching, page granularity) but honest for CPU. ``getrusage(RUSAGE_SELF).ru_maxrss``
itself is recorded but not used: Linux carries a parent's ru_maxrss over fork + exec, so
every child of the timing process reported the parent's ~1.2 GiB peak and a growth of 0.

Sets OMP_WAIT_POLICY=PASSIVE before importing torch (a busy 2-core machine otherwise makes
spinning OpenMP threads wait ~10x longer) and torch's threads to ``--threads``.
Writes ``train_throughput.json`` and ``train_throughput.md`` under ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from exactpost.nets import count_parameters  # noqa: E402
from exactpost.training.data import BatchStream  # noqa: E402
from exactpost.training.loop import EMA, TrainConfig, build_model  # noqa: E402
from exactpost.training.objectives import loss_on_batch, make_batch  # noqa: E402
from exactpost.training.precision import autocast_for  # noqa: E402

OBJECTIVES = ("prior", "eps", "palette")
DEFAULT_CONFIGS = "tiny:32:64,tiny:64:16,small:32:64"
MEMORY_STEPS = 3


@dataclass
class Setup:
    """One objective's training state, as train() builds it."""

    objective: str
    cfg: TrainConfig
    model: torch.nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    stream: BatchStream
    noise: torch.Generator
    images_seen: int = 0
    precision: str = "fp32"

    def step(self) -> tuple[float, float, float]:
        """One full training step; returns (data, make_batch, network+optimiser) seconds."""
        spec = self.cfg.objective_spec()
        t0 = time.perf_counter()
        x = self.stream.next()
        t1 = time.perf_counter()
        batch = make_batch(spec, x, self.noise)
        t2 = time.perf_counter()
        with autocast_for(self.precision, torch.device("cpu")):
            loss = loss_on_batch(self.model, batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.images_seen += self.cfg.batch_size
        self.ema.update(self.model, self.cfg.batch_size, self.images_seen)
        t3 = time.perf_counter()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.objective}: non-finite loss")
        return t1 - t0, t2 - t1, t3 - t2


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n smooth-ish uint8 RGB images [n, 3, size, size] (the cost does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(size // 4, 1), max(size // 4, 1), generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up * 255).round().clamp(0, 255).to(torch.uint8)


def build(objective: str, preset: str, size: int, batch: int, images: torch.Tensor, seed: int = 0,
          precision: str = "fp32", channels_last: bool = False) -> Setup:
    """The objective's network, EMA, AdamW, batch stream and noise generator (train()'s defaults),
    stepping in ``precision`` (fp32 or bf16 autocast) with the weights in channels_last or not."""
    cfg = TrainConfig(objective=objective, preset=preset, image_size=size, batch_size=batch, seed=seed, progress=False)
    model, _ = build_model(cfg, cfg.objective_spec(), torch.Generator().manual_seed(seed))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    ema = EMA(model, cfg.ema_halflife_kimg, cfg.ema_rampup)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    stream = BatchStream(images, batch, torch.Generator().manual_seed(seed + 1))
    return Setup(objective, cfg, model, ema, opt, stream, torch.Generator().manual_seed(seed + 2), precision=precision)


def parse_configs(text: str) -> list[tuple[str, int, int]]:
    out = []
    for part in text.split(","):
        name, size, batch = part.strip().split(":")
        out.append((name, int(size), int(batch)))
    return out


# --- timing -------------------------------------------------------------------------------
def time_config(preset: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """Interleaved timing of the three objectives for one configuration."""
    images = synthetic_images(4 * batch, size)
    setups = {obj: build(obj, preset, size, batch, images) for obj in OBJECTIVES}
    times: dict[str, list[tuple[float, float, float]]] = {obj: [] for obj in OBJECTIVES}
    loads = []
    for r in range(warmup + steps):
        order = OBJECTIVES[r % 3:] + OBJECTIVES[: r % 3]
        for obj in order:
            parts = setups[obj].step()
            if r >= warmup:
                times[obj].append(parts)
        loads.append(os.getloadavg()[0])
        print(f"  {preset} {size}x{size} round {r + 1}/{warmup + steps}: "
              + ", ".join(f"{o} {sum(times[o][-1]) if times[o] else 0:.3f}s" for o in OBJECTIVES), flush=True)
    prior_total = [sum(t) for t in times["prior"]]
    prior_net = [t[2] for t in times["prior"]]
    rows = []
    for obj in OBJECTIVES:
        total = [sum(t) for t in times[obj]]
        med = statistics.median(total)
        paired = [a / b for a, b in zip(total, prior_total)]
        share_batch = [t[1] / sum(t) for t in times[obj]]
        share_data = [t[0] / sum(t) for t in times[obj]]
        rows.append(dict(
            preset=preset, size=size, batch=batch, objective=obj,
            params=count_parameters(setups[obj].model), cond_channels=setups[obj].model.config.cond_channels,
            step_s_median=med, step_s_min=min(total), step_s_max=max(total), images_per_s=batch / med,
            make_batch_s_median=statistics.median(t[1] for t in times[obj]),
            make_batch_share_median=statistics.median(share_batch),
            data_share_median=statistics.median(share_data),
            ratio_to_prior_paired_median=statistics.median(paired),
            ratio_to_prior_paired_min=min(paired), ratio_to_prior_paired_max=max(paired),
            ratio_to_prior_of_medians=med / statistics.median(prior_total),
            net_ratio_to_prior_paired_median=statistics.median(t[2] / p for t, p in zip(times[obj], prior_net)),
            step_times_s=[round(v, 4) for v in total],
        ))
    return dict(rows=rows, load_avg_1min=loads)


# --- memory (fresh subprocess per objective) ----------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(objective: str, preset: str, size: int, batch: int, threads: int) -> None:
    """Print JSON: resident memory before and peak resident memory during MEMORY_STEPS steps.

    The peak is VmHWM (the kernel's peak RSS of this process image, the quantity ru_maxrss
    reports) after resetting it to the current RSS once the setup is built, so the growth
    is what the training steps add. ru_maxrss itself is recorded too, but it is not usable
    for the growth here: Linux carries the parent's ru_maxrss over fork + exec, so a child
    of the (large) timing process starts with the parent's peak."""
    torch.set_num_threads(threads)
    images = synthetic_images(4 * batch, size)
    setup = build(objective, preset, size, batch, images)
    reset = _reset_peak_rss()
    rss_before = _proc_status_kib("VmRSS")
    hwm_before = _proc_status_kib("VmHWM")
    for _ in range(MEMORY_STEPS):
        setup.step()
    hwm_after = _proc_status_kib("VmHWM")
    print(json.dumps(dict(rss_before_kib=rss_before, peak_rss_before_kib=hwm_before, peak_rss_after_kib=hwm_after,
                          peak_reset=reset, ru_maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))


def measure_memory(objective: str, preset: str, size: int, batch: int, threads: int) -> dict:
    """Run :func:`memory_child` in a fresh interpreter; adds the growth in MiB."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", f"{objective}:{preset}:{size}:{batch}",
           "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"),
                         check=False)
    if res.returncode:
        raise RuntimeError(f"memory child failed: {res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    base = out["rss_before_kib"] if out["peak_reset"] else out["peak_rss_before_kib"]
    out["peak_rss_growth_mib"] = (out["peak_rss_after_kib"] - base) / 1024
    out["rss_before_mib"] = out["rss_before_kib"] / 1024
    out["peak_rss_mib"] = out["peak_rss_after_kib"] / 1024
    return out


# --- report -------------------------------------------------------------------------------
def machine() -> dict:
    from exactpost.bench.machine import cpu_name

    return dict(cpu=cpu_name(), cores=os.cpu_count(), machine=platform.machine(), python=platform.python_version(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training throughput: prior vs EPS vs Palette (CPU)",
        "",
        f"`{result['command']}` on {result['date']}; {m['cpu']} ({m['cores']} cores, {m['machine']}), "
        f"torch {m['torch']}, {m['threads']} torch threads, OMP_WAIT_POLICY={m['omp_wait_policy']}.",
        "",
        f"**Busy machine:** {result['load_note']} 1-min load average during the timing: "
        f"{result['load_min']:.2f}-{result['load_max']:.2f} on {m['cores']} cores. Absolute "
        "times are therefore pessimistic and noisy; the ratios are paired within each round "
        "(all three objectives step back to back, order rotated) and are what counts.",
        "",
        f"Step = data batch + make_batch + forward/loss + backward + grad clip + AdamW + EMA "
        f"(the loop's own pieces), networks from scratch. {result['warmup']} warm-up rounds, then "
        f"{result['steps']} timed steps per objective; medians. EPS and Palette draw one operator per "
        "sample from the five tasks mixed (inpaint-random, inpaint-box, sr4, deblur-gauss, "
        "deblur-motion), sigma_y = 0.05, default conditioning (A^T y + certainty map, 4 channels). "
        "Batch 64 at 32x32, 16 at 64x64.",
        "",
        "Ratio = median over rounds of (objective step / prior step in the same round), "
        "[min-max] over rounds. Net+optim ratio: the same for the step without data and "
        "make_batch (forward, backward, clip, AdamW, EMA): what the conditioning inputs (4 more "
        "input channels, task and sigma_y embeddings) add to the network itself. Peak RSS growth = peak resident set (VmHWM, what ru_maxrss "
        f"reports; reset after the setup is built) over {MEMORY_STEPS} steps minus the resident set "
        "before them, in a fresh process per objective: captures torch's C++ allocations, unlike "
        "tracemalloc; allocator caching makes it coarse. ru_maxrss itself is inherited across "
        "fork+exec on Linux, so it is not used for the growth.",
        "",
        "| preset | size | batch | objective | params | s/step | images/s | ratio to prior | "
        "make_batch (ms) | make_batch share | data share | net+optim ratio | peak RSS growth (of peak), MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mem = r.get("memory")
        mem_s = f"{mem['peak_rss_growth_mib']:.0f} (of {mem['peak_rss_mib']:.0f})" if mem else "-"
        lines.append(
            f"| {r['preset']} | {r['size']} | {r['batch']} | {r['objective']} | {r['params'] / 1e6:.2f}M | "
            f"{r['step_s_median']:.3f} | {r['images_per_s']:.1f} | {r['ratio_to_prior_paired_median']:.3f} "
            f"[{r['ratio_to_prior_paired_min']:.2f}-{r['ratio_to_prior_paired_max']:.2f}] | "
            f"{1000 * r['make_batch_s_median']:.1f} | {100 * r['make_batch_share_median']:.1f}% | "
            f"{100 * r['data_share_median']:.1f}% | {r['net_ratio_to_prior_paired_median']:.3f} | {mem_s} |")
    lines += ["", "Target: EPS and Palette within 10% of the prior's cost per step (ratio <= 1.10).", ""]
    for v in result["verdicts"]:
        lines.append(f"* {v}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated preset:size:batch")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-objective memory subprocesses")
    ap.add_argument("--load-note", default="a background training job (`exactpost train`, 2 threads) was "
                    "running on this machine throughout.")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        obj, preset, size, batch = args.memory_child.split(":")
        memory_child(obj, preset, int(size), int(batch), args.threads)
        return

    command = " ".join(["OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py"]
                       + [shlex.quote(a) for a in sys.argv[1:]])
    rows, loads = [], []
    t_start = time.time()
    for preset, size, batch in parse_configs(args.configs):
        print(f"timing {preset} {size}x{size} batch {batch}", flush=True)
        res = time_config(preset, size, batch, args.steps, args.warmup)
        loads += res["load_avg_1min"]
        if not args.no_memory:
            for r in res["rows"]:
                r["memory"] = measure_memory(r["objective"], preset, size, batch, args.threads)
                print(f"  memory {r['objective']}: +{r['memory']['peak_rss_growth_mib']:.0f} MiB", flush=True)
        rows += res["rows"]

    verdicts = []
    for preset, size, batch in parse_configs(args.configs):
        for obj in ("eps", "palette"):
            r = next(r for r in rows if (r["preset"], r["size"], r["batch"], r["objective"]) == (preset, size, batch, obj))
            ratio = r["ratio_to_prior_paired_median"]
            verdicts.append(f"{preset} {size}x{size}, {obj}: {ratio:.3f} x the prior's step "
                            f"({'meets' if ratio <= 1.10 else 'MISSES'} the 10% target); make_batch "
                            f"{100 * r['make_batch_share_median']:.1f}% of its step")
    result = dict(
        command=command, date=datetime.date.today().isoformat(), machine=machine(), steps=args.steps,
        warmup=args.warmup, load_note=args.load_note, load_min=min(loads), load_max=max(loads),
        wall_s=round(time.time() - t_start, 1), rows=rows, verdicts=verdicts,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(result, indent=1))
    (out / "train_throughput.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
