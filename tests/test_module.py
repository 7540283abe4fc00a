from functools import partial

import lightning as L
import pytest
import torch

from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import FCNHead, SegmentationHead, SegmentationOutput
from diffusion_seg.models.segmentor import Segmentor
from diffusion_seg.lightning.task import SegmentationTask
from diffusion_seg.models.losses import cross_entropy


class TwoOutputHead(SegmentationHead):
    """FCN head plus one auxiliary classifier (deep supervision stand-in)."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.main = FCNHead(backbone, num_classes, channels=8)
        self.aux = torch.nn.Conv2d(backbone.channels[-2], num_classes, 1)

    def forward(self, features, image):
        return SegmentationOutput(self.main(features, image).logits, aux={"deep": self.aux(features[-2])})

    def diagnostics(self):
        return {"answer": 42.0}


def make_module(**kwargs):
    net = Segmentor(TimmBackbone("test_resnet"), TwoOutputHead, num_classes=3)
    return SegmentationTask(
        net, ["a", "b", "c"],
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=5e-4),
        scheduler=partial(torch.optim.lr_scheduler.PolynomialLR, power=0.9),
        **kwargs,
    )


def batch(n=2, size=32):
    return {"image": torch.randn(n, 3, size, size), "mask": torch.randint(0, 3, (n, size, size))}


def test_training_step_adds_weighted_aux_loss():
    module = make_module(aux_weight=0.4)
    b = batch()
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    torch.manual_seed(0)  # same dropout mask in both passes
    loss = module.training_step(b, 0)
    torch.manual_seed(0)
    out = module.net(b["image"])
    expected = cross_entropy(out.logits, b["mask"]) + 0.4 * cross_entropy(out.aux["deep"], b["mask"])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert {"train/loss", "train/loss_main", "train/loss_aux/deep"} <= set(logged)
    loss.backward()
    assert module.net.head.aux.weight.grad is not None


def test_all_ignored_crop_gives_zero_loss_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 16, 16), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()  # nothing labelled, nothing learned


def test_new_layers_get_lr_multiplier_and_poly_decays_per_step(tmp_path):
    module = make_module(new_lr_mult=10.0)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    samples = [{"image": torch.randn(3, 32, 32), "mask": torch.randint(0, 3, (32, 32))} for _ in range(8)]
    data = torch.utils.data.DataLoader(samples, batch_size=2)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    trainer.callbacks.append(Record())
    trainer.fit(module, train_dataloaders=data)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["backbone", "new"]
    assert lrs[0] == pytest.approx([0.01, 0.1])
    assert lrs[1][0] == pytest.approx(0.01 * (1 - 1 / 4) ** 0.9)  # poly 0.9, stepped per iteration
    assert lrs[1][1] / lrs[1][0] == pytest.approx(10.0)
    assert trainer.callback_metrics["diag/answer"] == 42.0


def test_validation_accumulates_confusion_matrix():
    module = make_module()
    module.eval()
    b = batch(2, 32)
    with torch.no_grad():
        module.log = lambda *a, **k: None
        module.validation_step(b, 0)
    assert module.metrics['val'].confmat.sum() == 2 * 32 * 32
