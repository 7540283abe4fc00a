"""PDN head (diffusion_seg/models/pdn.py): Eq. 1–3, Table 1 counts, ring filters, placement."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from diffusion_seg.models.backbone import InsertedAfter, TimmBackbone
from diffusion_seg.models.pdn import (
    DiffusionLayer,
    DiffusionModule,
    PDNHead,
    default_insertion_points,
    rings_from_neighbors,
)
from diffusion_seg.models.segmentor import Segmentor


def ring_distance(rings: int) -> torch.Tensor:
    """Chebyshev distance of every tap of a (2E+1)² window from its centre."""
    offsets = (torch.arange(2 * rings + 1) - rings).abs()
    return torch.maximum(offsets[:, None], offsets[None, :])


def gate_weights(module: DiffusionModule) -> int:
    return sum(layer.taps.numel() for layer in module.layers)


def reference_forward(module: DiffusionModule, x: torch.Tensor):
    """Eq. 1–3 written out LSTM by LSTM, gate by gate, group by group (one conv per
    (LSTM, gate, input group)), from the layers' dense kernels."""
    d, lstms = module.hidden, module.rings + 1
    h = [module.proj_in(x)] * lstms  # E+1 copies of the projected features, memories zero
    m = [torch.zeros_like(h[0]) for _ in range(lstms)]
    aux = []
    for layer, classifier in zip(module.layers, module.classifiers):
        kernel = layer.kernel()
        size = kernel.shape[-1]
        in_per_group = kernel.shape[1] // lstms
        # [c, gate, lstm, in-channel, group e, ky, kx]
        kernel = kernel.view(d, 4, lstms, in_per_group, lstms, size, size)
        bias = layer.bias.view(d, 4, lstms)
        new_h, new_m = [], []
        for lstm in range(lstms):
            z = []
            for gate in range(4):
                z.append(
                    sum(
                        F.conv2d(
                            h[e],
                            kernel[:, gate, lstm, :, e],
                            padding=module.rings,
                            groups=d // in_per_group,
                        )
                        for e in range(lstms)
                    )
                    + bias[:, gate, lstm].view(1, d, 1, 1)
                )
            i, f, o, g = torch.sigmoid(z[0]), torch.sigmoid(z[1]), torch.sigmoid(z[2]), torch.tanh(z[3])
            new_m.append(f * m[lstm] + i * g)
            new_h.append(o * torch.tanh(new_m[-1]))
        h, m = new_h, new_m
        aux.append(classifier(h[0]))
    return x + module.proj_out(h[0]), aux


