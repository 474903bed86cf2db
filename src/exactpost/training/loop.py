"""One training loop for the three objectives (prior, EPS, Palette).

AdamW with linear learning-rate warm-up (and an optional linear decay to zero over the run's
last steps, :func:`learning_rate`), gradient-norm clipping, an EMA of the weights
(half-life in images, ramped up early as in EDM), a progress bar (loss, images/s, ETA), a run
directory holding the resolved config (``config.json``), a metrics log (``metrics.jsonl``),
the resumable training state (``state.safetensors`` + ``state.json``) and the exported model
(``model.safetensors`` + ``model.json``: EMA weights and the card).

Resume: ``train(config)`` on a run directory that holds a state continues from it, restoring
model, EMA, optimiser, step, images seen, the data order and every generator, so a run
killed at any moment and resumed ends with the same weights as an uninterrupted one (CPU,
same threads). SIGTERM or Ctrl-C stops it cleanly: the current step ends, the state is saved
and :class:`~exactpost.training.stop.TrainingStopped` is raised (see that module).

Distributed: when launched by ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1 in the
environment) it joins a torch.distributed process group (gloo on CPU, nccl on GPU), wraps
the model in DistributedDataParallel and gives each process its share of every global batch.
Every process simulates the whole global batch from the same generators and keeps its slice,
so the result does not depend on the number of processes (up to the floating-point order of
the gradient all-reduce; measured max |diff| ~3e-6 after 4 steps on CPU) -- except with dropout,
whose masks each process draws from its own seeded generator. The logged loss is the
global-batch mean. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..core import conditioning as cond_kinds
from ..core.interpolants import EDM
from ..core.metrics import restoration_scores
from ..nets import UNet, UNetConfig, count_parameters, preset
from ..nets.precond import EDMPrecond, as_eps_network
from ..nets.unet import expand_unet
from ..core.posterior import EPSPosteriorDenoiser
from ..core.tasks import make_operator, simulate, task_names
from ..io.checkpoint import checkpoint_paths, load_checkpoint, pack_state, save_checkpoint, unpack_state
from ..io.images import load_images, to_float
from ..nets.loading import load_model
from .data import BatchStream
from .objectives import NoiseLevels, Objective, loss_on_batch, make_batch
from .precision import autocast_for, resolve_precision
from .stop import StopRequests, TrainingStopped


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run directory."""

    run_dir: str = "runs/exp"
    objective: str = "prior"
    tasks: list[str] = field(default_factory=task_names)
    sigma_y: Any = 0.05
    conditioning: Optional[str] = None
    uniform_frac: float = 0.2
    data: str = ""
    data_key: Optional[str] = None
    data_split: Optional[list[int]] = None
    eval_key: Optional[str] = None
    eval_split: Optional[list[int]] = None
    image_size: int = 32
    preset: str = "tiny"
    unet: dict = field(default_factory=dict)  # overrides of the preset's UNetConfig fields
    skip: str = "scalar"  # EDM's scalar c_skip, or "gaussian": the operator-aware skip S mu* (eps only; nets.precond)
    init_from: Optional[str] = None  # a prior's model checkpoint, or an EPS/Palette model to grow (fine-tuning)
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 200
    lr_decay_steps: int = 0  # decay the learning rate linearly to 0 over the run's last N steps (0: constant)
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_halflife_kimg: float = 50.0
    ema_rampup: float = 0.05
    steps: int = 1000
    checkpoint_every: int = 200
    eval_every: int = 500
    eval_images: int = 8
    log_every: int = 20
    seed: int = 0
    threads: Optional[int] = None
    device: str = "auto"  # "auto" (the process's GPU when CUDA is available, else the CPU), "cpu", "cuda[:i]"
    precision: str = "auto"  # "bf16" (autocast, float32 master weights), "fp32", or "auto": bf16 where supported
    snapshot_every: int = 0  # also export the EMA model every N steps to RUN_DIR/snapshots/ (0: never)
    channels_last: bool = False  # keep the network's weights in channels_last memory format (faster convolutions on some CPUs)
    progress: bool = True
    command: str = ""  # the command line that launched the run (recorded in the card)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(names)}")
        defaults = cls()
        for key, value in d.items():  # catch {"steps": "ten"} here, not as a TypeError later
            want = type(getattr(defaults, key))
            if value is None or want is type(None):
                continue
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if want is float else \
                (isinstance(value, int) and not isinstance(value, bool)) if want is int else \
                isinstance(value, (list, tuple, int, float)) if key == "sigma_y" else isinstance(value, want)
            if not ok:
                kind = "a JSON object" if want is dict else want.__name__
                raise ValueError(f"config key {key!r} must be {kind}, got {value!r}")
        return cls(**d)

    def objective_spec(self) -> Objective:
        sy = tuple(self.sigma_y) if isinstance(self.sigma_y, (list, tuple)) else float(self.sigma_y)
        return Objective(self.objective, self.tasks, sy, self.conditioning,
                         NoiseLevels(uniform_frac=self.uniform_frac))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of a run of ``cfg.steps`` steps:

        lr(s) = cfg.lr * min(1, (s + 1) / W, (S - s) / D)

    with W = max(1, warmup_steps), S = steps and D = lr_decay_steps (the last factor only when
    D > 0): a linear warm-up from 0, then constant, then (D > 0) a linear decay that reaches
    cfg.lr / D at the last step. The decay is a function of the step alone, so a run resumed
    with a decay it did not start with follows the same curve as one that had it from step 0,
    provided it resumes before step S - D."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.lr_decay_steps > 0:
        factor = min(factor, (cfg.steps - step) / cfg.lr_decay_steps)
    return cfg.lr * max(factor, 0.0)


