"""exactpost: exact posterior sampling for linear inverse problems (EPS, arXiv 2606.17048)."""

__version__ = "0.1.0"
