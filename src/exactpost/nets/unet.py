"""A DDPM++/ADM-style U-Net written for this project (no third-party network code).

Shape contract::

    UNet.forward(x, c_noise, task_id=None, sigma_y=None) -> [B, out_channels, H, W]
        x       [B, in_channels + cond_channels, H, W]   (H = W = config.image_size)
        c_noise [B] (or a float)                          the noise conditioning value
        task_id [B] long (or an int), only when num_tasks > 0
        sigma_y [B] (or a float) >= 0, only when sigma_y_embedding is True

Architecture (one resolution level per entry of ``channel_mults``)::

    conv_in(image) + cond_in(cond) (3x3 each; cond_in has no bias)
    encoder: [ResBlock (+ self-attention)] x num_res_blocks -> Downsample   (skips saved)
    middle: ResBlock -> attention -> ResBlock
    decoder: [concat(skip) -> ResBlock (+ attention)] x (num_res_blocks + 1) -> Upsample
    GroupNorm -> SiLU -> conv_out 3x3 (zero-initialised)

Embedding of the conditioning scalars, all at width ``noise_channels = base_width``::

    f   = PE(c_noise)                                   sinusoidal ("positional") or
                                                        random-Fourier features
    f  += E_task[task_id]                               nn.Embedding, zero-initialised
    f  += W_y PE(log(sigma_y + 1e-3))                   linear map, zero-initialised
    emb = SiLU(L2(SiLU(L1(f))))                         width 4 * base_width

The task and sigma_y paths start at zero so that a network gaining them (see
:func:`expand_unet`) computes exactly what it did before; they learn from the first step
(the gradient of a zero embedding row or a zero linear map is not zero).

Residual block (the noise embedding enters as a FiLM scale/shift, as in ADM/DDPM++)::

    h = conv3x3(SiLU(GN(x)));  scale, shift = Linear(emb).chunk(2)
    h = conv3x3_zero(dropout(SiLU(GN(h) * (1 + scale) + shift)))
    out = (h + skip(x)) / sqrt(2)          skip = 1x1 conv when the width changes

Self-attention (multi-head, ``attn_head_channels`` per head):
``out = (x + proj_zero(softmax(q k^T / sqrt(d)) v)) / sqrt(2)``.

Initialisation: every conv/linear weight is Xavier-uniform, biases zero; the second conv of
every residual block, every attention output projection and ``conv_out`` are exactly zero
(so a fresh network outputs 0 and each block starts as the identity path). All random
initial values come from an explicit ``torch.Generator`` (``UNet(config, generator=g)``);
building a network never reseeds nor (when a generator is given) draws from the global RNG.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "UNetConfig",
    "UNet",
    "PRESETS",
    "preset",
    "count_parameters",
    "add_condition_channels",
    "expand_unet",
]

_SKIP_SCALE = 1.0 / math.sqrt(2.0)


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------


@dataclass
class UNetConfig:
    """All hyper-parameters of :class:`UNet` (JSON round trip via ``to_dict``/``from_dict``).

    Attributes:
        image_size: H = W of the input; must be divisible by 2^(len(channel_mults) - 1).
        in_channels: image channels (the noisy image / pivot), default 3.
        cond_channels: extra image-shaped conditioning channels concatenated to the input.
        out_channels: output channels; ``None`` means ``in_channels``.
        base_width: channels at the first level; level i has ``base_width * channel_mults[i]``.
        channel_mults: one multiplier per resolution level (32x32 with (1, 2, 2): 32, 16, 8).
        num_res_blocks: residual blocks per level in the encoder (decoder has one more).
        attn_resolutions: feature-map sizes (e.g. (16,) or (8,)) that get self-attention
            after every residual block; the middle block always has attention.
        dropout: dropout probability inside residual blocks.
        num_tasks: 0 = no task embedding; else task ids in [0, num_tasks).
        sigma_y_embedding: add an embedding of log(sigma_y + 1e-3) to the noise embedding.
        embedding_type: "positional" (sinusoidal, DDPM) or "fourier" (random frequencies,
            NCSN++), applied to c_noise and to log(sigma_y + 1e-3).
        fourier_scale: std of the random Fourier frequencies (only for "fourier").
        attn_head_channels: channels per attention head (heads = width // this, at least 1).
        emb_mult: width of the embedding MLP = emb_mult * base_width.
    """

    image_size: int = 32
    in_channels: int = 3
    cond_channels: int = 0
    out_channels: Optional[int] = None
    base_width: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    num_tasks: int = 0
    sigma_y_embedding: bool = False
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    attn_head_channels: int = 64
    emb_mult: int = 4

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise a one-line ValueError for any inconsistent hyper-parameter."""
        for name in ("image_size", "in_channels", "out_channels", "base_width", "attn_head_channels",
                     "emb_mult"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cond_channels", "num_res_blocks", "num_tasks"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"UNetConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"UNetConfig.channel_mults must be a non-empty tuple of ints >= 1, got {self.channel_mults}")
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor != 0:
            raise ValueError(
                f"UNetConfig.image_size {self.image_size} is not divisible by 2^(levels-1) = {factor}; "
                "use fewer channel_mults or another image size"
            )
        sizes = self.resolutions()
        bad = [r for r in self.attn_resolutions if r not in sizes]
        if bad:
            raise ValueError(
                f"UNetConfig.attn_resolutions {bad} are not feature-map sizes of this network {sizes}; "
                "pick from those"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.embedding_type not in ("positional", "fourier"):
            raise ValueError(f"UNetConfig.embedding_type must be 'positional' or 'fourier', got {self.embedding_type!r}")
        if self.base_width % 2 != 0:
            raise ValueError(f"UNetConfig.base_width must be even (sinusoidal embedding), got {self.base_width}")

    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level, e.g. (32, 16, 8)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    @property
    def input_channels(self) -> int:
        """Channels of the tensor ``forward`` takes: in_channels + cond_channels."""
        return self.in_channels + self.cond_channels

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another model)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "UNetConfig":
        """A copy with some fields changed (validated). Changing ``in_channels`` also changes
        ``out_channels`` when they were equal and ``out_channels`` is not given."""
        if "in_channels" in changes and "out_channels" not in changes and self.out_channels == self.in_channels:
            changes["out_channels"] = None
        return dataclasses.replace(self, **changes)


#: Named configurations for 32x32 RGB; :func:`preset` rescales them to other image sizes.
#: Parameters (3 in/out channels, no conditioning; independent of the image size) and
#: training cost per step at 32x32, batch 64 (forward + backward, FLOPs counted by
#: torch.utils.flop_counter):
#:
#: ======  ============================  ==============  =======  ==============
#: name    widths x blocks, attention    parameters      GFLOP    CPU s/step (*)
#: ======  ============================  ==============  =======  ==============
#: tiny    32/64/64/64 x 1, at 8x8       1,628,611       96       0.38
#: small   32/64/128/128 x 2, at 8x8     6,598,563       212      0.77
#: base    128/256/256/256 x 2, at 16x16 38,307,203      2,390    13 (GPU model)
#: ======  ============================  ==============  =======  ==============
#:
#: (*) forward+backward+AdamW, 2 threads, an otherwise idle 2-core machine of this project
#: (torch 2.13 CPU). At 64x64 (``preset(name, 64)``): tiny 2.6-2.9 s, small 6.7 s. On a busy
#: machine set OMP_WAIT_POLICY=PASSIVE or use 1 thread: 2 spinning OpenMP threads competing
#: with other processes measured 5-15 s/step for tiny.
#: tiny and small keep the full-resolution width at 32 and put capacity at low resolution,
#: where it is cheap: small has 4x tiny's parameters for 2.2x its compute. Four levels
#: (down to 4x4 at 32x32) give every output pixel a whole-image receptive field, which box
#: inpainting needs.
PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(base_width=32, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(8,)),
    "small": UNetConfig(base_width=32, channel_mults=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(8,)),
    "base": UNetConfig(base_width=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                       dropout=0.1),
}


