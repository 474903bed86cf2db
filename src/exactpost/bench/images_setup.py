"""What the image benchmark's cells share (Setup): the model family's networks (an
:class:`exactpost.inference.api.Model`), the test images, the tuned baseline settings, the
diffusers schedulers of ``--scheduler`` and the feature encoder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..inference import zoo
from ..core.sampler_spec import DEFAULT, LEGACY, parse_spec
from .images_config import BenchConfig, DEFAULT_TUNED, DEMO, PROTOCOL_VERSION, REPO_ROOT


# --- data and models ----------------------------------------------------------------------
def resolve_family(model: str) -> tuple[str, Path]:
    """(family name, models root) of ``--model``: a bundled name or a family folder."""
    p = Path(model)
    if p.is_dir() and p.name in zoo.model_names(p.parent):  # checkpoints or diffusers folders
        return p.name, p.parent
    if p.parent != Path(".") or p.suffix:
        raise zoo.ModelNotFound(f"--model {model}: not a model family folder (one holding prior.json, eps.json "
                                f"or palette.json) nor a bundled name")
    names = zoo.model_names()
    if model not in names:
        raise zoo.ModelNotFound(f"unknown model {model!r}; bundled models: {', '.join(names) or 'none'} "
                                f"(see `exactpost models`)")
    return model, zoo.models_dir()


def _find_data_file(path: str, root: Path, family: str) -> Optional[Path]:
    p = Path(path)
    for cand in (p, REPO_ROOT / p, root.parent / p, root / family / p):
        if cand.exists():
            return cand
    return None


def load_test_images(cfg: BenchConfig, family: str, root: Path, prior_card: dict, size: int
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first ``cfg.images`` test images, uint8 [N, 3, size, size], and where they came from."""
    from ..io.images import DataError, load_images, resize_uint8, to_nchw_uint8

    if cfg.data == DEMO:
        imgs = to_nchw_uint8(zoo.demo_images(family, root), "demo images")
        if imgs.shape[-1] != size:
            imgs = resize_uint8(imgs, size)
        info: dict[str, Any] = dict(path=str(root / family / "demo_images.npz"), key="images", split=None,
                                    source="demo")
    else:
        if cfg.data is not None:
            path = Path(cfg.data)
            if not path.exists():
                raise DataError(f"--data {cfg.data}: no such file or folder")
            source = "--data"
        else:
            data = prior_card.get("data") if isinstance(prior_card.get("data"), dict) else {}
            named = data.get("path")
            if not named:
                raise DataError("the prior's card names no data; pass --data PATH (or --data demo)")
            found = _find_data_file(str(named), root, family)
            if found is None:
                raise DataError(f"test images: the prior's card names data {named}, which is not found; pass "
                                f"--data PATH (an .npz with a 'split' or 'test_images' array) or --data demo")
            path, source = found, "card"
        key, split = cfg.test_key, cfg.test_split
        if path.suffix == ".npz" and key is None and split is None:
            try:
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.files)
            except Exception as exc:  # noqa: BLE001 - a user-data problem
                raise DataError(f"cannot read {path} as an .npz array file ({exc.__class__.__name__})") from None
            if "split" in names:
                split = [2]
                if source == "card":
                    key = (prior_card.get("data") or {}).get("key")
            elif "test_images" in names:
                key = "test_images"
            else:
                raise DataError(f"{path} has no 'split' or 'test_images' array; pass --test-key/--test-split")
        imgs = load_images(path, key, split, size)
        info = dict(path=str(path), key=key, split=split, source=source)
    if len(imgs) < cfg.images:
        where = f" (split {','.join(map(str, info['split']))})" if info.get("split") else ""
        raise DataError(f"only {len(imgs)} test images in {info['path']}{where}; use --images <= {len(imgs)}")
    imgs = imgs[: cfg.images].contiguous()
    info.update(images=len(imgs), sha256=hashlib.sha256(imgs.numpy().tobytes()).hexdigest())
    return imgs, info


