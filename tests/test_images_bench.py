"""``exactpost bench images`` (exactpost.bench.images_bench) on a tiny random model folder:
the default protocol and sweep cells, an end-to-end run whose table numbers are recomputed
independently from the documented seeds, batch slicing of per-sample operators, resumption
(nothing recomputed, only new cells, an interrupted cell continues from its saved batches to
the same numbers), merging another process's cells, refusal of a changed fingerprint, bad inputs (exit 2, one line, nothing
written), FD with a fake encoder (and refreshed from the cache), tuned settings, determinism
and the sweep's plots. A few seconds in all on one thread."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from exactpost.inference import zoo
from exactpost.bench import images_bench as ib
from exactpost.bench import images_cells, images_config, images_setup
from exactpost.app.cli import build_parser, main
from exactpost.app.demo import task_seed
from exactpost.core.metrics import crps, frechet_distance, mmd2, mmd2_paired, psnr
from exactpost.inference.api import methods as method_names
from exactpost.inference.api import restore_measurement
from exactpost.core.tasks import make_operator, simulate
from exactpost.io.images import to_float

BASE = ["bench", "images", "--model", "tiny-32", "--data", "demo", "--images", "3", "--samples", "2", "--batch", "2",
        "--threads", "1", "--no-progress"]


@pytest.fixture
def calls(monkeypatch):
    """Counts restore_batch calls as (task, method, nfe) tuples."""
    seen: list[tuple] = []
    real = images_cells.restore_batch

    def counting(setup, cell, op, y, g):
        seen.append((cell.task, cell.method, cell.nfe))
        return real(setup, cell, op, y, g)

    monkeypatch.setattr(images_cells, "restore_batch", counting)
    return seen


def _dies_on_second_batch(monkeypatch):
    """Make the second restore_batch call raise KeyboardInterrupt (a kill mid-cell); returns the
    real restore_batch."""
    real = images_cells.restore_batch
    count = {"n": 0}

    def dies_on_second(setup, cell, op, y, g):
        count["n"] += 1
        if count["n"] == 2:
            raise KeyboardInterrupt
        return real(setup, cell, op, y, g)

    monkeypatch.setattr(images_cells, "restore_batch", dies_on_second)
    return real


def _run(prefix, *extra: str) -> int:
    return main(BASE + ["--out", str(prefix), *extra])


def _doc(prefix) -> dict:
    return json.loads((prefix.parent / (prefix.name + ".json")).read_text())


def _cells(prefix) -> dict[str, dict]:
    return {c["key"]: c for c in _doc(prefix)["cells"]}


SCORES = ("psnr", "ssim", "psnr_sample", "crps", "coverage90", "mmd2", "nfe_sample", "backward_passes")


def _cfg(*argv: str) -> ib.BenchConfig:
    args = build_parser().parse_args(["bench", "images", *argv])
    return ib.config_from_args(args)


# --- configuration ----------------------------------------------------------------------
def test_default_protocol_sweep_and_nfe_list():
    cfg = _cfg()
    assert cfg.tasks == ["inpaint-random", "inpaint-box", "sr4", "deblur-gauss", "deblur-motion"]
    assert cfg.methods == method_names() and cfg.methods[:2] == ["eps", "palette"] and len(cfg.methods) == 9
    assert (cfg.images, cfg.samples, cfg.batch, cfg.seed, cfg.sigma_y) == (100, 4, 16, 0, 0.05)
    assert cfg.out.endswith("bench_images_faces-32")
    per_method = {m: cfg.budgets(m) for m in cfg.methods}
    assert per_method["eps"] == [20] and per_method["dps"] == [100, 250]
    assert all(v == [100] for m, v in per_method.items() if m not in ("eps", "dps"))
    assert len(ib.cells_of(cfg)) == 5 * 10
    sweep = _cfg("--sweep")
    assert sweep.tasks == ["inpaint-random", "sr4"] and sweep.nfe == [5, 10, 20, 50, 100]
    assert len(ib.cells_of(sweep)) == 2 * 9 * 5
    assert _cfg("--sweep", "--tasks", "deblur-gauss").tasks == ["deblur-gauss"]
    listed = _cfg("--nfe", "20,5,10", "--methods", "eps,dps")
    assert listed.budgets("eps") == listed.budgets("dps") == [5, 10, 20]
    assert "--nfe 5,10,20" in listed.command() and "--nfe" not in cfg.command()


@pytest.mark.parametrize("task", ["inpaint-random", "inpaint-box", "deblur-motion", "sr4"])
def test_sliced_operator_is_the_batch_of_the_full_operator(task):
    g = torch.Generator().manual_seed(3)
    op = make_operator(task, 5, (3, 32, 32), generator=g)
    x = torch.randn(5, 3, 32, 32, generator=g)
    y = op.A(x)
    for i, j in ib.batch_ranges(5, 2):
        sub = images_config.slice_operator(op, i, j)
        assert torch.allclose(sub.A(x[i:j]), y[i:j], atol=1e-6)  # FFTs of another batch size: round-off
        assert torch.allclose(sub.solve(x[i:j], 0.3), op.solve(x, 0.3)[i:j], atol=1e-6)


# --- end to end ---------------------------------------------------------------------------
def test_run_writes_the_table_and_its_numbers_recheck(models_env, tmp_path, capsys):
    prefix = tmp_path / "r" / "bench"
    rc = _run(prefix, "--tasks", "sr4,inpaint-random", "--methods", "eps,ddnm,dps", "--nfe", "3")
    assert rc == 0
    doc = _doc(prefix)
    rows = doc["cells"]
    assert [(r["task"], r["method"], r["nfe_budget"]) for r in rows] == [
        (t, m, 3) for t in ("sr4", "inpaint-random") for m in ("eps", "ddnm", "dps")]
    assert {b["nfe_budget"] for b in doc["bare"]} == {3}
    for r in rows:
        for k in ("psnr", "ssim", "crps", "mmd2", "coverage90", "coverage80", "spread_skill", "seconds_per_image",
                  "cost_ratio"):
            assert np.isfinite(r[k]), (r["key"], k)
        assert r["fd"] is None  # the tiny family has no encoder
        assert r["cost_ratio"] == pytest.approx(r["seconds_per_image"] / doc["bare"][0]["seconds_per_image"])
    by = {(r["task"], r["method"]): r for r in rows}
    assert by[("sr4", "eps")]["nfe_sample"] == 3 and by[("sr4", "eps")]["nfe_mean"] == 1  # mean + 2 DPM++ levels
    assert "psnr_1nfe_mean" in by[("sr4", "eps")] and "psnr_1nfe_mean" not in by[("sr4", "ddnm")]
    assert by[("sr4", "dps")]["backward_passes"] == 3 and by[("sr4", "ddnm")]["backward_passes"] == 0
    md = (prefix.parent / "bench.md").read_text()
    assert ("| task | method | NFE | PSNR | SSIM | CRPS | FD | cov80 (ref) | spread/skill | s / image "
            "| cost ratio |") in md
    assert all(r["coverage80_reference"] == pytest.approx(1 / 3) for r in rows)  # K = 2: [min, max], 1/3
    assert md.count("| sr4 |") == 3 and md.count("| inpaint-random |") == 3
    assert "| sr4 | eps | 3 |" in md and "| sr4 | dps | 3 (+3 bwd) |" in md
    assert "n/a" in md and "**" in md and doc["meta"]["command"] in md
    assert "mean of the 2 samples" in md
    assert "wrote bench.json, bench.md" in capsys.readouterr().out

    # recompute two cells from the documented seeds, independently of the benchmark's scoring
    x0 = to_float(torch.from_numpy(zoo.demo_images("tiny-32")).permute(0, 3, 1, 2).contiguous())[:3]
    bandwidth = doc["mmd_bandwidth"]
    for task, method in (("inpaint-random", "ddnm"), ("sr4", "eps")):
        g = torch.Generator().manual_seed(task_seed(0, task))
        op = make_operator(task, 3, (3, 32, 32), generator=g)
        y = simulate(op, x0, 0.05, generator=g)
        kind = method if method == "eps" else "prior"
        entry = zoo.find_model("tiny-32", kind)
        net = zoo.load(entry)
        parts = []
        for b, (i, j) in enumerate(ib.batch_ranges(3, 2)):
            gb = torch.Generator().manual_seed(images_config.batch_seed(0, task, method, 3, b))
            parts.append(restore_measurement(method, net, entry.card, images_config.slice_operator(op, i, j), y[i:j],
                                             0.05, task, n_samples=2, nfe=3, generator=gb).samples)
        samples = torch.cat(parts, dim=1)
        r = by[(task, method)]
        assert r["psnr"] == pytest.approx(float(psnr(samples.mean(0), x0).mean()), abs=1e-9)
        assert r["crps"] == pytest.approx(float(crps(samples, x0).mean()), abs=1e-9)
        assert r["mmd2"] == pytest.approx(_paired_mmd2_loops(samples[0].clamp(-1, 1), x0, bandwidth), abs=1e-9)
        lo, hi = samples.double().min(0).values, samples.double().max(0).values  # K = 2: [X_(1), X_(2)]
        assert r["coverage80"] == pytest.approx(float(((x0 >= lo) & (x0 <= hi)).double().mean()), abs=1e-12)
        d = samples.double()
        spread = math.sqrt(1.5 * float(((d[0] - d[1]) ** 2 / 2).mean()))  # (K+1)/K * unbiased variance, K = 2
        skill = math.sqrt(float(((d.mean(0) - x0) ** 2).mean()))
        assert r["spread_skill"] == pytest.approx(spread / skill, rel=1e-9)
        assert f"| {task} | {method} |" in md
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {task} | {method} |"))
        assert f"{r['psnr']:.2f}" in line
        assert f"| {r['coverage80']:.3f} (0.333) | {r['spread_skill']:.2f} |" in line
    z = x0.reshape(3, -1).double()
    assert bandwidth == pytest.approx(float(torch.pdist(z).median()))


def _paired_mmd2_loops(x, y, h):
    """Gretton et al. (2012) eq. 4 written out term by term."""
    x, y = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))  # noqa: E731
    n = len(x)
    total = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
                for i in range(n) for j in range(n) if i != j)
    return total / (n * (n - 1))


def test_paired_mmd2_is_unbiased_for_paired_sets_where_metrics_mmd2_is_not():
    """x_i = y_i + small noise has (almost) the marginal of y: the paired U-statistic is ~0,
    like metrics.mmd2 on an independent draw, while metrics.mmd2 on the paired sets is far
    below 0 (its cross term rewards each x_i for being close to its own y_i)."""
    g = torch.Generator().manual_seed(0)
    n, d = 200, 20
    y = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = y + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x_indep = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, d, generator=g,
                                                                                        dtype=torch.float64)
    h = float(torch.pdist(y).median())
    paired, naive, indep = mmd2_paired(x, y, h), mmd2(x, y, h), mmd2(x_indep, y, h)
    assert abs(paired) < 0.0015 and abs(indep) < 0.0015
    assert naive < -0.003 and naive < paired - 0.003
    assert mmd2_paired(x[:5], y[:5], h) == pytest.approx(_paired_mmd2_loops(x[:5], y[:5], h), rel=1e-12)
    # the same as metrics.mmd2 but for the matched pairs in the cross term
    kxy = torch.exp(-torch.cdist(x, y) ** 2 / (2 * h * h))
    off = float(kxy.sum() - kxy.diagonal().sum()) / (n * (n - 1))
    assert paired - naive == pytest.approx(2 * (float(kxy.mean()) - off), abs=1e-12)


def test_no_bare_skips_the_bare_timing_and_leaves_the_cost_ratio_blank(models_env, tmp_path, monkeypatch):
    timed: list[int] = []
    monkeypatch.setattr(ib, "time_bare", lambda setup, nfe: timed.append(nfe))
    prefix = tmp_path / "nb" / "bench"
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps", "--nfe", "3", "--no-bare") == 0
    doc = _doc(prefix)
    assert timed == [] and doc["bare"] == [] and doc["cells"][0]["cost_ratio"] is None
    assert "--no-bare" in doc["meta"]["command"]
    line = next(ln for ln in (prefix.parent / "bench.md").read_text().splitlines() if ln.startswith("| sr4 | eps |"))
    assert line.endswith(" | - |")


def _on_cpu(monkeypatch, label: str) -> None:
    """Make the bench believe it runs on the CPU called ``label``."""
    monkeypatch.setattr(images_cells, "cpu_label", lambda: label)
    monkeypatch.setattr(ib, "cpu_label", lambda: label)


def test_cells_of_another_cpu_keep_the_bare_timing_of_theirs(models_env, tmp_path, monkeypatch):
    """A cache filled on two machines: each cell's cost ratio is against the bare sampler timed
    on its own CPU, the table gets a CPU column with a legend, and a cell whose batches ran on
    both CPUs gets no ratio."""
    prefix = tmp_path / "two"
    _on_cpu(monkeypatch, "Fast CPU, AVX512")
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps", "--nfe", "3") == 0
    # the second machine: a new cell, and one whose first batch was saved on the first machine
    real = _dies_on_second_batch(monkeypatch)
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "3") == 130
    monkeypatch.setattr(images_cells, "restore_batch", real)
    _on_cpu(monkeypatch, "Slow CPU, AVX2")
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm,mpgd", "--nfe", "3") == 0
    doc = _doc(prefix)
    bare = {b["cpu"]: b for b in doc["bare"]}
    assert set(bare) == {"Fast CPU, AVX512", "Slow CPU, AVX2"}
    assert bare["Slow CPU, AVX2"]["key"] == "bare__nfe3__slow-cpu-avx2"
    cells = {c["method"]: c for c in doc["cells"]}
    assert cells["eps"]["cpu"] == "Fast CPU, AVX512" and cells["mpgd"]["cpu"] == "Slow CPU, AVX2"
    for m in ("eps", "mpgd"):
        assert cells[m]["cost_ratio"] == pytest.approx(
            cells[m]["seconds_per_image"] / bare[cells[m]["cpu"]]["seconds_per_image"])
    assert cells["ddnm"]["cpu"] == "mixed" and cells["ddnm"]["cost_ratio"] is None
    md = (prefix.parent / "two.md").read_text()
    assert "| cost ratio | CPU |" in md
    assert "A = Fast CPU, AVX512; B = several (a cell resumed on another machine; no cost ratio); " \
           "C = Slow CPU, AVX2." in md
    # one CPU only: no column, the CPU named in the notes
    one = tmp_path / "one"
    assert _run(one, "--tasks", "sr4", "--methods", "eps", "--nfe", "3") == 0
    md = (one.parent / "one.md").read_text()
    assert "| cost ratio |\n" in md and "timed on the same CPU (Slow CPU, AVX2)" in md


def test_same_seed_same_numbers_other_seed_other_numbers(models_env, tmp_path):
    args = ("--tasks", "deblur-motion", "--methods", "eps,mpgd", "--nfe", "3")
    assert _run(tmp_path / "a", *args) == 0 and _run(tmp_path / "b", *args) == 0
    assert _run(tmp_path / "c", *args, "--seed", "1") == 0
    a, b, c = _cells(tmp_path / "a"), _cells(tmp_path / "b"), _cells(tmp_path / "c")
    for key in a:
        assert {k: a[key][k] for k in SCORES} == {k: b[key][k] for k in SCORES}
        assert a[key]["crps"] != c[key]["crps"]


# --- resumption -------------------------------------------------------------------------------
def test_resume_recomputes_nothing_then_only_new_cells_and_continues_a_killed_cell(models_env, tmp_path, calls,
                                                                                   monkeypatch, capsys):
    prefix = tmp_path / "res"
    args = ("--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "3")
    assert _run(prefix, *args) == 0
    assert sorted(calls) == sorted([("sr4", "eps", 3)] * 2 + [("sr4", "ddnm", 3)] * 2)  # 2 batches per cell
    first = _cells(prefix)
    calls.clear()
    assert _run(prefix, *args) == 0
    assert calls == []
    assert "0 cells computed, 2 reused" in capsys.readouterr().out
    assert {k: {s: v[s] for s in SCORES} for k, v in _cells(prefix).items()} == \
        {k: {s: v[s] for s in SCORES} for k, v in first.items()}
    # one more method: only its cell
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm,mpgd", "--nfe", "3") == 0
    assert calls == [("sr4", "mpgd", 3)] * 2
    calls.clear()

    # a kill in the second batch of a new cell: the rerun redoes only that batch
    real = _dies_on_second_batch(monkeypatch)
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm,mpgd,pigdm", "--nfe", "3") == 130
    assert len(list((prefix.parent / "res.cache" / "partial").glob("sr4__pigdm__nfe3@*/batch_00000.npz"))) == 1
    again = {"n": 0}

    def counting(setup, cell, op, y, g):
        again["n"] += 1
        return real(setup, cell, op, y, g)

    monkeypatch.setattr(images_cells, "restore_batch", counting)
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm,mpgd,pigdm", "--nfe", "3") == 0
    assert again["n"] == 1
    assert not list((prefix.parent / "res.cache" / "partial").glob("sr4__pigdm__nfe3*"))
    clean = tmp_path / "clean"
    assert _run(clean, "--tasks", "sr4", "--methods", "pigdm", "--nfe", "3") == 0
    resumed, fresh = _cells(prefix)["sr4__pigdm__nfe3"], _cells(clean)["sr4__pigdm__nfe3"]
    assert {k: resumed[k] for k in SCORES} == {k: fresh[k] for k in SCORES}


def test_changed_fingerprint_is_refused_unless_fresh(models_env, tmp_path, capsys):
    prefix = tmp_path / "fp"
    args = ("--tasks", "sr4", "--methods", "ddnm", "--nfe", "3")
    assert _run(prefix, *args) == 0
    capsys.readouterr()
    assert _run(prefix, *args, "--samples", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "samples" in err[0] and "--fresh" in err[0]
    assert _run(prefix, *args, "--samples", "3", "--fresh") == 0
    assert _cells(prefix)["sr4__ddnm__nfe3"]["samples"] == 3


def _replace_weights(root, kind: str) -> None:
    """Give ``root``'s tiny-32 ``kind`` network other weights (a new sha256), same card otherwise."""
    from exactpost.io.checkpoint import load_checkpoint, save_checkpoint

    prefix = root / "tiny-32" / kind
    tensors, card = load_checkpoint(prefix)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 0.01
    for k in ("format_version", "sha256", "weights_bytes", "weights_file", "library"):
        card.pop(k, None)
    save_checkpoint(prefix, tensors, card)


