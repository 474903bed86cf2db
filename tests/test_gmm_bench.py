"""``exactpost bench gmm`` (exactpost.bench.gmm_bench): the coverage score against its
definition and a calibration check, the mean +- 1.96 SE aggregation, the target checks, and
a tiny end-to-end run (d = 8, two problems, 200 samples, NFE 5, two methods; about a second)
that is resumed after an interruption, refuses changed options, extends its grid reusing the
cache, and saves samples from which the distances are recomputed exactly."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import numpy as np
import pytest
import torch

from exactpost.bench import gmm_bench as gb
from exactpost.priors.gmm import mcgdiff_problem
from exactpost.core.metrics import interval_coverage, sliced_wasserstein

TINY = ["--dims", "8", "--dys", "1", "--problems", "2", "--samples", "200", "--repeats", "3", "--nfe", "5",
        "--methods", "eps-oracle,ddnm", "--eps-sampler", "legacy", "--projections", "50", "--threads", "1",
        "--no-progress"]


def _run(prefix, *extra: str) -> int:
    return gb.main(TINY + ["--out", str(prefix), *extra])


def _cells(prefix) -> dict[str, dict]:
    data = json.loads((prefix.parent / (prefix.name + ".json")).read_text())
    return {c["key"]: c for c in data["cells"]}


def _cache_lines(prefix) -> list[str]:
    return (prefix.parent / (prefix.name + ".cache") / "cells.jsonl").read_text().splitlines()


# --- coverage ---------------------------------------------------------------------------
def test_coverage_is_interval_coverage_with_every_reference_draw_as_truth():
    g = torch.Generator().manual_seed(0)
    x, ref = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    expanded = x.unsqueeze(1).expand(50, 7, 3)
    assert gb.coverage(x, ref, 0.9) == pytest.approx(interval_coverage(expanded, ref, 0.9), abs=1e-15)
    assert gb.coverage(x, ref, 0.5) == pytest.approx(interval_coverage(expanded, ref, 0.5), abs=1e-15)


def test_exact_posterior_sampler_is_calibrated_and_wrong_widths_are_not():
    """Exact samples vs independent exact reference draws: 0.90 up to the O(1/n) order-
    statistic bias (sd of the estimate ~0.005 here, tolerance 0.02); samples squeezed or
    stretched about the posterior mean by 2x must miss it by far."""
    pb = mcgdiff_problem(8, 2, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    x, ref = pb.posterior.sample(2000, g), pb.posterior.sample(2000, g)
    assert abs(gb.coverage(x, ref, 0.9) - 0.9) < 0.02
    m = x.mean(0)
    assert gb.coverage(m + 0.5 * (x - m), ref, 0.9) < 0.8
    assert gb.coverage(m + 2.0 * (x - m), ref, 0.9) > 0.97


def test_exact_sample_draws_what_gaussian_mixture_sample_draws():
    """Same generator, same draws (grouped per component, one factor for shared covariances)."""
    pb = mcgdiff_problem(6, 2, torch.Generator().manual_seed(1))
    for mix in (pb.posterior, gb.GaussianMixture(pb.prior.weights, pb.prior.means,
                                                 torch.diag_embed(torch.rand(25, 6, dtype=torch.float64) + 0.5))):
        a = gb.exact_sample(mix, 500, torch.Generator().manual_seed(2))
        b = mix.sample(500, torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert pb.posterior.shared_cov


# --- aggregation and checks ---------------------------------------------------------------
def test_mean_ci_is_mean_and_1_96_standard_errors():
    m, h = gb.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert h == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
    m1, h1 = gb.mean_ci([3.0])
    assert m1 == 3.0 and math.isnan(h1)


def _cfg(**kw) -> gb.BenchConfig:
    base = dict(dims=[8], dys=[1, 2], problems=2, nfe=[20, 100], methods=["eps-oracle", "dps"],
                eps_samplers=[gb.LEGACY.name])
    base.update(kw)
    return gb.BenchConfig(**base)


def _row(dy, method, nfe, sw, ratio, cov):
    return dict(d=8, dy=dy, method=method, nfe_budget=nfe, sw=sw, ratio=ratio, coverage=cov)


def test_checks_detect_each_failure():
    good = [_row(dy, "eps-oracle", 100, 1.0, 1.1, 0.9) for dy in (1, 2)]
    good += [_row(dy, "dps", nfe, 5.0, 5.0, 0.5) for dy in (1, 2) for nfe in (20, 100)]
    res = gb.checks(_cfg(nfe=[100]), good)
    assert len(res) == 3 and all(r["ok"] for r in res.values()), res
    bad = [dict(r) for r in good]
    bad[0].update(ratio=1.31)  # dy = 1: too far from the floor
    bad[1].update(coverage=0.925)  # dy = 2: miscalibrated
    bad[-1].update(sw=0.9)  # dps at 100 NFE, dy = 2: below EPS
    res = gb.checks(_cfg(nfe=[100]), bad)
    fails = {name.split(" ")[1]: r["failures"] for name, r in res.items()}
    assert fails["within"] == ["d=8 dy=1: 1.31"]
    assert fails["coverage"] == ["d=8 dy=2: 0.925"]
    assert len(fails["below"]) == 1 and fails["below"][0].startswith("d=8 dy=2: dps@100")


# --- options ----------------------------------------------------------------------------
def test_defaults_and_bad_options():
    ap = argparse.ArgumentParser()
    gb.add_arguments(ap)
    cfg = gb.config_from_args(ap.parse_args([]))
    assert (cfg.dims, cfg.dys, cfg.problems, cfg.nfe) == ([8, 80, 800], [1, 2, 4], 20, [20, 100])
    assert cfg.methods == list(gb.ALL_METHODS) and cfg.samples == 2000 and cfg.projections == 200
    for argv, match in [(["--methods", "eps,dps"], "unknown eps"), (["--dims", "7"], "even"),
                        (["--nfe", "1"], ">= 2"), (["--methods", "daps", "--nfe", "4"], "daps"),
                        (["--save-samples", "x.npy"], ".npz"), (["--dims", "8", "--dys", "9"], "dy")]:
        with pytest.raises(ValueError, match=match):
            gb.config_from_args(ap.parse_args(argv))


# --- end to end -------------------------------------------------------------------------
def test_tiny_run_writes_tables_and_samples_that_recheck(tmp_path, capsys):
    prefix, npz = tmp_path / "res", tmp_path / "samples.npz"
    assert _run(prefix, "--save-samples", str(npz)) == 0
    data = json.loads((tmp_path / "res.json").read_text())
    rows = {(r["method"], r["nfe_budget"]): r for r in data["rows"]}
    assert set(rows) == {("exact", 0), ("eps-oracle", 5), ("ddnm", 5)}
    assert rows[("eps-oracle", 5)]["nfe"] == 4 and rows[("ddnm", 5)]["nfe"] == 5  # 2 Heun steps + mean start
    assert all(r["problems"] == 2 and r["failed"] == 0 for r in rows.values())
    sws = [c["sw"] for c in data["cells"] if c["method"] == "ddnm"]
    assert rows[("ddnm", 5)]["sw"] == pytest.approx(sum(sws) / 2, rel=1e-12)
    assert rows[("ddnm", 5)]["ratio"] == pytest.approx(rows[("ddnm", 5)]["sw"] / rows[("exact", 0)]["sw"])
    md = (tmp_path / "res.md").read_text()
    assert "exact posterior (noise floor)" in md and "eps-oracle [heun:karras:rho=7:smin=0.002] @ 5 (4 NFE)" in md
    assert "± " in md
    assert "200 samples" in md and "50 random directions" in md
    # the saved arrays reproduce every distance and coverage, and y, A, sigma_y, the prior
    with np.load(npz) as z:
        for c in data["cells"]:
            pre = f"d{c['d']}_dy{c['dy']}_p{c['problem']}"
            t = lambda k: torch.from_numpy(z[f"{pre}__{k}"])  # noqa: E731
            xs = t(c["key"].split("__", 1)[1])
            assert xs.shape == (3, 200, 8)
            assert statistics.fmean(sliced_wasserstein(x, t("reference"), directions=t("directions"))
                                    for x in xs) == c["sw"]
            assert statistics.fmean(gb.coverage(x, t("reference"), 0.9) for x in xs) == c["coverage"]
        pb = mcgdiff_problem(8, 1, gb._gen(0, "problem", 8, 1, 1))
        torch.testing.assert_close(torch.from_numpy(z["d8_dy1_p1__A"]), pb.A, rtol=0, atol=0)
        torch.testing.assert_close(torch.from_numpy(z["d8_dy1_p1__y"]), pb.y, rtol=0, atol=0)
        assert float(z["d8_dy1_p1__sigma_y"]) == pb.sigma_y
        torch.testing.assert_close(torch.from_numpy(z["d8_dy1_p1__prior_means"]), pb.prior.means)
        assert json.loads(str(z["protocol"]))["samples"] == 200
    # at 4-5 NFE neither sampler has converged: the exact floor must be far below both
    assert rows[("exact", 0)]["sw"] < min(rows[("eps-oracle", 5)]["sw"], rows[("ddnm", 5)]["sw"])


def test_interrupted_run_resumes_to_the_same_numbers_and_reuses_its_cache(tmp_path, monkeypatch, capsys):
    ref, part = tmp_path / "ref", tmp_path / "part"
    assert _run(ref) == 0
    expected = _cells(ref)
    assert len(expected) == 6  # 2 problems x (floor + 2 methods)

    real, calls = gb.run_cell, []

    def dies_on_the_fourth(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gb, "run_cell", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _run(part)
    monkeypatch.setattr(gb, "run_cell", real)
    assert len(_cache_lines(part)) == 1 + 3  # header + the three finished cells
    capsys.readouterr()
    assert _run(part) == 0
    assert "3 cells computed, 3 reused" in capsys.readouterr().out
    got = _cells(part)
    strip = lambda c: {k: v for k, v in c.items() if k != "seconds"}  # noqa: E731
    assert {k: strip(v) for k, v in got.items()} == {k: strip(v) for k, v in expected.items()}

    # an identical rerun computes nothing; a third problem computes only its 3 cells
    before = _cache_lines(part)
    assert _run(part) == 0
    assert "0 cells computed, 6 reused" in capsys.readouterr().out
    assert _cache_lines(part) == before
    assert gb.main([a if a != "2" else "3" for a in TINY] + ["--out", str(part)]) == 0
    assert "3 cells computed, 6 reused" in capsys.readouterr().out

    # changed scoring options: refused with one line, or started afresh with --fresh
    with pytest.raises(ValueError, match="samples was 200.*--fresh") as err:
        gb.main([a if a != "200" else "100" for a in TINY] + ["--out", str(part)])
    assert "\n" not in str(err.value)
    assert gb.main([a if a != "200" else "100" for a in TINY] + ["--out", str(part), "--fresh"]) == 0
    assert "6 cells computed, 0 reused" in capsys.readouterr().out


def test_eps_samplers_are_rows_and_legacy_cells_keep_their_keys(tmp_path):
    prefix = tmp_path / "s"
    spec = "dpmpp2m:loglinear:smin=0.01"
    argv = [a if a != "legacy" else f"legacy,{spec}" for a in TINY]
    assert gb.main(argv + ["--out", str(prefix), "--methods", "eps-oracle"]) == 0
    cells = _cells(prefix)
    assert set(cells) == {f"d8_dy1_p{p}__{v}" for p in (0, 1)
                          for v in ("exact_nfe0", "eps-oracle_nfe5", f"eps-oracle[{spec}]_nfe5")}
    assert cells["d8_dy1_p0__eps-oracle_nfe5"]["nfe"] == 4  # legacy Heun: 2 levels (3 NFE) + the mean
    assert cells[f"d8_dy1_p0__eps-oracle[{spec}]_nfe5"]["nfe"] == 5  # 4 levels, one NFE each, + the mean
    rows = {r["variant"]: r for r in json.loads((tmp_path / "s.json").read_text())["rows"]}
    assert rows[f"eps-oracle[{spec}]"]["sampler"] == spec and rows["eps-oracle"]["sampler"] == gb.LEGACY.name
    md = (tmp_path / "s.md").read_text()
    assert f"eps-oracle [{spec}] @ 5 |" in md and "eps-oracle [heun:karras:rho=7:smin=0.002] @ 5 (4 NFE)" in md
    # the first sampler is the one the checks read; at 5 NFE neither is near the floor
    data = json.loads((tmp_path / "s.json").read_text())
    assert "d=8 dy=1" in data["meta"]["checks"]["eps-oracle within 1.3x the noise floor at 5 NFE"]["failures"][0]
    with pytest.raises(ValueError, match="unknown solver"):
        gb.main(TINY + ["--out", str(prefix), "--eps-sampler", "rk4"])


def test_checks_read_20_nfe_too():
    rows = [dict(_row(dy, "eps-oracle", nfe, 1.0, r, 0.9), variant="eps-oracle") for dy in (1, 2)
            for nfe, r in ((20, 1.5 if dy == 2 else 1.2), (100, 1.0))]
    res = gb.checks(_cfg(methods=["eps-oracle"], eps_samplers=[gb.LEGACY.name]), rows)
    assert res["eps-oracle within 1.3x the noise floor at 100 NFE"]["ok"]
    assert res["eps-oracle within 1.3x the noise floor at 20 NFE"]["failures"] == ["d=8 dy=2: 1.50"]


def test_learned_eps_runs_for_d_8_only_among_8_and_10(tmp_path, capsys):
    prefix = tmp_path / "learned"
    assert gb.main(["--dims", "8,10", "--dys", "1", "--problems", "1", "--samples", "50", "--nfe", "4",
                    "--methods", "eps-oracle", "--learned", "--mlp-steps", "3", "--projections", "10",
                    "--threads", "1", "--no-progress", "--out", str(prefix)]) == 0
    cells = _cells(prefix)
    learned = [c for c in cells.values() if c["method"] == "eps-mlp"]
    assert [c["d"] for c in learned] == [8] and learned[0]["train_seconds"] > 0 and learned[0]["nfe"] == 4
    assert "eps-mlp" in (tmp_path / "learned.md").read_text()


def test_cli_wires_bench_gmm(tmp_path, capsys):
    from exactpost.app.cli import main

    assert main(["bench", "gmm", "--dims", "7", "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("exactpost: error:") and "\n" not in err