# --- model construction ---------------------------------------------------------------------
def build_model(cfg: TrainConfig, objective: Objective, generator: torch.Generator) -> tuple[EDMPrecond, dict]:
    """A fresh network for ``objective``, or the model in ``init_from`` grown with
    zero-initialised inputs, so that at step 0 the fine-tuned network's output equals the
    starting model's on the same input:

    * an unconditional prior gets the conditioning channels, task and sigma_y embeddings;
    * an EPS or Palette model of the same objective whose conditioning kind ``objective``'s
      extends (e.g. ``pivot+aty+mask`` -> ``pivot+aty+mask+xreg``) gets the appended channels.

    The skip connection is ``cfg.skip`` whatever the starting model's (``gaussian``: eps only);
    a model that changes it starts from the old weights but not from the old outputs.
    """
    if cfg.skip == "gaussian" and objective.kind != "eps":
        raise ValueError(f"the Gaussian skip is for eps networks (their input is the pivot), not {objective.kind}; "
                         "use --skip scalar")
    conditional = objective.kind != "prior"
    extra = dict(cond_channels=objective.cond_channels, num_tasks=len(task_names()) if conditional else 0,
                 sigma_y_embedding=conditional)
    if cfg.init_from:
        start, card = load_model(cfg.init_from)
        if start.config.image_size != cfg.image_size:
            raise ValueError(f"init_from {cfg.init_from} is for {start.config.image_size}x{start.config.image_size} "
                             f"images but image_size is {cfg.image_size}")
        origin = {"init_from": str(cfg.init_from), "init_card_sha256": card.get("sha256")}
        if start.config.cond_channels or start.config.num_tasks:
            old = card.get("objective") if isinstance(card.get("objective"), dict) else {}
            old_kind = str(old.get("conditioning"))
            if old.get("kind") != objective.kind or old_kind not in cond_kinds.KINDS \
                    or not cond_kinds.extends(objective.conditioning, old_kind):
                raise ValueError(f"init_from {cfg.init_from} is a {old.get('kind')} model with conditioning "
                                 f"{old_kind}; it can start a {objective.kind} run only with the same objective and a "
                                 f"conditioning that extends it (or give an unconditional prior)")
            grow = objective.cond_channels - start.config.cond_channels
            unet = expand_unet(start.unet, extra_cond_channels=grow, num_tasks=max(extra["num_tasks"],
                               start.config.num_tasks), sigma_y_embedding=True)
            return EDMPrecond(unet, start.sigma_data, cfg.skip), {**origin, "init_conditioning": old_kind}
        unet = expand_unet(start.unet, extra_cond_channels=extra["cond_channels"], num_tasks=extra["num_tasks"],
                           sigma_y_embedding=extra["sigma_y_embedding"])
        return EDMPrecond(unet, start.sigma_data, cfg.skip), {**origin, "prior_card_sha256": card.get("sha256")}
    if not isinstance(cfg.unet, dict):
        raise ValueError(f"unet overrides must be a JSON object of UNetConfig fields, got {cfg.unet!r}")
    known = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(cfg.unet) - known)
    if unknown:  # else dataclasses.replace raises a TypeError (a traceback from the CLI)
        raise ValueError(f"unknown unet override(s) {unknown}; UNetConfig fields are {sorted(known)}")
    try:
        unet_cfg = preset(cfg.preset, cfg.image_size, **{**cfg.unet, **extra})
    except TypeError as exc:  # e.g. channel_mults given as a number
        raise ValueError(f"bad unet overrides {json.dumps(cfg.unet)} ({exc})") from None
    return EDMPrecond(UNet.from_config(unet_cfg, generator=generator), skip=cfg.skip), {}


