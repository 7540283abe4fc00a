"""One preprocessing path: training, evaluation, predict, export, the pictures and visualize
feed the network the same input for one image, and undo it the same way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset

from diffusion_seg.data.base import apply_transform, voc_colormap
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.deploy import DeployableSegmentor
from diffusion_seg.inference import InputImage, Predictor, checkpoint_preprocessor, predict_files
from diffusion_seg.lightning.datamodule import SegmentationDataModule
from diffusion_seg.lightning.pictures import batch_preprocessor, image_sizes
from diffusion_seg.lightning.task import SegmentationTask
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import DeepLabV2Head
from diffusion_seg.models.segmentor import Segmentor

# Not the backbone's statistics: a path that normalised with those would show.
MEAN, STD, DIVISOR = (0.3, 0.5, 0.7), (0.2, 0.3, 0.4), 8
RUN_CONFIG = OmegaConf.create({"dataset": {"mean": list(MEAN), "std": list(STD), "size_divisor": DIVISOR},
                               "class_names": ["a", "b", "c"]})


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb[-1] = 0  # a black row at the bottom is image, not padding
    return rgb


class OneImage(Dataset):
    """One image in every split, through the pipeline the DataModule hands it."""

    class_names = ("a", "b", "c")
    num_classes = 3
    palette = voc_colormap(3)

    def __init__(self, split: str, transform=None, rgb: np.ndarray | None = None) -> None:
        self.transform, self.rgb = transform, rgb

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        mask = np.ones(self.rgb.shape[:2], np.uint8)
        return apply_transform(self.transform, self.rgb, mask, "x")


class NetworkInputs:
    """Records what the network is called with."""

    def __init__(self, net: Segmentor) -> None:
        self.seen: list[torch.Tensor] = []
        net.register_forward_pre_hook(lambda _, args: self.seen.append(args[0].detach().clone()))


def datamodule(rgb: np.ndarray) -> SegmentationDataModule:
    return SegmentationDataModule(
        OneImage, crop_size=rgb.shape[0], scale_range=(1.0, 1.0), hflip=False, size_divisor=DIVISOR,
        mean=MEAN, std=STD, batch_size=1, num_workers=0, pin_memory=False, persistent_workers=False,
        rgb=rgb)


@pytest.fixture()
def net() -> Segmentor:
    torch.manual_seed(0)
    return Segmentor(TimmBackbone("test_resnet"), DeepLabV2Head, 3).eval()


def test_every_path_gives_the_network_the_same_input_for_one_image(net, tmp_path, monkeypatch):
    rgb = image(45, 61)  # padded to 48×64
    reference, size = Preprocessor(MEAN, STD, DIVISOR).prepare(rgb)
    assert reference.shape == (3, 48, 64) and size == (45, 61)

    # evaluation (eval, validation inside fit, the pictures): the DataModule's batches
    batch = next(iter(datamodule(rgb).val_dataloader()))
    assert torch.equal(batch["image"][0], reference) and image_sizes(batch) == [(45, 61)]

    # predict (the command's path: checkpoint config → predictor → files)
    inputs = NetworkInputs(net)
    predictor = Predictor(net, checkpoint_preprocessor(RUN_CONFIG, net))
    Image.fromarray(rgb).save(tmp_path / "x.png")
    summary = predict_files(predictor, [InputImage(tmp_path / "x.png", "x")], tmp_path / "out", voc_colormap(3))
    assert summary.written == ["x"] and torch.equal(inputs.seen.pop()[0], reference)

    # export: the deployable module takes raw pixels
    deployable = DeployableSegmentor(net, MEAN, STD, DIVISOR)
    logits = deployable(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert logits.shape[-2:] == (45, 61) and torch.equal(inputs.seen.pop()[0], reference)

    # visualize: the whole image as it is (no padding), same values
    import diffusion_seg.checkpoints as checkpoints
    from diffusion_seg.cli.visualize import _compose, run_visualize

    monkeypatch.setattr(checkpoints, "load_segmentor", lambda path: (net, RUN_CONFIG))
    (tmp_path / "x.ckpt").touch()
    run_visualize(_compose([f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={tmp_path / 'x.png'}",
                            f"output={tmp_path / 'viz'}"]))
    assert torch.equal(inputs.seen[0][0], Preprocessor.unpad(reference, size))


def test_training_batches_and_the_ways_back_to_pixels(net):
    rgb = image(48, 48)  # one crop, unscaled and unflipped: the training pipeline adds nothing
    dm = datamodule(rgb)
    reference, size = dm.preprocessor.prepare(rgb)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert torch.equal(train["image"][0], reference)

    # the task (the dense CRF's colours) and the pictures undo the DataModule's normalisation
    task = SegmentationTask(net, ["a", "b", "c"])
    task.trainer = SimpleNamespace(datamodule=dm)
    assert task.preprocessor is dm.preprocessor
    assert batch_preprocessor(None, task) is dm.preprocessor
    back = task._rgb({"image": reference[None]})[0]
    assert (back - torch.from_numpy(rgb).permute(2, 0, 1)).abs().max() < 1e-3
    np.testing.assert_array_equal(dm.preprocessor.to_rgb(reference), rgb)


def test_padding_and_sizes():
    pre = Preprocessor(MEAN, STD, DIVISOR, resize=32)
    assert pre.resized_size(45, 61) == (24, 32) and pre.padded_size(45, 61) == (24, 32)
    assert Preprocessor(MEAN, STD, DIVISOR).padded_size(45, 61) == (48, 64)
    mask = Preprocessor(MEAN, STD, DIVISOR).pad(torch.zeros(45, 61, dtype=torch.uint8), 255)
    assert mask.shape == (48, 64) and (mask[45:] == 255).all() and (mask[:45, :61] == 0).all()


def test_one_normalisation_in_the_package():
    """grep for the arithmetic of a normalisation finds the Preprocessor's alone."""
    package = Path(__file__).parents[1] / "diffusion_seg"
    found = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
             if "def normalise(" in p.read_text() or "def normalisation(" in p.read_text()
             or "A.Normalize(" in p.read_text()]
    assert found == ["data/preprocess.py"]
