"""DifNet head: walk rule, dense vs attention diffusion, the closed form of Eq. 2–3, kernel
choice (no N×N matrix), shapes, ablations, config errors and parameter groups."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.difnet import (
    LARGEFOV_DILATION,
    DifNetHead,
    RandomWalk,
    cascade,
    propagate_attention,
    propagate_dense,
    transition_rows,
    walk_levels,
)
from diffusion_seg.models.segmentor import Segmentor

K = 5  # classes
# float32, same inputs: the flash kernel's online softmax vs the explicit one differ by
# rounding only (measured ~1e-6 relative); this leaves a 100× margin.
RTOL, ATOL = 1e-4, 1e-5


def make_net(num_classes: int = K, **options) -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(TimmBackbone("test_resnet"), functools.partial(DifNetHead, **options), num_classes)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))


def random_walks(walks: int, psi_channels: int, seed: int = 0) -> list[RandomWalk]:
    """Walks with random μ_t, β_t (not the symmetric 0.5 of the init)."""
    torch.manual_seed(seed)
    out = [RandomWalk(1, psi_channels) for _ in range(walks)]
    for walk in out:
        walk.a.data.normal_()
        walk.b.data.normal_()
    return out


# ----------------------------------------------------------------------------- walk rule


@pytest.mark.parametrize(
    ("walks", "levels"),
    [
        (1, [4]),
        (2, [0, 4]),
        (3, [0, 2, 4]),  # the paper's ablation: without the 2nd and 4th walks
        (4, [0, 1, 3, 4]),
        (5, [0, 1, 2, 3, 4]),  # image, layer1..layer4
        (7, [0, 1, 1, 2, 3, 3, 4]),
    ],
)
def test_walk_levels(walks: int, levels: list[int]) -> None:
    assert walk_levels(walks) == levels


# ------------------------------------------------------------------ dense vs attention


@pytest.mark.parametrize("classes", [5, 70])  # v padded to Ψ's width / Ψ padded to K's
def test_dense_and_attention_agree_in_values_and_gradients(classes: int) -> None:
    g = torch.Generator().manual_seed(0)
    n, d, walks = 81, 64, 3
    # scale 0.3: P has real off-diagonal mass (scale 1 makes it nearly the identity)
    psis = [(0.3 * torch.randn(2, n, d, generator=g)).requires_grad_() for _ in range(walks)]
    seed = torch.randn(2, n, classes, generator=g).requires_grad_()
    weight = torch.randn(2, n, classes, generator=g)
    results = {}
    for mode in ("dense", "attention"):
        modules = random_walks(walks, d)
        out = cascade(modules, seed, psis, mode)[-1]
        grads = torch.autograd.grad(
            (out * weight).sum(),
            [*psis, seed, *(m.a for m in modules), *(m.b for m in modules)],
        )
        results[mode] = (out, grads)
    (out_d, grads_d), (out_a, grads_a) = results["dense"], results["attention"]
    torch.testing.assert_close(out_a, out_d, rtol=RTOL, atol=ATOL)
    for ga, gd in zip(grads_a, grads_d):
        torch.testing.assert_close(ga, gd, rtol=RTOL, atol=ATOL)
    # P really mixes nodes: the walk output is far from the seed
    assert (out_d - seed).abs().mean() > 0.1


def test_head_dense_and_attention_agree(image: torch.Tensor) -> None:
    net = make_net().eval()
    with torch.no_grad():
        attention = net(image).logits
        net.head.diffusion = "dense"
        dense = net(image).logits
    torch.testing.assert_close(attention, dense, rtol=RTOL, atol=ATOL)


def test_attention_under_cpu_bf16_autocast_matches_dense(image: torch.Tensor) -> None:
    """Ψ arrives in bf16 while y stays float32: the dtypes are reconciled, flash still runs."""
    net = make_net().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            attention = net(image).logits
        net.head.diffusion = "dense"
        dense = net(image).logits
    assert attention.dtype == torch.float32
    torch.testing.assert_close(attention, dense, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------- closed form (Eq. 2–3)


@pytest.mark.parametrize("mode", ["dense", "attention"])
def test_walks_converge_to_closed_form(mode: str) -> None:
    """Fixed P, μ, β = 1: y_{t+1} = μ P y_t + (1−μ) s → (1−μ)(I − μP)⁻¹ s (paper Eq. 2–3)."""
    g = torch.Generator().manual_seed(0)
    n, mu = 36, 0.7
    psi = 0.5 * torch.randn(1, n, 16, generator=g, dtype=torch.float64)
    seed = torch.randn(1, n, 3, generator=g, dtype=torch.float64)
    walk = RandomWalk(1, 16).double()
    walk.a.data.fill_(torch.logit(torch.tensor(1 - mu, dtype=torch.float64)).item())  # μ = σ(−a)
    walk.b.data.fill_(-60.0)  # β = σ(60) = 1 − 1e-26
    y = cascade([walk] * 150, seed, [psi] * 150, mode)[-1]  # 0.7^150 ≈ 6e-24
    p = transition_rows(psi)[0]
    expected = (1 - mu) * torch.linalg.solve(torch.eye(n, dtype=torch.float64) - mu * p, seed[0])
    torch.testing.assert_close(y[0].double(), expected, rtol=1e-9, atol=1e-9)
    # five walks are not the fixed point: the check can tell them apart
    y5 = cascade([walk] * 5, seed, [psi] * 5, mode)[-1]
    assert (y5[0].double() - expected).abs().max() > 1e-2


# ------------------------------------------------------------------ kernel: no N×N matrix


@pytest.mark.filterwarnings("ignore:Flash attention:UserWarning")  # the negative control's
@pytest.mark.parametrize("classes", [5, 70])
def test_attention_runs_the_flash_kernel(classes: int) -> None:
    """Forcing the flash backend raises if it cannot run; the math fallback builds N×N."""
    psi = torch.randn(1, 100, 64, requires_grad=True)
    y = torch.randn(1, 100, classes, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = propagate_attention(psi, y)
        out.sum().backward()
    assert out.shape == y.shape
    torch.testing.assert_close(out, propagate_dense(psi, y), rtol=RTOL, atol=ATOL)
    # negative control: the unpadded call cannot use flash, and the check notices
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(psi[:, None], psi[:, None], y[:, None], scale=1.0)


def test_whole_head_trains_through_flash(image: torch.Tensor) -> None:
    net = make_net().train().to(memory_format=torch.channels_last)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = net(image.contiguous(memory_format=torch.channels_last))
        out.logits.square().mean().backward()
    for walk in net.head.walks:  # gradients reach every a_t, b_t and Ψ_t
        for p in (walk.a, walk.b, walk.embed[0].weight):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for module in (net.head.importance, net.head.classifier, net.head.similarity):
        assert all(p.grad is not None for p in module.parameters())


def test_transition_rows_match_the_dense_matrix() -> None:
    psi = torch.randn(2, 30, 8, dtype=torch.float64)
    index = torch.tensor([0, 7, 29])
    rows = transition_rows(psi, index)
    # Independently: P_ij = exp(ψ_i·ψ_j) / Σ_k exp(ψ_i·ψ_k), entry by entry (Sec. 4).
    for b in range(2):
        for m, i in enumerate(index.tolist()):
            logits = torch.tensor([float(psi[b, i] @ psi[b, j]) for j in range(30)], dtype=torch.float64)
            expected = logits.exp() / logits.exp().sum()
            torch.testing.assert_close(rows[b, m], expected)


# ----------------------------------------------------------------- shapes and ablations


@pytest.mark.parametrize("walks", range(1, 8))
def test_shapes_for_any_number_of_walks(walks: int, image: torch.Tensor) -> None:
    net = make_net(walks=walks)
    out = net(image)
    assert out.logits.shape == (2, K, 6, 6)
    assert [k for k in out.extras if k.startswith("walk_")] == [f"walk_{t}" for t in range(1, walks + 1)]
    torch.testing.assert_close(out.extras[f"walk_{walks}"], out.logits)
    diag = net.head.diagnostics()
    assert sorted(diag) == sorted([f"mu_{t}" for t in range(1, walks + 1)] + [f"beta_{t}" for t in range(1, walks + 1)])
    assert all(v == 0.5 for v in diag.values())  # a_t = b_t = 0 at init
    channels = [3, *net.head.similarity.channels]
    assert [w.embed[0].in_channels for w in net.head.walks] == [channels[lv] for lv in walk_levels(walks)]


def test_published_defaults(image: torch.Tensor) -> None:
    head = make_net().head
    assert [b.dilation for b in head.classifier.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [m.kernel_size for m in head.importance if isinstance(m, torch.nn.Conv2d)] == [(5, 5)] * 3
    assert [m.out_channels for m in head.importance if isinstance(m, torch.nn.Conv2d)] == [8, 4, 1]
    assert all(w.embed[0].out_channels == 64 for w in head.walks)
    assert head.similarity.config == head.similarity.config | {"name": "test_resnet", "output_stride": 8}
    out = make_net()(image)
    assert out.aux == {}  # loss on the final output only
    m = out.extras["importance"]
    assert m.shape == (2, 1, 6, 6) and ((m > 0) & (m < 1)).all()
    torch.testing.assert_close(out.extras["seed"], m * out.extras["score"])


def test_seed_classifier_inits() -> None:
    """``published``: He fan-out std sqrt(2 / (k·k·K)) (the code's ResNet init loop re-draws
    the classifier); ``normal``: N(0, 0.01), zero bias. Measured on 4 branches × K × C × 9."""
    k = 21
    published = make_net(num_classes=k).head.classifier
    weights = torch.cat([b.weight.flatten() for b in published.branches])
    assert weights.std().item() == pytest.approx((2 / (9 * k)) ** 0.5, rel=0.05)
    assert all(b.bias.abs().max() > 0 for b in published.branches)  # PyTorch's default bias
    normal = make_net(num_classes=k, seed_init="normal").head.classifier
    weights = torch.cat([b.weight.flatten() for b in normal.branches])
    assert weights.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(b.bias.abs().max() == 0 for b in normal.branches)


def test_ablations(image: torch.Tensor) -> None:
    net = make_net(aspp=False, importance=False, seed_loss=True)
    assert [b.dilation for b in net.head.classifier.branches] == [(LARGEFOV_DILATION,) * 2]
    assert net.head.importance is None
    out = net(image)
    assert "importance" not in out.extras
    assert out.extras["seed"] is out.extras["score"]
    assert out.aux["seed"] is out.extras["score"]


def test_first_walk_keeps_mu_equal_to_beta(image: torch.Tensor) -> None:
    """y_0 = s makes ⊕_1 depend on μ_1β_1 only, so from a_1 = b_1 they stay equal under
    SGD — as in the paper's Table 3 (μ_1 = β_1 = 0.4159). Walk 2 has no such symmetry."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    target = torch.randint(0, K, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(image).logits, target).backward()
        opt.step()
    diag = net.head.diagnostics()
    assert diag["mu_1"] == pytest.approx(diag["beta_1"], abs=1e-6)
    assert diag["mu_1"] != pytest.approx(0.5, abs=1e-4)
    assert diag["mu_2"] != pytest.approx(diag["beta_2"], abs=1e-4)