def preset(name: str, image_size: int = 32, **changes: Any) -> UNetConfig:
    """``PRESETS[name]`` at another image size, attention resolutions scaled with it
    (8 at 32x32 -> 16 at 64x64), plus any field changes (e.g. ``cond_channels=4``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    if image_size % base.image_size and base.image_size % image_size:
        raise ValueError(f"image_size {image_size} is not a power-of-two multiple of {base.image_size}; set attn_resolutions yourself")
    attn = tuple(r * image_size // base.image_size for r in base.attn_resolutions)
    return base.replace(**{"image_size": image_size, "attn_resolutions": attn, **changes})


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------
# layers (weights are filled by UNet.initialize, never by torch's default init)
# ---------------------------------------------------------------------------------------


class _Conv2d(nn.Conv2d):
    """Conv2d whose construction does not touch any RNG (UNet.initialize fills it)."""

    zero_init: bool = False

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, zero_init: bool = False,
                 bias: bool = True):
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        self.zero_init = zero_init

    def reset_parameters(self) -> None:  # called by nn.Conv2d.__init__
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()


class _Linear(nn.Linear):
    """Linear whose construction does not touch any RNG (UNet.initialize fills it)."""

    zero_init: bool = False

    def __init__(self, cin: int, cout: int, zero_init: bool = False):
        super().__init__(cin, cout)
        self.zero_init = zero_init

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()


class _Embedding(nn.Embedding):
    """Embedding table initialised to zero (the task path starts switched off)."""

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.zero_()


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 where the width allows >= 4 channels per group, else fewer."""
    g = min(32, max(1, channels // 4))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


class ScalarEmbedding(nn.Module):
    """Features of a scalar per sample: [B] -> [B, num_channels].

    positional: [cos(c w_k), sin(c w_k)], w_k = (1/10000)^(k / (n/2)), k = 0..n/2-1 (DDPM);
    fourier:    [cos(2 pi c f_k), sin(2 pi c f_k)], f_k ~ N(0, scale^2) fixed at init (a
                persistent buffer, so it is saved with the weights).
    """

    def __init__(self, num_channels: int, kind: str = "positional", scale: float = 16.0):
        super().__init__()
        self.kind = kind
        half = num_channels // 2
        if kind == "positional":
            freqs = (1.0 / 10000.0) ** (torch.arange(half, dtype=torch.float32) / half)
        else:
            freqs = torch.zeros(half)  # drawn in UNet.initialize
        self.fourier_scale = float(scale)
        self.register_buffer("freqs", freqs)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c.to(torch.float32)[:, None] * self.freqs[None, :].to(torch.float32)
        if self.kind == "fourier":
            arg = 2 * math.pi * arg
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm/SiLU residual block with FiLM noise conditioning; [B, cin, H, W] ->
    [B, cout, H, W]. out = (conv2(drop(SiLU(GN(h)(1+scale)+shift))) + skip(x)) / sqrt(2)."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _Conv2d(cin, cout, 3)
        self.emb = _Linear(emb_channels, 2 * cout)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _Conv2d(cout, cout, 3, zero_init=True)
        self.skip = _Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1))
        h = self.conv2(self.dropout(h))
        s = x if self.skip is None else self.skip(x)
        return (h + s) * _SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions; [B, C, H, W] -> same shape.
    out = (x + proj(softmax(q k^T / sqrt(d)) v)) / sqrt(2), proj zero-initialised."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"attention width {channels} is not divisible by {self.heads} heads; change attn_head_channels")
        self.norm = _norm(channels)
        self.qkv = _Conv2d(channels, 3 * channels, 1)
        self.proj = _Conv2d(channels, channels, 1, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # [B, heads, HW, d]
        a = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, d]
        a = a.transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.proj(a)) * _SKIP_SCALE


