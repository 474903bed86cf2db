"""Networks: the U-Net backbone and EDM preconditioning.

* :class:`UNet` / :class:`UNetConfig` / :data:`PRESETS`: a DDPM++/ADM-style U-Net
  ``F(x, c_noise, task_id, sigma_y) -> [B, out_channels, H, W]`` with optional image-shaped
  conditioning channels, task embedding and sigma_y embedding.
* :func:`add_condition_channels`, :func:`expand_unet`: grow a trained network's inputs with
  zero-initialised paths so that its outputs are unchanged (fine-tuning a prior into EPS).
* :class:`EDMPrecond`: D(x, sigma, cond) = c_skip x + c_out F(concat(c_in x, cond), log(sigma)/4);
  :func:`as_denoiser` turns it into a ``D(x_t, t)`` for any interpolant, :func:`as_eps_network`
  into the ``net(pivot, cond, sigma)`` of :mod:`exactpost.core.posterior`.
* :func:`load_model`: a trained network and its card from a checkpoint (safetensors + JSON).
"""

from .loading import load_model
from .precond import EDMPrecond, as_denoiser, as_eps_network, edm_coefficients, loss_weight
from .unet import PRESETS, UNet, preset, UNetConfig, add_condition_channels, count_parameters, expand_unet

__all__ = [
    "UNet",
    "UNetConfig",
    "PRESETS",
    "preset",
    "count_parameters",
    "add_condition_channels",
    "expand_unet",
    "EDMPrecond",
    "edm_coefficients",
    "loss_weight",
    "as_denoiser",
    "as_eps_network",
    "load_model",
]
