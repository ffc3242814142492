"""Style prompts on open_clip ViT towers: the photo path is the frozen tower, prompts change queries and learn."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from models.style_prompts import StylePromptConfig, StylePromptedViT, check_mixture, run_block

TOWERS = {  # open_clip tower variants whose pooling or blocks differ
    "cls-token": {},
    "avg-pool": {"pool_type": "avg"},
    "attn-pool": {"attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 4},
    "custom-blocks": {"qk_norm": True},
    "output-tokens": {"output_tokens": True},
}


def tiny_vit(seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=16,
                             **kwargs)


def pixels(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def frozen_output(visual: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The tower as an indexer runs it: eval mode (nn.MultiheadAttention's fused path), no grad."""
    visual.eval()
    with torch.no_grad():
        out = visual(x)
    return out[0] if isinstance(out, tuple) else out


PHOTO, SKETCH, CARTOON = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), torch.tensor([0, 0, 1.0])


@pytest.mark.parametrize("tower", TOWERS)
@pytest.mark.parametrize("tune_layernorms", [False, True])
def test_no_mixture_or_photo_mixture_is_exactly_the_frozen_tower(tower, tune_layernorms):
    visual = tiny_vit(**TOWERS[tower])
    x = pixels()
    expected = frozen_output(visual, x)
    model = StylePromptedViT(visual, StylePromptConfig(n_bases=3, n_prompts=2, depth=2,
                                                       tune_layernorms=tune_layernorms))
    with torch.no_grad():
        assert torch.equal(model(x, None), expected)
        assert torch.equal(model(x, PHOTO), expected)
        assert torch.equal(model(x, PHOTO.expand(5, -1)), expected)


@pytest.mark.parametrize("tower", ["cls-token", "custom-blocks"])
def test_run_block_reproduces_open_clip_blocks(tower):
    visual = tiny_vit(**TOWERS[tower]).eval()
    x = torch.randn(2, 17, 32)
    for block in visual.transformer.resblocks:
        with torch.no_grad():
            assert torch.equal(run_block(block, x, None, block.ln_1, block.ln_2), block(x))


@pytest.mark.parametrize("tower", TOWERS)
def test_prompts_change_queries_and_differ_per_style(tower):
    visual = tiny_vit(**TOWERS[tower])
    x = pixels()
    frozen = frozen_output(visual, x)
    model = StylePromptedViT(visual, StylePromptConfig(n_bases=3, n_prompts=2, depth=2))
    with torch.no_grad():
        sketch, cartoon = model(x, SKETCH), model(x, CARTOON)
    assert (sketch - frozen).abs().max() > 1e-2
    assert (sketch - cartoon).abs().max() > 1e-2


def test_photo_weight_slides_queries_continuously_to_the_frozen_tower():
    visual = tiny_vit()
    x = pixels()
    frozen = frozen_output(visual, x)
    model = StylePromptedViT(visual, StylePromptConfig(n_bases=3, n_prompts=2, depth=3))
    with torch.no_grad():
        gap = [(model(x, torch.tensor([w, 1 - w, 0])) - frozen).norm().item() for w in (0.0, 0.9, 1 - 1e-6)]
    assert gap[0] > gap[1] > gap[2]
    assert gap[2] < 1e-4 * gap[0]


