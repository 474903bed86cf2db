"""Smoke tests of benchmarks/tune_baselines.py and benchmarks/cost.py on tiny synthetic models
(seconds; no real data, no subprocesses)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exactpost.inference import zoo
from exactpost.baselines import run_method
from exactpost.core.interpolants import EDM
from exactpost.nets.precond import as_denoiser
from exactpost.core.tasks import make_operator, simulate

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8),
             split=np.array([0, 0, 1, 1, 2, 2]))
    return path


def test_tune_baselines_writes_and_loads_tuned_settings(models_env, tmp_path):
    tb = _load("tune_baselines")
    data = _tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    res = tb.main(["--data", str(data), "--model", "tiny-32", "--n", "2", "--nfe", "5", "--methods", "mpgd", "ddnm",
                   "--tasks", "sr4", "--max-extend", "1", "--out", str(out)])
    assert res["data"]["n"] == 2
    grid = res["grid"]["mpgd"]["sr4"]
    assert grid["reference"] == 4.0 and len(grid["points"]) in (5, 6)
    assert grid["best"] == max(grid["points"], key=lambda p: p["psnr"])["value"]
    tuned = tb.load_tuned(out / "baseline_tuning.json")
    assert set(tuned) == {"mpgd", "ddnm"} and set(tuned["mpgd"]["sr4"]) == {"scale"}
    assert set(tuned["ddnm"]["sr4"]) == {"eta"}
    json.loads((out / "baseline_tuning.json").read_text())  # strict JSON
    assert "| mpgd | scale |" in (out / "baseline_tuning.md").read_text()
    # the tuned settings are valid run_method settings
    net = zoo.load(zoo.find_model("tiny-32", "prior"))
    x = torch.zeros(1, 3, 32, 32)
    op = make_operator("sr4", 1, (3, 32, 32), generator=0)
    y = simulate(op, x, 0.05, generator=0)
    with torch.no_grad():
        r = run_method("mpgd", as_denoiser(net, EDM()), op, y, 0.05, (1, 3, 32, 32), interpolant=EDM(), nfe=3,
                       generator=torch.Generator().manual_seed(0), task="sr4", **tuned["mpgd"]["sr4"])
    assert r.settings["scale"] == tuned["mpgd"]["sr4"]["scale"]


def test_ablation_parts_run_separately_share_one_table_only_for_the_same_setup(models_env, tmp_path):
    ab = _load("ablations")
    data = _tiny_npz(tmp_path / "d.npz")
    common = ["--model", "tiny-32", "--data", str(data), "--test-split", "2", "--samples", "2", "--threads", "1",
              "--out", str(tmp_path / "ab")]
    warm = ["--parts", "warmstart", "--warm-tasks", "sr4", "--sigma-starts", "80,1", "--nfe", "4", "--reference-nfe", "4"]
    amort = ["--parts", "amortisation", "--single-task-model", str(models_env / "tiny-32" / "eps")]
    first = ab.run(ab.parse_args(common + ["--n", "2"] + warm), "cmd-warm")
    second = ab.run(ab.parse_args(common + ["--n", "2"] + amort), "cmd-amort")
    assert second["warmstart"] == json.loads(json.dumps(first["warmstart"])) and "amortisation" in second
    assert {p: r["command"] for p, r in second["part_runs"].items()} == {"warmstart": "cmd-warm",
                                                                         "amortisation": "cmd-amort"}
    md = (tmp_path / "ab.md").read_text()
    assert "## Warm start" in md and "## Amortisation" in md and "- warmstart: `cmd-warm`" in md
    # another image count is another setup: the old part is dropped, not mixed in
    third = ab.run(ab.parse_args(common + ["--n", "1"] + amort), "cmd-n1")
    assert "warmstart" not in third and list(third["part_runs"]) == ["amortisation"]
    assert "## Warm start" not in (tmp_path / "ab.md").read_text()


def test_tune_baselines_refuses_the_test_split(models_env, tmp_path):
    tb = _load("tune_baselines")
    with pytest.raises(SystemExit):
        tb.main(["--data", str(_tiny_npz(tmp_path / "d.npz")), "--model", "tiny-32", "--split", "2",
                 "--out", str(tmp_path)])


def test_tune_baselines_on_the_last_test_images_of_an_unsplit_npz(models_env, tmp_path):
    tb = _load("tune_baselines")
    rng = np.random.default_rng(1)
    data = tmp_path / "c.npz"
    np.savez(data, test_images=rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    common = ["--data", str(data), "--model", "tiny-32", "--key", "test_images", "--split", "none", "--n", "2",
              "--nfe", "3", "--methods", "ddnm", "--tasks", "sr4", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="--last"):
        tb.main(common)  # test images without --last: the benchmarks' first images would leak
    res = tb.main(common + ["--last", "--name", "tuning_c"])
    assert res["data"]["images"] == "the last n images of the selection"
    assert tb.load_tuned(tmp_path / "tuning_c.json")["ddnm"]["sr4"].keys() == {"eta"}
    assert "the last n images" in (tmp_path / "tuning_c.md").read_text()
    with pytest.raises(SystemExit, match="only 5 images"):
        tb.main([a if a != "2" else "9" for a in common] + ["--last"])  # --n 9 of 5 images


def test_cost_quick_run_and_memory_child(models_env, tmp_path, capsys):
    cost = _load("cost")
    out = tmp_path / "out"
    res = cost.main(["--model", "tiny-32", "--nfe", "3", "--repeats", "2", "--batch", "2", "--task", "inpaint-box",
                     "--methods", "eps,palette,ddnm", "--no-memory", "--tuned", "", "--out", str(out)])
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["bare", "eps", "palette", "ddnm"]  # bare is added as the reference
    assert rows["bare"]["ratio"] == pytest.approx(1.0)
    assert rows["palette"]["nfe"] == 2  # 1 call + 1-NFE Heun (its default sampler)
    # the mean + 2 levels of the default DPM-Solver++(2M): the whole budget; bare is its unconditional twin
    assert rows["eps"]["nfe"] == rows["bare"]["nfe"] == 3
    assert res["eps_sampler"] == "dpmpp2m:loglinear:smin=0.03"
    assert rows["eps"]["settings"]["sampler"] == rows["bare"]["settings"]["sampler"] == res["eps_sampler"]
    assert "EPS and bare sampler: dpmpp2m:loglinear:smin=0.03" in capsys.readouterr().out
    assert "EPS sampler dpmpp2m:loglinear:smin=0.03" in (out / "cost.md").read_text()
    assert rows["ddnm"]["nfe"] == 3 and all(len(r["runs"]) == 2 for r in rows.values())
    assert "| eps |" in (out / "cost.md").read_text()
    capsys.readouterr()
    cost.main(["--model", "tiny-32", "--nfe", "3", "--batch", "2", "--methods", "ddnm", "--tuned", "",
               "--child", "ddnm"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("PEAK_RSS_KIB ")][-1]
    mem = json.loads(line.split(" ", 1)[1])
    assert mem["peak"] > 0 and set(mem) == {"peak", "before", "reset"}
    got = cost.method_memory({"ddnm": mem, "none": dict(mem, peak=mem["peak"])}, "ddnm")
    assert got["extra_rss_mib"] >= 0 or not mem["reset"]


def test_cost_rejects_unknown_methods(models_env):
    cost = _load("cost")
    with pytest.raises(SystemExit):
        cost.main(["--model", "tiny-32", "--methods", "nope", "--no-memory"])


def test_collect_results_orders_tables_and_links_plots(tmp_path):
    mod = _load("collect_results")
    (tmp_path / "cost.md").write_text("# Cost\n\nCommand: `x`\n")
    (tmp_path / "bench_images_faces-32.md").write_text("# Images\n\n| a |\n")
    (tmp_path / "bench_images_faces-32_psnr_nfe.png").write_bytes(b"png")
    (tmp_path / "zzz_other.md").write_text("## Other\n")
    text = mod.collect(tmp_path)
    order = [text.index(s) for s in ("from results/bench_images_faces-32.md", "from results/cost.md",
                                     "from results/zzz_other.md")]
    assert order == sorted(order)
    assert "### Images" in text and "#### Other" in text and "\n# Cost" not in text  # nested under the index
    (tmp_path / "bench_images_faces-32_sweep.md").write_text("# Sweep\n")
    (tmp_path / "bench_images_faces-32_sweep_crps_nfe.png").write_bytes(b"png")
    text = mod.collect(tmp_path)
    assert "![bench_images_faces-32_psnr_nfe](results/bench_images_faces-32_psnr_nfe.png)" in text
    assert text.count("bench_images_faces-32_sweep_crps_nfe.png") == 1  # under the sweep's table only
    assert text.index("bench_images_faces-32_sweep_crps_nfe.png") > text.index("from results/bench_images_faces-32_sweep.md")
    assert "- [Image benchmarks (bundled models) (faces-32)](results/bench_images_faces-32.md)" in text


def test_ablations_run_every_part_and_report_measured_numbers(models_env, tmp_path):
    from exactpost.inference.restoration import eps_restore

    ab = _load("ablations")
    data = _tiny_npz(tmp_path / "d.npz")
    eps_path = str(models_env / "tiny-32" / "eps")
    args = ab.parse_args(["--model", "tiny-32", "--data", str(data), "--test-split", "2", "--n", "2", "--samples", "2",
                          "--warm-tasks", "sr4", "--sigma-starts", "80,1", "--nfe", "4,6", "--reference-nfe", "6",
                          "--baseline-nfe", "4", "--single-task-model", eps_path, "--threads", "1",
                          "--out", str(tmp_path / "ab")])
    res = ab.run(args, "test")
    assert [(r["sigma_start"], r["nfe"]) for r in res["warmstart"]["rows"]] == [(80, 4), (80, 6), (1, 4), (1, 6)]
    eq = {r["sigma_start"]: r for r in res["warmstart"]["equal_quality"]}
    assert eq[80]["min_nfe_at_equal_crps"] in (4, 6)  # the reference itself always qualifies
    # the table's number is the CRPS of exactly this restoration
    entry = zoo.find_model("tiny-32", "eps")
    x0 = ab.to_float(ab.load_images(str(data), None, [2], 32))[:2]
    op, y, g = ab.measure("sr4", "sr4", x0, 0.05, 0)
    with torch.no_grad():
        again = eps_restore(zoo.load(entry), entry.card, op, y, 0.05, "sr4", n_samples=2, nfe=6, generator=g)
    assert res["warmstart"]["rows"][1]["crps"] == pytest.approx(float(ab.crps(again.samples, x0).mean()), rel=1e-6)
    ops = [(r["operator"], r["method"]) for r in res["extreme"]["rows"]]
    assert ("inpaint-random-90", "eps") in ops and ("sr8", "ddnm") in ops and len(ops) == 8
    by = {(r["operator"], r["method"]): r for r in res["extreme"]["rows"]}
    assert by[("sr8", "ddnm")]["net_mean_psnr"] is None  # no 1-NFE mean: never mixed with the samples' average
    assert by[("sr8", "eps")]["net_mean_psnr"] is not None and by[("sr8", "eps")]["sample_mean_psnr"] is not None
    assert [r["model"] for r in res["amortisation"]["rows"]] == ["all-task EPS", "inpaint-random-only EPS"]
    md = (tmp_path / "ab.md").read_text()
    assert "## Warm start" in md and "| sr8 | eps | sr4 |" in md and "| sr8 | ddnm | - | 4 | - |" in md
    assert "Command: `test`" in md
    json.loads((tmp_path / "ab.json").read_text())


def test_gmm_cost_claim_ratios_use_the_same_problems_and_claims_only_the_full_protocol(tmp_path):
    """benchmarks/gmm_cost_claim.py on synthetic cache records: a ratio divides by the floors of
    the problems measured at that budget; the first budget within 1.3x is read on full-protocol
    budgets only (a lucky 1-problem budget is reported apart, not claimed)."""
    gc = _load("gmm_cost_claim")
    from exactpost.core.sampler_spec import DEFAULT

    recs = {}

    def add(method, nfe, p, sw, sampler=None):
        key = f"d8_dy1_p{p}__{method}{'[' + sampler + ']' if sampler else ''}_nfe{nfe}"
        recs[key] = dict(key=key, d=8, dy=1, problem=p, method=method, nfe_budget=nfe, sw=sw,
                         **({"sampler": sampler} if sampler else {}))

    for p in range(20):
        add("exact", 0, p, 1.0 + p)  # floors 1..20: problem 0 has the smallest
        add("eps-oracle", 10, p, 2.0 * (1.0 + p), DEFAULT.name)
        add("eps-oracle", 20, p, 1.2 * (1.0 + p), DEFAULT.name)
        add("dps", 100, p, 5.0 * (1.0 + p))
    add("dps", 1000, 0, 1.1)  # one problem, within 1.3x of its own floor (1.0)
    rows = gc.ratio_table(recs)
    by = {(r["variant"], r["nfe"]): r for r in rows}
    assert by[(f"eps-oracle[{DEFAULT.name}]", 20)]["ratio"] == pytest.approx(1.2)
    assert by[("dps", 1000)]["ratio"] == pytest.approx(1.1) and by[("dps", 1000)]["problems"] == 1
    cl = gc.claim(rows)
    eps = cl[f"eps-oracle[{DEFAULT.name}]"]["settings"]["d=8, dy=1"]
    assert eps["within"] and eps["nfe"] == 20 and eps["ratio"] == pytest.approx(1.2)
    dps = cl["dps"]["settings"]["d=8, dy=1"]
    assert not dps["within"] and dps["best_nfe"] == 100 and dps["best_ratio"] == pytest.approx(5.0)
    sub = {(r["variant"], r["nfe"]): r["ratio"] for r in gc.subset_rows(recs, [0])}
    assert sub[("dps", 100)] == pytest.approx(5.0) and sub[("dps", 1000)] == pytest.approx(1.1)


def test_diffusers_step_overhead_parts_and_tables(tmp_path):
    """Smoke test of benchmarks/diffusers_step_overhead.py (tiny network, few repeats; its
    timings mean nothing): the stub stands in for UNet2DModel.forward only while inside and
    is restored after; each row's ratio is built from its parts; both tables are written."""
    pytest.importorskip("diffusers")
    so = _load("diffusers_step_overhead")
    plain, _ = so.build("tiny", 0)
    cls, forward = type(plain), type(plain).forward
    x, out = torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), 7.0)
    with so.stubbed_forward(cls, out):
        assert plain(x, torch.tensor(5), return_dict=False)[0] is out and plain(x, torch.tensor(5)).sample is out
    assert cls.forward is forward and not torch.equal(plain(x, torch.tensor(5), return_dict=False)[0], out)
    n = torch.get_num_threads()
    try:
        rows = so.main(["--archs", "tiny", "--schedulers", "DDIMScheduler,DPMSolverMultistepScheduler",
                        "--tasks", "sr4,inpaint-box", "--batch", "2", "--steps", "2", "--other-repeats", "2",
                        "--net-pairs", "1", "--component-blocks", "2", "--component-calls", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert cls.forward is forward
    assert [(r["scheduler"], r["task"]) for r in rows] == [
        ("DDIMScheduler", "sr4"), ("DPMSolverMultistepScheduler", "sr4"),
        ("DDIMScheduler", "inpaint-box"), ("DPMSolverMultistepScheduler", "inpaint-box")]
    for r in rows:
        want = (r["net_plain_ms"] + r["net_delta_ms"] + r["other_eps_ms"]) / (r["net_plain_ms"] + r["other_plain_ms"])
        assert r["ratio"] == pytest.approx(want, rel=1e-12) and r["net_eps_ms"] == pytest.approx(
            r["net_plain_ms"] + r["net_delta_ms"], rel=1e-12)
        assert min(r["other_plain_ms"], r["other_eps_ms"], r["pivot_ms"], r["net_plain_ms"]) > 0
    data = json.loads((tmp_path / "diffusers_step_overhead.json").read_text())
    assert "python benchmarks/diffusers_step_overhead.py --archs tiny --tasks sr4,inpaint-box --batch 2" in data["meta"]["command"]
    md = (tmp_path / "diffusers_step_overhead.md").read_text()
    assert "## tiny" in md and "| DPMSolverMultistepScheduler | inpaint-box |" in md and "Worst ratio" in md


def test_preset_pilot_compares_snapshots_at_equal_wall_time_and_step(tiny_root, tmp_path):
    """Two fake runs (the same tiny prior as snapshots at steps 2 and 4; the second run twice as
    slow per step): the table holds every snapshot and the second run's rows are compared with
    the first run's loss interpolated at the same wall time and step."""
    import shutil

    pp = _load("preset_pilot")
    src = tiny_root / "tiny-32" / "prior"
    for label, per_step in (("a", 10.0), ("b", 20.0)):
        snaps = tmp_path / label / "snapshots"
        snaps.mkdir(parents=True)
        for step in (2, 4):
            for ext in (".safetensors", ".json"):
                shutil.copyfile(src.with_suffix(ext), snaps / f"model-{step:06d}{ext}")
        (tmp_path / label / "metrics.jsonl").write_text("".join(
            json.dumps(dict(step=s, loss=1.0, wall_time_s=s * per_step)) + "\n" for s in (1, 2, 3, 4))
            + json.dumps({"eval": {"step": 4}}) + "\n")
    out = tmp_path / "out"
    assert pp.main(["--run", f"a={tmp_path / 'a'}", "--run", f"b={tmp_path / 'b'}", "--data",
                    str(_tiny_npz(tmp_path / "d.npz")), "--n", "2", "--sigmas", "0.5,2", "--out", str(out)]) == 0
    rows = json.loads((out / "preset_pilot.json").read_text())["rows"]
    assert [(r["label"], r["step"], r["wall_time_s"]) for r in rows] == [("a", 2, 20.0), ("a", 4, 40.0),
                                                                        ("b", 2, 40.0), ("b", 4, 80.0)]
    assert rows[0]["loss"] == rows[2]["loss"] > 0  # same weights, same images and noise
    md = (out / "preset_pilot.md").read_text()
    loss = f"{rows[0]['loss']:.4f}"
    # b's step-2 snapshot (40 s) meets a's curve at a's step 4 (40 s); b's step 4 (80 s) is past a's run
    assert f"| b step 2 | {loss} | {rows[1]['loss']:.4f} | {loss} |" in md
    assert f"| b step 4 | {loss} | outside the run | {rows[1]['loss']:.4f} |" in md
    assert pp._interp([(0.0, 1.0), (2.0, 3.0)], 1.0) == 2.0 and pp._interp([(0.0, 1.0)], 5.0) is None


def test_calibration_split_on_test_and_on_training_images(tiny_root, tmp_path, monkeypatch):
    """benchmarks/calibration_split.py on an untrained tiny model: the table's rows for all,
    observed and missing pixels, coverage within [0, 1] beside the exchangeable reference; with
    --train-images the images come from the network's training file (its card's data)."""
    import shutil

    from exactpost.inference import zoo

    root = tmp_path / "models"
    shutil.copytree(tiny_root, root)
    card_path = root / "tiny-32" / "eps.json"
    card = json.loads(card_path.read_text())
    card["data"] = {"path": str(_tiny_npz(tmp_path / "train.npz")), "key": None, "split": [0, 1], "image_size": 32}
    card_path.write_text(json.dumps(card))
    monkeypatch.setenv(zoo.ENV_VAR, str(root))
    cs = _load("calibration_split")
    for extra, n, where in (([], 2, "test"), (["--train-images"], 3, "random training")):
        doc = cs.main(["--model", "tiny-32", "--data", "demo", "--images", str(n), "--samples", "3", "--nfe", "2",
                       "--out", str(tmp_path / f"cs{n}"), *extra])
        assert doc["reference"] == pytest.approx(0.5) and doc["train_images"] == bool(extra)
        (row,) = doc["rows"]
        assert row["all"]["pixels"] == n * 3 * 32 * 32 == row["observed"]["pixels"] + row["missing"]["pixels"]
        assert all(0 <= row[k]["coverage80"] <= 1 for k in ("all", "observed", "missing"))
        assert f"{n} {where} images, K = 3" in (tmp_path / f"cs{n}.md").read_text()
    truth, op, y = cs.training_set_measurement(card, 3, 0.05, "tiny-32")
    with np.load(tmp_path / "train.npz") as z:
        pool = torch.from_numpy(z["images"][z["split"] < 2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert all(any(torch.equal(t, p) for p in pool) for t in truth) and y.shape == truth.shape


@pytest.mark.parametrize("task", ["inpaint-random", "inpaint-box", "sr4", "deblur-gauss", "deblur-motion"])
def test_error_split_parts_are_orthogonal_and_add_up(task):
    es = _load("error_split")
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    estimate = truth + 0.3 * torch.randn(2, 3, 32, 32, generator=g)
    op = make_operator(task, 2, (3, 32, 32), generator=g)
    mse = es.split_mse(op, estimate, truth)
    assert mse["row"] > 0 and mse["null"] >= 0
    assert mse["row"] + mse["null"] == pytest.approx(mse["all"], rel=1e-9)
    if task == "inpaint-random":  # the row space is the observed pixels
        err2 = (estimate.clamp(-1, 1) - truth).double().pow(2)
        observed = op.mask.expand_as(truth).bool()
        assert mse["row"] == pytest.approx(float(err2[observed].sum() / err2.numel()), rel=1e-9)


def test_error_split_writes_its_table_and_a_plus_y_errs_by_the_noise_alone_where_measured(models_env, tmp_path):
    es = _load("error_split")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), split=np.array([0] * 20 + [2] * 4))
    res = es.main(["--model", "tiny-32", "--data", str(data), "--train-split", "0", "--test-split", "2", "--n", "4",
                   "--tasks", "inpaint-random,sr4", "--extra", f"again={models_env / 'tiny-32' / 'eps'}",
                   "--out", str(tmp_path / "split")])
    names = [(r["task"], r["estimate"].split(" (")[0]) for r in res["rows"]]
    assert names == [(t, e) for t in ("inpaint-random", "sr4") for e in ("lmmse", "A+y", "eps tiny-32", "eps again")]
    for r in res["rows"]:
        assert r["mse"]["row"] + r["mse"]["null"] == pytest.approx(r["mse"]["all"], rel=1e-9)
    pinv = next(r for r in res["rows"] if r["task"] == "inpaint-random" and r["estimate"] == "A+y")
    # observed pixels: y = x + noise (sigma_y 0.05), 30% of 4 x 3072 values -> within 15% (about 5 standard errors)
    assert pinv["mse"]["row"] == pytest.approx(0.05 ** 2 * 0.3, rel=0.15)
    twins = [r for r in res["rows"] if r["estimate"].startswith("eps")]
    assert twins[0]["mse"] == twins[1]["mse"]  # the same checkpoint twice: the same numbers
    assert "| sr4 | lmmse |" in (tmp_path / "split.md").read_text()
    assert json.loads((tmp_path / "split.json").read_text())["n"] == 4


def test_error_split_draws_average_independent_one_nfe_means(models_env, tmp_path):
    """--draws 3: the single draw is the --draws 1 row, the mean of three draws is a new row
    with its spread (> 0: the x_T draws differ), and the average of the draws (checked
    against eps_restore with the documented seeds)."""
    es = _load("error_split")
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, images=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), split=np.array([0] * 20 + [2] * 4))
    common = ["--model", "tiny-32", "--data", str(data), "--train-split", "0", "--test-split", "2", "--n", "4",
              "--tasks", "sr4", "--seed", "5"]
    one = es.main(common + ["--out", str(tmp_path / "one")])["rows"]
    three = es.main(common + ["--draws", "3", "--out", str(tmp_path / "three")])["rows"]
    assert [r["estimate"] for r in three[:3]] == [r["estimate"] for r in one]
    assert three[2]["mse"] == one[2]["mse"] and "draw_spread" not in three[2]
    avg = three[3]
    assert avg["estimate"].endswith(", mean of 3 draws") and avg["draw_spread"] > 0
    # the average's error, recomputed from three eps_restore calls with seeds 5, 6, 7
    from exactpost.app.demo import task_seed
    from exactpost.inference import zoo
    from exactpost.inference.restoration import eps_restore
    from exactpost.io.images import load_images, to_float

    test = to_float(load_images(str(data), None, [2], 32))[:4]
    g = torch.Generator().manual_seed(task_seed(5, "sr4"))
    op = make_operator("sr4", 4, (3, 32, 32), generator=g)
    y = simulate(op, test, 0.05, generator=g)
    entry = zoo.find_model("tiny-32", "eps")
    net = zoo.load(entry)
    mean = torch.stack([eps_restore(net, entry.card, op, y, 0.05, "sr4", n_samples=0, nfe=20,
                                    generator=torch.Generator().manual_seed(5 + k)).mean for k in range(3)]).mean(0)
    assert avg["mse"] == pytest.approx(es.split_mse(op, mean, test), rel=1e-6)
    assert "mean of 3 draws" in (tmp_path / "three.md").read_text()


