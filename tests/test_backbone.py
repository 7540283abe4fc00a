import copy
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from diffusion_seg.models.backbone import InsertedAfter, TimmBackbone


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_sets_feature_strides(output_stride):
    backbone = TimmBackbone("test_resnet", output_stride=output_stride)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == backbone.channels
    assert feats[-1].shape[-1] == 64 // output_stride
    assert max(backbone.reductions) == output_stride


def test_invalid_output_stride_names_key_and_allowed_values():
    with pytest.raises(ValueError, match=r"backbone.output_stride=12.*\[8, 16, 32\]"):
        TimmBackbone("test_resnet", output_stride=12)


def test_unknown_model_name_is_reported():
    with pytest.raises(ValueError, match="backbone.name='resnet_nope'"):
        TimmBackbone("resnet_nope")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_load_from_local_file_without_network(tmp_path, suffix):
    reference = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = TimmBackbone("test_resnet", weights=str(path))
    loaded = backbone.model.state_dict()
    for key in ("conv1.0.weight", "layer4.0.conv2.weight", "layer1.0.bn1.running_mean"):
        assert torch.equal(loaded[key], state[key]), key
    assert backbone.config["pretrained"] is True


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.weights: no file at .*missing.pth"):
        TimmBackbone("test_resnet", weights=str(tmp_path / "missing.pth"))


def test_frozen_bn_keeps_statistics_and_affine_fixed():
    backbone = TimmBackbone("test_resnet", frozen_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64) * 5 + 3)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def conv3x3_dilations(backbone: TimmBackbone, stage: str) -> list[list[int]]:
    """Per block of ``stage``: the dilation of each of its 3×3 convs."""
    blocks = backbone.model.get_submodule(stage)
    return [
        [m.dilation[0] for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        for block in blocks
    ]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_deeplab_dilation_pattern_dilates_every_block(name):
    """DeepLab-v2's ResNet at output stride 8: every 3×3 conv of layer3 at dilation 2 and of
    layer4 at 4, res4a/res5a included; timm keeps each dilated stage's first block at the
    previous dilation. Padding follows, so the feature sizes do not change."""
    timm_style = TimmBackbone(name, output_stride=8)
    deeplab = TimmBackbone(name, output_stride=8, dilation_pattern="deeplab")
    for stage in ("layer1", "layer2"):
        assert {d for block in conv3x3_dilations(deeplab, stage) for d in block} == {1}
    assert conv3x3_dilations(deeplab, "layer3") == [[2] * len(b) for b in conv3x3_dilations(deeplab, "layer3")]
    assert conv3x3_dilations(deeplab, "layer4") == [[4] * len(b) for b in conv3x3_dilations(deeplab, "layer4")]
    first3, first4 = conv3x3_dilations(timm_style, "layer3")[0], conv3x3_dilations(timm_style, "layer4")[0]
    assert first3[0] == 1 and first4[0] == 2  # timm: the first conv of the first block lags
    x = torch.randn(1, 3, 64, 64)
    assert [f.shape for f in deeplab(x)] == [f.shape for f in timm_style(x)]
    at16 = TimmBackbone(name, output_stride=16, dilation_pattern="deeplab")
    assert {d for b in conv3x3_dilations(at16, "layer3") for d in b} == {1}
    assert {d for b in conv3x3_dilations(at16, "layer4") for d in b} == {2}


def test_dilation_pattern_is_checked():
    with pytest.raises(ValueError, match="backbone.dilation_pattern='atrous' is invalid; allowed: timm, deeplab"):
        TimmBackbone("test_resnet", dilation_pattern="atrous")
    with pytest.raises(ValueError, match="needs a ResNet-family backbone"):
        TimmBackbone("mobilenetv2_100", dilation_pattern="deeplab")


class Shift(nn.Module):
    """A module to insert: adds a constant to the stream, returns the stream as its aux."""

    def forward(self, x):
        return x + 1.0, [x]


def test_a_module_inserted_after_a_block_runs_in_its_place():
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18")  # two blocks per stage
    assert backbone.insertion_points() == [
        "layer1.0", "layer1", "layer2.0", "layer2", "layer3.0", "layer3", "layer4.0", "output"]
    x = torch.randn(1, 3, 32, 32)
    block, last = backbone.model.layer3
    with torch.no_grad():
        plain = backbone(x)  # [layer1, .., layer4]: layer3 reads plain[1]
        expected = last(block(plain[1]) + 1)
    assert backbone.insertion_channels("layer3.0") == backbone.channels[2]
    inserted = backbone.insert_after("layer3.0", Shift())
    assert backbone.model.layer3[0] is inserted and inserted.block is block
    assert backbone.insertion_points()[-1] == "output" and len(backbone.insertion_points()) == 8
    backbone.insert_after("layer3", Shift())  # after the stage around the wrapped block
    with torch.no_grad():
        features = backbone(x)
    torch.testing.assert_close(features[2], expected + 1)
    assert torch.equal(features[1], plain[1]) and not torch.equal(features[3], plain[3])
    # the aux output is handed over once; copies carry none
    assert len(inserted.aux) == 1
    assert not copy.deepcopy(inserted).aux and not pickle.loads(pickle.dumps(inserted)).aux
    assert len(inserted.take_aux()) == 1 and inserted.take_aux() == []


def test_insertion_point_errors_leave_the_backbone_as_it_was():
    backbone = TimmBackbone("test_resnet")
    with pytest.raises(ValueError, match=r"model\.insert_at: 'layer2\.1' is not an insertion "
                                         r"point.*allowed: 'output', 'layer1', .*'layer2\.0'"):
        backbone.insert_after("layer2.1", Shift())
    with pytest.raises(ValueError, match="the output has no block to wrap"):
        backbone.insert_after("output", Shift())
    assert backbone.insertion_channels("output") == backbone.channels[-1]
    assert not any(isinstance(m, InsertedAfter) for m in backbone.modules())
