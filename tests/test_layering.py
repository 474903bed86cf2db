"""The package's layers, checked by parsing every module's imports (no import is executed).

Layers, bottom to top (see docs/ARCHITECTURE.md): ``io`` (files: checkpoints, images,
atomic writes) -> ``core`` (interpolants, operators, tasks, posterior denoisers, samplers,
priors, metrics) -> ``nets`` (networks and their loading) -> ``inference`` (restoration,
baselines, bundled models, the public API) and ``training`` (side by side: neither imports the
other) -> ``bench`` and ``app`` (command line, demo, files of the CLI) on top. A module may
import its own layer and the layers below it; in addition nets never import the posterior
module (a network is not a posterior sampler). Every import counts, also one inside a function
(a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import exactpost

PACKAGE = Path(exactpost.__file__).resolve().parent

#: module (dotted, relative to ``exactpost``) or package prefix -> layer; longest match wins.
LAYER_OF = {
    "__init__": "api",
    "io": "io",
    "core": "core", "operators": "core", "priors": "core",
    "nets": "nets", "backbones": "nets",
    "backbones.finetune": "training",
    "backbones.scheduler_sampling": "inference", "backbones.scheduler_restore": "inference",
    "backbones.__init__": "inference",  # the package's facade re-exports scheduler_sampling
    "inference": "inference", "baselines": "inference",
    "training": "training",
    "bench": "bench",
    "app": "app",
}

#: layer -> the layers it may import from
ALLOWED = {
    "io": {"io"},
    "core": {"io", "core"},
    "nets": {"io", "core", "nets"},
    "inference": {"io", "core", "nets", "inference"},
    "training": {"io", "core", "nets", "training"},
    "api": {"io", "core", "nets", "inference", "api"},
    "bench": {"io", "core", "nets", "inference", "training", "bench", "app"},
    "app": {"io", "core", "nets", "inference", "training", "bench", "app", "api"},
}
#: (importing layer, imported module prefix) pairs refused even where the layers allow them
FORBIDDEN = {("nets", "core.posterior")}


def layer_of(module: str) -> str:
    """The layer of ``module`` (dotted, relative to exactpost; a package's ``__init__`` as
    ``pkg.__init__``): the longest matching prefix."""
    if (PACKAGE.joinpath(*module.split(".")) / "__init__.py").is_file():
        module += ".__init__"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYER_OF:
            return LAYER_OF[key]
    raise AssertionError(f"module exactpost.{module} has no layer: add it (or its package) to LAYER_OF in {__file__}")


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted module relative to exactpost) of every exactpost import in ``source``:
    ``from .x import y`` counts as ``x.y`` when ``y`` is a module (resolved by the caller's
    prefix matching), ``import exactpost.x`` as ``x``. ``module`` names the importing module."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = anchor + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "exactpost" or node.module.startswith("exactpost.")):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                name = ".".join(target + [alias.name])
                if not target and alias.name == "__version__":
                    continue  # the package's version string, no code
                # "from . import zoo" imports the module zoo; "from .x import y" the module x
                out.append((node.lineno, name if _is_module(name) else ".".join(target)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("exactpost."):
                    out.append((node.lineno, alias.name[len("exactpost."):]))
    return [(line, name) for line, name in out if name]


def _is_module(dotted: str) -> bool:
    p = PACKAGE.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """One line per import of ``source`` (module ``module``) that breaks the layering."""
    mine = layer_of(module + ".__init__" if is_package else module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        theirs = layer_of(target)
        forbidden = any((mine, p) in FORBIDDEN for p in (target.split(".")[0], target))
        if theirs not in ALLOWED[mine] or forbidden:
            bad.append(f"exactpost.{module}:{line} ({mine}) imports exactpost.{target} ({theirs})")
    return bad


def package_modules() -> list[tuple[str, Path, bool]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        is_package = rel.name == "__init__"
        parts = rel.parts[:-1] if is_package and len(rel.parts) > 1 else rel.parts
        out.append((".".join(parts), path, is_package and len(rel.parts) > 1))
    return out


def test_every_module_has_a_layer_and_respects_it():
    bad = []
    modules = package_modules()
    assert len(modules) > 40  # the walk found the package
    for module, path, is_package in modules:
        bad += violations(path.read_text(encoding="utf-8"), module, is_package)
    assert not bad, "layering broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, source, needle", [
    ("inference.restoration", "from ..training.loop import train\n", "imports exactpost.training.loop (training)"),
    ("core.posterior", "def f():\n    from ..training import objectives\n", "imports exactpost.training.objectives"),
    ("baselines.dps", "from ..app.cli import main\n", "imports exactpost.app.cli (app)"),
    ("core.samplers", "import exactpost.app.demo\n", "imports exactpost.app.demo (app)"),
    ("nets.precond", "from ..core.posterior import EPSPosteriorDenoiser\n", "imports exactpost.core.posterior (core)"),
    ("training.loop", "from ..inference.restoration import eps_restore\n",
     "imports exactpost.inference.restoration (inference)"),
])
def test_a_violating_import_is_caught(module, source, needle):
    found = violations(source, module)
    assert len(found) == 1 and needle in found[0], found


def test_allowed_imports_pass():
    assert violations("from ..core.interpolants import EDM\nfrom .unet import UNet\n", "nets.precond") == []
    assert violations("from . import zoo\nfrom ..nets import load_model\n", "inference.api") == []
    assert violations("from .. import __version__\n", "io.checkpoint") == []
