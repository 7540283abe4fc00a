"""The layers hold: the torch core imports no Lightning or Hydra, each model family stands
alone, every command is reachable under its documented names, learning-rate groups survive
pickling, renamed config keys point to their new names and checkpoints of an older layout
still evaluate to their numbers."""

from __future__ import annotations

import ast
import copy
import functools
import pickle
import re
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest
import torch

import diffusion_seg
from diffusion_seg.checkpoints import load_checkpoint_file, load_segmentor, upgrade_config
from diffusion_seg.config import compose_config, renamed_key_error
from diffusion_seg.errors import ConfigError
from diffusion_seg.models.backbone import TimmBackbone
from diffusion_seg.models.pdn import PDNHead
from diffusion_seg.models.segmentor import Segmentor

PACKAGE = Path(diffusion_seg.__file__).parent
ROOT = PACKAGE.parent
FIXTURES = Path(__file__).parent / "fixtures"


def core_modules() -> list[str]:
    """Every module of models/ and data/, and metrics.py: the torch-only core."""
    names = ["diffusion_seg.metrics", "diffusion_seg.errors"]
    for sub in ("models", "data"):
        names += [f"diffusion_seg.{sub}.{p.stem}" for p in sorted((PACKAGE / sub).glob("*.py"))
                  if p.stem != "__init__"]
    return names


