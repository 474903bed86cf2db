"""Zero-shot baselines on the project's prior network, interpolants and task registry.

One module per method (:mod:`.dps`, :mod:`.pigdm`, :mod:`.ddnm`, :mod:`.ddrm`, :mod:`.daps`,
:mod:`.mpgd`, :mod:`.zero_shot`), each documenting its reference settings, how they are
translated to our interpolants, and its deviations; :mod:`.registry` gives the common
interface :func:`run_method` and the registry :data:`METHODS`; :mod:`.spectral` the known
SVDs that DDRM and DDNM+ need.
"""

from ._common import BaselineResult, Network, sigma_grid
from .daps import daps
from .ddnm import ddnm, ddnm_plus_update
from .ddrm import ddrm, ddrm_init, ddrm_update
from .dps import dps
from .mpgd import mpgd
from .pigdm import pigdm, pigdm_vector
from .registry import METHODS, MethodSpec, get_method, register_method, run_method
from .spectral import SpectralView, has_known_svd, spectral_view
from .zero_shot import zero_shot_pivot

__all__ = [
    "BaselineResult",
    "METHODS",
    "MethodSpec",
    "Network",
    "SpectralView",
    "daps",
    "ddnm",
    "ddnm_plus_update",
    "ddrm",
    "ddrm_init",
    "ddrm_update",
    "dps",
    "get_method",
    "has_known_svd",
    "mpgd",
    "pigdm",
    "pigdm_vector",
    "register_method",
    "run_method",
    "sigma_grid",
    "spectral_view",
    "zero_shot_pivot",
]
