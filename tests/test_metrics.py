import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from diffusion_seg.models.inference import predict
from diffusion_seg.metrics import ContextMetrics, SegmentationMetrics, format_context, format_table


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


# A hand-built row of 9 pixels: label, prediction, distance from the cue (cells), misleading.
HAND = {
    "target":     [0, 1, 1, 2, 2, 3, 3, 255, 1],
    "preds":      [1, 1, 0, 2, 3, 3, 1, 2, 1],
    "distance":   [-1, 0.5, 1.0, 3.0, 5.0, 7.0, 4.5, 0.0, 9.0],
    "misleading": [0, 0, 0, 1, 1, 1, 1, 0, 0],
}


def hand_batch():
    return (torch.tensor([HAND["preds"]]), torch.tensor([HAND["target"]]),
            torch.tensor([HAND["distance"]]), torch.tensor([HAND["misleading"]]).bool())


def test_context_metrics_exact_values_on_a_hand_built_batch():
    m = ContextMetrics(4)
    m.update(*hand_batch())
    r = {k: float(v) for k, v in m.compute().items()}
    # Path pixels: 1 (d0-2 right), 2 (d0-2, called background), 3 (d2-4 right, misleading),
    # 4 (d4-6 misleading, wrong colour), 5 (d6+ misleading right), 6 (d4-6 misleading wrong),
    # 8 (d6+ right). Pixel 0 is background, pixel 7 ignored.
    expected = {
        "": (4 / 6, 6 / 7, 6),
        "/d0-2": (1.0, 1 / 2, 1),
        "/d2-4": (1.0, 1.0, 1),
        "/d4-6": (0.0, 1.0, 2),
        "/d6+": (1.0, 1.0, 2),
        "/misleading": (2 / 4, 1.0, 4),
        "/far_misleading": (1 / 3, 1.0, 3),
    }
    for group, (acc, recall, n) in expected.items():
        assert r[f"color_acc{group}"] == pytest.approx(acc), group
        assert r[f"path_recall{group}"] == pytest.approx(recall), group
        assert r[f"color_n{group}"] == n, group
    assert len(r) == 3 * len(expected) + 1  # + grid_mIoU
    table = format_context(m.compute(), "test")
    assert "far_misleading" in table and " 33.33" in table


def test_context_metrics_long_paths_get_finer_bins_inside_the_open_last_one():
    # Path pixels at 1, 7, 13, 19 and 25 cells from their cue; the last two wrongly coloured.
    target = torch.tensor([[1, 1, 2, 2, 3]])
    preds = torch.tensor([[1, 1, 2, 3, 1]])
    distance = torch.tensor([[1.0, 7.0, 13.0, 19.0, 25.0]])
    m = ContextMetrics(4)
    m.update(preds, target, distance, torch.zeros_like(target, dtype=torch.bool))
    r = {k: float(v) for k, v in m.compute().items()}
    assert (r["color_n/d6+"], r["color_acc/d6+"]) == (4, 0.5)  # the open bin still holds them all
    assert [(r[f"color_n/{b}"], r[f"color_acc/{b}"]) for b in ("d6-12", "d12-18", "d18+")] == [
        (1, 1.0), (1, 1.0), (2, 0.0)]
    # Paths no longer than 12 cells log only the default bins.
    short = ContextMetrics(4)
    short.update(preds, target, distance.clamp_max(11.5), torch.zeros_like(target, dtype=torch.bool))
    assert not any("d6-12" in k or "d18+" in k for k in short.compute())


