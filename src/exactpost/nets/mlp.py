"""A small EDM-preconditioned MLP denoiser for vectors (the learned network of the
Gaussian-mixture experiments).

D(x, sigma, cond) = c_skip x + c_out F([c_in x, cond, emb(c_noise)]), with EDM's
coefficients for ``sigma_data`` (the data's standard deviation) and c_noise = log(sigma)/4.
x: [B, d]; sigma: [B]; cond: [B, c] or None (exactly when ``cond_dim`` is 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .precond import edm_coefficients


class MLPDenoiser(nn.Module):
    """EDM-preconditioned MLP: ``forward(x [B, d], sigma [B], cond [B, cond_dim] | None)``."""

    def __init__(self, d: int, cond_dim: int = 0, width: int = 256, depth: int = 3, sigma_data: float = 1.0,
                 emb_dim: int = 32, generator: torch.Generator | None = None):
        super().__init__()
        if d < 1 or cond_dim < 0 or width < 1 or depth < 1 or sigma_data <= 0:
            raise ValueError("MLPDenoiser needs d >= 1, cond_dim >= 0, width >= 1, depth >= 1, sigma_data > 0")
        self.d, self.cond_dim, self.sigma_data, self.emb_dim = d, cond_dim, float(sigma_data), emb_dim
        dims = [d + cond_dim + emb_dim] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(width, d))
        self.net = nn.Sequential(*layers)
        if generator is not None:
            with torch.no_grad():
                for m in self.net:
                    if isinstance(m, nn.Linear):
                        bound = 1 / math.sqrt(m.in_features)
                        m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
                        m.bias.zero_()

    def embed(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.emb_dim // 2
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=torch.float32) / half)
        ang = c_noise.float().reshape(-1, 1) * freqs * 100
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        B = x.shape[0]
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(B) if torch.as_tensor(sigma).numel() == 1 \
            else torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
        parts = [(c_in.reshape(-1, 1) * x.double()).float()]
        if self.cond_dim:
            if cond is None or cond.shape != (B, self.cond_dim):
                raise ValueError(f"cond must have shape [{B}, {self.cond_dim}]")
            parts.append(cond.float())
        parts.append(self.embed(c_noise))
        F = self.net(torch.cat(parts, dim=1))
        return (c_skip.reshape(-1, 1) * x.double() + c_out.reshape(-1, 1) * F.double()).to(x.dtype)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2