# --- helpers ----------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters and buffers.

    decay per step = 0.5 ** (batch / halflife), halflife = min(halflife_kimg * 1000,
    rampup * images_seen) images (EDM's ramp-up: early on the average forgets quickly)."""

    def __init__(self, model: nn.Module, halflife_kimg: float, rampup: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.halflife, self.rampup = halflife_kimg * 1000, rampup

    @torch.no_grad()
    def update(self, model: nn.Module, batch: int, images_seen: int) -> None:
        halflife = self.halflife if not self.rampup else min(self.halflife, self.rampup * images_seen)
        beta = 0.5 ** (batch / max(halflife, 1e-8))
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - beta)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


@dataclass
class RunState:
    """What a run steps and checkpoints besides the network: its EMA, AdamW, the data and noise
    generators (seeded ``seed + 1`` and ``seed + 2``) and the batch stream (one definition for
    :func:`train` and the diffusers fine-tuning of :mod:`exactpost.backbones.finetune`)."""

    ema: EMA
    opt: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    stream: BatchStream

    @classmethod
    def start(cls, model: nn.Module, images: torch.Tensor, cfg: "TrainConfig") -> "RunState":
        """A fresh state for ``model`` (already on its device and in its memory format)."""
        ema = EMA(model, cfg.ema_halflife_kimg, cfg.ema_rampup)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        data_gen = torch.Generator().manual_seed(cfg.seed + 1)
        noise_gen = torch.Generator().manual_seed(cfg.seed + 2)
        return cls(ema, opt, data_gen, noise_gen, BatchStream(images, cfg.batch_size, data_gen))

    def resume(self, state_path: Path, expect: dict, cfg: "TrainConfig", model: nn.Module, model_card: Path
               ) -> Optional[tuple[int, dict, dict]]:
        """Load the state saved at ``state_path`` into ``model`` and this state, if there is one
        (refusing a config that changes what the run learns): (step, the saved ``extra``, the
        saved metadata), else None -- unless the run already exported a model (its card
        ``model_card`` exists): a fresh start would train over it, so that is refused."""
        if not checkpoint_paths(state_path)[1].exists():
            _refuse_fresh_start(state_path.parent, model_card)
            return None
        tensors, saved = load_checkpoint(state_path, expect=expect)
        _check_same_problem(saved.get("config"), cfg, state_path.parent)
        info = unpack_state(tensors, saved, model=model, ema=self.ema, optimizer=self.opt,
                            rng={"data": self.data_gen, "noise": self.noise_gen})
        extra = info["extra"]
        self.stream.load_state({"perm": extra["perm"], "pos": extra["pos"], "generator": self.data_gen.get_state()})
        return info["step"], extra, saved

    def pack(self, model: nn.Module, step: int, extra: dict) -> tuple[dict, dict]:
        """(tensors, metadata) of :func:`~exactpost.io.checkpoint.pack_state`, the stream's
        position added to ``extra``."""
        return pack_state(model=model, ema=self.ema, optimizer=self.opt, step=step,
                          rng={"data": self.data_gen, "noise": self.noise_gen},
                          extra={**extra, "perm": self.stream.perm, "pos": self.stream.pos})


def resolve_device(spec: str) -> torch.device:
    """The device a process trains on. ``"auto"``: ``cuda:LOCAL_RANK`` (the launcher's local
    rank, 0 without one) when CUDA is available, else the CPU; ``"cpu"``; ``"cuda"`` (same
    GPU choice as auto) or ``"cuda:i"``. A CUDA request without CUDA is a ValueError."""
    spec = (spec or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {spec!r}: training runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for but CUDA is not available here; use --device cpu (or auto)")
    index = local if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def _dist_info(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group): nccl when training
    on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if world > 1:
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), created
    return 0, 1, False


class _DDPLossView:
    """What :func:`loss_on_batch` needs from a model, for a DistributedDataParallel wrapper:
    calls go through the wrapper (so gradients are all-reduced), ``loss_weight`` comes from
    the wrapped EDMPrecond (DDP does not forward attribute lookups to its module)."""

    def __init__(self, ddp: nn.Module, model: EDMPrecond):
        self.ddp, self.model = ddp, model

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.ddp(*args, **kwargs)

    def loss_weight(self, sigma: Any) -> Any:
        return self.model.loss_weight(sigma)


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of x against ref (images in [-1, 1], x clamped), averaged over images:
    the ``psnr_mean`` of :func:`exactpost.core.metrics.restoration_scores`."""
    return restoration_scores(ref, x)["psnr_mean"]


@torch.no_grad()
def evaluate(model: EDMPrecond, objective: Objective, images: torch.Tensor, seed: int = 1234) -> dict:
    """Held-out metrics: for eps/palette the 1-NFE posterior-mean PSNR per task (sigma = 80,
    operators and noise from ``seed``); for the prior the denoising PSNR at sigma = 0.5."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x0 = images
    out = {}
    if objective.kind == "prior":
        noisy = x0 + 0.5 * torch.randn(x0.shape, generator=g)
        out["psnr_denoise_0.5"] = _psnr(model(noisy, 0.5), x0)
        return out
    lo, hi = objective.sigma_y_range
    sy = 0.5 * (lo + hi)
    for task in objective.tasks:
        op = make_operator(task, len(x0), tuple(x0.shape[1:]), generator=g)
        y = simulate(op, x0, sy, generator=g)
        cond = cond_kinds.build_conditioning(objective.conditioning, op, y, sy)
        tid = torch.full((len(x0),), cond_kinds.task_embedding_index(task), dtype=torch.long)
        syv = torch.full((len(x0),), sy)
        if objective.uses_pivot:
            den = EPSPosteriorDenoiser(as_eps_network(model, tid, syv, op=op), op, y, sy, EDM(), cond=cond)
            mean = den.posterior_mean(80.0, g, torch.float32)
        else:
            noisy = 80.0 * torch.randn(x0.shape, generator=g)
            mean = model(noisy, 80.0, cond=cond, task_id=tid, sigma_y=syv)
        out[f"psnr_mean_{task}"] = _psnr(mean, x0)
    return out


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU, else a CPU copy (evaluation simulates on the CPU)."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


def export_model(path: Path, ema: EMA, model: EDMPrecond, card: dict) -> None:
    """Write the EMA weights with the model card (architecture under ``model``)."""
    tensors = {f"ema.{k}": v.detach().cpu().clone().contiguous() for k, v in ema.state_dict().items()}
    save_checkpoint(path, tensors, {"model": model.to_dict(), **card})


# --- the loop ---------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training as configured; returns the final metrics.

    torch's global generator (which drives dropout) is forked for the run and seeded from
    ``cfg.seed`` and the rank, so two runs of one config draw the same dropout masks; the
    caller's global torch RNG state is put back on return."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    rank, world, created = _dist_info(device)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            # without this, dropout would draw from whatever state the process started with
            # (torch seeds it randomly per process), so a run -- and the comparison of a resumed
            # run with an uninterrupted one -- would not be reproducible for dropout > 0
            torch.manual_seed(cfg.seed + 3 + 1000 * rank)
            with StopRequests() as stop:
                result = _train(cfg, rank, world, stop, device)
    except BaseException:
        if created:  # no barrier: the other ranks may be blocked in a collective
            torch.distributed.destroy_process_group()
        raise
    if created:
        # a gloo group left alive at interpreter exit can abort a rank ("terminate called
        # without an active exception", exit -6), failing the launcher after a good run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _stop_now(stop: StopRequests, world: int, device: torch.device) -> bool:
    """Whether any process was asked to stop (all processes must leave at the same step)."""
    if world == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=device)  # nccl reduces CUDA tensors only
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item() > 0 and stop.signum is None:
        stop.signum = int(signal.SIGTERM)  # another process was signalled
    return flag.item() > 0