def test_context_metrics_beyond_reach_is_its_own_group_only_when_seen():
    # Path pixels 1..4, the last two beyond reach: one of them right, one wrong; pixel 0 is
    # background (marked too: off the paths the map does not count).
    target = torch.tensor([[0, 1, 2, 2, 3]])
    preds = torch.tensor([[0, 1, 2, 2, 1]])
    distance = torch.tensor([[-1.0, 1.0, 7.0, 13.0, 13.0]])
    misleading = torch.zeros_like(target, dtype=torch.bool)
    beyond = torch.tensor([[True, False, False, True, True]])
    m = ContextMetrics(4)
    m.update(preds, target, distance, misleading, beyond)
    r = {k: float(v) for k, v in m.compute().items()}
    assert (r["color_n/beyond_reach"], r["color_acc/beyond_reach"], r["path_recall/beyond_reach"]) == (2, 0.5, 1.0)
    assert r["color_n"] == 4  # the other groups are unchanged by the map
    for maps in ((), (torch.zeros_like(beyond),)):  # none marked, or no map: no such group
        plain = ContextMetrics(4)
        plain.update(preds, target, distance, misleading, *maps)
        assert not any("beyond_reach" in k for k in plain.compute())


def test_context_metrics_perfect_prediction_is_100_and_batches_add_up():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (6, 16, 16))
    distance = torch.rand(6, 16, 16) * 9
    misleading = torch.rand(6, 16, 16) > 0.5
    perfect = ContextMetrics(4)
    perfect.update(target, target, distance, misleading)
    r = perfect.compute()
    assert all(float(v) == 1.0 for k, v in r.items() if not k.startswith("color_n"))
    whole, parts = ContextMetrics(4), ContextMetrics(4)
    preds = torch.randint(0, 4, (6, 16, 16))
    whole.update(preds, target, distance, misleading)
    for i in range(0, 6, 3):
        parts.update(preds[i:i + 3], target[i:i + 3], distance[i:i + 3], misleading[i:i + 3])
    assert torch.equal(whole.counts, parts.counts)
    # Nothing called path in a group: NaN accuracy, not a division error or a fake 0.
    empty = ContextMetrics(4)
    empty.update(torch.zeros_like(target), target, distance, misleading)
    assert math.isnan(float(empty.compute()["color_acc"]))
    with pytest.raises(ValueError, match="differ in shape"):
        empty.update(target, target, distance[:, :4], misleading)


def test_the_task_logs_context_metrics_only_for_batches_that_carry_the_maps():
    from diffusion_seg.data.pathfinder import PathfinderDataset
    from diffusion_seg.lightning.task import SegmentationTask
    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.heads import FCNHead
    from diffusion_seg.models.segmentor import Segmentor

    def validate(loader):
        torch.manual_seed(0)
        net = Segmentor(TimmBackbone("test_resnet"), FCNHead, num_classes=4)
        task = SegmentationTask(net, ["bg", "r", "g", "b"])
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.validate(task, loader, verbose=False)
        return trainer.callback_metrics

    data = PathfinderDataset("val", length=2, max_distance=8)
    logged = validate(DataLoader(data, batch_size=2))
    assert {"val/mIoU", "val/color_acc", "val/color_acc/d6+", "val/color_acc/far_misleading",
            "val/color_n/misleading", "val/path_recall/d0-2"} <= set(logged)
    plain = [{"image": d["image"], "mask": d["mask"]} for d in data]
    assert not any("color" in k for k in validate(DataLoader(plain, batch_size=2)))


def test_grid_miou_scores_each_feature_cell_once_at_its_centre():
    # 2×2 cells of 8 px: background, red, green, background (labels of whole cells).
    cells = torch.tensor([[0, 1], [2, 0]])
    target = cells.repeat_interleave(8, 0).repeat_interleave(8, 1)[None]
    blurred = target.clone()
    blurred[0, :, 7:9] = 0  # wrong pixels on the cell edges: pixel mIoU drops, grid mIoU not
    m = ContextMetrics(4)
    m.update(blurred, target, torch.zeros(1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.bool))
    assert float(m.compute()["grid_mIoU"]) == 1.0
    wrong = target.clone()
    wrong[0, 8:, :8] = 1  # the green cell called red
    m.reset()
    m.update(wrong, target, torch.zeros(1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.bool))
    # background IoU 1, red 1/2 (one right cell, two called red), green 0
    assert float(m.compute()["grid_mIoU"]) == pytest.approx((1 + 0.5 + 0) / 3)
