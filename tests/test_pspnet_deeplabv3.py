"""PSPNet and DeepLabv3 heads (diffusion_seg/models/pspnet.py, deeplabv3.py): shapes, the
auxiliary FCN head, parameter counts (documented formulas, mmseg's R-101-D8 numbers)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.deeplabv3 import DeepLabV3Head
from diffusion_seg.models.pspnet import PSPHead
from diffusion_seg.models.segmentor import Segmentor


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def psp_formula(C: int, K: int, c: int, scales: int, C3: int, a: int, aux: bool) -> int:
    decode = scales * (C * c + 2 * c) + ((C + scales * c) * c * 9 + 2 * c) + (c * K + K)
    return decode + ((C3 * a * 9 + 2 * a) + (a * K + K) if aux else 0)


def aspp_formula(C: int, K: int, c: int, dilations, C3: int, a: int, aux: bool) -> int:
    ones = sum(1 for d in dilations if d == 1)
    decode = (
        (C * c + 2 * c)
        + ones * (C * c + 2 * c)
        + (len(dilations) - ones) * (C * c * 9 + 2 * c)
        + ((len(dilations) + 1) * c * c * 9 + 2 * c)
        + (c * K + K)
    )
    return decode + ((C3 * a * 9 + 2 * a) + (a * K + K) if aux else 0)


@pytest.fixture(scope="module")
def tiny() -> TimmBackbone:
    return TimmBackbone("test_resnet")


# ResNet-50/101-D8 stage widths: what the heads read from a backbone.
RESNET_D8 = SimpleNamespace(name="resnet101", channels=[256, 512, 1024, 2048])


def test_mmseg_r101_d8_ade20k_counts() -> None:
    """mmseg's PSPHead + FCNHead and ASPPHead + FCNHead (configs/_base_/models/
    pspnet_r50-d8.py, deeplabv3_r50-d8.py) with 150 classes."""
    with torch.device("meta"):  # counts only: no memory, no init cost
        psp = PSPHead(RESNET_D8, 150)
        aspp = DeepLabV3Head(RESNET_D8, 150)
    assert count(psp) - count(psp.aux_head) == 23_150_742
    assert count(psp.aux_head) == 2_398_358
    assert count(psp) == 25_549_100 == psp_formula(2048, 150, 512, 4, 1024, 256, True)
    assert count(aspp) - count(aspp.aux_head) == 42_288_278
    formula = aspp_formula(2048, 150, 512, (1, 12, 24, 36), 1024, 256, True)
    assert count(aspp) == 44_686_636 == formula


@pytest.mark.parametrize("aux", [True, False])
def test_counts_follow_the_formulas_on_the_tiny_backbone(tiny: TimmBackbone, aux: bool) -> None:
    C, C3 = tiny.channels[-1], tiny.channels[-2]
    psp = PSPHead(tiny, 5, channels=16, pool_scales=(1, 3), aux=aux, aux_channels=8)
    assert count(psp) == psp_formula(C, 5, 16, 2, C3, 8, aux)
    aspp = DeepLabV3Head(tiny, 5, channels=16, dilations=(1, 2, 3), aux=aux, aux_channels=8)
    assert count(aspp) == aspp_formula(C, 5, 16, (1, 2, 3), C3, 8, aux)


@pytest.mark.parametrize(
    "head",
    [
        functools.partial(PSPHead, channels=16, aux_channels=8),
        functools.partial(DeepLabV3Head, channels=16, aux_channels=8),
    ],
    ids=["pspnet", "deeplabv3"],
)
def test_shapes_aux_and_gradients(tiny: TimmBackbone, head) -> None:
    torch.manual_seed(0)
    net = Segmentor(TimmBackbone(**tiny.config), head, num_classes=7)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 7, 8, 8)
    assert list(out.aux) == ["fcn_layer3"]
    assert out.aux["fcn_layer3"].shape == (2, 7, 8, 8)
    (out.logits.square().mean() + out.aux["fcn_layer3"].square().mean()).backward()
    for name, p in net.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    net.eval()
    out = net(torch.randn(1, 3, 48, 40))  # batch 1 and a pool scale larger than the map
    assert out.logits.shape == (1, 7, 6, 5)


def test_no_aux_and_layout(tiny: TimmBackbone) -> None:
    psp = PSPHead(tiny, 3, channels=8, aux=False)
    features = tiny(torch.randn(2, 3, 32, 32))
    assert psp(features, torch.zeros(1)).aux == {}
    assert [level[0].output_size for level in psp.pyramid] == [1, 2, 3, 6]
    aspp = DeepLabV3Head(tiny, 3, channels=8, aux=False)
    assert aspp(features, torch.zeros(1)).aux == {}
    kernels = [branch[0].kernel_size for branch in aspp.branches]
    assert kernels == [(1, 1), (3, 3), (3, 3), (3, 3)]
    rates = [(1, 1), (12, 12), (24, 24), (36, 36)]
    assert [branch[0].dilation for branch in aspp.branches] == rates
    assert [branch[0].padding for branch in aspp.branches] == [(0, 0)] + rates[1:]


def test_option_errors(tiny: TimmBackbone) -> None:
    with pytest.raises(ValueError, match=r"model\.pool_scales=\[\] is invalid; allowed: a non"):
        PSPHead(tiny, 3, pool_scales=[])
    with pytest.raises(ValueError, match=r"model\.dilations=\[0, 6\] is invalid"):
        DeepLabV3Head(tiny, 3, dilations=[0, 6])
    with pytest.raises(ValueError, match=r"model\.dropout=1\.0 is invalid; allowed: a float in"):
        PSPHead(tiny, 3, dropout=1.0)
    with pytest.raises(ValueError, match=r"model\.channels=0 is invalid"):
        DeepLabV3Head(tiny, 3, channels=0)
    with pytest.raises(ValueError, match=r"model\.aux_channels=0 is invalid"):
        PSPHead(tiny, 3, aux_channels=0)
    one_stage = SimpleNamespace(name="one", channels=[16])
    with pytest.raises(ValueError, match=r"model\.aux=true is invalid for backbone one"):
        DeepLabV3Head(one_stage, 3, channels=8)
    assert DeepLabV3Head(one_stage, 3, channels=8, aux=False).aux_head is None