def _train(cfg: TrainConfig, rank: int, world: int, stop: StopRequests, device: torch.device) -> dict:
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    objective = cfg.objective_spec()
    precision = resolve_precision(cfg.precision, device)
    if cfg.snapshot_every < 0:
        raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {cfg.snapshot_every}")
    run = Path(cfg.run_dir)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
    state_path, model_path = run / "state", run / "model"

    images = load_images(cfg.data, cfg.data_key, cfg.data_split, cfg.image_size)
    eval_images = _eval_images(cfg, images)
    init_gen = torch.Generator().manual_seed(cfg.seed)
    model, origin = build_model(cfg, objective, init_gen)
    model.to(device)  # before the EMA copy and the optimiser state (loaded states follow the parameters)
    if cfg.channels_last:  # same values, another layout: oneDNN's faster convolution kernels
        model.to(memory_format=torch.channels_last)
    rs = RunState.start(model, images, cfg)
    ema, opt, noise_gen, stream = rs.ema, rs.opt, rs.noise_gen, rs.stream

    step, images_seen, wall = 0, 0, 0.0
    history: list[dict] = []
    resumed = rs.resume(state_path, {"model": model.to_dict()}, cfg, model, checkpoint_paths(model_path)[1])
    if resumed is not None:
        step, extra, card = resumed
        images_seen, wall = int(extra["images_seen"]), float(extra["wall_time"])
        history = list(card.get("eval_history", []))
        origin = _saved_origin(card, model_path) or origin
    if rank == 0:
        (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        net = _DDPLossView(ddp, model)
    else:
        net = model
    share = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    card_base = dict(objective=objective.to_dict(), data=dict(path=str(cfg.data), key=cfg.data_key,
                     split=cfg.data_split, images=len(images), image_size=cfg.image_size),
                     params=count_parameters(model), precision=precision, channels_last=cfg.channels_last, **origin)

    def model_card() -> dict:
        return {**card_base, "steps": step, "images_seen": images_seen, "wall_time_s": round(wall, 1),
                "config": cfg.to_dict(), "command": cfg.command, "metrics": history[-1] if history else {},
                "hardware": _hardware(world, device)}

    def save_state() -> None:
        if rank != 0:
            return
        tensors, part = rs.pack(model, step, {"images_seen": images_seen, "wall_time": wall})
        save_checkpoint(state_path, tensors, {"model": model.to_dict(), "config": cfg.to_dict(),
                                              "eval_history": history, "origin": origin, **part})
        export_model(model_path, ema, model, model_card())

    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {objective.kind} ({precision})", unit="step", dynamic_ncols=True)
    log = (run / "metrics.jsonl").open("a") if rank == 0 else None
    model.train()
    t_last, img_last = time.perf_counter(), images_seen
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            x = stream.next()
            batch = make_batch(objective, x, noise_gen, gaussian_skip=model.skip == "gaussian")
            # operators and noise are simulated on the CPU from the run's generators (the same
            # draws on every device and process count); the network trains on ``device``
            mine = type(batch)(*(None if v is None else v[share].to(device, non_blocking=True)
                                 for v in (getattr(batch, f.name) for f in dataclasses.fields(batch))))
            with autocast_for(precision, device):
                loss = loss_on_batch(net, mine)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            images_seen += cfg.batch_size
            ema.update(model, cfg.batch_size, images_seen)
            wall += time.perf_counter() - t0
            log_now = step % cfg.log_every == 0 or step == cfg.steps
            if log_now and world > 1:
                # each process's loss is over its share only: log the global-batch mean
                loss = loss.detach().clone()
                torch.distributed.all_reduce(loss)
                loss /= world
            if rank == 0:
                if log_now:
                    now = time.perf_counter()
                    ips = (images_seen - img_last) / max(now - t_last, 1e-9)
                    t_last, img_last = now, images_seen
                    rec = dict(step=step, loss=float(loss.detach()), grad_norm=float(grad_norm), lr=opt.param_groups[0]["lr"],
                               images_per_s=round(ips, 2), images_seen=images_seen, wall_time_s=round(wall, 2))
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{ips:.1f}")
                if bar is not None:
                    bar.update(1)
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps) and eval_images is not None:
                    metrics = dict(step=step, **evaluate(_on_cpu(ema.module), objective, eval_images))
                    history.append(metrics)
                    log.write(json.dumps({"eval": metrics}) + "\n")
                    log.flush()
                    model.train()
            if rank == 0 and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                export_model(run / "snapshots" / f"model-{step:06d}", ema, model, model_card())
            saved = step % cfg.checkpoint_every == 0 or step == cfg.steps
            if saved:
                save_state()
            if _stop_now(stop, world, device):
                if not saved:
                    save_state()
                if bar is not None:
                    bar.close()
                    bar = None
                raise TrainingStopped(f"stopped by {stop.name} at step {step} of {cfg.steps}; state saved in "
                                      f"{state_path}; rerun the same command to resume", stop.signum)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return history[-1] if history else {}