@pytest.mark.parametrize(
    "option", ["test_efficientnet", {"name": "test_resnet", "output_stride": 16}]
)
def test_other_similarity_backbones(option, image: torch.Tensor) -> None:
    net = make_net(similarity_backbone=option)
    sim = net.head.similarity
    if isinstance(option, str):
        assert sim.name == option and sim.config["weights"] is None
        assert [w.embed[0].in_channels for w in net.head.walks] == [3, *sim.channels]
    else:
        assert sim.output_stride == 16
    assert net(image).logits.shape == (2, K, 6, 6)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"walks": 0}, "model.walks"),
        ({"walks": 2.5}, "model.walks"),
        ({"walks": True}, "model.walks"),
        ({"diffusion": "sparse"}, "model.diffusion"),
        ({"similarity_backbone": 3}, "model.similarity_backbone"),
        ({"psi_channels": 0}, "model.psi_channels"),
        ({"seed_init": "xavier"}, "model.seed_init"),
    ],
)
def test_invalid_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        make_net(**options)


def test_similarity_backbone_is_pretrained_parameters() -> None:
    net = make_net()
    sim = {id(p) for p in net.head.similarity.parameters()}
    assert {id(p) for p in net.head.pretrained_parameters()} == sim
    backbone = {id(p) for p in net.backbone_parameters()}
    new = {id(p) for p in net.new_parameters()}
    assert sim <= backbone and not sim & new
    assert backbone == sim | {id(p) for p in net.backbone.parameters()}
    walk_params = {id(p) for w in net.head.walks for p in w.parameters()}
    assert walk_params <= new
    assert {id(p) for p in net.head.importance.parameters()} <= new


def test_benchmark_cases_run_in_process() -> None:
    """The benchmark's measured cases on tiny sizes (the script itself is not a test)."""
    from diffusion_seg.bench.difnet import _diffusion_case, _train_case, dense_bytes

    base = {"device": "cpu", "dtype": "float32", "repeats": 1, "max_seconds": 5.0, "walks": 2,
            "classes": K, "psi_channels": 64, "batch": 1}
    for mode in ("dense", "attention"):
        result = _diffusion_case({**base, "grid": 6, "mode": mode, "backward": True})
        # one timed run within the 5 s budget (peak memory is the GPU's: not checked on CPU)
        assert 0 < result["time"] < 5 and result["runs"] == 1
    result = _train_case({**base, "size": 32, "mode": "attention", "backbone": "test_resnet"})
    assert 0 < result["time"] < 5
    assert dense_bytes(128, 5, True) == 7 * 16384**2 * 4
