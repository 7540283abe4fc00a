"""`python -m diffusion_seg.bench train` (a smoke run at --quick size) and the backbone's
activation checkpointing its large-input rows use."""

from __future__ import annotations

import argparse
import functools
import re

import pytest
import torch

from diffusion_seg.bench import train as bench_train
from diffusion_seg.builders import build_backbone
from diffusion_seg.config import compose_config
from diffusion_seg.models.backbone import CheckpointedStage, TimmBackbone
from diffusion_seg.models.difnet import DifNetHead
from diffusion_seg.models.heads import DeepLabV2Head, SegmentationOutput
from diffusion_seg.models.losses import cross_entropy, segmentation_loss
from diffusion_seg.models.pdn import PDNHead
from diffusion_seg.models.segmentor import Segmentor

NUMBER = r"\d+(\.\d+)?"
RATIO = rf"{NUMBER} \[{NUMBER}–{NUMBER}\]"


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| head") and not line.startswith("| model")]


@pytest.fixture
def one_thread():
    """``--threads 1``: a smoke run that does not depend on how busy the other core is."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # trains every head
def test_bench_train_quick_times_every_head_against_deeplabv2(capsys, one_thread):
    bench_train.main(["--quick", "--threads", "1"])
    rows = _rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == [bench_train.LABELS[h] for h in bench_train.HEADS]
    for head, mode, classes, ms, images, ratio, peak, compile_s, speedup in rows:
        assert mode == "eager" and classes == "4"
        assert re.fullmatch(NUMBER, ms) and float(ms) > 0, (head, ms)
        assert re.fullmatch(NUMBER, images) and re.fullmatch(NUMBER, peak), (head, images, peak)
        assert re.fullmatch(RATIO, ratio) if head != "DeepLab-v2" else ratio == "–"
        assert compile_s == speedup == "–"


def test_training_step_uses_the_tasks_loss_learning_rates_and_updates_the_weights():
    args = argparse.Namespace(heads=["pspnet"], modes=["eager"], batch=2, override=[],
                              device="cpu", dtype="float32", compile_mode="default", threads=0,
                              paper_size=321)
    spec = bench_train.setting_specs(args, "tiny")["pspnet/eager"]
    assert (spec["size"], spec["batch"], spec["classes"]) == (64, 2, 4)
    step = bench_train.build(spec)
    assert step.aux_weight == 0.4  # experiment=pathfinder_pspnet's task.aux_weight
    assert [g["lr"] for g in step.optimizer.param_groups] == [0.01, 0.1]  # new layers ×10
    before = [p.detach().clone() for p in step.net.parameters()]
    step()
    assert any(not torch.equal(a, b) for a, b in zip(before, step.net.parameters()))
    # The loss: main CE + aux_weight × CE of every auxiliary output, as training_step.
    logits, aux = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 64, 64))
    out = SegmentationOutput(logits, aux={"fcn_layer3": aux})
    expected = cross_entropy(logits, target) + 0.4 * cross_entropy(aux, target)
    loss, terms = segmentation_loss(out, target, 0.4, 255)
    torch.testing.assert_close(loss, expected)
    assert list(terms) == ["loss_main", "loss_aux/fcn_layer3"]


def test_large_rows_report_memory_with_and_without_checkpointing(capsys, one_thread):
    bench_train.main(["--setting", "none", "--large", "64", "--override", "backbone=tiny",
                      "--threads", "1"])
    rows = _rows(capsys.readouterr().out)
    assert [r[:2] for r in rows] == [["DifNet (test_resnet) 64²", "off"],
                                     ["DifNet (test_resnet) 64²", "on"]]
    for row in rows:
        assert all(re.fullmatch(NUMBER, cell) for cell in row[2:5]), row
        assert row[5] == "yes"


# ----------------------------------------------------------------- activation checkpointing


def _grads_and_buffers(net: Segmentor, image: torch.Tensor):
    torch.manual_seed(1)
    out = net(image)
    loss = out.logits.square().mean() + sum(a.square().mean() for a in out.aux.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return grads, {n: b.clone() for n, b in net.named_buffers()}, len(out.aux)


@pytest.mark.parametrize("name, head", [
    # PDN modules hooked inside checkpointed stages (after layer3, and on the output)
    ("test_resnet", functools.partial(PDNHead, hidden=16, modules=2)),
    # a hook on a block in the middle of a stage (resnet18: two blocks per stage)
    ("resnet18", functools.partial(PDNHead, hidden=8, insert_at="layer3.0")),
    # DifNet: the similarity backbone clones the setting
    ("test_resnet", functools.partial(DifNetHead, walks=2, seed_loss=True)),
])
def test_activation_checkpointing_gives_the_same_gradients_and_statistics(name, head):
    nets = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        backbone = TimmBackbone(name, activation_checkpointing=checkpointing)
        nets.append(Segmentor(backbone, head, num_classes=5).train())
    plain, checkpointed = nets
    assert list(plain.state_dict()) == list(checkpointed.state_dict())  # same names
    checkpointed.load_state_dict(plain.state_dict())
    assert sum(isinstance(m, CheckpointedStage) for m in checkpointed.modules()) >= 4
    assert not any(isinstance(m, CheckpointedStage) for m in plain.modules())
    image = torch.randn(2, 3, 40, 40)
    grads, buffers, aux = _grads_and_buffers(plain, image)
    grads_ck, buffers_ck, aux_ck = _grads_and_buffers(checkpointed, image)
    assert aux == aux_ck and grads.keys() == grads_ck.keys()
    for key in grads:
        torch.testing.assert_close(grads_ck[key], grads[key], rtol=1e-5, atol=1e-7, msg=key)
    # BatchNorm statistics counted once, not again in the recomputation
    for key in buffers:
        torch.testing.assert_close(buffers_ck[key], buffers[key], rtol=0, atol=0, msg=key)


def test_activation_checkpointing_keeps_fewer_activations():
    def saved_tensors(checkpointing: bool) -> int:
        torch.manual_seed(0)
        backbone = TimmBackbone("resnet18", activation_checkpointing=checkpointing).train()
        count = 0

        def pack(t):
            nonlocal count
            count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sum(f.mean() for f in backbone(torch.randn(1, 3, 32, 32))).backward()
        return count

    assert saved_tensors(True) < saved_tensors(False) / 3


def test_activation_checkpointing_is_a_backbone_config_key():
    cfg = compose_config(["backbone=tiny", "backbone.activation_checkpointing=true"])
    backbone = build_backbone(cfg)
    assert backbone.config["activation_checkpointing"] is True
    assert isinstance(backbone.stage(-1), CheckpointedStage)
    assert compose_config(["backbone=tiny"]).backbone.activation_checkpointing is False
    # Eval and no-grad: the plain forward (nothing to recompute)
    net = Segmentor(backbone, DeepLabV2Head, num_classes=3).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3, 4, 4)