#: Config keys that define what a run learns: a resumed run must keep them (everything else,
#: such as steps, checkpoint/eval/log intervals, threads or the progress bar, may change).
RESUME_FIXED = ("objective", "tasks", "sigma_y", "conditioning", "skip", "uniform_frac", "data", "data_key", "data_split",
                "image_size", "preset", "unet", "init_from", "batch_size", "seed")


ORIGIN_KEYS = ("init_from", "init_card_sha256", "prior_card_sha256", "init_conditioning")


def _saved_origin(saved: dict, model_path: Path) -> Optional[dict]:
    """What a resumed run started from, as it was when it started: the state's ``origin``, or
    for a state saved before that was recorded, the ``init_*`` entries of the run's exported
    card (``model_path``.json); None when neither is there. A run's card keeps describing its
    real start even after the file ``init_from`` names is replaced (e.g. re-bundled)."""
    if isinstance(saved.get("origin"), dict):
        return dict(saved["origin"])
    card_path = model_path.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError):
        return None
    found = {k: card[k] for k in ORIGIN_KEYS if k in card} if isinstance(card, dict) else {}
    return found or None


def _refuse_fresh_start(run: Path, card: Path) -> None:
    """Refuse to train ``run`` from step 0 when it already holds an exported model (its card
    ``card``) but no state to resume -- a finished run whose state was removed: a fresh start
    would overwrite that model and append a second history to its metrics (one line)."""
    if card.exists():
        raise ValueError(f"{run} already holds a trained model ({card.relative_to(run)}) but no training state "
                         f"to resume; start a new --run-dir (it can --init-from this model), or delete {run} "
                         f"to train it again from scratch")


