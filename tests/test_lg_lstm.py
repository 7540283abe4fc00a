"""LG-LSTM head (diffusion_seg/models/lg_lstm.py): PDN Table 1 counts, the layer equations,
receptive field, placement, bf16 autocast, option errors."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from diffusion_seg.models.backbone import InsertedAfter, TimmBackbone
from diffusion_seg.models.lg_lstm import (
    NEIGHBOR_OFFSETS,
    LGLSTMHead,
    LGLSTMModule,
    lstm_weight_count,
)
from diffusion_seg.models.segmentor import Segmentor


def randomise_(module: torch.nn.Module) -> None:
    """Non-trivial weights everywhere (the residual projection starts at zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = x[..., y + dy, x + dx]``, zero outside the map."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def reference_forward(module: LGLSTMModule, x: torch.Tensor):
    """The layer equations written out direction by direction and gate by gate."""
    d = module.hidden
    h_d = module.proj_in(x)
    h_s = [h_d] * 8
    m_s = [torch.zeros_like(h_d)] * 8
    m_d = torch.zeros_like(h_d)
    aux = []
    for layer, classifier in zip(module.layers, module.classifiers):
        # input vector: the hidden state each neighbour sends along its direction + own depth
        inputs = [shift(h_s[n], dy, dx) for n, (dy, dx) in enumerate(NEIGHBOR_OFFSETS)] + [h_d]
        x_local = torch.cat(inputs, 1)
        weight = layer.gates.weight[:, :, 0, 0].view(2, 4, d, 9 * d)  # [lstm, gate, out, in]
        bias = layer.gates.bias.view(2, 4, d)
        pre = torch.einsum("lgoi,bihw->lgbohw", weight, x_local) + bias[:, :, None, :, None, None]
        if layer.global_gates is not None:
            grid = F.adaptive_max_pool2d(h_d, layer.global_grid).flatten(1)
            g_weight = layer.global_gates.weight.view(2, 4, d, -1)
            pre = pre + torch.einsum("lgoi,bi->lgbo", g_weight, grid)[..., None, None]
        i, f, o, g = (pre[0, k] for k in range(4))  # shared by the 8 spatial LSTMs
        new_m_s = [
            torch.sigmoid(f) * shift(m_s[n], dy, dx) + torch.sigmoid(i) * torch.tanh(g)
            for n, (dy, dx) in enumerate(NEIGHBOR_OFFSETS)
        ]
        h_s = [torch.sigmoid(o) * torch.tanh(m) for m in new_m_s]
        m_s = new_m_s
        i, f, o, g = (pre[1, k] for k in range(4))
        m_d = torch.sigmoid(f) * m_d + torch.sigmoid(i) * torch.tanh(g)
        h_d = torch.sigmoid(o) * torch.tanh(m_d)
        aux.append(classifier(h_d))
    return x + module.proj_out(h_d), aux


@pytest.fixture(scope="module")
def tiny() -> TimmBackbone:
    return TimmBackbone("test_resnet")


@pytest.mark.parametrize(("global_grid", "per_d2"), [(0, 360), (None, 360), (3, 720)])
def test_pdn_table1_weight_counts(global_grid, per_d2) -> None:
    """PDN Table 1: 5 × 2 × 4 × (9·d²) = 360·d² w/o G, 5 × 2 × 4 × (18·d²) = 720·d² w/ G."""
    for d in (4, 16):
        module = LGLSTMModule(8, 3, layers=5, hidden=d, global_grid=global_grid)
        assert lstm_weight_count(module) == per_d2 * d * d
    # biases are not in the table: 2 LSTMs × 4 gates × d per layer
    module = LGLSTMModule(8, 3, layers=5, hidden=16, global_grid=global_grid)
    assert sum(layer.gates.bias.numel() for layer in module.layers) == 5 * 8 * 16


def test_pdn_table1_total_at_d64() -> None:
    """PDN Sec. 4.3: "about 2949K (LG-LSTM w/G)" at d = 64."""
    assert lstm_weight_count(LGLSTMModule(8, 3, hidden=64, global_grid=3)) == 2_949_120


@pytest.mark.parametrize("global_grid", [0, 3])
def test_matches_the_equations_written_out(global_grid: int) -> None:
    module = LGLSTMModule(6, 4, layers=3, hidden=5, global_grid=global_grid).double()
    randomise_(module)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    out, aux = module(x)
    ref_out, ref_aux = reference_forward(module, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(aux, ref_aux)


def test_directions_keep_distinct_states() -> None:
    """Shared gates, but each direction carries its own neighbour's memory."""
    module = LGLSTMModule(6, 4, layers=2, hidden=5, global_grid=0).double()
    randomise_(module)
    layer = module.layers[0]
    h = torch.randn(1, 8 * 5, 6, 6, dtype=torch.float64)
    m = torch.randn(1, 8 * 5, 6, 6, dtype=torch.float64)
    h_d = torch.randn(1, 5, 6, 6, dtype=torch.float64)
    h_s, m_s, _, _ = layer(h, m, h_d, torch.zeros_like(h_d))
    per_direction = h_s.unflatten(1, (8, 5))
    assert not torch.allclose(per_direction[:, 0], per_direction[:, 1])


def test_shapes_and_gradients() -> None:
    module = LGLSTMModule(16, 5, layers=3, hidden=8)
    x = torch.randn(2, 16, 10, 13, requires_grad=True)
    out, aux = module(x)
    assert out.shape == x.shape
    assert len(aux) == 3 and all(a.shape == (2, 5, 10, 13) for a in aux)
    (out.square().mean() + sum(a.square().mean() for a in aux)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_module_starts_as_identity_on_the_stream() -> None:
    module = LGLSTMModule(16, 5, hidden=8)
    x = torch.randn(1, 16, 6, 6)
    assert torch.equal(module(x)[0], x)


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_receptive_field_grows_one_site_per_layer(layers: int) -> None:
    """w/o G, a centre output of layer t depends exactly on the (2t+1)² square around it."""
    module = LGLSTMModule(4, 2, layers=layers, hidden=4, global_grid=0).double()
    randomise_(module)
    x = torch.randn(1, 4, 15, 15, dtype=torch.float64, requires_grad=True)
    _, aux = module(x)
    aux[-1][0, :, 7, 7].sum().backward()
    reached = x.grad.abs().sum(dim=(0, 1)) != 0
    expected = torch.zeros(15, 15, dtype=torch.bool)
    expected[7 - layers : 8 + layers, 7 - layers : 8 + layers] = True
    assert torch.equal(reached, expected)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_global_term_reaches_beyond_the_neighbours(pool: str) -> None:
    """One layer w/ G: the 3×3 grid brings in the whole image (avg pooling: every site; max
    pooling: each grid cell's arg-max sites, also far from the output)."""
    module = LGLSTMModule(4, 2, layers=1, hidden=4, global_grid=3, global_pool=pool).double()
    randomise_(module)
    x = torch.randn(1, 4, 15, 15, dtype=torch.float64, requires_grad=True)
    module(x)[1][-1][0, :, 7, 7].sum().backward()
    reached = x.grad.abs().sum(dim=(0, 1)) != 0
    if pool == "avg":
        assert reached.all()
    else:
        reached[6:9, 6:9] = False
        assert reached[:5].any() and reached[-5:].any()


def test_bf16_autocast_on_cpu() -> None:
    module = LGLSTMModule(16, 3, layers=2, hidden=8, global_grid=3)
    randomise_(module)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.3)
    x = torch.randn(1, 16, 9, 9)
    ref_out, ref_aux = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = module(x)
        loss = out.float().mean() + sum(a.float().mean() for a in aux)
    loss.backward()
    assert aux[-1].dtype == torch.bfloat16
    torch.testing.assert_close(aux[-1].float(), ref_aux[-1], atol=0.1, rtol=0.05)
    torch.testing.assert_close(out.float(), ref_out, atol=0.1, rtol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_head_on_the_tiny_backbone(tiny: TimmBackbone) -> None:
    head = functools.partial(LGLSTMHead, layers=2, hidden=8)
    net = Segmentor(TimmBackbone(**tiny.config), head, num_classes=3)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 3, 4, 4)
    assert sorted(out.aux) == ["lg_layer1", "lg_layer2"]
    assert all(a.shape == (2, 3, 4, 4) for a in out.aux.values())
    assert net.head.lg.proj_in.in_channels == tiny.channels[-1]
    assert len(net.head.classifier.branches) == 4  # DeepLab-v2 ASPP
    new = {id(p) for p in net.new_parameters()}
    assert all(id(p) in new for p in net.head.parameters())
    assert net.head.diagnostics() == {"lg_out_norm": 0.0}


def test_head_inside_the_backbone(tiny: TimmBackbone) -> None:
    head = functools.partial(LGLSTMHead, layers=1, hidden=4, insert_at="layer3", classifier="1x1")
    net = Segmentor(TimmBackbone(**tiny.config), head, num_classes=3)
    assert net.head.lg.proj_in.in_channels == tiny.channels[2]
    assert net.backbone.model.layer3.module is net.head.lg  # wraps layer3 (print(net) shows it)
    assert not net.head.on_output and not any(m._forward_hooks for m in net.modules())
    image = torch.randn(1, 3, 32, 32)
    out = net(image)
    assert sorted(out.aux) == ["lg_layer1"]
    # the module's output replaces layer3's (layer4 sees it); a deep copy runs its own module
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone.head.lg.proj_out.weight.normal_()
    out_clone = clone(image)
    assert sorted(out_clone.aux) == ["lg_layer1"]
    assert not torch.equal(out.logits, out_clone.logits)
    assert torch.equal(net(image).logits, out.logits)


def test_option_errors(tiny: TimmBackbone) -> None:
    with pytest.raises(ValueError, match=r"model\.layers=0 is invalid; allowed: an integer >= 1"):
        LGLSTMHead(tiny, 3, layers=0)
    with pytest.raises(ValueError, match=r"model\.hidden=0 is invalid; allowed"):
        LGLSTMHead(tiny, 3, hidden=0)
    with pytest.raises(ValueError, match=r"model\.global_grid=-1 is invalid; allowed: null or 0"):
        LGLSTMHead(tiny, 3, global_grid=-1)
    with pytest.raises(ValueError, match=r"model\.global_pool='median' is invalid; allowed: max"):
        LGLSTMHead(tiny, 3, global_pool="median")
    with pytest.raises(ValueError, match=r"model\.classifier='crf' is invalid; allowed: aspp, 1x1"):
        LGLSTMHead(tiny, 3, classifier="crf")
    with pytest.raises(ValueError, match=r"model\.insert_at: 'layer9'.*allowed: 'output'"):
        LGLSTMHead(tiny, 3, insert_at="layer9")
    assert not any(isinstance(m, InsertedAfter) for m in tiny.modules())
