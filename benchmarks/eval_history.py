"""Held-out 1-NFE quality of two or more training runs at equal steps, from their logs.

    .venv/bin/python benchmarks/eval_history.py \\
        --run scalar=runs/faces32-eps-long --run gaussian=runs/faces32-eps-gauss \\
        [--upto 2000] [--out benchmarks/results --name skip_pilot_faces-32]

Every run's ``metrics.jsonl`` holds the periodic held-out evaluation of ``exactpost train``
(``{"eval": {"step": S, "psnr_mean_<task>": dB, ...}}``: the EMA model's 1-NFE posterior
mean on the run's ``--eval-images`` validation images, one measurement draw seeded by the
run's seed). Runs started with the same command, seed and data differ only in what the
command changed, and their evaluations use the same images and draws, so the table compares
them step by step: each run's PSNR per task, and every other run's difference to the first
(``--run`` order). Steps that not every run has evaluated are left out. Nothing is
recomputed: the numbers are the logged ones. Writes ``NAME.json`` and ``NAME.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from exactpost.io.images import save_text

PREFIX = "psnr_mean_"


def eval_history(run: Path) -> dict[int, dict[str, float]]:
    """step -> {task: PSNR} from the ``eval`` lines of ``run/metrics.jsonl``."""
    out: dict[int, dict[str, float]] = {}
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"eval_history.py: error: {path} not found; give a run folder of exactpost train")
    for line in path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        ev = rec.get("eval")
        if isinstance(ev, dict) and "step" in ev:
            out[int(ev["step"])] = {k[len(PREFIX):]: float(v) for k, v in ev.items() if k.startswith(PREFIX)}
    return out


def compare(histories: dict[str, dict[int, dict[str, float]]], upto: int | None) -> list[dict]:
    """Rows {step, runs: {name: {task: PSNR}}, diff: {name: {task: dB vs the first run}}} at
    the steps every run has evaluated (<= ``upto`` when given)."""
    names = list(histories)
    steps = sorted(set.intersection(*(set(h) for h in histories.values())))
    rows = []
    for step in steps:
        if upto is not None and step > upto:
            continue
        runs = {n: histories[n][step] for n in names}
        tasks = [t for t in runs[names[0]] if all(t in runs[n] for n in names)]
        diff = {n: {t: runs[n][t] - runs[names[0]][t] for t in tasks} for n in names[1:]}
        rows.append({"step": step, "tasks": tasks, "runs": runs, "diff": diff})
    return rows


def markdown(rows: list[dict], names: list[str], command: str) -> str:
    lines = [f"# Held-out 1-NFE PSNR at equal steps: {', '.join(names)}", "",
             f"`{command}`", "",
             "Logged evaluations of each run (EMA model, 1-NFE posterior mean, the run's validation images); "
             f"`diff` = run - {names[0]} (dB).", ""]
    if not rows:
        return "\n".join(lines + ["No step was evaluated by every run.", ""])
    tasks = rows[0]["tasks"]
    lines += ["| step | run | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in rows:
        for n in names:
            lines.append(f"| {r['step']} | {n} | " + " | ".join(f"{r['runs'][n][t]:.2f}" for t in tasks) + " |")
        for n in names[1:]:
            lines.append(f"| {r['step']} | diff {n} | " + " | ".join(f"{r['diff'][n][t]:+.2f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def _named_run(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR, got {text!r}")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=_named_run, action="append", required=True, metavar="NAME=RUN_DIR",
                   help="a training run folder (its metrics.jsonl), named; give two or more, the first is the reference")
    p.add_argument("--upto", type=int, default=None, help="last step to show (default: all common steps)")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--name", default="eval_history", help="output file name without extension (default eval_history)")
    args = p.parse_args(argv)
    if len(args.run) < 2:
        p.error("give at least two --run NAME=RUN_DIR")
    names = [n for n, _ in args.run]
    if len(set(names)) != len(names):
        p.error(f"run names must differ, got {names}")
    histories = {n: eval_history(path) for n, path in args.run}
    rows = compare(histories, args.upto)
    command = "python benchmarks/eval_history.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    record = {"command": command, "date": datetime.date.today().isoformat(),
              "runs": {n: str(path) for n, path in args.run}, "rows": rows}
    save_text(out / f"{args.name}.json", json.dumps(record, indent=1))
    text = markdown(rows, names, command)
    save_text(out / f"{args.name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