def test_error_split_extra_needs_a_label(capsys):
    es = _load("error_split")
    with pytest.raises(SystemExit) as exc:
        es.parse_args(["--data", "x.npz", "--extra", "runs/x/model"])
    assert exc.value.code == 2 and "give LABEL=CHECKPOINT" in capsys.readouterr().err


def test_model_quality_table_says_when_palette_was_not_measured():
    mq = _load("model_quality")
    row = dict(task="sr4", lmmse_psnr=21.0, eps_mean_psnr=22.0, eps_sample_psnr=20.0, eps_crps=0.07)
    res = dict(model="m", eps_steps=10, palette_steps=None, seed=0, sigma_y=0.05, command="c",
               data=dict(n=2, train_images=4), rows=[dict(row)], eps_mean_beats_lmmse=["sr4"], eps_crps_beats_palette=[])
    text = mq.markdown(res)
    assert "Palette not measured" in text and "beats Palette on 0/1" not in text
    res["rows"] = [dict(row, palette_mean_psnr=21.5, palette_crps=0.08)]
    res["palette_steps"], res["eps_crps_beats_palette"] = 10, ["sr4"]
    text = mq.markdown(res)
    assert "Palette 10 steps" in text and "EPS CRPS beats Palette on 1/1 (target >= 4)" in text