def _check_same_problem(saved: Optional[dict], cfg: TrainConfig, run: Path) -> None:
    """Refuse to resume ``run`` with a config that changes what it learns (one line)."""
    if not isinstance(saved, dict):
        return
    now = cfg.to_dict()
    for key in RESUME_FIXED:
        if key in saved and json.dumps(saved[key]) != json.dumps(now[key]):
            raise ValueError(f"{run} was started with {key}={json.dumps(saved[key])}, not {json.dumps(now[key])}; "
                             f"resume with the original setting or start a new --run-dir")


def _eval_images(cfg: TrainConfig, train_images: torch.Tensor) -> Optional[torch.Tensor]:
    """Held-out images for periodic evaluation: the eval key/split if given; for an .npz
    with a ``split`` array, split 1 (validation); for one with ``test_images``, those;
    else None (no evaluation: training images are not held-out)."""
    if cfg.eval_images <= 0:
        return None
    key, split = cfg.eval_key, cfg.eval_split
    if key is None and split is None and str(cfg.data).endswith(".npz"):
        import numpy as np

        with np.load(cfg.data, allow_pickle=False) as z:
            if "split" in z.files:
                split = [1]
            elif "test_images" in z.files:
                key = "test_images"
    if key is None and split is None:
        return None
    imgs = load_images(cfg.data, key or cfg.data_key, split, cfg.image_size)
    return to_float(imgs[: cfg.eval_images])


def _hardware(world: int, device: torch.device) -> str:
    import platform

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return f"{world} x {dev}, torch {torch.__version__}, {platform.machine()}"