@pytest.fixture
def own_models(models_env, tmp_path, monkeypatch):
    """A private copy of the tiny models folder (a test may change its weights)."""
    import shutil

    root = tmp_path / "own_models"
    shutil.copytree(models_env, root)
    monkeypatch.setenv(zoo.ENV_VAR, str(root))
    return root


def test_a_new_model_recomputes_only_the_cells_that_run_on_it(own_models, tmp_path, calls, capsys):
    """Each cell's record holds what it depends on (its network's sha256, its tuned settings or
    sampler): new EPS weights recompute the EPS cells only, new prior weights the baselines and
    the bare timing, and the numbers of the untouched cells stay as they were."""
    prefix = tmp_path / "dep"
    args = ("--tasks", "sr4", "--methods", "eps,palette,ddnm", "--nfe", "3")
    assert _run(prefix, *args) == 0
    before = _cells(prefix)
    assert before["sr4__eps__nfe3"]["depends"]["model"] == zoo.find_model("tiny-32", "eps").card["sha256"]
    calls.clear()
    _replace_weights(own_models, "eps")
    assert _run(prefix, *args) == 0
    assert calls == [("sr4", "eps", 3)] * 2
    after = _cells(prefix)
    assert {s: after["sr4__ddnm__nfe3"][s] for s in SCORES} == {s: before["sr4__ddnm__nfe3"][s] for s in SCORES}
    assert after["sr4__eps__nfe3"]["depends"]["model"] != before["sr4__eps__nfe3"]["depends"]["model"]
    calls.clear()
    _replace_weights(own_models, "prior")
    capsys.readouterr()
    assert _run(prefix, *args) == 0
    assert calls == [("sr4", "ddnm", 3)] * 2
    bare = [r for r in json.loads(json.dumps(_doc(prefix)["bare"]))]
    assert bare and all(r["depends"]["model"] == zoo.find_model("tiny-32", "prior").card["sha256"] for r in bare)


