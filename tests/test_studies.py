"""Every study composes, each of its settings composes, and its published numbers name
settings it runs; the comparison rows of PDN's tables are what the paper describes."""

from __future__ import annotations

import pytest

from diffusion_seg import CONFIG_DIR

from .conftest import compose_config

STUDIES = sorted(p.stem for p in (CONFIG_DIR / "study").glob("*.yaml"))


@pytest.mark.parametrize("name", STUDIES)
def test_study_composes_with_its_settings(name, tmp_path):
    cfg = compose_config([f"study={name}"], output_dir=tmp_path)
    assert cfg.study.name == name
    params = dict(cfg.hydra.sweeper.params)
    assert params, "a study sweeps something"
    experiments = str(params.get("experiment", "")).split(",") if "experiment" in params else [None]
    for experiment in experiments:
        overrides = [f"study={name}"] + ([f"experiment={experiment}"] if experiment else [])
        overrides += [f"{k}={v.split(',')[0]}" for k, v in params.items() if k != "experiment"]
        job = compose_config(overrides, output_dir=tmp_path)
        assert job.model._target_ and job.dataset.dataset_class
    swept = {f"{k}={v}" for k, values in params.items() for v in str(values).split(",")}
    for setting in cfg.study.get("published") or {}:
        assert setting in swept, f"{name}: published {setting} is not a setting of the study"
    if cfg.study.knob:
        assert cfg.study.knob in params


@pytest.mark.parametrize(
    ("name", "head", "crf", "aux_weight", "syncbn"),
    [
        ("deeplabv2_ade20k", "DeepLabV2Head", False, 1.0, False),
        ("deeplabv2_crf_ade20k", "DeepLabV2Head", True, 1.0, False),
        ("lg_lstm_ade20k", "LGLSTMHead", False, 1.0, False),
        ("pspnet_ade20k_syncbn", "PSPHead", False, 0.4, True),
        ("deeplabv2_person_part", "DeepLabV2Head", False, 1.0, False),
        ("deeplabv2_crf_person_part", "DeepLabV2Head", True, 1.0, False),
        ("lg_lstm_person_part", "LGLSTMHead", False, 1.0, False),
        ("deeplabv3_person_part_syncbn", "DeepLabV3Head", False, 0.4, True),
        ("pspnet_person_part_syncbn", "PSPHead", False, 0.4, True),
    ],
)
def test_comparison_rows_use_pdns_recipe(name, head, crf, aux_weight, syncbn):
    cfg = compose_config([f"experiment={name}"])
    assert cfg.model._target_.endswith(head)
    assert cfg.backbone.name == "resnet101" and cfg.backbone.dilation_pattern == "deeplab"
    assert cfg.optimizer.lr == pytest.approx(2.5e-4) and cfg.task.new_lr_mult == 10.0
    assert (cfg.trainer.max_steps, cfg.dataset.crop_size) == (200_000, 321)
    assert cfg.task.inference.crf is crf and cfg.task.aux_weight == aux_weight
    assert (cfg.trainer.get("strategy") == "ddp") is syncbn and cfg.backbone.frozen_bn is not syncbn
