"""The on-disk datasets on generated trees in each release's exact layout: DataModules from
the Hydra configs, label mappings, and every bad-input message."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from PIL import Image

from diffusion_seg.config import ConfigError, instantiate_node
from diffusion_seg import testing as fixtures
from diffusion_seg.data.base import BadSampleError, DatasetNotFoundError, save_label_png
from diffusion_seg.lightning.callbacks import BadSampleReport
from diffusion_seg.config import compose_config
from diffusion_seg.data.ade20k import ADE20K
from diffusion_seg.data.folder import FolderDataset
from diffusion_seg.data.pascal_context import CONTEXT_CLASSES, PascalContext
from diffusion_seg.data.person_part import PERSON_PART_CLASSES, PersonPart
from diffusion_seg.data.voc import VOC_CLASSES, VOCAug
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.heads import FCNHead
from diffusion_seg.models.segmentor import Segmentor

from .conftest import fit_one_step, run_cli, run_dirs
from diffusion_seg.lightning.task import SegmentationTask

# config name → (tree builder, classes, raw label → train id)
ADE_MAP = np.r_[255, np.arange(150), np.full(105, 1000)]
CONFIGS = {
    "ade20k": (fixtures.make_ade20k, 150, lambda raw: ADE_MAP[raw]),
    "voc_aug": (fixtures.make_voc_aug, 21, lambda raw: raw),
    "pascal_context": (fixtures.make_pascal_context, 60, lambda raw: raw),
    "pascal_context59": (fixtures.make_pascal_context, 59, lambda raw: np.where(raw == 0, 255, raw - 1)),
    "person_part": (fixtures.make_person_part, 7, lambda raw: raw),
    "folder": (lambda root: {"all": fixtures.make_folder(root)}, 3, lambda raw: raw),
}
FAST = ["dataset.num_workers=0", "dataset.crop_size=32", "dataset.batch_size=2",
        "dataset.pin_memory=false", "dataset.persistent_workers=false"]


def datamodule(name: str, root, *extra: str):
    cfg = compose_config([f"dataset={name}", f"dataset.root={root}", *FAST, *extra])
    return instantiate(cfg.dataset)


def tiny_module(class_names):
    net = Segmentor(TimmBackbone("test_resnet"), partial(FCNHead, channels=8), len(class_names))
    return SegmentationTask(net, class_names, optimizer=partial(torch.optim.SGD, lr=0.01))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_datamodule_loads_tree_and_trains_a_step(name, tmp_path):
    builder, num_classes, mapping = CONFIGS[name]
    written = builder(tmp_path)
    dm = datamodule(name, tmp_path)
    dm.setup("fit")
    assert dm.num_classes == num_classes == len(dm.class_names) == len(dm.palette)

    # Every sample decodes to the release's labels through the dataset's mapping.
    train_set = dm._sets["train"]
    raw = {k: v for split in written.values() for k, v in split.items()}
    for i, (image_path, _) in enumerate(train_set.samples):
        image, mask = train_set.load(i)
        np.testing.assert_array_equal(mask, mapping(raw[image_path.stem]))
        assert image.shape[:2] == mask.shape and image.dtype == np.uint8

    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 32, 32) and batch["mask"].dtype == torch.long
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(num_classes)) | {255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[-1] % 8 == 0 and val["image"].shape[-2] % 8 == 0

    module = tiny_module(dm.class_names)
    module.log = lambda *args, **kwargs: None
    torch.manual_seed(0)  # the same dropout mask in both passes
    loss = module.training_step(batch, 0)
    torch.manual_seed(0)
    logits = torch.nn.functional.interpolate(module.net(batch["image"]).logits, size=(32, 32), mode="bilinear")
    expected = torch.nn.functional.cross_entropy(logits, batch["mask"], ignore_index=255)
    torch.testing.assert_close(loss, expected)  # mean CE over the labelled pixels of the crop
    loss.backward()
    assert module.net.head.classifier.weight.grad.abs().sum() > 0


def test_class_lists_are_the_benchmarks():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"
    assert len(CONTEXT_CLASSES) == 60 and CONTEXT_CLASSES[0] == "background"
    assert CONTEXT_CLASSES[1] == "aeroplane" and CONTEXT_CLASSES[59] == "wood"
    assert PERSON_PART_CLASSES == ("background", "head", "torso", "upper arms", "lower arms",
                                   "upper legs", "lower legs")
    from diffusion_seg.data.ade20k import ADE20K_CLASSES

    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"


# ---------------------------------------------------------------------------------------
# Missing root / split: one message with the path, the layout and the prepare command.

MISSING = {
    ADE20K: ("ADEChallengeData2016/images/training", "prepare ade20k", "ADE20K_ROOT"),
    VOCAug: ("VOCdevkit/VOC2012/JPEGImages", "prepare voc_aug", "VOC_ROOT"),
    PascalContext: ("VOCdevkit/VOC2010/JPEGImages", "prepare pascal_context", "PASCAL_CONTEXT_ROOT"),
    PersonPart: ("JPEGImages", "prepare person_part", "PERSON_PART_ROOT"),
    FolderDataset: ("images", "README.md", "root"),
}


@pytest.mark.parametrize("cls", list(MISSING), ids=lambda c: c.__name__)
def test_missing_root_names_path_layout_and_prepare_command(cls, tmp_path):
    path, command, hint = MISSING[cls]
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        cls(root, "train")
    message = str(err.value)
    assert f"{root / path} does not exist" in message
    assert "Expected layout" in message and command in message and hint in message


def test_missing_split_list_names_the_list(tmp_path):
    fixtures.make_voc_aug(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/Segmentation/nosuch\.txt does not exist"):
        VOCAug(tmp_path, "nosuch")
    fixtures.make_person_part(tmp_path / "pp")
    with pytest.raises(DatasetNotFoundError, match=r"test_id\.txt does not exist"):
        PersonPart(tmp_path / "pp", "test")


def test_missing_root_through_hydra_names_the_path(tmp_path):
    cfg = compose_config(["dataset=pascal_context", f"dataset.root={tmp_path}", *FAST])
    with pytest.raises(DatasetNotFoundError, match="^Pascal Context: .*VOC2010/JPEGImages does not exist") as err:
        instantiate_node(cfg, "dataset")
    assert "prepare pascal_context" in str(err.value)


def test_unknown_split_and_option_values_name_the_key(tmp_path):
    fixtures.make_ade20k(tmp_path)
    with pytest.raises(ValueError, match="no split 'test'.*allowed: train, val"):
        ADE20K(tmp_path, "test")
    with pytest.raises(ValueError, match=r"on_bad_sample='ignore' is invalid; allowed: error, skip"):
        ADE20K(tmp_path, "val", on_bad_sample="ignore")
    with pytest.raises(ValueError, match=r"dataset\.classes=21 is invalid; allowed: 60"):
        PascalContext(tmp_path, "train", classes=21)


# ---------------------------------------------------------------------------------------
# Bad samples: the error names the file and the values.


@pytest.fixture
def voc(tmp_path):
    written = fixtures.make_voc_aug(tmp_path, counts={"trainaug": 3, "val": 1})
    ids = list(written["trainaug"])
    base = tmp_path / "VOCdevkit" / "VOC2012"
    return tmp_path, base, ids


def _image(base, i):
    return base / "JPEGImages" / f"{i}.jpg"


def _mask(base, i):
    return base / "SegmentationClassAug" / f"{i}.png"


def test_corrupt_and_truncated_image(voc):
    root, base, ids = voc
    _image(base, ids[0]).write_bytes(b"not a jpeg")
    data = _image(base, ids[1]).read_bytes()
    _image(base, ids[1]).write_bytes(data[: len(data) // 2])
    ds = VOCAug(root, "trainaug")
    for i in (0, 1):
        with pytest.raises(BadSampleError, match=rf"cannot read image .*{ids[i]}\.jpg"):
            ds.load(i)


def test_corrupt_mask(voc):
    root, base, ids = voc
    _mask(base, ids[0]).write_bytes(b"\x89PNG garbage")
    with pytest.raises(BadSampleError, match=rf"cannot read mask .*{ids[0]}\.png"):
        VOCAug(root, "trainaug")[0]


def test_size_mismatch_names_both_files_and_sizes(voc):
    root, base, ids = voc
    w, h = Image.open(_image(base, ids[0])).size
    save_label_png(_mask(base, ids[0]), np.zeros((h + 1, w), np.uint8))
    with pytest.raises(BadSampleError) as err:
        VOCAug(root, "trainaug").load(0)
    message = str(err.value)
    assert f"{ids[0]}.jpg is {w}×{h}" in message and f"{ids[0]}.png is {w}×{h + 1}" in message


def test_label_values_outside_classes_are_named(voc, tmp_path):
    root, base, ids = voc
    w, h = Image.open(_image(base, ids[0])).size
    label = np.zeros((h, w), np.uint8)
    label[0, :3] = [42, 21, 255]
    save_label_png(_mask(base, ids[0]), label)
    with pytest.raises(BadSampleError, match=rf"{ids[0]}\.png has label values \[21, 42\] outside the 21"):
        VOCAug(root, "trainaug").load(0)
    # ADE20K: raw 151 maps to 150, outside 0..149; the message gives the raw value.
    written = fixtures.make_ade20k(tmp_path / "ade", counts={"val": 1})
    name, raw = next(iter(written["val"].items()))
    raw[0, 0] = 151
    fixtures.write_gray_png(tmp_path / "ade/ADEChallengeData2016/annotations/validation" / f"{name}.png", raw)
    with pytest.raises(BadSampleError, match=r"label values \[151\] outside the 150 classes"):
        ADE20K(tmp_path / "ade", "val").load(0)


def test_colour_and_16bit_masks_are_rejected(voc):
    root, base, ids = voc
    w, h = Image.open(_image(base, ids[0])).size
    Image.new("RGB", (w, h), (128, 0, 0)).save(_mask(base, ids[0]))
    with pytest.raises(BadSampleError, match=r"PIL mode 'RGB'"):
        VOCAug(root, "trainaug").load(0)
    w, h = Image.open(_image(base, ids[1])).size
    Image.fromarray(np.full((h, w), 300, np.uint16)).save(_mask(base, ids[1]))
    with pytest.raises(BadSampleError, match=r"values \[300\] outside 0\.\.255"):
        VOCAug(root, "trainaug").load(1)


def test_missing_listed_file_fails_at_construction_or_is_skipped(voc, caplog):
    root, base, ids = voc
    _mask(base, ids[1]).unlink()
    with pytest.raises(BadSampleError, match=rf"1 file\(s\) named by the split are missing:\n  .*{ids[1]}\.png"):
        VOCAug(root, "trainaug")
    with caplog.at_level(logging.WARNING):
        ds = VOCAug(root, "trainaug", on_bad_sample="skip")
    assert len(ds) == 2 and ds.missing == [_mask(base, ids[1])]
    assert f"{ids[1]}.png" in caplog.text


def test_skip_replaces_bad_sample_and_says_which(voc):
    root, base, ids = voc
    _image(base, ids[1]).write_bytes(b"garbage")
    ds = VOCAug(root, "trainaug", on_bad_sample="skip")
    assert ds[0]["skipped"] == "" and ds[0]["name"] == ids[0]
    sample = ds[1]
    assert sample["name"] == ids[2]
    assert f"{ids[1]}.jpg" in sample["skipped"] and "cannot read image" in sample["skipped"]
    for i in range(3):
        _image(base, ids[i]).write_bytes(b"garbage")
    with pytest.raises(BadSampleError, match="3 consecutive bad samples"):
        ds[0]


def test_skip_report_survives_dataloader_workers(voc, tmp_path):
    """Bad files met in worker processes reach the main process's end-of-epoch report,
    while a real SegmentationTask trains on the rest."""
    root, base, ids = voc
    _image(base, ids[1]).write_bytes(b"garbage")
    dm = datamodule("voc_aug", root, "dataset.on_bad_sample=skip", "dataset.num_workers=2",
                    "dataset.batch_size=1")
    report = BadSampleReport()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, callbacks=[report],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(tiny_module(dm.class_names), datamodule=dm)
    train_reports = [r for r in report.reports if r[0] == "train"]
    assert [epoch for _, epoch, _ in train_reports] == [0, 1]
    for _, _, messages in train_reports:
        assert len(messages) == 1 and f"{ids[1]}.jpg" in messages[0]
    assert trainer.callback_metrics["data/skipped_train"] == 1.0
    assert trainer.callback_metrics["data/skipped_val"] == 0.0


# ---------------------------------------------------------------------------------------
# Folder dataset


def test_folder_with_split_lists_and_colour_masks(tmp_path):
    colours = np.array([[0, 0, 0], [128, 64, 128], [0, 0, 142]], np.uint8)
    written = fixtures.make_folder(tmp_path, n=5, colours=colours, splits={"train": 3, "val": 2})
    with open(tmp_path / "classes.txt", "a") as f:
        f.write("ignore 255 255 255  # unlabelled\n")
    train = FolderDataset(tmp_path, "train")
    assert train.class_names == ["background", "road", "car"]
    np.testing.assert_array_equal(train.palette, colours)
    assert [p.stem for p, _ in train.samples] == list(written)[:3]
    assert len(FolderDataset(tmp_path, "val")) == 2
    mask = np.asarray(Image.open(train.samples[0][1])).copy()
    mask[0, 0] = 255
    Image.fromarray(mask).save(train.samples[0][1])
    label = train.load(0)[1]
    expected = written[train.samples[0][0].stem].copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(label, expected)
    mask[0, 0] = (1, 2, 3)
    Image.fromarray(mask).save(train.samples[0][1])
    with pytest.raises(BadSampleError, match=r"colours \[\(1, 2, 3\)\] that are not in the classes file"):
        train.load(0)


def test_folder_with_one_folder_per_split(tmp_path):
    """images/<split>/ + masks/<split>/, as exported and mmsegmentation custom datasets are."""
    written = fixtures.make_folder(tmp_path, splits={"train": 3, "val": 2, "test": 1}, per_split=True)
    names = list(written)
    for split, expected in (("train", names[:3]), ("val", names[3:5]), ("test", names[5:])):
        dataset = FolderDataset(tmp_path, split)
        assert sorted(p.stem for p, _ in dataset.samples) == expected
        assert all(p.parent.name == split and m.parent.name == split for p, m in dataset.samples)
        for i, (image_path, _) in enumerate(dataset.samples):
            np.testing.assert_array_equal(dataset.load(i)[1], written[image_path.stem])
    with pytest.raises(DatasetNotFoundError, match=r"one folder per split: test, train, val.*images/extra does not exist"):
        FolderDataset(tmp_path, "extra")
    (tmp_path / "masks" / "test" / "img_005.png").unlink()
    with pytest.raises(BadSampleError, match=r"missing:\n  .*masks/test/img_005.png"):
        FolderDataset(tmp_path, "test")


def test_folder_per_split_layout_trains_through_the_config(tmp_path):
    fixtures.make_folder(tmp_path / "data", splits={"train": 4, "val": 2}, per_split=True, size=(48, 40))
    cfg, net, trainer, _ = fit_one_step(
        ["backbone=tiny", "model=fcn", "dataset=folder", f"dataset.root={tmp_path / 'data'}", *FAST],
        tmp_path,
    )
    assert trainer.global_step == 1 and net.num_classes == 3
    assert len(trainer.datamodule._sets["train"]) == 4 and len(trainer.datamodule.val_set) == 2


def test_folder_without_splits_holds_out_a_stable_val_fraction(tmp_path):
    written = fixtures.make_folder(tmp_path, n=20)
    train = {p.stem for p, _ in FolderDataset(tmp_path, "train", val_fraction=0.2).samples}
    val = {p.stem for p, _ in FolderDataset(tmp_path, "val", val_fraction=0.2).samples}
    assert len(val) == 4 and not train & val and train | val == set(written)
    assert val == {p.stem for p, _ in FolderDataset(tmp_path, "val", val_fraction=0.2).samples}
    assert len(FolderDataset(tmp_path, "all")) == 20


def test_folder_classes_and_reduce_zero_label(tmp_path):
    written = fixtures.make_folder(tmp_path, n=2)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(ValueError, match=r"no classes file .*classes\.txt and dataset\.num_classes"):
        FolderDataset(tmp_path, "all")
    ds = FolderDataset(tmp_path, "all", num_classes=3, reduce_zero_label=True)
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    raw = written[ds.samples[0][0].stem]
    np.testing.assert_array_equal(ds.load(0)[1], np.where(raw == 0, 255, raw - 1))
    (tmp_path / "classes.txt").write_text("a\nb 1 2 3\n")
    with pytest.raises(ValueError, match="a colour on every line or on none"):
        FolderDataset(tmp_path, "all")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"num_classes=3 but .* lists 2 classes"):
        FolderDataset(tmp_path, "all", num_classes=3)


# ---------------------------------------------------------------------------------------
# Defaults that follow the data and the machine (issue 18 §5)


def test_crop_size_null_follows_the_images(tmp_path, caplog):
    fixtures.make_folder(tmp_path / "small", n=6, size=(64, 48))
    with caplog.at_level(logging.INFO, logger="diffusion_seg.lightning.datamodule"):
        dm = datamodule("folder", tmp_path / "small", "dataset.crop_size=null", "+dataset.size_divisor=32")
    assert dm.crop_size == 64  # the longer side, a multiple of the output stride
    assert "training crops of 64 px" in caplog.text
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape[-2:] == (64, 64)
    fixtures.make_folder(tmp_path / "wide", n=2, size=(700, 24), splits={"train": 1, "val": 1})
    assert datamodule("folder", tmp_path / "wide", "dataset.crop_size=null").crop_size == 512  # capped
    with pytest.raises(ConfigError, match=r"dataset\.crop_size=null .* no image files .* dataset\.crop_size=<pixels>"):
        instantiate_node(compose_config(["dataset=synthetic", "dataset.crop_size=null"]), "dataset")


def test_crop_far_above_the_images_warns_once_saying_what_to_set(tmp_path, caplog):
    fixtures.make_folder(tmp_path, n=6, size=(64, 64))
    with caplog.at_level(logging.WARNING, logger="diffusion_seg.lightning.datamodule"):
        datamodule("folder", tmp_path, "dataset.crop_size=512")
    [record] = caplog.records
    assert "dataset.crop_size=512 is larger than every image" in record.message
    assert "64× the pixels" in record.message and "Set dataset.crop_size=64" in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffusion_seg.lightning.datamodule"):
        datamodule("folder", tmp_path, "dataset.crop_size=96")  # 64² images reach 128² at scale 2
    assert not caplog.records


def test_num_workers_follow_the_cpus(tmp_path, monkeypatch, caplog):
    fixtures.make_folder(tmp_path, n=4)
    monkeypatch.setattr("lightning.fabric.utilities.data._num_cpus_available", lambda: 2)
    monkeypatch.setattr("diffusion_seg.lightning.datamodule.available_cpus", lambda: 2)
    auto = datamodule("folder", tmp_path, "dataset.num_workers=null", "dataset.persistent_workers=true")
    assert auto.val_dataloader().num_workers == 1  # 2 CPUs: one loader process beside the main one
    with caplog.at_level(logging.INFO, logger="diffusion_seg.lightning.datamodule"):
        capped = datamodule("folder", tmp_path, "dataset.num_workers=8")
        assert capped.val_dataloader().num_workers == capped.val_dataloader().num_workers == 2
    assert caplog.text.count("dataset.num_workers=8 lowered to 2") == 1
    monkeypatch.setattr("lightning.fabric.utilities.data._num_cpus_available", lambda: 64)
    with pytest.warns(UserWarning, match="8 worker processes"):  # torch sees the 2 real CPUs
        assert datamodule("folder", tmp_path, "dataset.num_workers=null").val_dataloader().num_workers == 8
    zero = datamodule("folder", tmp_path, "dataset.num_workers=0", "dataset.persistent_workers=true")
    assert not zero.val_dataloader().persistent_workers


@pytest.mark.parametrize("gpu", [False, True])
def test_pin_memory_only_when_a_gpu_trains(gpu, tmp_path, monkeypatch):
    fixtures.make_folder(tmp_path, n=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    dm = datamodule("folder", tmp_path, "dataset.pin_memory=true")
    assert dm.val_dataloader().pin_memory is gpu


def test_no_test_split_is_never_tested_under_a_test_label(tmp_path):
    fixtures.make_folder(tmp_path / "flat", n=6)
    fixtures.make_folder(tmp_path / "split", splits={"train": 2, "val": 1, "test": 1}, per_split=True)
    for root, extra in ((tmp_path / "flat", ()), (tmp_path / "flat", ("dataset.test_split=val",))):
        dm = datamodule("folder", root, *extra)
        assert not dm.has_test_split
        with pytest.raises(ConfigError, match=r"dataset\.test_split=.* no test split .* split=val"):
            dm.setup("test")
    assert datamodule("folder", tmp_path / "split", "dataset.test_split=test").has_test_split
    for name in ("ade20k", "voc_aug", "pascal_context", "pascal_context59", "person_part"):
        assert compose_config([f"dataset={name}"]).dataset.test_split is None  # test labels not public


@pytest.mark.slow
def test_folder_of_small_images_trains_with_the_defaults(tmp_path):
    """What a laptop user gets with `dataset=folder` and nothing else set: crops of the images'
    size, no loader warnings on 2 cores without a GPU, and a final table of the split it is."""
    fixtures.make_folder(tmp_path / "data", n=12, size=(64, 64))
    proc = run_cli("diffusion_seg.train", "backbone=tiny", "model=fcn", "dataset=folder",
                   f"dataset.root={tmp_path / 'data'}", "dataset.batch_size=4", "trainer.max_epochs=1",
                   log_dir=tmp_path / "logs")
    out = proc.stdout + proc.stderr
    assert "training crops of 64 px" in out
    # torch's and Lightning's loader warnings on a 2-core machine without a GPU, before the fix
    for warning in ("'pin_memory' argument is set as true", "worker processes in total", "does not have many workers"):
        assert warning not in out
    assert "No test split (dataset.test_split=null): validating" in out
    assert "test metrics" not in out and out.count("val metrics (epoch 1, step 2)") == 2
    finished = yaml.safe_load((run_dirs(tmp_path / "logs")[0] / "finished.yaml").read_text())
    assert "val/mIoU" in finished["metrics"] and not any(k.startswith("test/") for k in finished["metrics"])