def randomise_(module: torch.nn.Module, std: float = 0.1) -> None:
    """Random values everywhere (the zero-initialised output projection included)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)


@pytest.mark.parametrize(("neighbors", "rings"), [(8, 1), (24, 2), (48, 3), (80, 4)])
def test_rings_from_neighbors(neighbors: int, rings: int) -> None:
    assert rings_from_neighbors(neighbors) == rings


@pytest.mark.parametrize("neighbors", [0, 4, 9, 10, 16, 23, -8])
def test_invalid_neighbors_names_the_key_and_the_allowed_values(neighbors: int) -> None:
    with pytest.raises(ValueError, match=r"model\.neighbors=.*allowed: 8, 24, 48"):
        DiffusionModule(16, 3, neighbors=neighbors, hidden=4)


def test_invalid_options_name_their_keys() -> None:
    with pytest.raises(ValueError, match=r"model\.conv='dense'.*channelwise, full"):
        DiffusionModule(16, 3, hidden=4, conv="dense")
    with pytest.raises(ValueError, match=r"model\.layers=0"):
        DiffusionModule(16, 3, hidden=4, layers=0)


@pytest.mark.parametrize(("neighbors", "per_d"), [(8, 288), (24, 1200)])
def test_table1_parameter_count(neighbors: int, per_d: int) -> None:
    """Table 1: a 4-layer module has 288·d (8NB) / 1200·d (24NB) gate weights."""
    for d in (256, 64):
        module = DiffusionModule(32, 3, neighbors=neighbors, layers=4, hidden=d)
        assert gate_weights(module) == per_d * d
    assert gate_weights(DiffusionModule(32, 3, neighbors=24, hidden=256)) == 307_200


@pytest.mark.parametrize("rings", [1, 2, 3])
def test_gathered_taps_equal_the_fused_convolution_with_gradients(rings: int) -> None:
    """Both forms of Eq. 1 give the same gates and the same gradients of the input, the taps
    and the bias (batch > 1, a non-square grid); CPU picks the gathered form for channel-wise
    filters, the fused convolution for full ones."""
    layer = DiffusionLayer(4, rings).double()
    with torch.no_grad():
        layer.bias.normal_()
    h = torch.randn(3, 4 * (rings + 1), 7, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for gather in (False, True):
        layer.gather_taps = gather
        z = layer.gates(h)
        weight = torch.linspace(-1, 1, z.numel(), dtype=z.dtype).view_as(z)
        grads = torch.autograd.grad((z * weight).sum(), (h, layer.taps, layer.bias))
        results.append((z, *grads))
    torch.testing.assert_close(results[0], results[1])
    assert torch.autograd.gradcheck(  # the hand-written backward against finite differences
        lambda h, taps, bias: layer.gates(h), (h[:2, :, :4, :5], layer.taps, layer.bias))

    layer.gather_taps = None
    calls = []
    layer.kernel = lambda kernel=layer.kernel: calls.append(1) or kernel()
    layer.gates(h)
    assert calls == []  # CPU, channel-wise: gathered
    full = DiffusionLayer(4, rings, conv="full")
    full.kernel = lambda kernel=full.kernel: calls.append(1) or kernel()
    full.gates(torch.randn(1, 4 * (rings + 1), 5, 5))
    assert calls == [1]  # full filters: the fused convolution
    with pytest.raises(ValueError, match="gather_taps=True needs conv='channelwise'"):
        DiffusionLayer(4, rings, conv="full", gather_taps=True)


def test_a_compiled_layer_takes_the_fused_convolution() -> None:
    """Under torch.compile the gates are the fused convolution even on CPU: inductor compiled
    the gathered Function for 8 minutes into a step 20× slower (docs/benchmarks.md). The
    graph Dynamo captures holds one convolution and no batched product."""
    layer = DiffusionLayer(4, 2)
    h, m = torch.randn(2, 12, 5, 5), torch.zeros(2, 12, 5, 5)
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=capture)(h, m)
    calls = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert calls.count(torch.conv2d) == 1 and torch.baddbmm not in calls, calls
    torch.testing.assert_close(compiled, layer(h, m))  # eager: gathered, the same gates


def test_full_conv_mixes_channels() -> None:
    module = DiffusionModule(8, 3, neighbors=8, layers=2, hidden=6, conv="full")
    assert gate_weights(module) == 2 * 4 * 2 * 9 * 6 * 6
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    module = module.double()
    randomise_(module)
    out, aux = module(x)
    ref_out, ref_aux = reference_forward(module, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(aux, ref_aux)


@pytest.mark.parametrize("rings", [1, 2, 3])
def test_group_e_filters_are_nonzero_exactly_on_ring_e(rings: int) -> None:
    layer = DiffusionLayer(hidden=5, rings=rings)
    kernel = layer.kernel().detach()  # [out, E+1, K, K]
    distance = ring_distance(rings)
    for e in range(rings + 1):
        assert (kernel[:, e] != 0).eq(distance == e).all()
    # every stored tap appears once in the kernel, nothing else does
    taps = layer.taps.detach().flatten(1).sort(dim=1).values
    nonzero = kernel.flatten(1)
    nonzero = nonzero[nonzero != 0].view(kernel.shape[0], -1).sort(dim=1).values
    assert torch.equal(taps, nonzero)


@pytest.mark.parametrize("gather_taps", [False, True])
@pytest.mark.parametrize("neighbors", [8, 24, 48])
def test_matches_the_equations_written_out(neighbors: int, gather_taps: bool) -> None:
    """The fused grouped convolution (or the gathered taps) + gate views equal
    Eq. 1–3 per LSTM / gate / group (σ for i, f, o; tanh for g), the depth hidden map feeds
    the aux classifiers and output."""
    module = DiffusionModule(12, 4, neighbors=neighbors, layers=3, hidden=6).double()
    randomise_(module)
    for layer in module.layers:
        layer.gather_taps = gather_taps
    x = torch.randn(2, 12, 9, 11, dtype=torch.float64)
    out, aux = module(x)
    ref_out, ref_aux = reference_forward(module, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(aux, ref_aux)


def test_shapes_and_gradients() -> None:
    module = DiffusionModule(16, 5, neighbors=24, layers=4, hidden=8)
    x = torch.randn(2, 16, 10, 13, requires_grad=True)
    out, aux = module(x)
    assert out.shape == x.shape
    assert len(aux) == 4 and all(a.shape == (2, 5, 10, 13) for a in aux)
    (out.square().mean() + sum(a.square().mean() for a in aux)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "proj_in.bias":
            assert p.grad.abs().sum() > 0, name


def test_module_starts_as_identity_on_the_stream() -> None:
    """Zero-initialised output projection: inserting a module keeps the pretrained net."""
    module = DiffusionModule(16, 5, hidden=8)
    x = torch.randn(1, 16, 6, 6)
    assert torch.equal(module(x)[0], x)


def test_zero_taps_stay_exactly_zero_through_training() -> None:
    """SGD with momentum and (large) weight decay: off-ring taps never leave zero."""
    torch.manual_seed(0)
    module = DiffusionModule(8, 3, neighbors=24, layers=2, hidden=4)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = [layer.kernel().detach().clone() for layer in module.layers]
    x, target = torch.randn(2, 8, 9, 9), torch.randint(0, 3, (2, 9, 9))
    for _ in range(5):
        out, aux = module(x)
        loss = out.square().mean() + sum(F.cross_entropy(a, target) for a in aux)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    distance = ring_distance(2)
    for layer, old in zip(module.layers, before):
        kernel = layer.kernel().detach()
        for e in range(3):
            off_ring = kernel[:, e][:, distance != e]
            assert torch.equal(off_ring, torch.zeros_like(off_ring))
            on_ring = kernel[:, e][:, distance == e]
            assert not torch.equal(on_ring, old[:, e][:, distance == e])  # it did train


@pytest.mark.parametrize(("neighbors", "layers"), [(8, 1), (24, 1), (8, 4), (24, 4)])
def test_receptive_field_grows_with_neighbors_and_layers(neighbors: int, layers: int) -> None:
    """The "valid receptive field" (Fig. 4) of one centre output of the last layer: exactly
    the (2·layers·E+1)² square around it (each layer reaches Chebyshev distance E)."""
    torch.manual_seed(0)
    rings = rings_from_neighbors(neighbors)
    module = DiffusionModule(4, 2, neighbors=neighbors, layers=layers, hidden=4).double()
    x = torch.randn(1, 4, 21, 21, dtype=torch.float64, requires_grad=True)
    _, aux = module(x)
    aux[-1][0, :, 10, 10].sum().backward()
    reached = x.grad.abs().sum(dim=(0, 1)) != 0
    radius = layers * rings
    expected = torch.zeros(21, 21, dtype=torch.bool)
    expected[10 - radius : 11 + radius, 10 - radius : 11 + radius] = True
    assert torch.equal(reached, expected)


def test_receptive_field_ordering() -> None:
    def area(neighbors: int, layers: int) -> int:
        torch.manual_seed(0)
        module = DiffusionModule(4, 2, neighbors=neighbors, layers=layers, hidden=4).double()
        x = torch.randn(1, 4, 21, 21, dtype=torch.float64, requires_grad=True)
        module(x)[1][-1][0, :, 10, 10].sum().backward()
        return int((x.grad.abs().sum(dim=(0, 1)) != 0).sum())

    assert area(24, 1) > area(8, 1)
    assert area(24, 4) > area(8, 4)
    assert area(8, 4) > area(8, 1)
    assert area(24, 4) > area(24, 1)


def test_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    module = DiffusionModule(16, 3, neighbors=24, layers=2, hidden=8)
    randomise_(module)
    x = torch.randn(1, 16, 9, 9)
    ref_out, ref_aux = module(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = module(x)
        loss = out.float().mean() + sum(a.float().mean() for a in aux)
    loss.backward()
    assert aux[-1].dtype == torch.bfloat16
    assert all(torch.isfinite(a).all() for a in aux)
    torch.testing.assert_close(aux[-1].float(), ref_aux[-1], atol=0.05, rtol=0.05)
    torch.testing.assert_close(out.float(), ref_out, atol=0.1, rtol=0.05)
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


def test_channels_last_input() -> None:
    torch.manual_seed(0)
    module = DiffusionModule(16, 3, neighbors=24, layers=2, hidden=8)
    randomise_(module)
    x = torch.randn(2, 16, 9, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out, aux = module(x)
    out_cl, aux_cl = module(x_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out)
    torch.testing.assert_close(aux_cl, aux)
    (out_cl.sum() + sum(a.sum() for a in aux_cl)).backward()
    assert torch.isfinite(x_cl.grad).all()


@pytest.fixture(scope="module")
def tiny() -> TimmBackbone:
    return TimmBackbone("test_resnet")


def test_two_modules_in_the_tiny_backbone(tiny: TimmBackbone) -> None:
    torch.manual_seed(0)
    backbone = TimmBackbone(**tiny.config)
    head = functools.partial(PDNHead, modules=2, layers=2, hidden=8, classifier="1x1")
    net = Segmentor(backbone, head, num_classes=3)
    assert net.head.insert_at == ["layer3", "output"]  # the last two block boundaries
    out = net(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 3, 4, 4)
    assert sorted(out.aux) == [f"pdn{m}_layer{t}" for m in (1, 2) for t in (1, 2)]
    assert all(a.shape == (2, 3, 4, 4) for a in out.aux.values())

    # every parameter of both modules is "new" (10× lr), none of the backbone's own is
    new = {id(p) for p in net.new_parameters()}
    modules = {id(p) for p in net.head.pdn.parameters()}
    assert modules <= new
    assert not any(id(p) in new for p in net.backbone.parameters() if id(p) not in modules)

    # the module inserted after layer3 sits on the main path: the final loss reaches its
    # (zero-initialised) output projection through layer4 ...
    target = torch.randint(0, 3, (2, 4, 4))
    F.cross_entropy(out.logits, target).backward(retain_graph=True)
    inner = net.head.pdn[0]
    assert inner.proj_out.weight.grad.abs().sum() > 0
    assert inner.layers[0].taps.grad is None or inner.layers[0].taps.grad.abs().sum() == 0
    # ... and the intermediate supervision trains its diffusion layers
    sum(F.cross_entropy(a, target) for a in out.aux.values()).backward()
    for module in net.head.pdn:
        for layer in module.layers:
            assert layer.taps.grad.abs().sum() > 0
    # the inserted module's output replaces layer3's: layer4 sees it
    with torch.no_grad():
        inner.proj_out.weight.normal_()
        assert not torch.equal(net(torch.ones(1, 3, 32, 32)).logits, out.logits[:1])


def test_explicit_insertion_points(tiny: TimmBackbone) -> None:
    backbone = TimmBackbone(**tiny.config)
    head = functools.partial(PDNHead, modules=2, layers=1, hidden=4, insert_at=["layer2.0", "layer4"])
    net = Segmentor(backbone, head, num_classes=3)
    out = net(torch.randn(1, 3, 32, 32))
    assert sorted(out.aux) == ["pdn1_layer1", "pdn2_layer1"]
    assert net.head.pdn[0].proj_in.in_channels == backbone.channels[1]


def test_insertion_point_errors(tiny: TimmBackbone) -> None:
    with pytest.raises(ValueError, match=r"model\.insert_at: 'layer4\.1'.*allowed: 'output'.*'layer4'"):
        PDNHead(tiny, 3, hidden=4, insert_at=["layer4.1"])
    with pytest.raises(ValueError, match=r"model\.insert_at=.*2 insertion points.*model\.modules=1"):
        PDNHead(tiny, 3, hidden=4, insert_at=["layer3", "output"])
    with pytest.raises(ValueError, match=r"model\.classifier='crf'"):
        PDNHead(tiny, 3, hidden=4, classifier="crf")
    with pytest.raises(ValueError, match=r"'layer3\.7'"):  # the valid first point is not wrapped
        PDNHead(tiny, 3, hidden=4, modules=2, insert_at=["layer3", "layer3.7"])
    assert not any(isinstance(m, InsertedAfter) for m in tiny.modules())


def test_default_insertion_points_walk_back_from_the_output() -> None:
    resnet18 = TimmBackbone("resnet18")  # 2 blocks per stage
    assert default_insertion_points(resnet18, 1) == ["output"]
    assert default_insertion_points(resnet18, 2) == ["layer4.0", "output"]
    assert default_insertion_points(resnet18, 3) == ["layer3", "layer4.0", "output"]


def test_deepcopy_runs_its_own_modules(tiny: TimmBackbone) -> None:
    """A deep copy (EMA / SWA callbacks) runs its own inserted modules, not the original's."""
    import copy

    head = functools.partial(PDNHead, modules=2, layers=1, hidden=4, classifier="1x1")
    net = Segmentor(TimmBackbone(**tiny.config), head, num_classes=3)
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone.head.pdn[0].proj_out.weight.normal_()
    image = torch.randn(1, 3, 32, 32)
    out, out_clone = net(image), clone(image)
    assert sorted(out_clone.aux) == ["pdn1_layer1", "pdn2_layer1"]
    # the aux logits left inside the backbone were all handed to the head
    assert not any(m.aux for m in [*net.modules(), *clone.modules()] if isinstance(m, InsertedAfter))
    assert not torch.equal(out.logits, out_clone.logits)


