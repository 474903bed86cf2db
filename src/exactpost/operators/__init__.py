"""Measurement operators: the :class:`LinearOperator` interface, one closed-form family per
module (exact ``solve`` / ``pinv`` / ``null_project``, no iterations), kernel and mask
generators, and :class:`FunctionOperator`, the conjugate-gradient fallback for any operator
given only ``A`` and ``At``."""

from .base import CGInfo, FunctionOperator, LinearOperator, conjugate_gradient, per_sample
from ._common import StructuredOperator
from .blur import FFTBlur
from .colorization import Colorization
from .compressed_sensing import CompressedSensing, random_orthonormal_matrix
from .dense import DenseOperator
from .denoising import Denoising
from .inpainting import Inpainting, box_mask, random_mask
from .kernels import gaussian_kernel, motion_kernel, motion_kernels
from .superres import AveragePoolSR

__all__ = [
    "AveragePoolSR",
    "CGInfo",
    "Colorization",
    "CompressedSensing",
    "DenseOperator",
    "Denoising",
    "FFTBlur",
    "FunctionOperator",
    "Inpainting",
    "LinearOperator",
    "StructuredOperator",
    "box_mask",
    "conjugate_gradient",
    "gaussian_kernel",
    "motion_kernel",
    "motion_kernels",
    "per_sample",
    "random_mask",
    "random_orthonormal_matrix",
]