class Downsample(nn.Module):
    """3x3 convolution with stride 2: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """Residual blocks of one resolution level, each optionally followed by attention."""

    def __init__(self, blocks: Iterable[ResBlock], attn: Iterable[Optional[SelfAttention]]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList([a if a is not None else nn.Identity() for a in attn])


# ---------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------


class UNet(nn.Module):
    """DDPM++/ADM-style U-Net; see the module docstring for the architecture.

    Args:
        config: the hyper-parameters.
        generator: source of the random initial weights (a CPU ``torch.Generator``); ``None``
            draws from torch's global generator (without reseeding it).
    """

    def __init__(self, config: UNetConfig, generator: Optional[torch.Generator] = None):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"UNet needs a UNetConfig, got {type(config).__name__}; use UNet.from_config for dicts")
        config.validate()
        self.config = config
        c = config
        nc = c.base_width
        emb_ch = c.emb_mult * c.base_width

        # conditioning scalars -> embedding
        self.map_noise = ScalarEmbedding(nc, c.embedding_type, c.fourier_scale)
        self.map_task = _Embedding(c.num_tasks, nc) if c.num_tasks > 0 else None
        if c.sigma_y_embedding:
            self.map_sigma_y = ScalarEmbedding(nc, c.embedding_type, c.fourier_scale)
            self.proj_sigma_y = _Linear(nc, nc, zero_init=True)
        else:
            self.map_sigma_y = None
            self.proj_sigma_y = None
        self.map_layer0 = _Linear(nc, emb_ch)
        self.map_layer1 = _Linear(emb_ch, emb_ch)

        # encoder
        self.conv_in = _Conv2d(c.in_channels, nc, 3)
        # conditioning channels get their own bias-free conv, summed with conv_in: a network
        # grown from cond_channels = 0 then adds an exact 0 (see expand_unet)
        self.cond_in = _Conv2d(c.cond_channels, nc, 3, bias=False) if c.cond_channels > 0 else None
        widths = [nc * m for m in c.channel_mults]
        sizes = c.resolutions()
        skip_ch = [nc]
        ch = nc
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, w in enumerate(widths):
            blocks, attn = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(ch, w, emb_ch, c.dropout))
                ch = w
                attn.append(SelfAttention(ch, c.attn_head_channels) if sizes[i] in c.attn_resolutions else None)
                skip_ch.append(ch)
            self.down_levels.append(_Level(blocks, attn))
            if i < len(widths) - 1:
                self.downsamples.append(Downsample(ch))
                skip_ch.append(ch)

        # middle
        self.mid_block1 = ResBlock(ch, ch, emb_ch, c.dropout)
        self.mid_attn = SelfAttention(ch, c.attn_head_channels)
        self.mid_block2 = ResBlock(ch, ch, emb_ch, c.dropout)

        # decoder
        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            blocks, attn = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(ch + skip_ch.pop(), w, emb_ch, c.dropout))
                ch = w
                attn.append(SelfAttention(ch, c.attn_head_channels) if sizes[i] in c.attn_resolutions else None)
            self.up_levels.append(_Level(blocks, attn))
            if i > 0:
                self.upsamples.append(Upsample(ch))
        assert not skip_ch

        self.norm_out = _norm(ch)
        self.conv_out = _Conv2d(ch, c.out_channels, 3, zero_init=True)
        self.initialize(generator)

    # -- construction helpers ---------------------------------------------------------
    @classmethod
    def from_config(cls, config: Union[UNetConfig, Mapping[str, Any]],
                    generator: Optional[torch.Generator] = None) -> "UNet":
        """Build from a :class:`UNetConfig` or its ``to_dict()`` form (e.g. a checkpoint card)."""
        cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
        return cls(cfg, generator=generator)

    @torch.no_grad()
    def initialize(self, generator: Optional[torch.Generator] = None) -> "UNet":
        """(Re)initialise every parameter: Xavier-uniform weights (bound sqrt(6/(fan_in+fan_out))),
        zero biases, zero for the layers marked ``zero_init`` and for the task embedding,
        GroupNorm weight 1 / bias 0, Fourier frequencies ~ N(0, fourier_scale^2)."""
        for m in self.modules():
            if isinstance(m, (_Conv2d, _Linear)):
                if m.bias is not None:
                    m.bias.zero_()
                if m.zero_init:
                    m.weight.zero_()
                else:
                    w = m.weight
                    rf = w[0, 0].numel() if w.dim() > 2 else 1
                    fan_in, fan_out = w.shape[1] * rf, w.shape[0] * rf
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    u = torch.rand(w.shape, generator=generator, dtype=torch.float32)
                    w.copy_((2 * u - 1) * bound)
            elif isinstance(m, nn.GroupNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, _Embedding):
                m.weight.zero_()
            elif isinstance(m, ScalarEmbedding) and m.kind == "fourier":
                m.freqs.copy_(torch.randn(m.freqs.shape, generator=generator) * m.fourier_scale)
        return self

    # -- forward ------------------------------------------------------------------------
    def _embedding(self, c_noise: torch.Tensor, task_id: Any, sigma_y: Any, B: int,
                   device: torch.device) -> torch.Tensor:
        dtype = self.map_layer0.weight.dtype
        f = self.map_noise(c_noise).to(dtype)
        if self.map_task is not None:
            if task_id is None:
                raise ValueError(f"this UNet has a task embedding (num_tasks={self.config.num_tasks}); pass task_id")
            tid = torch.as_tensor(task_id, device=device)
            if tid.dim() == 0:
                tid = tid.expand(B)
            if tid.shape != (B,) or tid.dtype.is_floating_point or tid.dtype == torch.bool:
                raise ValueError(f"task_id must be an int or an integer tensor of shape [{B}], got {tuple(tid.shape)} {tid.dtype}")
            if bool(((tid < 0) | (tid >= self.config.num_tasks)).any()):
                raise ValueError(f"task_id must lie in [0, {self.config.num_tasks}), got {tid.tolist()}")
            f = f + self.map_task(tid.long())
        elif task_id is not None:
            raise ValueError("task_id given but this UNet has no task embedding (num_tasks=0); drop it or set num_tasks")
        if self.map_sigma_y is not None:
            if sigma_y is None:
                raise ValueError("this UNet embeds sigma_y (sigma_y_embedding=True); pass sigma_y")
            sy = torch.as_tensor(sigma_y, dtype=torch.float32, device=device)
            if sy.dim() == 0:
                sy = sy.expand(B)
            if sy.shape != (B,):
                raise ValueError(f"sigma_y must be a float or have shape [{B}], got {tuple(sy.shape)}")
            if not bool(torch.isfinite(sy).all()) or bool((sy < 0).any()):
                raise ValueError(f"sigma_y must be finite and >= 0, got {sy.tolist()}")
            f = f + self.proj_sigma_y(self.map_sigma_y(torch.log(sy + 1e-3)).to(dtype))
        elif sigma_y is not None:
            raise ValueError("sigma_y given but this UNet has no sigma_y embedding; drop it or set sigma_y_embedding=True")
        return F.silu(self.map_layer1(F.silu(self.map_layer0(f))))

    def forward(self, x: torch.Tensor, c_noise: Union[torch.Tensor, float], task_id: Any = None,
                sigma_y: Any = None) -> torch.Tensor:
        """x [B, in_channels + cond_channels, H, W], c_noise [B] or float, task_id [B] or int,
        sigma_y [B] or float -> [B, out_channels, H, W]."""
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.input_channels or x.shape[2] != c.image_size or x.shape[3] != c.image_size:
            raise ValueError(
                f"UNet expects x of shape [B, {c.input_channels}, {c.image_size}, {c.image_size}] "
                f"(in_channels {c.in_channels} + cond_channels {c.cond_channels}), got {tuple(x.shape)}"
            )
        B = x.shape[0]
        cn = torch.as_tensor(c_noise, device=x.device)
        if cn.dim() == 0:
            cn = cn.expand(B)
        if cn.shape != (B,):
            raise ValueError(f"c_noise must be a float or have shape [{B}], got {tuple(cn.shape)}")
        emb = self._embedding(cn, task_id, sigma_y, B, x.device).to(x.dtype)

        h = self.conv_in(x[:, : c.in_channels])
        if self.cond_in is not None:
            h = h + self.cond_in(x[:, c.in_channels:])
        skips = [h]
        for i, level in enumerate(self.down_levels):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
                skips.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for i, level in enumerate(self.up_levels):
            for block, attn in zip(level.blocks, level.attn):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------
# growing a trained network without changing what it computes
# ---------------------------------------------------------------------------------------


def expand_unet(unet: UNet, extra_cond_channels: int = 0, num_tasks: Optional[int] = None,
                sigma_y_embedding: Optional[bool] = None) -> UNet:
    """A NEW UNet (``unet`` is left untouched) with more inputs and the same outputs.

    * ``extra_cond_channels`` more conditioning input channels (appended after the existing
      ones): their weights in the bias-free ``cond_in`` convolution are zero, so they have no
      effect until trained. Growing from 0 conditioning channels is exact by construction
      (``conv_in(x) + 0``); growing an existing ``cond_in`` relies on the convolution summing
      zero terms exactly, which holds on CPU (tested) but a GPU backend may pick another
      summation order (differences ~1e-7);
    * ``num_tasks`` (>= the current count) task embedding rows, new rows zero;
    * ``sigma_y_embedding=True`` adds the sigma_y path, whose projection is zero.

    Every other weight (and buffer) is copied, so for any value of the new inputs
    ``new(cat(x, extra), c, task_id, sigma_y) == old(x, c)`` exactly: this is how an
    unconditional prior becomes the starting point of EPS fine-tuning (step 0 = the prior).
    The result is on ``unet``'s device/dtype and in its train/eval mode.
    """
    old = unet.config
    if extra_cond_channels < 0:
        raise ValueError(f"extra_cond_channels must be >= 0, got {extra_cond_channels}")
    nt = old.num_tasks if num_tasks is None else int(num_tasks)
    if nt < old.num_tasks:
        raise ValueError(f"num_tasks can only grow (have {old.num_tasks}, asked {nt})")
    sye = old.sigma_y_embedding if sigma_y_embedding is None else bool(sigma_y_embedding)
    if old.sigma_y_embedding and not sye:
        raise ValueError("cannot remove an existing sigma_y embedding; leave sigma_y_embedding=None")
    cfg = old.replace(cond_channels=old.cond_channels + int(extra_cond_channels), num_tasks=nt, sigma_y_embedding=sye)
    ref = next(unet.parameters())
    new = UNet(cfg, generator=torch.Generator().manual_seed(0)).to(device=ref.device, dtype=ref.dtype)
    new_state = new.state_dict()
    with torch.no_grad():
        for name, value in unet.state_dict().items():
            target = new_state[name]
            if target.shape == value.shape:
                target.copy_(value)
            elif name == "cond_in.weight":
                target.zero_()
                target[:, : value.shape[1]].copy_(value)
            elif name == "map_task.weight":
                target.zero_()
                target[: value.shape[0]].copy_(value)
            else:  # pragma: no cover - only the two tensors above change shape
                raise ValueError(f"expand_unet cannot map weight {name} {tuple(value.shape)} -> {tuple(target.shape)}")
        if new.cond_in is not None and unet.cond_in is None:
            new.cond_in.weight.zero_()
    new.train(unet.training)
    return new


def add_condition_channels(unet: UNet, n: int) -> UNet:
    """A NEW UNet with ``n`` more conditioning input channels (zero first-conv weights, all
    other weights copied): its output equals ``unet``'s for any value of the new channels.
    Shorthand for ``expand_unet(unet, extra_cond_channels=n)``."""
    if n < 1:
        raise ValueError(f"add_condition_channels needs n >= 1, got {n}")
    return expand_unet(unet, extra_cond_channels=n)
