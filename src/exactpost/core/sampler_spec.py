"""Named sampler configurations: a solver, a noise schedule and their parameters, run at an
NFE budget.

A :class:`SamplerSpec` is written as a short string (``--eps-sampler`` on the command line,
cache keys of the benches)::

    SOLVER[:SCHEDULE][:rho=R][:smin=S][:start=T][:churn=C][:eta=E]

* SOLVER: ``heun`` (EDM Heun, 2 K - 1 NFE for K positive levels, the step to 0 Euler),
  ``euler`` (K NFE), ``dpmpp2m`` (DPM-Solver++(2M), K NFE; ``eta > 0`` its SDE variant),
  ``dpmpp1`` (first-order DPM-Solver++ = DDIM in sigma, K NFE);
* SCHEDULE: ``karras`` (default; exponent ``rho``, default 7) or ``loglinear`` (uniform in
  log sigma); see :mod:`exactpost.core.schedules`;
* ``smin``: the last positive level (default 0.002), after which the sampler steps to 0 and
  returns the denoised estimate there;
* ``start``: the first level (the warm start x = m + start e around a mean m); default: the
  caller's sigma_max;
* ``churn`` (heun only): EDM's stochastic churn; ``eta`` (dpmpp2m only): SDE noise.

:meth:`SamplerSpec.run` picks K from the NFE budget (the largest K whose NFE fits) and calls
:func:`exactpost.core.samplers.heun_sigmas` or :func:`exactpost.core.samplers.dpmpp_2m`.

:data:`LEGACY` is the sampler used before issue 21 (EDM Heun, rho 7, sigma_min 0.002 from
sigma_max); :data:`DEFAULT` is the one chosen by measurement on the Gaussian-mixture oracle
(README, "Sampler").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from . import samplers as S
from .schedules import karras_sigmas, loglinear_sigmas, with_zero

SOLVERS = ("heun", "euler", "dpmpp2m", "dpmpp1")
SCHEDULES = ("karras", "loglinear")


@dataclass(frozen=True)
class SamplerSpec:
    """A solver and its schedule (module docstring). ``start=None``: start at the caller's
    sigma_max."""

    solver: str = "heun"
    schedule: str = "karras"
    rho: float = 7.0
    sigma_min: float = 0.002
    start: float | None = None
    churn: float = 0.0
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {', '.join(SOLVERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        for name in ("rho", "sigma_min"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v}")
        if self.start is not None and not (math.isfinite(self.start) and self.start > self.sigma_min):
            raise ValueError(f"start must be a number > smin = {self.sigma_min:g}, got {self.start}")
        if not (self.churn >= 0 and self.eta >= 0):
            raise ValueError(f"churn and eta must be >= 0, got {self.churn}, {self.eta}")
        if self.churn > 0 and self.solver != "heun":
            raise ValueError("churn applies to the heun solver only (use eta for dpmpp2m)")
        if self.eta > 0 and self.solver != "dpmpp2m":
            raise ValueError("eta applies to the dpmpp2m solver only (use churn for heun)")

    # --- text form ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Canonical text form (every parameter that applies, parsed back by :func:`parse_spec`)."""
        parts = [self.solver, self.schedule]
        if self.schedule == "karras":
            parts.append(f"rho={self.rho:g}")
        parts.append(f"smin={self.sigma_min:g}")
        if self.start is not None:
            parts.append(f"start={self.start:g}")
        if self.churn > 0:
            parts.append(f"churn={self.churn:g}")
        if self.eta > 0:
            parts.append(f"eta={self.eta:g}")
        return ":".join(parts)

    def __str__(self) -> str:
        return self.name

    # --- budget ---------------------------------------------------------------------------
    def levels_for_nfe(self, nfe: int) -> int:
        """The number K of positive noise levels whose NFE fits ``nfe`` (at least 1):
        Heun 2 K - 1 <= nfe, the one-evaluation-per-level solvers K <= nfe."""
        if int(nfe) != nfe or nfe < 1:
            raise ValueError(f"the NFE budget must be a positive integer, got {nfe}")
        return max(1, (int(nfe) + 1) // 2) if self.solver == "heun" else int(nfe)

    def nfe_of_levels(self, levels: int) -> int:
        """NFE the solver uses for K positive levels followed by 0."""
        return 2 * levels - 1 if self.solver == "heun" else levels

    def sigmas(self, nfe: int, sigma_max: float) -> list[float]:
        """The schedule for budget ``nfe``: K levels from the start (``start`` or sigma_max)
        down to ``smin``, then 0."""
        top = float(sigma_max) if self.start is None else min(float(self.start), float(sigma_max))
        if not top > self.sigma_min:
            raise ValueError(f"the first noise level ({top:g}) must exceed smin = {self.sigma_min:g}")
        k = self.levels_for_nfe(nfe)
        if self.schedule == "karras":
            levels = karras_sigmas(k, self.sigma_min, top, self.rho)
        else:
            levels = loglinear_sigmas(k, self.sigma_min, top)
        return with_zero(levels)

    def run(self, denoiser: S.Denoiser, shape: Sequence[int], nfe: int, sigma_max: float, **kwargs) -> S.SampleResult:
        """Sample with at most ``nfe`` evaluations of ``denoiser``, starting at the spec's
        first level; ``kwargs`` go to the solver (interpolant, generator, noise, init_mean,
        device, dtype, return_trajectory)."""
        sig = self.sigmas(nfe, sigma_max)
        if self.solver in ("heun", "euler"):
            return S.heun_sigmas(denoiser, shape, sig, heun=self.solver == "heun", churn=self.churn, **kwargs)
        return S.dpmpp_2m(denoiser, shape, sig, eta=self.eta, second_order=self.solver == "dpmpp2m", **kwargs)


_KEYS = {"rho": "rho", "smin": "sigma_min", "start": "start", "churn": "churn", "eta": "eta"}


def parse_spec(text: str | SamplerSpec) -> SamplerSpec:
    """``SOLVER[:SCHEDULE][:key=value]...`` (module docstring), or ``default`` / ``legacy``,
    -> SamplerSpec; a one-line ValueError names what is wrong."""
    if isinstance(text, SamplerSpec):
        return text
    alias = str(text).strip().lower()
    if alias in ("default", "legacy"):
        return DEFAULT if alias == "default" else LEGACY
    parts = [p.strip() for p in str(text).strip().split(":") if p.strip()]
    if not parts:
        raise ValueError("empty sampler spec; write e.g. 'dpmpp2m:karras:rho=7:smin=0.002'")
    fields: dict = dict(solver=parts[0])
    for p in parts[1:]:
        if "=" not in p:
            if p not in SCHEDULES:
                raise ValueError(f"sampler spec {text!r}: {p!r} is neither a schedule ({', '.join(SCHEDULES)}) "
                                 f"nor key=value")
            fields["schedule"] = p
            continue
        key, value = (s.strip() for s in p.split("=", 1))
        if key not in _KEYS:
            raise ValueError(f"sampler spec {text!r}: unknown key {key!r}; keys are {', '.join(_KEYS)}")
        try:
            fields[_KEYS[key]] = float(value)
        except ValueError:
            raise ValueError(f"sampler spec {text!r}: {key} must be a number, got {value!r}") from None
    try:
        return SamplerSpec(**fields)
    except ValueError as err:
        raise ValueError(f"sampler spec {text!r}: {err}") from None


def parse_specs(text: str) -> list[SamplerSpec]:
    """A comma-separated list of specs (duplicates dropped, order kept)."""
    specs = [parse_spec(p) for p in str(text).split(",") if p.strip()]
    if not specs:
        raise ValueError("no sampler spec given")
    return list(dict.fromkeys(specs))


#: the sampler before issue 21: EDM Heun, rho = 7, sigma_min = 0.002, from sigma_max
LEGACY = SamplerSpec("heun", "karras", 7.0, 0.002)
#: the default for EPS sampling (chosen on the Gaussian-mixture oracle; README "Sampler")
DEFAULT = SamplerSpec("dpmpp2m", "loglinear", sigma_min=0.03)


def syntax_help() -> str:
    """One paragraph for a ``--sampler`` / ``--eps-sampler`` help text: the spec syntax, the
    solvers, schedules and keys, and the two aliases."""
    return (f"SOLVER[:SCHEDULE][:rho=R][:smin=S][:start=T][:churn=C][:eta=E] with SOLVER one of "
            f"{', '.join(SOLVERS)}, SCHEDULE {' or '.join(SCHEDULES)} (default karras), rho the Karras exponent "
            f"(default 7), smin the last positive noise level (default 0.002), start the first level (default: "
            f"sigma_max), churn (heun) / eta (dpmpp2m) stochasticity (default 0); 'default' = {DEFAULT.name}, "
            f"'legacy' = {LEGACY.name}")


def with_start(spec: SamplerSpec, start: float | None) -> SamplerSpec:
    """The spec with its first level set to ``start`` (None: the caller's sigma_max). A start
    at or below the spec's ``smin`` (a warm start very close to the data) lowers ``smin`` to
    the EDM value 0.002, below which no start is accepted."""
    if start is not None and start <= spec.sigma_min < LEGACY.sigma_min:
        raise ValueError(f"the start {start:g} must exceed the last noise level smin = {spec.sigma_min:g}")
    if start is not None and start <= spec.sigma_min:
        spec = replace(spec, sigma_min=min(spec.sigma_min, LEGACY.sigma_min))
    return replace(spec, start=start)
