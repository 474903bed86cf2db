"""exactpost: exact posterior sampling for linear inverse problems (EPS, arXiv 2606.17048).

>>> import exactpost
>>> model = exactpost.load("faces-32")          # doctest: +SKIP
>>> res = model.restore(measurement)            # doctest: +SKIP

See :mod:`exactpost.inference.api` for the one-call API (:func:`load`, :class:`Measurement`,
:meth:`Model.restore`) and the README for the lower-level pieces.
"""

__version__ = "0.1.0"

from .inference.api import Measurement, Model, load, methods  # noqa: E402
from .inference.restoration import Restoration  # noqa: E402

__all__ = ["Measurement", "Model", "Restoration", "load", "methods", "__version__"]