def test_modules_show_where_they_run(tiny: TimmBackbone) -> None:
    """An inner module wraps its block (no hook): ``print(net)`` shows it inside the backbone,
    its weights are named there, and the head runs only the one on the output."""
    head = functools.partial(PDNHead, modules=3, layers=1, hidden=4, insert_at=["layer2.0", "layer3", "output"])
    net = Segmentor(TimmBackbone(**tiny.config), head, num_classes=3)
    assert not any(m._forward_hooks for m in net.modules())
    block, stage = net.backbone.model.layer2[0], net.backbone.model.layer3
    assert isinstance(block, InsertedAfter) and isinstance(stage, InsertedAfter)
    assert [block.module, stage.module, net.head.on_output["pdn3"]] == list(net.head.pdn)
    assert repr(net.backbone).count("DiffusionModule") == 2
    names = {n for n, _ in net.named_parameters()}
    assert {"backbone.model.layer2.0.module.layers.0.taps", "backbone.model.layer3.module.proj_out.weight",
            "backbone.model.layer3.block.0.conv1.weight", "head.on_output.pdn3.layers.0.taps"} <= names
    assert net.head.insert_at == ["layer2.0", "layer3", "output"]
    # the backbone's points are those of the network as built, wrapped blocks included
    assert net.backbone.insertion_points() == tiny.insertion_points()
    assert sorted(net(torch.randn(1, 3, 32, 32)).aux) == [f"pdn{m}_layer1" for m in (1, 2, 3)]
    assert set(net.head.diagnostics()) == {"pdn1_out_norm", "pdn2_out_norm", "pdn3_out_norm"}
