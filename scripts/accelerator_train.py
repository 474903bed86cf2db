"""Train both families' prior, then EPS and Palette from it, on one accelerator in ten minutes.

Issue 16, item 3: the CPU runs need about a dozen sessions of both cores to reach their
targets (prior, EPS and Palette >= 30k steps x 64 per family); one H100/H200 lease (15
minutes of device time in all, 10 per command) passes them if it is spent on this script
alone. The project never depends on it: without an accelerator the CPU runs go on.

What it trains (per family, faces32 and cifar32, the two families in parallel on one GPU):
phase A the prior from scratch for ``--prior-seconds``; phase B EPS and Palette fine-tuned
from that prior, four processes at once, for ``--finetune-seconds``. Each run is the
library's own ``exactpost train`` / ``exactpost finetune`` (the CPU runs' recipe: tiny preset,
EPS/Palette with sigma_y 0.05, uniform-frac 0.5, default x_reg conditioning) at batch 256
instead of 64, bf16 autocast, stopped by SIGTERM at its time (the library's clean stop:
state saved, EMA model and card exported; the card records the steps, images seen, wall
time, hardware, precision and command). Why the tiny preset, not a larger one: the six
models must come back through the tool's limits (8 files, 16 MiB each, 64 MiB in all: tiny
is 6.5 MB in float32, `small` 26 MB), stay under issue 16's 80 MB of bundled weights (six
`small` models are 79 MB even in bf16), and be sampled on the CPU by the 100-image bench
(`small` costs about 2x per call there); benchmarks/results/preset_pilot.md found tiny ahead
per CPU-hour too.

Steps (the device tool sends the tracked and untracked files, 64 MiB at most, and not
../shared; README of the device tool)::

    # here, once
    python scripts/accelerator_train.py pack                 # .devdata/: the training sets, lossless
    python scripts/accelerator_train.py run --smoke --out /tmp/accel-smoke   # every phase, a few steps, CPU
    python scripts/accelerator_train.py slim                 # untrack the big folders (index only), print the size that travels
    # device: one call, carry [".devdata"], timeout_s 580 (about 8.5 minutes: decoding, a preflight,
    # 180 s of priors, 220 s of EPS and Palette; a second `run` on the same warm machine resumes the
    # runs in --work with the same settings, another --work starts over)
    PYTHONUNBUFFERED=1 python3 scripts/accelerator_train.py run --out $OUT
    # here, right after the call
    python scripts/accelerator_train.py unslim               # the index back to HEAD
    python scripts/accelerator_train.py unpack FILES_AT      # runs/accel-<family>-<kind>/model.* (+ logs)
    python scripts/bundle_model.py runs/accel-faces32-eps faces-32 eps --note "..."   # per model, then re-measure

Data travel packed (``pack``): each image set as uint8 [N, 3, 32, 32] predicted from its
left, upper and upper-left neighbours (the median edge detector of LOCO-I), the residuals
xz-compressed; ``run`` decodes it and checks the sha256 of every array before training. The
faces are the 32x32 images ``exactpost train --data faces64.npz --data-split 0 --image-size 32``
trains on (same resize code); evaluation uses 64 held-out images (faces split 1, CIFAR test).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEVDATA = ROOT / ".devdata"
FAMILIES = ("faces32", "cifar32")
KINDS = ("prior", "eps", "palette")
#: Tracked folders ``slim`` keeps out of the device tool's transfer (they stay on disk).
SLIM_PATHS = ("runs", "models", "benchmarks/results", "docs", "tests/data")
_SLIM_MARK = "# accelerator_train.py slim (unslim removes this block)"
TRAVEL_LIMIT = 64 * 2**20


# --- lossless image packing ---------------------------------------------------------------

def _med_prediction(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: min(a, b) if c >= max(a, b), max(a, b) if c <= min(a, b),
    else a + b - c (a left, b up, c up-left; int16 arrays)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def encode_images(images: np.ndarray) -> bytes:
    """uint8 [N, C, H, W] -> xz bytes of the residuals (x - MED(left, up, up-left)) mod 256,
    neighbours outside the image taken as 0."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}")
    x = images.astype(np.int16)
    a, b, c = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    a[..., :, 1:] = x[..., :, :-1]
    b[..., 1:, :] = x[..., :-1, :]
    c[..., 1:, 1:] = x[..., :-1, :-1]
    residual = ((x - _med_prediction(a, b, c)) % 256).astype(np.uint8)
    return lzma.compress(residual.tobytes(), preset=9)


