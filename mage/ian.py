"""The connector between the vision tower and the LLM: MAGE's IAN and the baselines.

The Intelligent Alignment Network (IAN) is two blocks (docs/mage-model.md, section IAN):

- `VectorAlignmentBlock` (VAB): an MLP of ``ian.vab_depth`` layers mapping the patch features
  to the LLM width, then a learnable norm: ``a = Norm(Linear -> GELU -> ... -> Linear)(V)``.
- `SemanticEnhancementBlock` (SEB): a strided depthwise conv over the 2-D patch grid of ``a``
  plus a pointwise Linear gives local queries ``b`` (stride 2: N/4 tokens), then ``ian.depth``
  blocks of ``b = b + g1 * MHA(LN(b), LN(a), LN(a)); b = b + g2 * FFN(LN(b))``. With
  ``ian.gate="tanh"`` the gates are ``tanh(alpha)``, alpha = 0 at init; with ``"zero_init"``
  the attention and FFN output projections start at zero. Either way a fresh SEB outputs
  exactly its conv path, and the conv path starts as average pooling of ``a``.

``build_projector(cfg, in_dim, out_dim, grid_size)`` returns one of ``PROJECTORS``: ``ian``
(VAB then SEB, ``(grid/stride)**2`` tokens), ``vab`` (VAB only), ``linear`` and ``mlp2x_gelu``
(LLaVA-1.5's Linear-GELU-Linear, no norm); every projector has ``num_tokens``.
"""

from __future__ import annotations

import torch
from torch import nn

from mage.config import ConfigError, IANConfig


def make_norm(kind: str, dim: int) -> nn.Module:
    """The learnable norm named by ``ian.norm``."""
    norms = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}
    if kind == "none":
        return nn.Identity()
    if kind not in norms:
        raise ConfigError(f"ian.norm={kind!r}: use one of {[*norms, 'none']}")
    return norms[kind](dim)


