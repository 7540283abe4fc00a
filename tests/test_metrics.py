import math

import pytest
import torch

from diffusion_seg.models.inference import predict
from diffusion_seg.metrics import SegmentationMetrics, format_table


def test_metrics_match_hand_computation_and_skip_absent_classes():
    # 4 classes; class 3 appears nowhere -> left out of mIoU/mAcc (mmseg convention).
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    preds = torch.tensor([[0, 1, 1, 1, 0, 3]])
    m = SegmentationMetrics(4)
    m.update(preds, target)
    r = m.compute()
    # class 0: I=1, U=3 (label 2 + pred 2 - 1); class 1: I=2, U=3; class 2: I=0, U=1
    assert r["IoU"][:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(r["IoU"][3])
    assert float(r["mIoU"]) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert float(r["aAcc"]) == pytest.approx(3 / 5)  # ignore pixel (and its pred 3) left out
    assert float(r["mAcc"]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    table = format_table(r, ["a", "b", "c", "d"], "val")
    assert "mIoU" in table and "-" in table.splitlines()[6]


def test_metrics_accumulate_over_batches_like_one_dataset_level_matrix():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (6, 10, 10))
    preds = torch.randint(0, 5, (6, 10, 10))
    whole, parts = SegmentationMetrics(5), SegmentationMetrics(5)
    whole.update(preds, target)
    for i in range(0, 6, 2):
        parts.update(preds[i : i + 2], target[i : i + 2])
    assert torch.equal(whole.confmat, parts.confmat)


def test_label_outside_class_range_is_an_error_not_silent_corruption():
    m = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*\[0, 7\]"):
        m.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]))


def test_sliding_window_and_flip_agree_with_whole_image_for_a_pointwise_model():
    weight = torch.randn(4, 3, 1, 1)

    def logits_fn(x):  # a 1x1 conv: window position cannot matter
        return torch.nn.functional.conv2d(x, weight)

    image = torch.randn(2, 3, 37, 53)
    whole = predict(logits_fn, image)
    slide = predict(logits_fn, image, mode="slide", crop=16, stride=11)
    assert torch.allclose(whole, slide, atol=1e-5)
    flipped = predict(logits_fn, image, flip=True)
    assert torch.allclose(flipped, whole.softmax(1), atol=1e-5)


def test_invalid_inference_mode_names_key():
    with pytest.raises(ValueError, match="inference.mode='tiles'"):
        predict(lambda x: x, torch.zeros(1, 3, 8, 8), mode="tiles")
