"""Training step time by precision and memory layout, by threads, and as two concurrent jobs:
the precision rows of the training-throughput benchmark (``train_throughput.py`` times the three
objectives; this times one objective's step in its variants).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_precision.py \\
        [--config tiny:32:64] [--objective eps] [--steps 6] [--warmup 2] [--out benchmarks/results]

1. **Variants, one process, 1 thread, interleaved rounds** (order rotated each round): fp32,
   bf16 autocast (float32 master weights), fp32 with the weights in channels_last, bf16 with
   channels_last. Each variant's ratio to fp32 is the median over rounds of (variant step /
   fp32 step in the same round): a paired ratio, robust to load drifting between rounds.
2. **Threads**: fp32 and the fastest variant at 1 and at 2 torch threads, interleaved.
3. **Two concurrent 1-thread jobs** (how long runs are trained on a 2-core machine): two
   subprocesses, each pinned to no core, each timing the fastest variant and fp32 for the
   same rounds; images/s per job and in total.

A step is the training loop's own pieces (see ``train_throughput.py``: data, make_batch,
forward + loss, backward, clip, AdamW, EMA). Writes ``train_precision.json`` / ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import build, machine, parse_configs, synthetic_images  # noqa: E402

from exactpost.io.images import save_text  # noqa: E402

VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "fp32+channels_last": ("fp32", True),
            "bf16+channels_last": ("bf16", True)}


def time_variants(names: list[str], objective: str, preset: str, size: int, batch: int, steps: int, warmup: int,
                  threads: int) -> dict[str, list[float]]:
    """{variant: step seconds over the timed rounds}, variants stepping in rotated order."""
    torch.set_num_threads(threads)
    images = synthetic_images(4 * batch, size)
    setups = {n: build(objective, preset, size, batch, images, precision=VARIANTS[n][0], channels_last=VARIANTS[n][1])
              for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + steps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = sum(setups[n].step())
            if r >= warmup:
                times[n].append(t)
        print(f"  {threads} thread(s) round {r + 1}/{warmup + steps}: "
              + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names if times[n]), flush=True)
    return times


def summarise(times: dict[str, list[float]], batch: int, base: str = "fp32") -> dict[str, dict]:
    out = {}
    for n, ts in times.items():
        paired = [a / b for a, b in zip(ts, times[base])]
        med = statistics.median(ts)
        out[n] = dict(step_s_median=med, images_per_s=batch / med, ratio_to_fp32=statistics.median(paired),
                      ratio_min=min(paired), ratio_max=max(paired), step_times_s=[round(t, 4) for t in ts])
    return out


def concurrent_jobs(names: list[str], args: argparse.Namespace) -> list[dict]:
    """Two 1-thread subprocesses timing ``names`` side by side; their summaries."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(names), "--config", args.config,
           "--objective", args.objective, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise RuntimeError(f"concurrent job failed: {stderr[-2000:]}")
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Training step by precision, memory layout and threads (CPU)", "",
             f"`{res['command']}` on {res['date']}; {m['cpu']} ({m['cores']} cores), torch {m['torch']}. "
             f"{res['objective']} objective, preset {res['preset']}, {res['size']}x{res['size']}, batch {res['batch']}; "
             f"{res['warmup']} warm-up + {res['steps']} timed rounds, medians. {res['load_note']}", "",
             "## 1 thread, one process, interleaved", "",
             "| variant | s/step | images/s | ratio to fp32 [min-max] |", "|---|---|---|---|"]
    for n, r in res["one_thread"].items():
        lines.append(f"| {n} | {r['step_s_median']:.3f} | {r['images_per_s']:.1f} | "
                     f"{r['ratio_to_fp32']:.3f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}] |")
    lines += ["", "## Threads (one process)", "", "| variant | threads | s/step | images/s |", "|---|---|---|---|"]
    for threads, rows in res["threads"].items():
        for n, r in rows.items():
            lines.append(f"| {n} | {threads} | {r['step_s_median']:.3f} | {r['images_per_s']:.1f} |")
    lines += ["", "## Two concurrent 1-thread jobs", "", "| variant | job | s/step | images/s |", "|---|---|---|---|"]
    for n in res["concurrent_total_images_per_s"]:
        for j, job in enumerate(res["concurrent"]):
            lines.append(f"| {n} | {j + 1} | {job[n]['step_s_median']:.3f} | {job[n]['images_per_s']:.1f} |")
        lines.append(f"| {n} | both | | **{res['concurrent_total_images_per_s'][n]:.1f}** |")
    lines += ["", *[f"* {v}" for v in res["verdicts"]], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny:32:64", help="preset:size:batch")
    ap.add_argument("--objective", default="eps")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--load-note", default="The training jobs of this machine were paused (SIGSTOP) during the run.")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    (preset, size, batch), = parse_configs(args.config)
    if args.child:
        times = time_variants(args.child.split(","), args.objective, preset, size, batch, args.steps, args.warmup, 1)
        print(json.dumps(summarise(times, batch)))
        return
    command = "OMP_WAIT_POLICY=PASSIVE python benchmarks/train_precision.py " + shlex.join(sys.argv[1:])
    one = summarise(time_variants(list(VARIANTS), args.objective, preset, size, batch, args.steps, args.warmup, 1),
                    batch)
    best = min(one, key=lambda n: one[n]["ratio_to_fp32"])
    pair = ["fp32"] + ([best] if best != "fp32" else [])
    threads = {t: summarise(time_variants(pair, args.objective, preset, size, batch, args.steps, args.warmup, t), batch)
               for t in (1, 2)}
    jobs = concurrent_jobs(pair, args)
    total = {n: sum(j[n]["images_per_s"] for j in jobs) for n in pair}
    bf16 = one["bf16"]["ratio_to_fp32"]
    verdicts = [f"bf16 autocast: {bf16:.3f} x the fp32 step at 1 thread "
                f"({'meets' if bf16 <= 0.6 else 'MISSES'} the <= 0.6x target"
                + ("" if bf16 <= 0.6 else f" by {bf16 - 0.6:.2f}") + ")",
                f"fastest variant at 1 thread: {best} ({one[best]['ratio_to_fp32']:.3f} x fp32)",
                f"two concurrent 1-thread jobs of {best}: {total[best]:.1f} images/s in total, vs "
                f"{threads[2][best]['images_per_s']:.1f} for one 2-thread job"]
    res = dict(command=command, date=datetime.date.today().isoformat(), machine=machine(), objective=args.objective,
               preset=preset, size=size, batch=batch, steps=args.steps, warmup=args.warmup, load_note=args.load_note,
               one_thread=one, threads=threads, concurrent=jobs, concurrent_total_images_per_s=total, verdicts=verdicts)
    out = Path(args.out)
    save_text(out / "train_precision.json", json.dumps(res, indent=1))
    save_text(out / "train_precision.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