def test_eval_history_compares_runs_at_the_steps_all_of_them_evaluated(tmp_path):
    """benchmarks/eval_history.py: logged evaluations only, at common steps (<= --upto),
    differences to the first run; a missing log is a clear error."""
    mod = _load("eval_history")
    logs = {"a": [{"step": 20, "loss": 1.0}, {"eval": {"step": 500, "psnr_mean_sr4": 20.0, "psnr_mean_box": 22.0}},
                  {"eval": {"step": 1000, "psnr_mean_sr4": 21.0, "psnr_mean_box": 23.0}},
                  {"eval": {"step": 1500, "psnr_mean_sr4": 21.5, "psnr_mean_box": 23.5}}],
            "b": [{"eval": {"step": 500, "psnr_mean_sr4": 20.5, "psnr_mean_box": 21.0}},
                  {"eval": {"step": 1500, "psnr_mean_sr4": 22.0, "psnr_mean_box": 23.0}}]}
    for name, recs in logs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    assert mod.main(["--run", f"ref={tmp_path / 'a'}", "--run", f"new={tmp_path / 'b'}", "--upto", "1000",
                     "--out", str(out), "--name", "h"]) == 0
    rows = json.loads((out / "h.json").read_text())["rows"]
    assert [r["step"] for r in rows] == [500]
    assert rows[0]["diff"]["new"] == {"sr4": 0.5, "box": -1.0}
    md = (out / "h.md").read_text()
    assert "| 500 | diff new | +0.50 | -1.00 |" in md
    mod.main(["--run", f"ref={tmp_path / 'a'}", "--run", f"new={tmp_path / 'b'}", "--out", str(out), "--name", "h"])
    assert [r["step"] for r in json.loads((out / "h.json").read_text())["rows"]] == [500, 1500]
    with pytest.raises(SystemExit, match="not found"):
        mod.main(["--run", f"ref={tmp_path / 'a'}", "--run", f"x={tmp_path / 'none'}", "--out", str(out)])