class VectorAlignmentBlock(nn.Module):
    """Dimensional alignment: ``depth`` Linear layers with GELU between, then a learnable norm."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, norm: str = "layernorm"):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.mlp = nn.Sequential(*layers)
        self.norm = make_norm(norm, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(features))


class LocalQueries(nn.Module):
    """The SEB conv path: [B, g*g, D] -> [B, (g/stride)**2, D].

    A depthwise conv (kernel = stride; kernel 3 with padding 1 for stride 1) over the 2-D grid,
    then a pointwise Linear: about D*(D + k*k) parameters, cheap at D = 4096. Initialised as
    average pooling followed by the identity."""

    def __init__(self, dim: int, grid_size: int, stride: int):
        super().__init__()
        kernel, padding = (3, 1) if stride == 1 else (stride, 0)
        self.grid_size = grid_size
        self.depthwise = nn.Conv2d(dim, dim, kernel, stride, padding, groups=dim)
        self.pointwise = nn.Linear(dim, dim)
        with torch.no_grad():
            self.depthwise.weight.fill_(1.0 / kernel**2)
            self.depthwise.bias.zero_()
            self.pointwise.weight.copy_(torch.eye(dim))
            self.pointwise.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, _, dim = tokens.shape
        grid = tokens.transpose(1, 2).reshape(batch, dim, self.grid_size, self.grid_size)
        return self.pointwise(self.depthwise(grid).flatten(2).transpose(1, 2))


class SemanticBlock(nn.Module):
    """One SEB block: gated cross-attention (queries b, keys/values a), then a gated FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_mult: float, gate: str, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ffn = (nn.LayerNorm(dim) for _ in range(3))
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        hidden = max(1, round(ffn_mult * dim))
        self.ffn = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        if gate == "tanh":
            # shape [1], not a scalar: FSDP2 shards parameters along dim 0
            self.attn_gate = nn.Parameter(torch.zeros(1))
            self.ffn_gate = nn.Parameter(torch.zeros(1))
        elif gate == "zero_init":
            self.attn_gate = self.ffn_gate = None
            for proj in (self.attn.out_proj, self.ffn[-1]):
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
        else:
            raise ConfigError(f"ian.gate={gate!r}: use 'tanh' or 'zero_init'")

    @staticmethod
    def _gated(update: torch.Tensor, alpha: nn.Parameter | None) -> torch.Tensor:
        return update if alpha is None else torch.tanh(alpha) * update

    def forward(self, queries: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(aligned)
        attended, _ = self.attn(self.norm_q(queries), kv, kv, need_weights=False)
        queries = queries + self._gated(attended, self.attn_gate)
        return queries + self._gated(self.ffn(self.norm_ffn(queries)), self.ffn_gate)


class SemanticEnhancementBlock(nn.Module):
    """Local queries from the conv path, refined by ``depth`` cross-attention blocks."""

    def __init__(self, dim: int, grid_size: int, cfg: IANConfig):
        super().__init__()
        self.local = LocalQueries(dim, grid_size, cfg.stride)
        self.blocks = nn.ModuleList(
            SemanticBlock(dim, cfg.num_heads, cfg.ffn_mult, cfg.gate, cfg.dropout)
            for _ in range(cfg.depth)
        )

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        queries = self.local(aligned)
        for block in self.blocks:
            queries = block(queries, aligned)
        return queries


class Projector(nn.Module):
    """Base of the connectors: [B, num_patches, in_dim] -> [B, num_tokens, out_dim]."""

    def __init__(self, cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.grid_size, self.num_patches = grid_size, num_patches
        self.num_tokens = num_patches
        self.position: nn.Parameter | None = None

    def add_position_embedding(self) -> None:
        """A learned embedding per output token, added to the projected tokens."""
        self.position = nn.Parameter(torch.randn(self.num_tokens, self.out_dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or tuple(features.shape[1:]) != (self.num_patches, self.in_dim):
            raise ValueError(
                f"{type(self).__name__} expects features [B, {self.num_patches}, {self.in_dim}] "
                f"(the vision tower's num_patches x feature_dim), got {list(features.shape)}"
            )
        tokens = self.project(features)
        return tokens if self.position is None else tokens + self.position

    def project(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class IAN(Projector):
    """MAGE's Intelligent Alignment Network: VAB, then SEB; (grid/stride)**2 output tokens."""

    def __init__(self, cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int):
        super().__init__(cfg, in_dim, out_dim, grid_size, num_patches)
        if num_patches != grid_size**2:
            raise ConfigError(
                f"ian.projector='ian' needs the square patch grid ({grid_size}x{grid_size}) but "
                f"the tower gives {num_patches} tokens; set vision.drop_cls: true"
            )
        if cfg.stride < 1 or grid_size % cfg.stride:
            divisors = [d for d in range(1, grid_size + 1) if grid_size % d == 0]
            raise ConfigError(
                f"ian.stride={cfg.stride} does not divide the {grid_size}x{grid_size} patch grid; "
                f"allowed values: {divisors}"
            )
        if out_dim % cfg.num_heads:
            raise ConfigError(
                f"ian.num_heads={cfg.num_heads} does not divide the LLM width {out_dim}; "
                f"use a divisor of {out_dim}"
            )
        self.num_tokens = (grid_size // cfg.stride) ** 2
        self.vab = VectorAlignmentBlock(in_dim, out_dim, cfg.vab_depth, cfg.norm)
        self.seb = SemanticEnhancementBlock(out_dim, grid_size, cfg)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.seb(self.vab(features))


class VABProjector(Projector):
    """Ablation: the VAB alone (all N patch tokens, no semantic enhancement)."""

    def __init__(self, cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int):
        super().__init__(cfg, in_dim, out_dim, grid_size, num_patches)
        self.vab = VectorAlignmentBlock(in_dim, out_dim, cfg.vab_depth, cfg.norm)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.vab(features)


class LinearProjector(Projector):
    """Baseline: one Linear (LLaVA-1.0)."""

    def __init__(self, cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int):
        super().__init__(cfg, in_dim, out_dim, grid_size, num_patches)
        self.proj = nn.Linear(in_dim, out_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLP2xGeluProjector(Projector):
    """Baseline: LLaVA-1.5's ``mlp2x_gelu`` (Linear -> GELU -> Linear, no norm)."""

    def __init__(self, cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int):
        super().__init__(cfg, in_dim, out_dim, grid_size, num_patches)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


PROJECTORS: dict[str, type[Projector]] = {
    "ian": IAN,
    "vab": VABProjector,
    "linear": LinearProjector,
    "mlp2x_gelu": MLP2xGeluProjector,
}


def build_projector(
    cfg: IANConfig, in_dim: int, out_dim: int, grid_size: int, num_patches: int | None = None
) -> Projector:
    """The connector ``cfg.projector`` for ``grid_size**2`` patches of width ``in_dim``.

    ``num_patches`` defaults to ``grid_size**2``; pass ``tower.num_patches`` when the tower
    keeps its CLS token (every projector but ``ian`` accepts that)."""
    if cfg.projector not in PROJECTORS:
        raise ConfigError(f"ian.projector={cfg.projector!r}: use one of {sorted(PROJECTORS)}")
    patches = grid_size**2 if num_patches is None else num_patches
    projector = PROJECTORS[cfg.projector](cfg, in_dim, out_dim, grid_size, patches)
    if cfg.position_embedding:
        projector.add_position_embedding()
    return projector