def decode_images(blob: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode_images`: uint8 [N, C, H, W] (a raster scan over H x W,
    vectorised over images and channels)."""
    N, C, H, W = shape
    r = np.frombuffer(lzma.decompress(blob), dtype=np.uint8).reshape(shape).astype(np.int16)
    x = np.zeros(shape, dtype=np.int16)
    zero = np.zeros((N, C), dtype=np.int16)
    for i in range(H):
        for j in range(W):
            a = x[:, :, i, j - 1] if j else zero
            b = x[:, :, i - 1, j] if i else zero
            c = x[:, :, i - 1, j - 1] if i and j else zero
            x[:, :, i, j] = (r[:, :, i, j] + _med_prediction(a, b, c)) % 256
    return x.astype(np.uint8)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def source_sets(shared: Path, n_eval: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """{family: {"train": uint8 [N, 3, 32, 32], "eval": uint8 [n_eval, 3, 32, 32]}} from the
    development data, through the same loader (and resize) as ``exactpost train``."""
    from exactpost.io.images import load_images

    faces, cifar = shared / "faces64.npz", shared / "cifar10_32.npz"
    return {
        "faces32": {"train": load_images(faces, None, [0], 32).numpy(),
                    "eval": load_images(faces, None, [1], 32)[:n_eval].numpy()},
        "cifar32": {"train": load_images(cifar, "train_images", None, 32).numpy(),
                    "eval": load_images(cifar, "test_images", None, 32)[:n_eval].numpy()},
    }


def pack(sets: dict[str, dict[str, np.ndarray]], out: Path) -> dict:
    """Write ``out/<family>.<part>.xz`` and ``out/manifest.json`` (shapes, sha256); returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {}
    for fam, parts in sets.items():
        for part, arr in parts.items():
            blob = encode_images(arr)
            name = f"{fam}.{part}.xz"
            _atomic_write(out / name, blob)
            manifest.setdefault(fam, {})[part] = dict(file=name, shape=list(arr.shape), sha256=_sha256(arr),
                                                      bytes=len(blob))
            print(f"{name}: {arr.shape} -> {len(blob) / 2**20:.1f} MiB ({len(blob) / arr.size:.2f} of raw)")
    _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def unpack_data(packed: Path, work: Path, families: tuple[str, ...]) -> dict[str, Path]:
    """Decode the packed sets into ``work/<family>.npz`` (``images`` = train, ``test_images`` =
    eval, as [N, H, W, 3]), checking every sha256; returns {family: npz path}."""
    manifest = json.loads((packed / "manifest.json").read_text())
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for fam in families:
        arrays = {}
        for part, key in (("train", "images"), ("eval", "test_images")):
            m = manifest[fam][part]
            arr = decode_images((packed / m["file"]).read_bytes(), tuple(m["shape"]))
            if _sha256(arr) != m["sha256"]:
                raise SystemExit(f"{m['file']} decoded to other images than were packed (sha256 differs)")
            arrays[key] = arr.transpose(0, 2, 3, 1)
        out[fam] = work / f"{fam}.npz"
        np.savez(out[fam], **arrays)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- the training phases ------------------------------------------------------------------

@dataclass
class Recipe:
    """The runs' settings (``--smoke``: a few steps of batch 8, for a CPU check)."""

    device: str = "cuda"
    precision: str = "bf16"
    batch: int = 256
    prior_lr: float = 4e-4
    prior_warmup: int = 1000
    finetune_lr: float = 2e-4
    finetune_warmup: int = 200
    steps: int = 10**7  # stopped by time; --smoke caps it
    eval_every: int = 2000
    checkpoint_every: int = 2000
    threads_prior: int = 8
    threads_finetune: int = 4
    extra: list[str] = field(default_factory=list)

    @classmethod
    def smoke(cls) -> "Recipe":
        return cls(device="cpu", precision="fp32", batch=8, prior_warmup=2, finetune_warmup=2, steps=3, eval_every=3,
                   checkpoint_every=2, threads_prior=1, threads_finetune=1)


def train_command(kind: str, data: Path, run_dir: Path, recipe: Recipe, init_from: Path | None = None) -> list[str]:
    """The ``exactpost train``/``finetune`` argument list of one run."""
    common = ["--data", str(data), "--data-key", "images", "--image-size", "32", "--batch-size", str(recipe.batch),
              "--steps", str(recipe.steps), "--checkpoint-every", str(recipe.checkpoint_every), "--eval-every",
              str(recipe.eval_every), "--eval-images", "16", "--seed", "0", "--no-progress", "--device", recipe.device,
              "--precision", recipe.precision, "--channels-last", "true", "--run-dir", str(run_dir)]
    if kind == "prior":
        return ["train", "--objective", "prior", "--preset", "tiny", "--lr", str(recipe.prior_lr), "--warmup-steps",
                str(recipe.prior_warmup), "--threads", str(recipe.threads_prior), *common, *recipe.extra]
    return ["finetune", "--objective", kind, "--init-from", str(init_from), "--lr", str(recipe.finetune_lr),
            "--warmup-steps", str(recipe.finetune_warmup), "--sigma-y", "0.05", "--uniform-frac", "0.5",
            "--threads", str(recipe.threads_finetune), *common, *recipe.extra]


def run_phase(jobs: dict[str, list[str]], seconds: float, logs: Path, grace: float = 120.0,
              launcher: tuple[str, ...] = (sys.executable, "-m", "exactpost.app.cli")) -> dict[str, dict]:
    """Start every job (``exactpost`` argument lists, run as ``launcher + args``) at once,
    SIGTERM the ones still running after ``seconds`` (they save and export), kill any that
    has not stopped ``grace`` seconds later; returns {name: {returncode, seconds}} (143: stopped
    by the SIGTERM, as planned)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    procs = {}
    for name, args in jobs.items():
        threads = args[args.index("--threads") + 1] if "--threads" in args else "1"
        with open(logs / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen([*launcher, *args], cwd=ROOT,
                                           env={**env, "OMP_NUM_THREADS": threads}, stdout=log,
                                           stderr=subprocess.STDOUT)
    stopped_at = None
    while any(p.poll() is None for p in procs.values()):
        now = time.monotonic() - t0
        if stopped_at is None and now > seconds:
            stopped_at = now
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        if stopped_at is not None and now > stopped_at + grace:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
        time.sleep(0.5)
    wall = round(time.monotonic() - t0, 1)
    for name, p in procs.items():
        if p.returncode not in (0, 143):  # show why (the device tool returns the output's tail)
            tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
            print(f"--- {name} ended with {p.returncode}; its log's end:\n" + "\n".join(tail), flush=True)
    return {name: dict(returncode=p.returncode, seconds=wall) for name, p in procs.items()}


def _last_metrics(run_dir: Path) -> dict:
    """The last training-log line and the last evaluation of a run directory."""
    last, ev = {}, {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            ev, last = (rec["eval"], last) if "eval" in rec else (ev, rec)
    return {"last": last, "eval": ev}


def preflight(recipe: Recipe, data: Path, work: Path) -> dict[str, dict]:
    """Two steps of each objective (batch 16) on the run's device before the timed phases, so
    that a failure of the fine-tuning path shows in the first minute, not after the priors'
    minutes; raises RuntimeError if any fails."""
    pre = dataclasses.replace(recipe, steps=2, batch=16, eval_every=2, checkpoint_every=2, prior_warmup=1,
                              finetune_warmup=1)
    res = run_phase({"preflight-prior": train_command("prior", data, work / "prior", pre)}, 300, work / "logs")
    if res["preflight-prior"]["returncode"] == 0:
        res |= run_phase({f"preflight-{k}": train_command(k, data, work / k, pre, work / "prior" / "model")
                          for k in ("eps", "palette")}, 300, work / "logs")
    failed = sorted(name for name, r in res.items() if r["returncode"] != 0)
    if failed:
        raise RuntimeError(f"preflight failed: {', '.join(failed)} (logs above and in cards_logs.tar.gz)")
    return res


def run(args: argparse.Namespace) -> dict:
    """Decode the data, train phase A (priors) then phase B (EPS, Palette), and put the six EMA
    models (``<family>-<kind>.safetensors``) and one ``cards_logs.tar.gz`` (cards, configs,
    metrics, logs, summary.json) under ``args.out``, also after a failure."""
    recipe = Recipe.smoke() if args.smoke else Recipe(
        device=args.device, batch=args.batch, precision="bf16" if args.device.startswith("cuda") else "fp32")
    if args.steps:
        recipe.steps = args.steps
    families = tuple(args.families)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = dict(recipe=vars(recipe), families=families, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                         prior_seconds=args.prior_seconds, finetune_seconds=args.finetune_seconds, phases={})
    t0 = time.monotonic()
    try:
        data = unpack_data(Path(args.packed), work / "data", families)
        summary["data_seconds"] = round(time.monotonic() - t0, 1)
        if args.preflight:
            summary["phases"]["preflight"] = preflight(recipe, data[families[0]], work / "preflight")
        runs = {f"{fam}-{kind}": work / f"{fam}-{kind}" for fam in families for kind in KINDS}
        phase_a = {f"{fam}-prior": train_command("prior", data[fam], runs[f"{fam}-prior"], recipe) for fam in families}
        summary["phases"]["prior"] = run_phase(phase_a, args.prior_seconds, work / "logs")
        phase_b = {}
        for fam in families:
            prior = runs[f"{fam}-prior"] / "model"
            if not prior.with_suffix(".safetensors").is_file():
                summary.setdefault("errors", []).append(f"{fam}: no prior model; its EPS and Palette not trained")
                continue
            for kind in ("eps", "palette"):
                phase_b[f"{fam}-{kind}"] = train_command(kind, data[fam], runs[f"{fam}-{kind}"], recipe, prior)
        if phase_b:
            summary["phases"]["finetune"] = run_phase(phase_b, args.finetune_seconds, work / "logs")
    except Exception as exc:  # still bring back what exists
        summary.setdefault("errors", []).append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        summary["seconds"] = round(time.monotonic() - t0, 1)
        summary["runs"] = {name: _last_metrics(work / name) for name in
                           (f"{fam}-{kind}" for fam in families for kind in KINDS)}
        _collect(work, out, families, summary)
        print(json.dumps({k: summary[k] for k in ("seconds", "phases", "runs") if k in summary}, indent=1))
    return summary


def _collect(work: Path, out: Path, families: tuple[str, ...], summary: dict) -> None:
    """At most 7 files under ``out``: six models and one tar.gz of cards, configs, metrics, logs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for fam in families:
            for kind in KINDS:
                run_dir = work / f"{fam}-{kind}"
                weights = run_dir / "model.safetensors"
                if weights.is_file():
                    shutil.copyfile(weights, out / f"{fam}-{kind}.safetensors")
                for name in ("model.json", "config.json", "metrics.jsonl"):
                    if (run_dir / name).is_file():
                        tar.add(run_dir / name, arcname=f"{fam}-{kind}/{name}")
        for logs in (work / "logs", work / "preflight" / "logs"):
            if logs.is_dir():
                tar.add(logs, arcname=str(logs.relative_to(work)))
        blob = (json.dumps(summary, indent=1, default=str) + "\n").encode()
        info = tarfile.TarInfo("summary.json")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    _atomic_write(out / "cards_logs.tar.gz", buf.getvalue())


def unpack_results(files_at: Path, runs_dir: Path) -> list[Path]:
    """Place what ``run`` brought back as ``runs_dir/accel-<family>-<kind>/`` (model.safetensors,
    model.json, config.json, metrics.jsonl) and check each model loads (digest); returns the run dirs."""
    from exactpost.nets import load_model

    with tarfile.open(files_at / "cards_logs.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        done = []
        for weights in sorted(files_at.glob("*.safetensors")):
            name = weights.stem
            dest = runs_dir / f"accel-{name}"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, dest / "model.safetensors")
            for part in ("model.json", "config.json", "metrics.jsonl"):
                if f"{name}/{part}" in members:
                    _atomic_write(dest / part, tar.extractfile(members[f"{name}/{part}"]).read())
            load_model(dest / "model")
            done.append(dest)
        if "summary.json" in members:
            _atomic_write(runs_dir / "accel-summary.json", tar.extractfile(members["summary.json"]).read())
    return done


# --- the travelling tree ------------------------------------------------------------------

def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def travel_bytes(root: Path = ROOT, carry: tuple[str, ...] = (".devdata",)) -> int:
    """Bytes the device tool would send: tracked and untracked-not-ignored files, plus ``carry``."""
    names = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    total = sum((root / n).stat().st_size for n in names if n and (root / n).is_file())
    for c in carry:
        p = root / c
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0
    return total


def slim(root: Path = ROOT) -> int:
    """Untrack SLIM_PATHS in the index only (the files stay on disk) and ignore them in
    .git/info/exclude, so that the tree that travels fits; ``unslim`` undoes both. Returns the
    bytes that travel then."""
    exclude = root / ".git" / "info" / "exclude"
    text = exclude.read_text() if exclude.is_file() else ""
    if _SLIM_MARK not in text:
        if _git(root, "diff", "--cached", "--name-only").strip():
            raise SystemExit("the index holds staged changes: commit or unstage them before slim")
        tracked = [p for p in SLIM_PATHS if _git(root, "ls-files", "--", p).strip()]
        if tracked:
            _git(root, "rm", "-r", "-q", "--cached", "--", *tracked)
        exclude.parent.mkdir(parents=True, exist_ok=True)
        prefix = text if not text or text.endswith("\n") else text + "\n"
        exclude.write_text(prefix + _SLIM_MARK + "\n" + "".join(f"/{p}/\n" for p in SLIM_PATHS) + _SLIM_MARK + "\n")
    n = travel_bytes(root)
    print(f"the tree that travels (carry .devdata): {n / 2**20:.1f} MiB of {TRAVEL_LIMIT / 2**20:.0f} MiB"
          + ("" if n <= TRAVEL_LIMIT else "  -- TOO LARGE"))
    return n


def unslim(root: Path = ROOT) -> None:
    """Undo :func:`slim`: the index entries of SLIM_PATHS back from HEAD, the exclude block removed."""
    exclude = root / ".git" / "info" / "exclude"
    text = exclude.read_text() if exclude.is_file() else ""
    if _SLIM_MARK in text:
        start = text.index(_SLIM_MARK + "\n")
        end = text.index(_SLIM_MARK + "\n", start + 1) + len(_SLIM_MARK) + 1
        exclude.write_text(text[:start] + text[end:])
    _git(root, "reset", "-q", "HEAD", "--", *SLIM_PATHS)
    print("index restored for " + ", ".join(SLIM_PATHS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack the training sets into .devdata/")
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(DEVDATA))
    r = sub.add_parser("run", help="train (on the device machine; --smoke: a few CPU steps)")
    r.add_argument("--out", required=True, help="where the models and cards_logs.tar.gz go ($OUT on the device)")
    r.add_argument("--packed", default=str(DEVDATA))
    r.add_argument("--work", default="/tmp/accel-work")
    r.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (ignored with --smoke: cpu)")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--prior-seconds", type=float, default=180.0)
    r.add_argument("--finetune-seconds", type=float, default=220.0)
    r.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    r.add_argument("--smoke", action="store_true", help="3 steps of batch 8 per run on the CPU")
    r.add_argument("--no-preflight", dest="preflight", action="store_false",
                   help="skip the 2-step check of each objective before the timed phases")
    r.add_argument("--steps", type=int, default=0, help="cap on each run's steps (default: none, stopped by time; "
                   "--smoke: 3)")
    u = sub.add_parser("unpack", help="place what came back under runs/accel-*")
    u.add_argument("files_at")
    u.add_argument("--runs", default=str(ROOT / "runs"))
    sub.add_parser("slim", help="untrack the big folders (index only) so the tree that travels fits")
    sub.add_parser("unslim", help="undo slim")
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(source_sets(Path(a.shared)), Path(a.out))
    elif a.cmd == "run":
        if str(ROOT / "src") not in sys.path:
            sys.path.insert(0, str(ROOT / "src"))
        run(a)
    elif a.cmd == "unpack":
        for d in unpack_results(Path(a.files_at), Path(a.runs)):
            print(f"{d}: loads; bundle with scripts/bundle_model.py {d} <family> <kind> --note ...")
    elif a.cmd == "slim":
        slim()
    else:
        unslim()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