def test_model_quality_update_cards_leaves_the_palette_card_alone_when_palette_was_not_measured(tmp_path, monkeypatch):
    """--update-cards with --skip-palette writes the EPS card's quality only."""
    mq = _load("model_quality")
    (tmp_path / "m").mkdir()
    for kind in ("eps", "palette"):
        (tmp_path / "m" / f"{kind}.json").write_text(json.dumps({"quality": {"summary": "old"}}))
        (tmp_path / "m" / f"{kind}.safetensors").write_bytes(b"")
    monkeypatch.setenv("EXACTPOST_MODELS", str(tmp_path))
    row = dict(task="sr4", lmmse_psnr=21.0, eps_mean_psnr=22.0, eps_sample_psnr=21.0, eps_crps=0.07)
    res = dict(model="m", eps_steps=10, palette_steps=None, seed=0, sigma_y=0.05, command="c",
               data=dict(n=2, train_images=4), rows=[row], eps_mean_beats_lmmse=["sr4"], eps_crps_beats_palette=[])
    mq.update_cards(res)
    card = lambda kind: json.loads((tmp_path / "m" / f"{kind}.json").read_text())["quality"]  # noqa: E731
    assert card("eps")["summary"].startswith("test n=2: EPS mean > LMMSE on 1/1") and card("palette") == {"summary": "old"}
    res["rows"] = [dict(row, palette_mean_psnr=21.5, palette_crps=0.08)]
    mq.update_cards(res)
    assert card("palette")["rows"] == res["rows"]


