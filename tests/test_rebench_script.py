"""scripts/rebench.sh: the re-bundling and re-measuring chain of issue 16, in dry-run mode
(``DRY_RUN=1`` prints the commands instead of running them), on a scratch layout of cards.

It refuses runs that have not reached the target step (exit 2, one line), runs every stage
for new weights, skips the stages whose results were made for these weights (keeping only
the cached benches, which resume), and every command it prints is accepted by its program
(each ``--flag`` is in that program's ``--help``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rebench.sh"
RUNS = {"prior": "prior", "eps-long": "eps", "palette-long": "palette"}


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _layout(work: Path, steps: int = 30000, **eps_steps: int) -> None:
    """runs/faces32-* cards at ``steps`` (the EPS run at ``eps_steps['eps']`` if given)."""
    for run, kind in RUNS.items():
        _write(work / "runs" / f"faces32-{run}" / "model.json",
               {"steps": eps_steps.get(kind, steps), "sha256": f"{kind}-new"})


def _run(args: list[str], work: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, EXACTPOST="exactpost")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)


def _programs(out: str) -> list[str]:
    return [" ".join(line.split()[:3]) if line.startswith("exactpost") else line.split()[1]
            for line in out.splitlines()]


def test_runs_short_of_the_target_are_refused_in_one_line(tmp_path):
    _layout(tmp_path, eps=29999)
    done = _run(["faces"], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "rebench.sh: runs/faces32-eps-long is at step 29999, not 30000; finish it first (scripts/long_runs.sh faces)"]


def test_new_weights_run_every_stage_in_order(tmp_path):
    _layout(tmp_path)
    done = _run(["faces"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _programs(done.stdout) == [
        "scripts/bundle_model.py", "scripts/bundle_model.py", "scripts/bundle_model.py",
        "benchmarks/tune_baselines.py", "benchmarks/model_quality.py",
        "exactpost bench images", "exactpost bench images", "benchmarks/ood.py", "benchmarks/error_split.py"]
    bundles = [line.split()[2:5] for line in done.stdout.splitlines()[:3]]
    assert bundles == [[f"runs/faces32-{run}", "faces-32", kind] for run, kind in RUNS.items()]


def test_results_made_for_these_weights_are_not_made_again(tmp_path):
    _layout(tmp_path)
    for kind in RUNS.values():
        _write(tmp_path / "models" / "faces-32" / f"{kind}.json", {"sha256": f"{kind}-new"})
    results = tmp_path / "benchmarks" / "results"
    _write(results / "baseline_tuning.json", {"model": {"sha256": "prior-new"}})
    _write(results / "model_quality_faces-32.json", {"eps_sha256": "eps-new"})
    _write(results / "ood_faces-32.json", {"eps_card_steps": 30000})
    done = _run(["faces"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert _programs(done.stdout) == ["exactpost bench images", "exactpost bench images",  # cached: they resume
                                      "benchmarks/error_split.py"]  # two minutes
    assert done.stderr.count("; skipping") == 6

    _write(results / "model_quality_faces-32.json", {"eps_sha256": "eps-old"})  # made for other weights
    again = _run(["faces"], tmp_path)
    assert "benchmarks/model_quality.py" in _programs(again.stdout)


@pytest.mark.parametrize("family", ["faces", "cifar"])
def test_every_printed_flag_is_one_its_program_accepts(tmp_path, family):
    tag = {"faces": "faces32", "cifar": "cifar32"}[family]
    for run, kind in RUNS.items():
        _write(tmp_path / "runs" / f"{tag}-{run}" / "model.json", {"steps": 30000, "sha256": kind})
    done = _run([family], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines() + _run(["finish"], tmp_path).stdout.splitlines()
    helps: dict[str, str] = {}
    for line in lines:
        words = line.split()
        program = words[:3] if words[0] == "exactpost" else [sys.executable, words[1]]
        key = " ".join(program)
        if key not in helps:
            exe = [sys.executable, "-m", "exactpost.app.cli", *program[1:]] if words[0] == "exactpost" else program
            shown = subprocess.run([*exe, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert shown.returncode == 0, (key, shown.stderr)
            helps[key] = shown.stdout
        for flag in re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", line):
            assert re.search(rf"{flag}\b", helps[key]), f"{key} has no {flag}: {line}"


def test_an_unknown_argument_is_one_line_and_exit_2(tmp_path):
    bad = _run(["imagenet"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "rebench.sh: unknown argument 'imagenet'; use faces, cifar or finish"]