def test_a_table_built_mid_run_leaves_out_records_of_an_older_model(own_models, tmp_path):
    """rows_of lists only records made with today's dependencies: after new EPS weights, the
    cached EPS record (the old model's, its cell pending) is left out, the DDNM record kept."""
    from exactpost.bench.images_cache import Cache
    from exactpost.bench.images_report import rows_of
    from exactpost.bench.images_setup import cell_depends, load_setup

    prefix = tmp_path / "mid"
    args = ("--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "3")
    assert _run(prefix, *args) == 0

    def listed() -> list[str]:
        cfg = _cfg("--out", str(prefix), *BASE[2:], *args)
        setup = load_setup(cfg)
        return [r["key"] for r in rows_of(setup, Cache(cfg.out, setup.fingerprint(), False, depends_of=cell_depends))]

    assert listed() == ["sr4__eps__nfe3", "sr4__ddnm__nfe3"]
    _replace_weights(own_models, "eps")
    assert listed() == ["sr4__ddnm__nfe3"]


def test_a_protocol_1_cache_is_converted_and_its_cells_reused(models_env, tmp_path, calls, capsys):
    """A cache written under the earlier whole-run header (every model's sha256, the tuned
    settings and the sampler in the header; no per-cell dependencies; unfinished batches in
    ``partial/<key>/``) is converted on opening: nothing is recomputed, the numbers stay, and
    the dependencies each record gets are those the old header implied."""
    prefix = tmp_path / "old"
    args = ("--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "3")
    assert _run(prefix, *args) == 0
    log = tmp_path / "old.cache" / "cells.jsonl"
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])["header"]
    recs = [json.loads(line) for line in lines[1:]]
    deps = {r["key"]: r.pop("depends") for r in recs}
    eps_dep = deps["sr4__eps__nfe3"]
    legacy = dict(header, protocol=1, models=dict(prior=deps["sr4__ddnm__nfe3"]["model"], eps=eps_dep["model"],
                                                   palette="ab" * 32),
                  tuned={"ddnm": {"sr4": deps["sr4__ddnm__nfe3"]["tuned"]}},
                  **{k: v for k, v in eps_dep.items() if k != "model"})
    log.write_text("\n".join(json.dumps(x) for x in [{"header": legacy}, *recs]) + "\n")
    stale = tmp_path / "old.cache" / "partial" / "sr4__pigdm__nfe3"
    stale.mkdir(parents=True)
    calls.clear()
    assert _run(prefix, *args) == 0
    assert calls == []
    assert json.loads(log.read_text().splitlines()[0])["header"] == header
    doc = _doc(prefix)
    assert {r["key"]: r["depends"] for r in doc["cells"] + doc["bare"]} == deps
    assert not stale.exists() and len(list(stale.parent.glob("sr4__pigdm__nfe3@*"))) == 1
    # an old header naming other EPS weights: converted, then only the EPS cell is recomputed
    legacy["models"]["eps"] = "cd" * 32
    log.write_text("\n".join(json.dumps(x) for x in [{"header": legacy}, *recs]) + "\n")
    assert _run(prefix, *args) == 0
    assert calls == [("sr4", "eps", 3)] * 2