def _read_tuned(path: Path) -> tuple[dict, Optional[str]]:
    """({method: {task: settings}}, the sha256 of the prior it was tuned for) of a tuning JSON."""
    try:
        data = json.loads(path.read_text())
        tuned = {m: {t: dict(s) for t, s in per.items()} for m, per in data["tuned"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--tuned {path}: not a baseline_tuning.json ({exc.__class__.__name__})") from None
    return tuned, (data.get("model") or {}).get("sha256")


def load_tuned(cfg: BenchConfig, prior_sha: Optional[str], notices: list[str]) -> tuple[dict, Optional[str]]:
    """The tuned baseline settings {method: {task: settings}} and the file they came from.

    Without ``--tuned``: the first ``benchmarks/results/baseline_tuning*.json`` tuned for this
    prior (same weights sha256), else the registry defaults (with a notice)."""
    if cfg.tuned is not None and cfg.tuned.lower() == "none":
        return {}, None
    if cfg.tuned is not None:
        path = Path(cfg.tuned)
        if not path.is_file():
            raise ValueError(f"--tuned {cfg.tuned}: no such file")
        tuned, tuned_for = _read_tuned(path)
        if tuned_for != prior_sha:
            notices.append(f"{path.name} was tuned for another prior (sha256 {str(tuned_for)[:12]}); used as given")
        return tuned, str(path)
    candidates = sorted(DEFAULT_TUNED.parent.glob(DEFAULT_TUNED.stem + "*.json"))
    for path in candidates:
        tuned, tuned_for = _read_tuned(path)
        if tuned_for == prior_sha:
            return tuned, str(path)
    if candidates:
        notices.append(f"no {DEFAULT_TUNED.stem}*.json was tuned for this prior; the baselines use the registry "
                       "defaults (tune them: benchmarks/tune_baselines.py)")
    return {}, None


@dataclass
class Setup:
    """Everything the cells share: models, test images, measurements, encoder, tuned settings."""

    cfg: BenchConfig
    family: str
    root: Path
    entries: dict[str, Any]
    truth: torch.Tensor  # [N, 3, H, W] float32 in [-1, 1]
    data: dict[str, Any]
    tuned: dict
    tuned_path: Optional[str]
    methods: list[str]
    notices: list[str] = field(default_factory=list)
    encoder: Any = None
    encoder_note: str = ""
    model: Any = None  # the exactpost.inference.api.Model of the family's networks (loaded lazily, frozen)
    measurements: dict[str, tuple[Any, torch.Tensor]] = field(default_factory=dict)
    _truth_feats: Optional[torch.Tensor] = None
    _bandwidth: Optional[float] = None
    schedulers: dict[str, Any] = field(default_factory=dict)  # --scheduler: one per model kind

    def net(self, kind: str) -> torch.nn.Module:
        return self.model.network(kind)

    def measurement(self, task: str) -> tuple[Any, torch.Tensor]:
        """The operator and y of ``task`` for all N images (seeded as the demo)."""
        if task not in self.measurements:
            from ..app.demo import task_seed
            from ..core.tasks import make_operator, simulate

            g = torch.Generator().manual_seed(task_seed(self.cfg.seed, task))
            op = make_operator(task, len(self.truth), tuple(self.truth.shape[1:]), generator=g)
            self.measurements[task] = (op, simulate(op, self.truth, self.cfg.sigma_y, generator=g))
        return self.measurements[task]

    @property
    def bandwidth(self) -> float:
        """The MMD kernel bandwidth: the median pairwise distance of the truth images."""
        if self._bandwidth is None:
            z = self.truth.reshape(len(self.truth), -1).to(torch.float64)
            d = torch.cdist(z, z)
            iu = torch.triu_indices(len(z), len(z), offset=1)
            self._bandwidth = float(d[iu[0], iu[1]].median())
        return self._bandwidth

    @property
    def encoder_name(self) -> Optional[str]:
        """The encoder's name, with the first 12 hex digits of its weights' sha256 when its
        card has one (a retrained encoder then counts as another one)."""
        if self.encoder is None:
            return None
        card = getattr(self.encoder, "card", None)
        sha = card.get("sha256") if isinstance(card, dict) else None
        return f"{self.encoder.name}@{str(sha)[:12]}" if sha else str(self.encoder.name)

    def truth_features(self) -> torch.Tensor:
        if self._truth_feats is None:
            self._truth_feats = features(self.encoder, self.truth)
        return self._truth_feats

    def fingerprint(self) -> dict[str, Any]:
        """What every cached cell depends on (the cache's header): a rerun must match it to
        reuse the cache. What only some cells depend on (which network, the tuned settings, the
        sampler) is each cell's own :meth:`depends`."""
        cfg = self.cfg
        return dict(protocol=PROTOCOL_VERSION, family=self.family, data_sha256=self.data["sha256"],
                    images=cfg.images, samples=cfg.samples, batch=cfg.batch, seed=cfg.seed, sigma_y=cfg.sigma_y)

    def depends(self, method: str, task: Optional[str] = None) -> dict[str, Any]:
        """What a cell of ``method`` on ``task`` depends on beyond the header (``method`` =
        "bare": the bare sampler's timing): a cached cell is reused only while this is equal.

        * eps: the EPS network's weights (sha256) and the sampler (``sampler_fingerprint``);
        * palette: the Palette network's weights and ``--scheduler`` when given;
        * a zero-shot baseline or the bare sampler: the prior's weights, and the baseline's
          tuned settings for ``task``."""
        models = {k: (e.card.get("sha256") if e is not None else None) for k, e in self.entries.items()}
        return cell_depends(method, task, models, self.tuned, self.sampler_fingerprint())

    def sampler_fingerprint(self) -> dict[str, Any]:
        """{eps_sampler: spec} when the eps cells use a sampler other than the legacy EDM Heun
        (so caches of earlier runs stay valid with ``--eps-sampler legacy`` and are never mixed
        with cells of another sampler); {} otherwise."""
        if self.cfg.scheduler is not None:  # eps and palette cells both sampled by the diffusers scheduler
            return dict(scheduler=self.cfg.scheduler)
        spec = parse_spec(self.cfg.eps_sampler) if self.cfg.eps_sampler is not None else DEFAULT
        return {} if spec == LEGACY else dict(eps_sampler=spec.name)

    def scheduler(self, kind: str) -> Any:
        """The diffusers scheduler of ``--scheduler`` built from the ``kind`` model's folder."""
        from ..backbones.scheduler_restore import load_scheduler

        if kind not in self.schedulers:
            self.schedulers[kind] = load_scheduler(self.entries[kind].path, self.cfg.scheduler)
        return self.schedulers[kind]


def find_encoder(model: str) -> tuple[Any, str]:
    """The family's feature encoder (or None) and a note why not."""
    try:
        from ..core.metrics import frechet_distance  # noqa: F401 - needed for FD
        from ..inference.zoo import find_encoder as _find
        from ..nets.encoder import load_encoder  # noqa: F401 - the encoder's architecture
    except ImportError as exc:
        return None, f"no encoder module ({exc.__class__.__name__}: {exc})"
    try:
        enc = _find(model)
    except Exception as exc:  # noqa: BLE001 - FD is optional; say why it is missing
        return None, f"the encoder could not be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return enc, "" if enc is not None else "this family has no encoder"


@torch.no_grad()
def features(encoder: Any, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.features(x[i:i + batch]).detach().to(torch.float64).reshape(len(x[i:i + batch]), -1)
                      for i in range(0, len(x), batch)])


def cell_depends(method: str, task: Optional[str], models: dict[str, Optional[str]], tuned: dict,
                 sampler: dict[str, Any]) -> dict[str, Any]:
    """:meth:`Setup.depends` from its parts: ``models`` {kind: weights sha256}, ``tuned``
    {method: {task: settings}}, ``sampler`` ({} for the legacy EPS sampler, {eps_sampler:
    name} or {scheduler: name}). Also derives the dependencies of cells cached under the
    earlier whole-run header, which held these same parts."""
    if method == "eps":
        return dict(model=models.get("eps"), **sampler)
    if method == "palette":
        return dict(model=models.get("palette"), **{k: v for k, v in sampler.items() if k == "scheduler"})
    if method == "bare":
        return dict(model=models.get("prior"))
    return dict(model=models.get("prior"), tuned=(tuned.get(method) or {}).get(task) or {})


def load_setup(cfg: BenchConfig) -> Setup:
    """Resolve the model family, its networks' cards, the test images, the tuned settings and
    the encoder; ValueError (one line) when something is missing."""
    from ..io.images import to_float

    family, root = resolve_family(cfg.model)
    notices: list[str] = []
    prior = zoo.find_model(family, "prior", root)
    entries: dict[str, Any] = {"prior": prior}
    methods = list(cfg.methods)
    for kind in ("eps", "palette"):
        try:
            entries[kind] = zoo.find_model(family, kind, root)
        except zoo.ModelNotFound:
            entries[kind] = None
            if kind in methods:
                if cfg.methods_given:
                    raise
                methods.remove(kind)
                notices.append(f"model {family!r} has no {kind} network; {kind} is left out")
    if cfg.scheduler is not None:
        plain = [k for k in ("eps", "palette") if k in methods and entries[k] is not None and not zoo.is_diffusers(entries[k])]
        if plain:
            raise ValueError(f"--scheduler drives diffusers models' own schedulers; the {' and '.join(plain)} model of "
                             f"{family!r} is not a diffusers folder (drop --scheduler)")
    from ..inference.api import Model

    model = Model({k: e for k, e in entries.items() if e is not None}, family)
    imgs, data = load_test_images(cfg, family, root, prior.card, model.network("prior").config.image_size)
    tuned, tuned_path = load_tuned(cfg, prior.card.get("sha256"), notices)
    encoder, note = find_encoder(cfg.model)
    return Setup(cfg, family, root, entries, to_float(imgs), data, tuned, tuned_path, methods, notices,
                 encoder, note, model=model)