def _bench_cell(task, method, nfe, psnr, ssim, crps, coverage=None, spread_skill=None):
    cell = dict(task=task, method=method, nfe_budget=nfe, psnr=psnr, ssim=ssim, crps=crps)
    if coverage is not None:
        cell.update(coverage80=coverage, coverage80_reference=0.6, spread_skill=spread_skill)
    return cell


def test_paper_claim_images_counts_strict_wins_and_checks_calibration_targets(tmp_path, capsys):
    pc = _load("paper_claim_images")
    cells = [
        # inpaint-random: EPS best PSNR, tied SSIM (not a win), worse CRPS
        _bench_cell("inpaint-random", "eps", 20, 25.0, 0.80, 0.050, coverage=0.625, spread_skill=1.09),
        _bench_cell("inpaint-random", "dps", 100, 24.0, 0.80, 0.060, coverage=0.400, spread_skill=0.60),
        _bench_cell("inpaint-random", "dps", 250, 24.5, 0.70, 0.045, coverage=0.640, spread_skill=0.85),
        # sr4: EPS best everywhere; its coverage is 0.04 off (missed), spread/skill 1.11 (missed)
        _bench_cell("sr4", "eps", 20, 22.0, 0.70, 0.070, coverage=0.640, spread_skill=1.11),
        _bench_cell("sr4", "pigdm", 100, 21.0, 0.60, 0.080, coverage=0.575, spread_skill=0.95),
        _bench_cell("sr4", "eps", 5, 30.0, 0.99, 0.001),  # another EPS budget is not a competitor
    ]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(dict(config=dict(model="fam-32"), cells=cells)))
    res = pc.main(["--bench", str(bench), "--out", str(tmp_path / "claim")])
    cl = res["claims"]["fam-32"]
    assert (cl["wins"], cl["cells"]) == (4, 6)
    ir = cl["tasks"]["inpaint-random"]
    assert ir["psnr"]["win"] and ir["psnr"]["best"] == "dps@250" and ir["psnr"]["margin"] == pytest.approx(0.5)
    assert not ir["ssim"]["win"] and ir["ssim"]["margin"] == 0.0
    assert not ir["crps"]["win"] and ir["crps"]["best"] == "dps@250" and ir["crps"]["margin"] == pytest.approx(-0.005)
    assert all(cl["tasks"]["sr4"][f]["win"] for f in ("psnr", "ssim", "crps"))
    calib = {(t, r["method"]): r for t, rows in cl["calibration"].items() for r in rows}
    assert (calib["inpaint-random", "eps@20"]["coverage_ok"], calib["inpaint-random", "eps@20"]["spread_skill_ok"]) \
        == (True, True)
    assert (calib["sr4", "eps@20"]["coverage_ok"], calib["sr4", "eps@20"]["spread_skill_ok"]) == (False, False)
    assert calib["sr4", "pigdm@100"]["gap"] == pytest.approx(-0.025) and calib["sr4", "pigdm@100"]["coverage_ok"]
    assert ("sr4", "eps@5") not in calib  # no calibration fields recorded
    assert cl["mean_estimates"] == {}  # no spread/skill recorded
    md = (tmp_path / "claim.md").read_text()
    assert "## fam-32: EPS wins 4 of 6" in md and "| sr4 | eps@20 | 0.640 | 0.600 | +0.040 | 1.11 | missed | missed |" in md
    json.loads((tmp_path / "claim.json").read_text())


