"""Every bad input a one-line error: a table of command lines (one row per case) that must
end with exit code 2, one stderr line ``exactpost: error: ...`` holding the expected words,
no traceback, and a workspace left byte for byte as it was (no output folder, no temporary
file, no changed file). Also: the top-level handler's other paths (a bug shows its traceback
and exit code 1; ``--debug`` / ``EXACTPOST_DEBUG`` show tracebacks of expected errors), and
every option of every subcommand has a help text that says what it is.

Runs in-process through :func:`exactpost.app.cli.main` (what ``python -m exactpost.app.cli`` runs
under ``sys.exit``) on a tiny model folder and tiny files; two rows also run as real
processes to check the exit status and stderr of the command itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import exactpost
from exactpost.app import cli
from exactpost.inference import zoo
from exactpost.training.loop import TrainConfig
from fs_helpers import snapshot
from zoo_helpers import make_tiny_models, write_restore_inputs

SRC = str(Path(exactpost.__file__).resolve().parents[1])
UNET = json.dumps({"base_width": 8, "channel_mults": [1, 2], "attn_resolutions": [], "num_res_blocks": 1})


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace: tiny models, inputs good and bad, and paths that are traps."""
    root = tmp_path_factory.mktemp("ws")
    make_tiny_models(root / "models")
    write_restore_inputs(root)
    rng = np.random.default_rng(0)
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    np.savez(root / "tiny.npz", images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    (root / "afile").write_text("a file, not a folder")
    (root / "list.json").write_text("[1, 2]")
    (root / "broken.json").write_text('{"steps": 3,')
    (root / "zero_steps.json").write_text('{"steps": 0}')
    (root / "null_steps.json").write_text('{"steps": null}')
    (root / "nan_lr.json").write_text('{"lr": NaN}')
    (root / "text_threads.json").write_text('{"threads": "many"}')
    (root / "number_init.json").write_text('{"init_from": 5}')
    (root / "old").mkdir()  # a previous output folder
    (root / "old" / "mean.png").write_bytes(b"previous output")
    os.symlink(root / "nowhere", root / "dangling")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    (root / "adir").mkdir()
    return root


@pytest.fixture
def env(ws, monkeypatch):
    monkeypatch.setenv(zoo.ENV_VAR, str(ws / "models"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.chdir(ws)
    return ws


RESTORE = ["restore", "photo.png", "--model", "tiny-32", "--samples", "2", "--nfe", "2"]
DEMO = ["demo", "--model", "tiny-32", "--images", "1", "--samples", "2", "--nfe", "2", "--no-progress"]
SAMPLE = ["sample", "--model", "models/tiny-32/prior", "--n", "2", "--steps", "1"]
TRAIN = ["train", "--data", "tiny.npz", "--image-size", "8", "--preset", "tiny", "--unet", UNET, "--batch-size", "4",
         "--steps", "2", "--threads", "1", "--no-progress", "--run-dir", "run"]



def without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (so that a --config file sets it)."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


#: (id, arguments, words expected in the one error line). Expected exit code: 2 for every row.
CASES = [
    # --- the rows of the issue (each ended in a traceback before)
    ("demo-out-is-file", DEMO + ["--out", "afile"], "afile exists and is a file"),
    ("restore-out-dangling-link", RESTORE + ["--task", "sr4", "--simulate", "--out", "dangling"], "does not exist"),
    ("sample-out-is-folder", SAMPLE + ["--out", "adir"], "is a folder"),
    ("sample-out-below-file", SAMPLE + ["--out", "afile/s.png"], "afile is a file"),
    ("sample-huge-n", SAMPLE + ["--n", "100000000000", "--out", "s.png"], "needs at least"),
    ("train-checkpoint-every-0", TRAIN + ["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    ("train-log-every-0", TRAIN + ["--log-every", "0"], "--log-every must be >= 1"),
    ("train-image-size-0", TRAIN + ["--image-size", "0"], "--image-size must be >= 8"),
    ("train-threads-negative", TRAIN + ["--threads", "-1"], "--threads must be >= 0"),
    ("train-config-json-list", TRAIN + ["--config", "list.json"], "holds a JSON list, not an object"),
    ("train-run-dir-is-file", TRAIN + ["--run-dir", "afile"], "afile exists and is a file"),
    # --- more paths: links, loops, files on the way
    ("demo-out-dangling-link", DEMO + ["--out", "dangling"], "does not exist"),
    ("demo-out-link-loop", DEMO + ["--out", "loop_a"], "symbolic link loop"),
    ("demo-out-below-file", DEMO + ["--out", "afile/demo"], "afile is a file"),
    ("restore-out-is-file", RESTORE + ["--task", "sr4", "--simulate", "--out", "afile"], "exists and is a file"),
    ("restore-out-link-loop", RESTORE + ["--task", "sr4", "--simulate", "--out", "loop_a"], "symbolic link loop"),
    ("restore-out-below-file", RESTORE + ["--task", "sr4", "--simulate", "--out", "afile/sub"], "afile is a file"),
    ("restore-out-below-dangling", RESTORE + ["--task", "sr4", "--simulate", "--out", "dangling/sub"],
     "does not exist"),
    ("restore-out-not-empty", RESTORE + ["--task", "sr4", "--simulate", "--out", "old"], "--overwrite"),
    ("sample-out-dangling-link", SAMPLE + ["--out", "dangling.png"], "does not exist"),
    ("sample-out-not-png", SAMPLE + ["--out", "samples.jpg"], "must end in .png"),
    ("train-run-dir-dangling", TRAIN + ["--run-dir", "dangling"], "does not exist"),
    ("train-run-dir-below-file", TRAIN + ["--run-dir", "afile/run"], "afile is a file"),
    ("train-run-dir-loop", TRAIN + ["--run-dir", "loop_a/run"], "symbolic link loop"),
    # --- inputs: images, masks, kernels, models, tasks, methods (already handled; kept so)
    ("restore-missing-image", ["restore", "missing.png", "--task", "sr4", "--simulate", "--model", "tiny-32"],
     "missing.png"),
    ("restore-corrupt-image", ["restore", "garbage.png", "--task", "sr4", "--simulate", "--model", "tiny-32"],
     "garbage.png"),
    ("restore-mask-wrong-size", RESTORE + ["--task", "inpaint-box", "--mask", "mask16.png"], "16x16"),
    ("restore-mask-all-black", RESTORE + ["--task", "inpaint-box", "--mask", "black.png"], "no pixel as observed"),
    ("restore-mask-missing-file", RESTORE + ["--task", "inpaint-box", "--mask", "nomask.png"], "nomask.png"),
    ("restore-mask-corrupt", RESTORE + ["--task", "inpaint-box", "--mask", "garbage.png"], "garbage.png"),
    ("restore-needs-mask", RESTORE + ["--task", "inpaint-box"], "needs --mask"),
    ("restore-kernel-negative", RESTORE + ["--task", "deblur-gauss", "--kernel", "negative.npy"], "negative"),
    ("restore-kernel-zeros", RESTORE + ["--task", "deblur-gauss", "--kernel", "zeros.npy"], "all zeros"),
    ("restore-kernel-nan", RESTORE + ["--task", "deblur-gauss", "--kernel", "nan.npy"], "finite"),
    ("restore-kernel-corrupt", RESTORE + ["--task", "deblur-gauss", "--kernel", "garbage.npy"], "garbage.npy"),
    ("restore-needs-kernel", RESTORE + ["--task", "deblur-gauss"], "needs --kernel"),
    ("restore-unknown-task", RESTORE + ["--task", "paint-it-black", "--simulate"], "unknown task"),
    ("restore-unknown-method", RESTORE + ["--task", "sr4", "--simulate", "--method", "magic"], "unknown method"),
    ("restore-unknown-model", RESTORE + ["--task", "sr4", "--simulate", "--model", "faces-1024"],
     "unknown model 'faces-1024'"),
    ("restore-no-task", ["restore", "photo.png"], "the following arguments are required: --task"),
    # --- numbers: sigma_y, samples, NFE, seed, threads
    ("restore-sigma-y-nan", RESTORE + ["--task", "sr4", "--simulate", "--sigma-y", "nan"], "--sigma-y must be"),
    ("restore-sigma-y-negative", RESTORE + ["--task", "sr4", "--simulate", "--sigma-y", "-0.1"], "--sigma-y must be"),
    ("restore-sigma-y-inf", RESTORE + ["--task", "sr4", "--simulate", "--sigma-y", "inf"], "--sigma-y must be"),
    ("restore-sigma-y-text", RESTORE + ["--task", "sr4", "--simulate", "--sigma-y", "low"], "--sigma-y must be"),
    ("restore-one-sample", RESTORE + ["--task", "sr4", "--simulate", "--samples", "1"], "--samples must be >= 2"),
    ("restore-huge-samples", RESTORE + ["--task", "sr4", "--simulate", "--samples", "100000000000"],
     "needs at least"),
    ("restore-samples-text", RESTORE + ["--task", "sr4", "--simulate", "--samples", "many"],
     "--samples must be an integer"),
    ("restore-nfe-1", RESTORE + ["--task", "sr4", "--simulate", "--nfe", "1"], "--nfe must be >= 2"),
    ("restore-nfe-float", RESTORE + ["--task", "sr4", "--simulate", "--nfe", "2.5"], "--nfe must be an integer"),
    ("restore-seed-negative", RESTORE + ["--task", "sr4", "--simulate", "--seed", "-1"],
     "--seed must be in 0..4294967295"),
    ("restore-seed-huge", RESTORE + ["--task", "sr4", "--simulate", "--seed", str(2**70)], "--seed must be in"),
    ("restore-threads-negative", RESTORE + ["--task", "sr4", "--simulate", "--threads", "-3"],
     "--threads must be >= 0"),
    ("demo-unknown-model", DEMO + ["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ("demo-unknown-task", DEMO + ["--tasks", "inpaint-everything"], "unknown task"),
    ("demo-one-sample", DEMO + ["--samples", "1"], "--samples must be >= 2"),
    ("demo-nfe-1", DEMO + ["--nfe", "1"], "--nfe must be >= 2"),
    ("demo-no-images", DEMO + ["--images", "0"], "--images must be >= 1"),
    ("demo-too-many-images", DEMO + ["--images", "99"], "only 6 demo images"),
    ("demo-sigma-y-nan", DEMO + ["--sigma-y", "nan"], "--sigma-y must be"),
    ("demo-seed-text", DEMO + ["--seed", "abc"], "--seed must be an integer"),
    ("sample-n-0", SAMPLE + ["--n", "0"], "--n must be >= 1"),
    ("sample-steps-0", SAMPLE + ["--steps", "0"], "--steps must be >= 1"),
    ("sample-missing-model", ["sample", "--model", "nomodel", "--out", "s.png"], "no checkpoint at nomodel"),
    ("sample-conditional-model", ["sample", "--model", "models/tiny-32/eps", "--out", "s.png"], "conditional"),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], "--lr must be a finite number > 0"),
    ("train-lr-0", TRAIN + ["--lr", "0"], "--lr must be a finite number > 0"),
    ("train-batch-size-0", TRAIN + ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("train-steps-0", TRAIN + ["--steps", "0"], "--steps must be >= 1"),
    ("train-steps-text", TRAIN + ["--steps", "ten"], "--steps must be an integer"),
    ("train-seed-negative", TRAIN + ["--seed", "-5"], "--seed must be in 0..4294967295"),
    ("train-uniform-frac", TRAIN + ["--uniform-frac", "1.5"], "--uniform-frac must be a finite number >= 0 and <= 1"),
    ("train-sigma-y-negative", TRAIN + ["--sigma-y", "-0.1"], "--sigma-y must be finite and >= 0"),
    ("train-sigma-y-range-reversed", TRAIN + ["--sigma-y", "0.2,0.1"], "LO <= HI"),
    ("train-grad-clip-0", TRAIN + ["--grad-clip", "0"], "--grad-clip must be"),
    ("train-weight-decay-negative", TRAIN + ["--weight-decay", "-1"], "--weight-decay must be"),
    ("train-eval-every-negative", TRAIN + ["--eval-every", "-1"], "--eval-every must be >= 0"),
    ("train-warmup-negative", TRAIN + ["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    ("train-ema-halflife-inf", TRAIN + ["--ema-halflife-kimg", "inf"], "--ema-halflife-kimg must be"),
    ("train-data-split-text", TRAIN + ["--data-split", "train"], "--data-split must be"),
    ("train-unet-not-json", TRAIN + ["--unet", "{base_width: 8"], "--unet must be a JSON object"),
    ("train-unet-list", TRAIN + ["--unet", "[16, 32]"], "--unet must be a JSON object"),
    ("train-unknown-objective", TRAIN + ["--objective", "diffusion"], "unknown objective 'diffusion'"),
    ("train-unknown-task", TRAIN + ["--objective", "eps", "--tasks", "sr4,denoise-magic"],
     "unknown task 'denoise-magic'"),
    ("train-missing-data", TRAIN + ["--data", "nodata.npz"], "nodata.npz"),
    ("train-no-data", ["train", "--run-dir", "run", "--steps", "2"], "--data"),
    ("train-config-missing", TRAIN + ["--config", "noconfig.json"], "noconfig.json does not exist"),
    ("train-config-folder", TRAIN + ["--config", "adir"], "is not a file"),
    ("train-config-broken", TRAIN + ["--config", "broken.json"], "is not valid JSON"),
    ("train-config-steps-0", without(TRAIN, "--steps") + ["--config", "zero_steps.json"],
     "config key 'steps' in zero_steps.json must be >= 1"),
    ("train-config-steps-null", without(TRAIN, "--steps") + ["--config", "null_steps.json"],
     "config key 'steps' in null_steps.json must be set"),
    ("train-config-lr-nan", TRAIN + ["--config", "nan_lr.json"], "config key 'lr' in nan_lr.json must be"),
    ("train-config-threads-text", without(TRAIN, "--threads") + ["--config", "text_threads.json"],
     "config key 'threads' in text_threads.json must be an integer"),
    ("train-config-init-from-number", TRAIN + ["--config", "number_init.json"],
     "config key 'init_from' in number_init.json must be a string"),
    ("finetune-needs-init-from", ["finetune"] + TRAIN[1:], "finetune needs --init-from"),
    ("unknown-command", ["paint"], "invalid choice: 'paint'"),
    ("unknown-option", ["demo", "--colour", "red"], "unrecognized arguments: --colour red"),
]
if "precision" in {f.name for f in dataclasses.fields(TrainConfig)}:
    CASES.append(("train-precision-unknown", TRAIN + ["--precision", "fp16"], "--precision must be one of"))
if "snapshot_every" in {f.name for f in dataclasses.fields(TrainConfig)}:
    CASES.append(("train-snapshot-every-negative", TRAIN + ["--snapshot-every", "-1"], "--snapshot-every must be >= 0"))


def one_line_error(rc: int, err: str, words: str) -> str:
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    assert lines[0].startswith("exactpost: error: ") and "Traceback" not in err, err
    assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(env, capsys, argv, words):
    before = snapshot(env)
    capsys.readouterr()
    rc = cli.main(list(argv))
    one_line_error(rc, capsys.readouterr().err, words)
    assert snapshot(env) == before  # no output folder, no temporary file, nothing replaced


@pytest.mark.parametrize("argv, words", [
    (DEMO + ["--out", "afile"], "afile exists and is a file"),
    (TRAIN + ["--config", "list.json"], "holds a JSON list"),
])
def test_a_real_process_exits_2_with_one_line(env, argv, words):
    environ = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    environ["PYTHONPATH"] = SRC + (os.pathsep + environ["PYTHONPATH"] if environ.get("PYTHONPATH") else "")
    before = snapshot(env)
    res = subprocess.run([sys.executable, "-m", "exactpost.app.cli", *argv], cwd=env, env=environ, capture_output=True,
                         text=True, timeout=300)
    one_line_error(res.returncode, res.stderr, words)
    assert snapshot(env) == before


# --- the top-level handler ---------------------------------------------------------------------
def test_a_bug_shows_its_traceback_exit_1_and_asks_for_a_report(env, capsys, monkeypatch):
    def broken(args, argv):
        return {}["no such key"]

    monkeypatch.setattr(cli, "cmd_models", broken)
    rc = cli.main(["models"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "KeyError" in err
    assert "This is a bug in exactpost: please report it" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("how", ["--debug before", "--debug after", "environment"])
def test_debug_shows_the_traceback_of_an_expected_error(env, capsys, monkeypatch, how):
    argv = DEMO + ["--out", "afile"]
    if how == "--debug before":
        argv = ["--debug"] + argv
    elif how == "--debug after":
        argv = argv + ["--debug"]
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "OutputPathError" in err
    assert err.strip().splitlines()[-1].startswith("exactpost: error: output folder afile exists and is a file")


def test_out_of_memory_and_os_errors_are_one_line(env, capsys, monkeypatch):
    """An allocation failure that no estimate caught, and an OSError from anywhere (here a
    permission error reading the data), are expected failures: one line, exit 2."""
    def oom(args, argv):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1234567890123 bytes.")

    monkeypatch.setattr(cli, "cmd_models", oom)
    rc = cli.main(["models"])
    line = one_line_error(rc, capsys.readouterr().err, "out of memory")
    assert "ask for less" in line

    def denied(args, argv):
        raise PermissionError(13, "Permission denied", "data/faces.npz")

    monkeypatch.setattr(cli, "cmd_models", denied)
    rc = cli.main(["models"])
    one_line_error(rc, capsys.readouterr().err, "Permission denied: data/faces.npz")


# --- help that helps ---------------------------------------------------------------------------
def _parsers(ap: argparse.ArgumentParser, name: str = "exactpost"):
    yield name, ap
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sp in action.choices.items():
                yield from _parsers(sp, f"{name} {sub}")


def test_every_option_of_every_subcommand_has_a_help_text():
    """Words saying what the option is (not a field name), and its default where it has
    one (stated in the text or appended by the formatter); required options say so."""
    ap = cli.build_parser()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    seen, problems = 0, []
    for name, parser in _parsers(ap):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            seen += 1
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            text = formatter._expand_help(action) if action.help else ""
            words = text.replace(",", " ").split()
            if len(words) < 4 or text.startswith("TrainConfig") or text.strip() in fields | {action.dest}:
                problems.append(f"{label}: {text!r}")
            elif action.option_strings and action.required and "required" not in text:
                problems.append(f"{label}: required but its help does not say so: {text!r}")
            elif action.option_strings and not action.required and action.default not in (None, False, [],
                                                                                            argparse.SUPPRESS):
                if "default" not in text:
                    problems.append(f"{label}: default {action.default!r} not stated: {text!r}")
    assert seen > 100 and not problems, "\n".join(problems)


def test_every_training_setting_is_an_option_with_its_own_help():
    """The train/finetune options are generated from TrainConfig: a new field gets an option
    at once, and must get a help text in cli.TRAIN_HELP too."""
    options = {f.name for f in dataclasses.fields(TrainConfig)} - set(cli.NOT_OPTIONS)
    assert not options - set(cli.TRAIN_HELP), f"TrainConfig fields without help: {sorted(options - set(cli.TRAIN_HELP))}"
    ap = cli.build_parser()
    for name, parser in _parsers(ap):
        if name.split()[-1] in ("train", "finetune"):
            dests = {a.dest for a in parser._actions}
            assert options <= dests, sorted(options - dests)


def test_help_exits_0_and_prints_defaults(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "TrainConfig." not in out and "(default 1000)" in out and "EXACTPOST_DEBUG" in out
    assert cli.main(["restore", "--help"]) == 0
    assert "(default: faces-32)" in " ".join(capsys.readouterr().out.split())


def test_restore_help_names_every_method(capsys):
    """`exactpost restore --help` lists every method by name, generated from the registries:
    a newly registered baseline shows up without editing the help."""
    from exactpost.inference.api import methods

    assert cli.main(["restore", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    named = ["eps", "palette", "zero-shot-pivot", "dps", "pigdm", "ddnm", "ddrm", "daps", "mpgd"]
    assert set(named) <= set(methods())
    for name in methods():
        assert f" {name} " in out.replace(",", " ").replace(":", " ").replace("(", " "), name