def test_merge_folds_in_another_processes_cells_and_refuses_other_settings(models_env, tmp_path, calls, capsys):
    """Two shares of a run (tasks split across --out prefixes) merged into one table: nothing is
    recomputed, every merged number and first-sample file equals the share's, and a single run
    gives the same numbers (each cell's seed depends only on its own key)."""
    a, b, whole = tmp_path / "a", tmp_path / "b", tmp_path / "whole"
    methods = ("--methods", "eps,ddnm", "--nfe", "3")
    assert _run(a, "--tasks", "sr4", *methods) == 0
    assert _run(b, "--tasks", "inpaint-random", *methods) == 0
    calls.clear()
    capsys.readouterr()
    assert _run(a, "--tasks", "sr4,inpaint-random", *methods, "--merge", str(b)) == 0
    assert calls == []
    assert "merged 2 finished cells" in capsys.readouterr().out
    merged, share_b = _cells(a), _cells(b)
    assert sorted(merged) == sorted(f"{t}__{m}__nfe3" for t in ("sr4", "inpaint-random") for m in ("eps", "ddnm"))
    for key in share_b:
        assert {s: merged[key][s] for s in SCORES} == {s: share_b[key][s] for s in SCORES}
        assert (tmp_path / "a.cache" / "firsts" / f"{key}.npy").read_bytes() == \
            (tmp_path / "b.cache" / "firsts" / f"{key}.npy").read_bytes()
    assert "--merge" in _doc(a)["meta"]["command"]
    assert _run(a, "--tasks", "sr4,inpaint-random", *methods, "--merge", str(b)) == 0  # again: nothing new
    assert "merged 0 finished cells" in capsys.readouterr().out
    assert _run(whole, "--tasks", "sr4,inpaint-random", *methods) == 0
    assert {k: {s: v[s] for s in SCORES} for k, v in _cells(whole).items()} == \
        {k: {s: v[s] for s in SCORES} for k, v in merged.items()}

    other = tmp_path / "other"
    assert _run(other, "--tasks", "sr4", *methods, "--samples", "3") == 0
    capsys.readouterr()
    before = (tmp_path / "a.cache" / "cells.jsonl").read_bytes()
    for argv, needle in (([str(other)], "samples was 3"), ([str(tmp_path / "missing")], "no cache at"),
                         ([str(a)], "this run's own cache")):
        assert _run(a, "--tasks", "sr4", *methods, "--merge", *argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("exactpost: error: --merge") and needle in err[0], err
    assert (tmp_path / "a.cache" / "cells.jsonl").read_bytes() == before


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--model", "tiny-32", "--tasks", "inpaint-everything"], "unknown 'inpaint-everything'"),
    (["--model", "tiny-32", "--methods", "eps,magic"], "unknown 'magic'"),
    (["--model", "no-such-model", "--data", "demo"], "unknown model 'no-such-model'"),
    (["--model", "tiny-32"], "synthetic.npz, which is not found"),
    (["--model", "tiny-32", "--data", "/nonexistent/test.npz"], "no such file"),
    (["--model", "tiny-32", "--data", "demo", "--images", "99"], "only 6 test images"),
    (["--model", "tiny-32", "--data", "demo", "--methods", "daps", "--nfe", "3"], "daps needs a budget >= 5"),
    (["--model", "tiny-32", "--data", "demo", "--samples", "1"], "--samples must be >= 2"),
    (["--model", "tiny-32", "--data", "demo", "--images", "1"], "--images must be >= 2"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(models_env, tmp_path, capsys, argv, needle):
    prefix = tmp_path / "never"
    rc = main(["bench", "images", *argv, "--out", str(prefix), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("exactpost: error:") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_data_npz_with_split_uses_the_test_split(models_env, tmp_path, capsys):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    split = np.array([0, 2, 1, 2, 2, 0, 2, 1], dtype=np.uint8)
    path = tmp_path / "faces.npz"
    np.savez(path, images=images, split=split)
    prefix = tmp_path / "d"
    base = [a for a in BASE if a not in ("--data", "demo")]
    assert main(base + ["--data", str(path), "--tasks", "sr4", "--methods", "ddnm", "--nfe", "2",
                        "--out", str(prefix)]) == 0
    data = _doc(prefix)["data"]
    assert data["split"] == [2] and data["images"] == 3
    import hashlib

    want = torch.from_numpy(images[split == 2][:3]).permute(0, 3, 1, 2).contiguous()
    assert data["sha256"] == hashlib.sha256(want.numpy().tobytes()).hexdigest()
    assert main(base + ["--data", str(path), "--images", "5", "--out", str(tmp_path / "e")]) == 2
    assert "only 4 test images" in capsys.readouterr().err


# --- FD -------------------------------------------------------------------------------------
class FakeEncoder:
    name = "fake"
    card = {"sha256": "ab" * 32}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :, ::8, ::8].flatten(1)[:, :4]], dim=1)


def test_fd_with_a_fake_encoder_and_refreshed_from_the_cache(models_env, tmp_path, calls, monkeypatch):
    import exactpost.nets.encoder

    prefix = tmp_path / "fd"
    args = ("--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "3")
    # first without any encoder module: FD is n/a
    monkeypatch.setitem(sys.modules, "exactpost.nets.encoder", None)
    assert _run(prefix, *args) == 0
    assert all(r["fd"] is None for r in _cells(prefix).values())
    assert "FD: n/a (no encoder module" in (tmp_path / "fd.md").read_text()
    n_calls = len(calls)

    # then with an encoder: FD of the cached cells is computed from their first samples, nothing is re-run
    monkeypatch.setitem(sys.modules, "exactpost.nets.encoder", exactpost.nets.encoder)
    monkeypatch.setattr(exactpost.inference.zoo, "find_encoder", lambda family: FakeEncoder())
    seen = []

    def recording_fd(a, b):
        seen.append((a.shape, b.shape))
        return frechet_distance(a, b)

    monkeypatch.setattr("exactpost.core.metrics.frechet_distance", recording_fd)
    assert _run(prefix, *args) == 0
    assert len(calls) == n_calls and len(seen) == 2 and seen[0] == ((3, 10), (3, 10))
    cells = _cells(prefix)
    x0 = to_float(torch.from_numpy(zoo.demo_images("tiny-32")).permute(0, 3, 1, 2).contiguous())[:3]
    for key, r in cells.items():
        assert r["fd_encoder"] == "fake@" + "ab" * 6
        firsts = torch.from_numpy(np.load(tmp_path / "fd.cache" / "firsts" / f"{key}.npy"))
        enc = FakeEncoder()
        want = frechet_distance(enc.features(firsts.clamp(-1, 1)).double(), enc.features(x0).double())
        assert r["fd"] == pytest.approx(want, rel=1e-9) and r["fd"] > 0
    md = (tmp_path / "fd.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| sr4 | eps |"))
    assert "n/a" not in line and "encoder features (fake@" in md

    # a new cell is scored with the encoder directly
    assert _run(prefix, "--tasks", "sr4", "--methods", "eps,ddnm,mpgd", "--nfe", "3") == 0
    assert _cells(prefix)["sr4__mpgd__nfe3"]["fd"] > 0


# --- tuned settings and plots ------------------------------------------------------------------
def test_tuned_settings_are_used_and_recorded(models_env, tmp_path):
    sha = zoo.find_model("tiny-32", "prior").card["sha256"]
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"tuned": {"ddnm": {"sr4": {"eta": 0.25}}}, "model": {"sha256": sha}}))
    args = ("--tasks", "sr4", "--methods", "ddnm,mpgd", "--nfe", "3")
    assert _run(tmp_path / "t", *args, "--tuned", str(tuned)) == 0
    assert _run(tmp_path / "n", *args, "--tuned", "none") == 0
    t, n = _cells(tmp_path / "t"), _cells(tmp_path / "n")
    assert t["sr4__ddnm__nfe3"]["tuned"] == {"eta": 0.25} and n["sr4__ddnm__nfe3"]["tuned"] is None
    assert t["sr4__ddnm__nfe3"]["psnr"] != n["sr4__ddnm__nfe3"]["psnr"]
    assert t["sr4__mpgd__nfe3"]["psnr"] == n["sr4__mpgd__nfe3"]["psnr"]  # not tuned: the registry path
    assert "tuned on validation images at NFE 100 (tuned.json;" in (tmp_path / "t.md").read_text()