def test_paper_claim_images_refuses_an_unfinished_bench(tmp_path):
    pc = _load("paper_claim_images")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(dict(config=dict(model="fam-32"),
                                     cells=[_bench_cell("sr4", "pigdm", 100, 21.0, 0.6, 0.08)])))
    with pytest.raises(pc.ClaimError, match="no EPS cell at 20 NFE"):
        pc.main(["--bench", str(bench), "--out", str(tmp_path / "claim")])
    with pytest.raises(pc.ClaimError, match="no such file"):
        pc.main(["--bench", str(tmp_path / "missing.json"), "--out", str(tmp_path / "claim")])


def test_paper_claim_own_mean_psnr_recovers_the_sampler_mean_error_from_spread_and_skill():
    """K = 4 samples around a biased mean: the K -> inf estimate from the pooled spread and
    skill matches the PSNR of the (known) mean itself, and the K-sample mean pays v / K."""
    from exactpost.core.metrics import spread_skill

    pc = _load("paper_claim_images")
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(50, 64, 64, generator=g, dtype=torch.float64)
    mean = truth + 0.1 * torch.randn(truth.shape, generator=g, dtype=torch.float64)  # MSE 0.01
    samples = mean + 0.2 * torch.randn((4,) + truth.shape, generator=g, dtype=torch.float64)  # v = 0.04
    ss = spread_skill(samples, truth)
    got = pc.own_mean_psnr(dict(spread=ss["spread"], skill=ss["skill"], samples=4))
    assert got["psnr_inf"] == pytest.approx(10 * np.log10(4 / float((mean - truth).square().mean())), abs=0.03)
    assert got["psnr_k"] == pytest.approx(10 * np.log10(4 / (0.01 + 0.04 / 4)), abs=0.03)
    assert pc.own_mean_psnr(dict(spread=None, skill=0.1, samples=4)) is None
