import pytest
import timm
import torch
from safetensors.torch import save_file

from diffusion_seg.models.backbone import TimmBackbone


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