def test_default_tuned_file_is_the_one_tuned_for_this_prior(tmp_path, monkeypatch):
    def write(name: str, sha: str, eta: float) -> None:
        (tmp_path / name).write_text(json.dumps({"tuned": {"ddnm": {"sr4": {"eta": eta}}}, "model": {"sha256": sha}}))

    write("baseline_tuning.json", "faces", 0.25)
    write("baseline_tuning_cifar.json", "cifar", 0.5)
    monkeypatch.setattr(images_setup, "DEFAULT_TUNED", tmp_path / "baseline_tuning.json")
    cfg = SimpleNamespace(tuned=None)  # load_tuned reads only cfg.tuned
    for sha, eta in (("faces", 0.25), ("cifar", 0.5)):
        notices: list[str] = []
        tuned, path = images_setup.load_tuned(cfg, sha, notices)
        assert tuned == {"ddnm": {"sr4": {"eta": eta}}} and notices == []
    notices = []
    assert images_setup.load_tuned(cfg, "other", notices) == ({}, None)
    assert len(notices) == 1 and "registry defaults" in notices[0]


def test_sweep_without_matplotlib_says_how_to_get_the_plots(models_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _run(tmp_path / "s", "--sweep", "--tasks", "sr4", "--methods", "ddnm", "--nfe", "2,3") == 0
    out = capsys.readouterr().out
    assert "pip install 'exactpost[plots]'" in out
    assert (tmp_path / "s.json").is_file() and (tmp_path / "s.md").is_file()
    assert not (tmp_path / "s_psnr_nfe.png").exists()


def test_sweep_plots(models_env, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    assert _run(tmp_path / "p", "--sweep", "--tasks", "sr4,inpaint-box", "--methods", "eps,ddnm",
                "--nfe", "2,3") == 0
    for name in ("p_psnr_nfe.png", "p_crps_nfe.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > im.size[1] > 100
