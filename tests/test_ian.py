"""The connector: IAN (VAB + SEB) shapes, the start-from-the-conv-path property, gradients,
the baselines and the config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mage import config as mage_config
from mage.config import ConfigError, IANConfig
from mage.ian import PROJECTORS, LocalQueries, build_projector

torch.set_num_threads(1)

IN_DIM, OUT_DIM, GRID = 16, 32, 8


def _features(batch: int = 2, patches: int = GRID * GRID) -> torch.Tensor:
    return torch.randn(batch, patches, IN_DIM, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_ian_shapes(stride, depth):
    ian = build_projector(IANConfig(depth=depth, stride=stride), IN_DIM, OUT_DIM, GRID)
    out = ian(_features())
    assert ian.num_tokens == (GRID // stride) ** 2
    assert out.shape == (2, ian.num_tokens, OUT_DIM)
    assert len(ian.seb.blocks) == depth


@pytest.mark.parametrize("projector", ["vab", "linear", "mlp2x_gelu"])
def test_baseline_shapes(projector):
    proj = build_projector(IANConfig(projector=projector), IN_DIM, OUT_DIM, GRID)
    assert proj.num_tokens == GRID * GRID
    assert proj(_features()).shape == (2, GRID * GRID, OUT_DIM)
    # a tower that keeps its CLS token gives one more patch: fine for every baseline
    proj = build_projector(IANConfig(projector=projector), IN_DIM, OUT_DIM, GRID, GRID**2 + 1)
    assert proj(_features(patches=GRID**2 + 1)).shape == (2, GRID**2 + 1, OUT_DIM)


def test_projector_registry_matches_the_config_choices():
    assert set(PROJECTORS) == set(mage_config.PROJECTORS)


@pytest.mark.parametrize(
    ("vab_depth", "norm", "n_linear", "norm_type"),
    [
        (1, "none", 1, torch.nn.Identity),
        (2, "layernorm", 2, torch.nn.LayerNorm),
        (3, "rmsnorm", 3, torch.nn.RMSNorm),
    ],
)
def test_vab_depth_and_norm(vab_depth, norm, n_linear, norm_type):
    proj = build_projector(
        IANConfig(projector="vab", vab_depth=vab_depth, norm=norm), IN_DIM, OUT_DIM, GRID
    )
    linears = [m for m in proj.vab.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear and isinstance(proj.vab.norm, norm_type)
    assert sum(isinstance(m, torch.nn.GELU) for m in proj.vab.mlp) == n_linear - 1


def test_mlp2x_gelu_is_llava_linear_gelu_linear_without_norm():
    proj = build_projector(IANConfig(projector="mlp2x_gelu"), IN_DIM, OUT_DIM, GRID)
    assert [type(m) for m in proj.mlp] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert not any(isinstance(m, torch.nn.LayerNorm | torch.nn.RMSNorm) for m in proj.modules())


@pytest.mark.parametrize("gate", ["tanh", "zero_init"])
def test_fresh_seb_is_its_conv_path_until_trained(gate):
    torch.manual_seed(0)
    ian = build_projector(IANConfig(depth=2, stride=2, gate=gate), IN_DIM, OUT_DIM, GRID)
    features = _features()
    aligned = ian.vab(features)
    assert torch.equal(ian.seb(aligned), ian.seb.local(aligned))
    assert torch.equal(ian(features), ian.seb.local(ian.vab(features)))

    optimizer = torch.optim.Adam(ian.parameters(), lr=1e-2)
    target = torch.randn(2, ian.num_tokens, OUT_DIM, generator=torch.Generator().manual_seed(1))
    F.mse_loss(ian(features), target).backward()
    optimizer.step()
    with torch.no_grad():
        aligned = ian.vab(features)
        assert not torch.equal(ian.seb(aligned), ian.seb.local(aligned))


@pytest.mark.parametrize("gate", ["tanh", "zero_init"])
def test_gradients_reach_vab_and_seb(gate):
    ian = build_projector(IANConfig(depth=1, stride=2, gate=gate), IN_DIM, OUT_DIM, GRID)
    ian(_features()).square().mean().backward()
    block = ian.seb.blocks[0]
    opening = block.attn_gate if gate == "tanh" else block.attn.out_proj.weight
    for name, param in [
        ("vab first linear", ian.vab.mlp[0].weight),
        ("seb depthwise conv", ian.seb.local.depthwise.weight),
        ("seb pointwise", ian.seb.local.pointwise.weight),
        ("seb attention opening", opening),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_conv_path_starts_as_average_pooling(stride):
    local = LocalQueries(OUT_DIM, GRID, stride)
    tokens = torch.randn(2, GRID * GRID, OUT_DIM)
    grid = tokens.transpose(1, 2).reshape(2, OUT_DIM, GRID, GRID)
    kernel, pad = (3, 1) if stride == 1 else (stride, 0)
    pooled = F.avg_pool2d(grid, kernel, stride, pad, count_include_pad=True)
    assert torch.allclose(local(tokens), pooled.flatten(2).transpose(1, 2), atol=1e-5)


def test_bad_stride_heads_and_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match=r"ian\.stride=3 .* allowed values: \[1, 2, 4, 8\]"):
        build_projector(IANConfig(stride=3), IN_DIM, OUT_DIM, GRID)
    with pytest.raises(ConfigError, match=r"ian\.num_heads=5"):
        build_projector(IANConfig(num_heads=5), IN_DIM, OUT_DIM, GRID)
    with pytest.raises(ConfigError, match=r"vision\.drop_cls"):
        build_projector(IANConfig(), IN_DIM, OUT_DIM, GRID, GRID**2 + 1)
    ian = build_projector(IANConfig(), IN_DIM, OUT_DIM, GRID)
    with pytest.raises(ValueError, match=r"expects features \[B, 64, 16\]"):
        ian(torch.zeros(1, 49, IN_DIM))


def test_paper_size_on_meta():
    """in 1024 (CLIP ViT-L) -> out 4096 (Vicuna-7B), 24x24 grid, stride 2: 144 tokens."""
    with torch.device("meta"):
        ian = build_projector(IANConfig(depth=1, stride=2, num_heads=32), 1024, 4096, 24)
    assert ian.num_tokens == 144
    d = 4096
    conv = sum(p.numel() for p in ian.seb.local.parameters())
    assert conv == d * 2 * 2 + d + d * d + d  # depthwise 2x2 + bias, pointwise Linear
    assert ian(torch.empty(1, 576, 1024, device="meta")).shape == (1, 144, 4096)


@pytest.mark.parametrize("projector", sorted(PROJECTORS))
def test_position_embedding_adds_one_learned_vector_per_token(projector):
    torch.manual_seed(0)
    plain = build_projector(IANConfig(projector=projector), IN_DIM, OUT_DIM, GRID)
    torch.manual_seed(0)
    placed = build_projector(
        IANConfig(projector=projector, position_embedding=True), IN_DIM, OUT_DIM, GRID
    )
    extra = sum(p.numel() for p in placed.parameters()) - sum(p.numel() for p in plain.parameters())
    assert plain.position is None and extra == placed.num_tokens * OUT_DIM
    features = _features()
    # same weights otherwise: the outputs differ by exactly the position table
    torch.testing.assert_close(
        placed(features) - plain(features), placed.position.expand(2, -1, -1)
    )
    placed(features).sum().backward()
    assert placed.position.grad is not None and placed.position.grad.abs().sum() > 0