def test_core_imports_neither_lightning_nor_hydra():
    # A fresh interpreter: what the core pulls in, not what earlier tests imported.
    code = (
        "import sys, importlib\n"
        f"for name in {core_modules()!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'omegaconf'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the core imports {out.stdout.strip()}"
    assert len(core_modules()) >= 15  # the check covers the whole core, not an empty list


def imported_by(modules: list[str]) -> set[str]:
    """Every module a fresh interpreter holds after importing ``modules``."""
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(','.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


LIGHTNING = ("lightning", "pytorch_lightning")


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_the_job_record_and_the_checkpoint_reader_stand_below_training_and_reporting():
    """The job record (job.yaml / finished.yaml, skip / resume) is one module that training,
    sweeps and reports all use: it imports none of them, nor Lightning or Hydra. Reading a
    checkpoint needs no Lightning; reporting needs no training."""
    jobs = imported_by(["diffusion_seg.jobs"])
    assert not top_level(jobs) & {*LIGHTNING, "hydra"}, sorted(top_level(jobs))
    assert not jobs & {"diffusion_seg.studies", "diffusion_seg.sweeps", "diffusion_seg.cli.train"}
    assert not top_level(imported_by(["diffusion_seg.checkpoints"])) & set(LIGHTNING)
    reporting = imported_by(["diffusion_seg.studies", "diffusion_seg.cli.report"])
    assert not top_level(reporting) & set(LIGHTNING), "the report imports Lightning"
    assert not {m for m in reporting if m.startswith("diffusion_seg.lightning")}


def test_the_lightning_package_holds_only_lightning_code():
    for path in sorted((PACKAGE / "lightning").glob("*.py")):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert top_level(imported) & set(LIGHTNING), f"{path.name} uses no Lightning: move it out of lightning/"


# What each module of models/ may import from models/: a model family (one file per paper or
# baseline) builds on the shared blocks, the head bases and the backbone, never on another
# family; the head bases on the blocks and the backbone; those two on nothing of the project.
FAMILIES = ("pdn", "lg_lstm", "pspnet", "deeplabv3", "difnet")
MODEL_IMPORTS = {
    "layers": set(),
    "backbone": set(),
    "heads": {"layers", "backbone"},
    **{family: {"layers", "heads", "backbone"} for family in FAMILIES},
}


def project_imports(path: Path) -> set[str]:
    """The ``diffusion_seg`` modules a file imports (at any depth of its code)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module if not node.level else f"diffusion_seg.models.{node.module}")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "diffusion_seg"}


def test_model_families_stand_alone():
    for stem, allowed in MODEL_IMPORTS.items():
        imports = project_imports(PACKAGE / "models" / f"{stem}.py")
        assert imports <= {f"diffusion_seg.models.{name}" for name in allowed}, stem


def test_every_command_resolves_under_its_names():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(import_module(module), func)), target
    for command in ("train", "eval", "check", "prepare", "visualize"):
        assert import_module(f"diffusion_seg.{command}").main is import_module(f"diffusion_seg.cli.{command}").main


def test_the_package_docstrings_list_the_real_commands():
    """cli/__init__.py names every command module, bench/__init__.py every benchmark, and
    the package ships its py.typed marker."""
    from diffusion_seg.bench.__main__ import BENCHMARKS

    commands = [p.stem for p in (PACKAGE / "cli").glob("*.py") if "def main(" in p.read_text()]
    assert len(commands) >= 8
    cli_doc = import_module("diffusion_seg.cli").__doc__
    listed = cli_doc.split("``python -m diffusion_seg.<command>`` (", 1)[1].split(")", 1)[0]
    assert sorted(re.split(r",\s*", listed)) == sorted(commands)
    bench_doc = import_module("diffusion_seg.bench").__doc__
    assert "<" + "|".join(BENCHMARKS) + ">" in bench_doc
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert all((PACKAGE / name).is_file() for name in package_data["diffusion_seg"])


def pdn_net() -> Segmentor:
    torch.manual_seed(0)
    head = functools.partial(PDNHead, neighbors=8, layers=1, hidden=8, modules=2)
    return Segmentor(TimmBackbone("test_resnet"), head, num_classes=3)


def group_sizes(net: Segmentor) -> tuple[int, int]:
    return len(list(net.backbone_parameters())), len(list(net.new_parameters()))


@pytest.mark.parametrize("round_trip", [lambda n: pickle.loads(pickle.dumps(n)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_learning_rate_groups_survive_pickle_and_deepcopy(round_trip):
    net = pdn_net()
    before = group_sizes(net)
    assert before[0] == len(net.pretrained_names) and before[1] > 0
    copied = round_trip(net)
    assert group_sizes(copied) == before and copied.pretrained_names == net.pretrained_names
    # the module inserted into layer3 is "new" though it sits in the backbone ...
    new_names = {n for n, p in copied.named_parameters() if n not in copied.pretrained_names}
    assert any(n.startswith("backbone.model.layer3.module.") for n in new_names)
    assert all(n.startswith("backbone.") and ".module." not in n for n in copied.pretrained_names)
    # ... and the copy's head reads the copy's modules
    assert copied.head.pdn[0] is copied.backbone.model.layer3.module


def test_renamed_keys_name_their_new_spelling():
    cases = {
        "dataset.dataset.root=/data": "use dataset.root",
        "+dataset.dataset.on_bad_sample=skip": "use dataset.on_bad_sample",
        "inference.mode=slide": "use task.inference.mode",
        "loss.aux_weight=0.4": "use task.aux_weight",
        "new_lr_mult=1": "use task.new_lr_mult",
        "channels_last=true": "use task.channels_last",
    }
    for override, message in cases.items():
        error = renamed_key_error([override])
        assert error is not None and message in str(error), override
    assert renamed_key_error(["dataset.root=/data", "task.inference.mode=slide", "model=pdn"]) is None
    with pytest.raises(ConfigError, match="dataset.dataset.length was renamed: use dataset.length"):
        compose_config(["dataset.dataset.length=4"])


def test_a_dataset_option_typo_names_the_key_and_the_options(tmp_path):
    from diffusion_seg.builders import build_backbone, build_datamodule

    cfg = compose_config(["dataset=synthetic", "+dataset.lenght=4", "backbone=tiny"])
    with pytest.raises(ConfigError, match=r"dataset.lenght is not an option of SyntheticContextDataset "
                                          r"or SegmentationDataModule.*Options: .*batch_size.*length"):
        build_datamodule(cfg, build_backbone(cfg))


def test_an_old_run_config_is_upgraded_and_builds():
    """A checkpoint written by 0.1.0 (nested dataset, root-level loss/inference) still evaluates."""
    from omegaconf import OmegaConf

    from diffusion_seg.builders import build_backbone, build_datamodule

    old = {
        "dataset": {
            "_target_": "diffusion_seg.data.datamodule.SegmentationDataModule",
            "dataset": {"_target_": "diffusion_seg.data.synthetic.SyntheticContextDataset",
                        "_partial_": True, "length": 4, "eval_length": 2, "size": 48, "seed": 3},
            "crop_size": 48, "batch_size": 2, "num_workers": 0, "pin_memory": False,
            "persistent_workers": False,
        },
        "backbone": {"_target_": "diffusion_seg.models.backbone.TimmBackbone", "name": "test_resnet"},
        "loss": {"aux_weight": 0.4, "ignore_index": 255},
        "inference": {"mode": "whole", "scales": [1.0], "flip": False},
        "new_lr_mult": 10.0, "channels_last": False, "seed": 0,
    }
    new = upgrade_config(copy.deepcopy(old))
    assert new["dataset"]["dataset_class"] == "diffusion_seg.data.synthetic.SyntheticContextDataset"
    assert new["dataset"]["sample_seed"] == 3 and "dataset" not in new["dataset"]
    assert new["task"]["aux_weight"] == 0.4 and new["task"]["inference"]["mode"] == "whole"
    cfg = OmegaConf.create(new)
    dm = build_datamodule(cfg, build_backbone(cfg))
    assert len(dm.val_set) == 2 and dm.val_set.sample_seed == 3
    assert upgrade_config(copy.deepcopy(new)) == new  # today's layout is left as it is


@pytest.mark.parametrize("name", ["pdn", "lg_lstm"])
def test_a_checkpoint_of_the_hooked_layout_evaluates_to_its_numbers(name):
    """Checkpoints written while PDN's and LG-LSTM's modules inside the backbone were forward
    hooks (their weights under ``head.pdn.<i>.`` / ``head.lg.``, the wrapped blocks without a
    ``block.`` level; tests/fixtures/make_old_layout.py) load as they are and give the
    outputs they gave then: a module after a block, one after the stage around it, one on
    the output."""
    path = FIXTURES / f"{name}_hooked_layout.pt"
    old_keys = set(load_checkpoint_file(path)["state_dict"])
    net, _ = load_segmentor(path)
    moved = net.former_keys()  # the keys that moved since: the checkpoint has the old ones
    assert moved and all(f"net.{old}" in old_keys and f"net.{key}" not in old_keys
                         for key, old in moved.items())
    expected = load_checkpoint_file(path)["expected"]
    with torch.no_grad():
        out = net(expected["image"])
    torch.testing.assert_close(out.logits, expected["logits"])
    assert out.aux.keys() == expected["aux"].keys()
    for key, logits in expected["aux"].items():
        torch.testing.assert_close(out.aux[key], logits, msg=key)
    # saved again, the network has today's layout, which loads as it is
    state = net.state_dict()
    assert not set(net.former_keys().values()) & set(state)
    net.load_state_dict(state)
