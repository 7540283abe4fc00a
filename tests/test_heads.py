from functools import partial

import pytest
import torch

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import DeepLabV2Head, FCNHead
from diffusion_seg.models.layers import ASPPClassifier
from diffusion_seg.models.segmentor import Segmentor


@pytest.mark.parametrize("head", [FCNHead, DeepLabV2Head])
def test_head_logits_at_feature_resolution(head):
    net = Segmentor(TimmBackbone("test_resnet"), head, num_classes=7)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 7, 8, 8)
    assert out.aux == {}


def test_aspp_sums_dilated_branches():
    aspp = ASPPClassifier(4, 3, dilations=(1, 2))
    x = torch.randn(1, 4, 9, 9)
    assert torch.allclose(aspp(x), aspp.branches[0](x) + aspp.branches[1](x))
    assert [b.dilation for b in aspp.branches] == [(1, 1), (2, 2)]


def test_parameter_groups_split_backbone_and_new_layers():
    backbone = TimmBackbone("test_resnet")
    net = Segmentor(backbone, partial(FCNHead, channels=16), num_classes=3)
    backbone_ids = {id(p) for p in backbone.parameters()}
    assert {id(p) for p in net.backbone_parameters()} == backbone_ids
    new = list(net.new_parameters())
    assert new and {id(p) for p in new} == {id(p) for p in net.head.parameters()}