def test_a_mixed_batch_equals_each_row_alone():
    model = StylePromptedViT(tiny_vit(), StylePromptConfig(n_bases=3, n_prompts=2, depth=2))
    x = pixels(4)
    mixture = torch.stack([PHOTO, SKETCH, torch.tensor([0.5, 0.25, 0.25]), CARTOON])
    with torch.no_grad():
        together = model(x, mixture)
        alone = torch.cat([model(x[i:i + 1], mixture[i]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tune_layernorms", [False, True])
def test_gradients_reach_only_the_style_parameters(tune_layernorms):
    model = StylePromptedViT(tiny_vit(), StylePromptConfig(n_bases=3, n_prompts=2, depth=2,
                                                           tune_layernorms=tune_layernorms)).train()
    assert not model.visual.training  # the tower stays in eval mode (no dropout) while prompts train
    model(pixels(), torch.stack([SKETCH, CARTOON, SKETCH, CARTOON, PHOTO])).square().sum().backward()
    assert all(p.grad is None for p in model.visual.parameters())
    trainable = model.trainable_parameters()
    assert trainable[0] is model.prompts
    assert (model.prompts.grad.abs().sum((2, 3)) > 0).all()  # every prompted layer, every styled basis
    n_norms = 0 if not tune_layernorms else 3 * 2 * 2  # 3 blocks x (ln_1, ln_2) x (weight, bias)
    assert len(trainable) == 1 + n_norms
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize("tune_layernorms", [False, True])
def test_save_load_round_trip(tmp_path, tune_layernorms):
    config = StylePromptConfig(n_bases=3, n_prompts=2, depth=2, tune_layernorms=tune_layernorms)
    model = StylePromptedViT(tiny_vit(), config)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p))  # as if trained: differs from any fresh initialisation
    path = tmp_path / "prompts.pt"
    model.save(path)
    loaded = StylePromptedViT.load(tiny_vit(), path)
    assert loaded.config == config
    x, mixture = pixels(), torch.tensor([0.2, 0.5, 0.3])
    with torch.no_grad():
        assert torch.equal(loaded(x, mixture), model(x, mixture))
    assert path.stat().st_size < 20_000  # only the style parameters, not the tower


def test_load_refuses_prompts_of_another_tower(tmp_path):
    path = tmp_path / "prompts.pt"
    StylePromptedViT(tiny_vit(seed=0), StylePromptConfig(n_bases=3)).save(path)
    with pytest.raises(ValueError, match="trained on another tower"):
        StylePromptedViT.load(tiny_vit(seed=1), path)


@pytest.mark.parametrize("mixture, message", [
    (torch.tensor([0.5, 0.5]), "has 2 weights but the prompts have 3 style bases"),
    (torch.tensor([1.2, -0.2, 0.0]), "must be non-negative"),
    (torch.tensor([0.5, 0.2, 0.1]), r"must sum to 1 \(row 0 sums to 0.8\)"),
    (torch.tensor([float("nan"), 0.5, 0.5]), "NaN or infinite"),
    (torch.full((2, 3), 1 / 3), r"expected \(3,\) for the whole batch or \(5, 3\)"),
])
def test_mixture_validation(mixture, message):
    model = StylePromptedViT(tiny_vit(), StylePromptConfig(n_bases=3))
    with pytest.raises(ValueError, match=message):
        model(pixels(), mixture)


def test_check_mixture_broadcasts_one_mixture_over_the_batch():
    assert torch.equal(check_mixture(torch.tensor([0.25, 0.75]), 2, 3), torch.tensor([[0.25, 0.75]] * 3))


def test_config_and_tower_validation():
    with pytest.raises(ValueError, match="photo_basis 3 is not one of the 3 bases"):
        StylePromptConfig(n_bases=3, photo_basis=3)
    with pytest.raises(ValueError, match="at least one other basis"):
        StylePromptConfig(n_bases=1)
    with pytest.raises(ValueError, match="depth 4 exceeds the tower's 3 blocks"):
        StylePromptedViT(tiny_vit(), StylePromptConfig(n_bases=3, depth=4))
    with pytest.raises(TypeError, match="need an open_clip VisionTransformer"):
        StylePromptedViT(torch.nn.Linear(3, 3), StylePromptConfig(n_bases=3))


def test_init_from_bases_gives_each_style_its_own_prompts():
    model = StylePromptedViT(tiny_vit(), StylePromptConfig(n_bases=3, n_prompts=2, depth=2))
    model.init_from_bases(torch.eye(3) * 5)
    sketch, cartoon = model.prompts[:, 0], model.prompts[:, 1]           # (depth, P, width) each
    # tokens of one style share a direction; the two styles' directions differ
    within = F.cosine_similarity(sketch[0, 0], sketch[1, 1], dim=0)
    across = F.cosine_similarity(sketch.mean((0, 1)), cartoon.mean((0, 1)), dim=0)
    assert within > 0.3 and across < within
    with pytest.raises(ValueError, match=r"expected \(3, F\), one descriptor per style basis"):
        model.init_from_bases(torch.zeros(2, 8))


@pytest.mark.slow
def test_a_short_training_run_lowers_the_loss_and_leaves_photos_alone():
    """Queries are restyled gallery images (negative, grey); InfoNCE against the frozen photo embeddings."""
    torch.manual_seed(0)
    visual = tiny_vit()
    photos = F.interpolate(torch.randn(24, 3, 4, 4), size=32, mode="bilinear")   # (24, 3, 32, 32) smooth images
    queries = torch.cat([-photos, photos.mean(1, keepdim=True).expand(-1, 3, -1, -1)])   # two styles
    targets = torch.arange(24).repeat(2)
    mixture = F.one_hot(torch.arange(1, 3).repeat_interleave(24), 3).float()
    model = StylePromptedViT(visual, StylePromptConfig(n_bases=3, n_prompts=2, depth=3))
    with torch.no_grad():
        gallery = F.normalize(model(photos, None), dim=-1)

    def loss() -> torch.Tensor:
        return F.cross_entropy(F.normalize(model(queries, mixture), dim=-1) @ gallery.T / 0.005, targets)

    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    with torch.no_grad():
        start = loss().item()
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        end = loss().item()
        assert torch.equal(model(photos, PHOTO), frozen_output(visual, photos))
    assert end < 0.85 * start, (start, end)  # measured: 4.93 -> 3.67
