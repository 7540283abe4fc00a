"""Start-up checks of a composed config: every bad value is one line naming its key.

A command checks its config here before Hydra creates a run dir, before any data is read
and before anything is built (:func:`check_command_line`, called by
:func:`diffusion_seg.cli.errors.hydra_command`; ``check`` and ``visualize`` call
:func:`validate_config` on the config they compose). Three sources say what a value may be:

* the signature of a node's ``_target_`` (and of a dataset node's ``dataset_class``, whose
  options share the node): every key must be one of its arguments, of the annotated type
  (``trainer.max_epochs: Optional[int]`` of Lightning's ``Trainer``), so a new argument of a
  library needs no change here;
* :data:`RULES` and :data:`COMMAND_RULES`, for what a signature cannot say: ranges
  (``optimizer.lr > 0``), choices, and the commands' own keys;
* ``???`` in a config file: a mandatory value, named with an example.

Misspelt keys on the command line are caught while composing
(:func:`diffusion_seg.config.compose_overrides`), with the nearest existing key.
"""

from __future__ import annotations

import collections.abc
import glob
import importlib
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from hydra.core.override_parser.types import Override, ValueType
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion_seg.config import (
    compose_overrides,
    is_group_key,
    parse_overrides,
    renamed_key_error,
    target_arguments,
)
from diffusion_seg.errors import ConfigError

# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """What a value may be: ``test(value)`` is true for a valid one; ``allowed`` says in words
    what is valid (a callable: text built when first needed); ``explain(key, value)``, where
    given, is the whole message instead (a missing file: what is there)."""

    allowed: str | Callable[[], str]
    test: Callable[[Any], bool]
    explain: Callable[[str, Any], str] | None = None

    def message(self, path: str, value: Any) -> str:
        if self.explain is not None:
            return self.explain(path, value)
        allowed = self.allowed() if callable(self.allowed) else self.allowed
        return f"{path}={_show(value)} is invalid; allowed: {allowed}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(low: float | None, high: float | None, above: float | None, below: float | None) -> str:
    parts = [f"{sign} {bound}" for sign, bound in ((">=", low), (">", above), ("<=", high), ("<", below))
             if bound is not None]
    return " and ".join(parts)


def _within(value: float, low: float | None, high: float | None, above: float | None, below: float | None) -> bool:
    return ((low is None or value >= low) and (high is None or value <= high)
            and (above is None or value > above) and (below is None or value < below))


def integer(low: int | None = None, high: int | None = None, null: bool = False, note: str = "") -> Rule:
    """An integer in ``[low, high]`` (or null)."""
    bounds = _bounds(low, high, None, None)
    allowed = "an integer" + (f" {bounds}" if bounds else "") + (f" ({note})" if note else "")
    return Rule(allowed + (" or null" if null else ""),
                lambda v: (null and v is None) or (_is_int(v) and _within(v, low, high, None, None)))


def number(low: float | None = None, high: float | None = None, *, above: float | None = None,
           below: float | None = None, null: bool = False) -> Rule:
    """A number with the given inclusive (``low``, ``high``) and exclusive (``above``,
    ``below``) bounds (or null)."""
    bounds = _bounds(low, high, above, below)
    return Rule("a number" + (f" {bounds}" if bounds else "") + (" or null" if null else ""),
                lambda v: (null and v is None) or (_is_number(v) and _within(v, low, high, above, below)))


def flag() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def choice(values: Sequence[Any] | Callable[[], Sequence[Any]], null: bool = False) -> Rule:
    """One of ``values``; a callable gives them when a value is checked (choices that live in a
    module the config's command imports anyway: Lightning's accelerators, torch's backends)."""

    def options() -> list[Any]:
        return list(values() if callable(values) else values)

    return Rule(lambda: ", ".join(map(str, options())) + (" or null" if null else ""),
                lambda v: (null and v is None) or (isinstance(v, (str, int)) and not isinstance(v, bool)
                                                   and v in options()))


def constant(module: str, name: str) -> Callable[[], Any]:
    """``module.name``, imported when first needed."""
    return lambda: getattr(importlib.import_module(module), name)


def numbers(count: int | None = None, above: float | None = None, low: float | None = None,
            below: float | None = None, what: str = "numbers", ordered: bool = False) -> Rule:
    """A list of (``count``) numbers within the bounds; ``ordered``: non-decreasing."""
    bounds = _bounds(low, None, above, below)
    allowed = f"a list of {count or 'one or more'} {what}" + (f" {bounds}" if bounds else "")
    allowed += ", the first <= the second" if ordered else ""

    def test(v: Any) -> bool:
        return (isinstance(v, list) and len(v) == (count or len(v)) > 0
                and all(_is_number(x) and _within(x, low, None, above, below) for x in v)
                and (not ordered or v == sorted(v)))

    return Rule(allowed, test)


def _is_file(value: Any) -> bool:
    return isinstance(value, str) and Path(value).expanduser().is_file()


def checkpoint_file(null: bool = False, last: bool = False) -> Rule:
    """An existing checkpoint file (or null; or ``last``: train's "this run dir's last.ckpt")."""

    def explain(path: str, value: Any) -> str:
        where = Path(str(value)).expanduser().parent
        found = sorted(p.name for p in where.glob("*.ckpt")) if where.is_dir() else []
        near = f" (checkpoints in {where}: {', '.join(found)})" if found else ""
        return f"no checkpoint at {value}{near}; give {path}=<file.ckpt>, e.g. {EXAMPLES['ckpt_path']}"

    return Rule("a checkpoint file", lambda v: (null and v is None) or (last and v == "last") or _is_file(v), explain)


def run_dir() -> Rule:
    """train's ``resume=``: null or the run dir of an earlier run, holding its last.ckpt."""
    return Rule("null or a run dir holding checkpoints/last.ckpt",
                lambda v: v is None or _is_file(f"{v}/checkpoints/last.ckpt"),
                lambda path, v: (f"no checkpoint at {v}/checkpoints/last.ckpt; {path}= takes the run dir of "
                                 "an earlier run, e.g. resume=logs/train/runs/<date>"))


def image_input() -> Rule:
    """predict's and visualize's ``input=``: an image file, a folder or a glob with matches."""
    return Rule("an image file, a folder or a glob pattern",
                lambda v: isinstance(v, str) and bool(Path(v).expanduser().exists()
                                                      or glob.glob(os.path.expanduser(v), recursive=True)),
                lambda path, v: f"{path}={v} does not exist; give an image file, a folder or a glob pattern")


def batches(null: bool = True) -> Rule:
    """Lightning's ``limit_*_batches`` / ``overfit_batches``: a count or a fraction."""
    return Rule("an integer >= 0 (batches) or a number in [0, 1] (a fraction)" + (" or null" if null else ""),
                lambda v: (null and v is None) or (_is_int(v) and v >= 0)
                or (isinstance(v, float) and 0.0 <= v <= 1.0))


def devices() -> Rule:
    """Lightning's ``devices``: how many, or which (a list, or ids in a string: "0,1")."""
    return Rule("an integer >= 1, -1 (every device), auto, a list of device ids or ids in a string (\"0,1\")",
                lambda v: (_is_int(v) and (v >= 1 or v == -1)) or v == "auto"
                or (isinstance(v, str) and re.fullmatch(r"-1|\d+(,\d+)*,?", v.replace(" ", "")) is not None)
                or (isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)))


def pixel_list() -> Rule:
    return Rule("null or a list of [y, x] integer pairs",
                lambda v: v is None or (isinstance(v, list) and all(
                    isinstance(p, list) and len(p) == 2 and all(_is_int(c) and c >= 0 for c in p) for p in v)))


def _compile_backends() -> list[str]:
    from diffusion_seg.models.compile import compile_backends

    return [b for b in compile_backends() if "TESTING" not in b and "minifier" not in b]


def _lightning_accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def _lightning_strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


# Keys shared by the commands: what their signatures cannot say (the types come from the
# signatures too; a key absent from a command's config is not checked).
RULES: dict[str, Rule] = {
    # Lightning's Trainer: the ranges its documentation gives (it checks most of them only
    # when the Trainer is built, after the run dir and the data).
    "trainer.max_epochs": integer(-1, null=True, note="-1: no limit"),
    "trainer.min_epochs": integer(0, null=True),
    "trainer.max_steps": integer(-1, note="-1: no limit"),
    "trainer.min_steps": integer(0, null=True),
    "trainer.accelerator": choice(_lightning_accelerators),
    "trainer.strategy": choice(_lightning_strategies),
    "trainer.devices": devices(),
    "trainer.num_nodes": integer(1),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.check_val_every_n_epoch": integer(1, null=True),
    "trainer.log_every_n_steps": integer(0, null=True),
    "trainer.num_sanity_val_steps": integer(-1, null=True, note="-1: every batch"),
    "trainer.limit_train_batches": batches(),
    "trainer.limit_val_batches": batches(),
    "trainer.limit_test_batches": batches(),
    "trainer.limit_predict_batches": batches(),
    "trainer.overfit_batches": batches(null=False),
    "trainer.gradient_clip_val": number(0, null=True),
    "trainer.gradient_clip_algorithm": choice(("norm", "value"), null=True),
    "trainer.reload_dataloaders_every_n_epochs": integer(0),
    # The optimizer: torch checks these when it is built, at the first training step.
    "optimizer.lr": number(above=0),
    "optimizer.momentum": number(0, below=1),
    "optimizer.dampening": number(0, 1),
    "optimizer.weight_decay": number(0),
    "optimizer.eps": number(above=0),
    "optimizer.betas": numbers(2, low=0, below=1),
    # The DataModule and the datasets (diffusion_seg/lightning/datamodule.py, data/).
    "dataset.crop_size": integer(1, null=True, note="pixels"),
    "dataset.scale_range": numbers(2, above=0, ordered=True),
    "dataset.eval_resize": integer(1, null=True),
    "dataset.batch_size": integer(1),
    "dataset.val_batch_size": integer(1),
    "dataset.num_workers": integer(0, null=True),
    "dataset.on_bad_sample": choice(constant("diffusion_seg.data.base", "BAD_SAMPLE_POLICIES")),
    "dataset.val_fraction": number(0, below=1),
    "dataset.num_classes": integer(1, 255, null=True),
    "dataset.length": integer(1),
    "dataset.eval_length": integer(1, null=True),
    # The network.
    "backbone.output_stride": choice(constant("diffusion_seg.models.backbone", "VALID_OUTPUT_STRIDES")),
    "backbone.dilation_pattern": choice(constant("diffusion_seg.models.backbone", "DILATION_PATTERNS")),
    # The LightningModule and its inference (conf/task/default.yaml).
    "task.new_lr_mult": number(above=0),
    "task.aux_weight": number(0),
    "task.ignore_index": integer(0, 255),
    "task.nonfinite": choice(constant("diffusion_seg.lightning.safety", "NONFINITE_POLICIES")),
    "task.inference.mode": choice(constant("diffusion_seg.models.inference", "VALID_MODES")),
    "task.inference.crop": integer(1),
    "task.inference.stride": integer(1),
    "task.inference.scales": numbers(above=0, what="scales"),
    "task.inference.flip": flag(),
    # conf/runtime/ (train, eval, predict).
    "malloc_keep_freed": flag(),
    "compile": flag(),
    "compile_debug": flag(),
    "compile_mode": choice(constant("diffusion_seg.models.compile", "COMPILE_MODES")),
    # (inductor, the default, is known without importing Dynamo: a run with compile=false pays nothing.)
    "compile_backend": Rule(lambda: ", ".join(_compile_backends()), lambda v: v == "inductor" or v in _compile_backends()),
    "seed": integer(0, 2**32 - 1),
}

# Each command's own keys (conf/<command>.yaml).
COMMAND_RULES: dict[str, dict[str, Rule]] = {
    "train": {
        "resume": run_dir(),
        "ckpt_path": checkpoint_file(null=True, last=True),
        "auto_resume": flag(),
        "test_after_training": flag(),
    },
    "eval": {
        "ckpt_path": checkpoint_file(),
        "split": choice(constant("diffusion_seg.cli.eval", "VALID_SPLITS")),
        "save_predictions": flag(),
        "overlay_alpha": number(0, 1),
        "confused_pairs": integer(0),
    },
    "predict": {
        "ckpt_path": checkpoint_file(),
        "input": image_input(),
        "device": choice(constant("diffusion_seg.cli.predict", "DEVICES")),
        "batch_size": integer(1),
        "overwrite": flag(),
        "save_overlay": flag(),
        "overlay_alpha": number(0, 1),
        "save_probability": flag(),
        "resize": integer(0, null=True, note="0: never"),
        "print_config": flag(),
    },
    "export": {
        "ckpt_path": checkpoint_file(),
        "format": choice(constant("diffusion_seg.deploy", "FORMATS")),
        "input_dtype": choice(constant("diffusion_seg.deploy", "INPUT_DTYPES")),
        "overwrite": flag(),
        "dynamic": flag(),
        "input_size": Rule("[height, width], each an integer >= 8",
                           lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 8 for x in v)),
        "sample": Rule("null or an existing image file", lambda v: v is None or _is_file(v)),
        "tolerance": number(above=0),
    },
    "visualize": {
        "ckpt_path": checkpoint_file(),
        "input": image_input(),
        "pixels": pixel_list(),
        "device": choice(constant("diffusion_seg.cli.predict", "DEVICES")),
        "overlay_alpha": number(0, 1),
    },
    "check": {
        "splits": Rule("null or a list of split names",
                       lambda v: v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v))),
        "workers": integer(1),
        "limit": integer(1, null=True),
    },
}

# How to give a mandatory (``???``) value: an example per key and command.
EXAMPLES = {
    "ckpt_path": "ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt",
    "input": "input=<image file, folder or \"glob*.jpg\">",
    "output": "output=<folder>",
    ("export", "output"): "output=<file.onnx or folder>",
}


# --------------------------------------------------------------------------- types


def _union_members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(m for arg in typing.get_args(hint) for m in _union_members(arg))
    return (hint,)


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain Python: ``OmegaConf.to_container``) fits an annotation.
    A class other than the builtins takes a config node (``_target_``), a path class a string;
    what cannot be told (a ``TypeVar``, ``Any``) fits."""
    if hint in (Any, inspect.Parameter.empty):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, member) for member in args)
    if hint in (None, type(None)):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in _SEQUENCES:
        if not isinstance(value, list):
            return False
        if container is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if container in _MAPPINGS:
        return isinstance(value, dict)
    if isinstance(container, type):
        if issubclass(container, (os.PathLike, Path)):
            return isinstance(value, str)
        return isinstance(value, dict)
    return True


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(hint: Any) -> str:
    """An annotation in words: ``Optional[int]`` → "an integer or null"."""
    words: list[str] = []
    members = _union_members(hint)
    literals = list(dict.fromkeys(str(a) for m in members if typing.get_origin(m) is Literal for a in typing.get_args(m)))
    if literals:  # Lightning's precision: three Literals of ints and strings, one list
        words.append("one of " + ", ".join(literals))
    for member in members:
        origin, args = typing.get_origin(member), typing.get_args(member)
        if member in _WORDS:
            word = _WORDS[member]
        elif origin is Literal:
            continue
        elif (origin or member) in _SEQUENCES:
            element = args[0] if args and (origin is not tuple or args[-1] is Ellipsis) else None
            word = f"a list of {_PLURALS[element]}" if element in _PLURALS else "a list"
        elif (origin or member) in _MAPPINGS:
            word = "a mapping"
        elif isinstance(member, type) and issubclass(member, (os.PathLike, Path)):
            word = "a path"
        else:
            continue  # a class: a config node, said below when nothing else is allowed
        if word not in words:
            words.append(word)
    if not words:
        return "a config node with a _target_"
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def _show(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------- the checks


def _missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[str]:
    """Paths of the ``???`` values under ``node``, in config order."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}{key}"
        if path == "hydra":  # Hydra's own node: filled in by Hydra at run time
            continue
        if OmegaConf.is_missing(node, key):
            yield path
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            yield from _missing_keys(child, f"{path}.")


def _resolved(node: DictConfig | ListConfig, key: Any) -> tuple[bool, Any]:
    """``(True, value)`` with the value as plain Python, or ``(False, None)`` when it cannot be
    resolved here (``${hydra:...}`` outside a Hydra run)."""
    try:
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except (OmegaConfBaseException, ValueError, KeyError):
        return False, None
    return True, value


def _node_problems(node: DictConfig | ListConfig, prefix: str, rules: dict[str, Rule]) -> Iterator[str]:
    """Every value under ``node`` against its node's target signature and its rule."""
    arguments = target_arguments(node) if isinstance(node, DictConfig) else None
    if arguments is not None and arguments.error:
        yield f"{prefix}{arguments.error}"
        arguments = None
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}{key}"
        if (isinstance(key, str) and key.startswith("_")) or path == "hydra" or OmegaConf.is_missing(node, key):
            continue
        if arguments is not None and key not in arguments.parameters and not arguments.any_keyword:
            yield arguments.unknown(prefix, str(key))
            continue
        if OmegaConf.is_interpolation(node, key):  # checked where it comes from (${paths.output_dir}: Hydra's)
            continue
        ok, value = _resolved(node, key)
        rule = rules.get(path)
        if ok and rule is not None and not rule.test(value):
            yield rule.message(path, value)
            continue
        hint = arguments.parameters.get(key) if arguments is not None else None
        if ok and hint is not None and not matches(value, hint):
            yield f"{path}={_show(value)} is invalid; allowed: {describe(hint)} ({arguments.name}'s {key})"
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            yield from _node_problems(child, f"{path}.", rules)


def _mandatory_message(path: str, command: str) -> str:
    example = EXAMPLES.get((command, path)) or EXAMPLES.get(path) or f"{path}=<value>"
    return f"{path} is required and has no default: add {example} to the command line"


def config_problems(cfg: DictConfig, command: str) -> Iterator[str]:
    """Every problem of a composed config, one line each: mandatory values first."""
    for path in _missing_keys(cfg):
        yield _mandatory_message(path, command)
    yield from _node_problems(cfg, "", RULES | COMMAND_RULES.get(command, {}))


def validate_config(cfg: DictConfig, command: str) -> None:
    """Raise a :class:`ConfigError` for the first problem of ``cfg`` (``command``: the root
    config's name, which selects :data:`COMMAND_RULES`)."""
    problem = next(config_problems(cfg, command), None)
    if problem is not None:
        raise ConfigError(problem)


# --------------------------------------------------------------------------- command lines

# Hydra's flags that print something instead of running (help, the config, the version):
# the command line goes to Hydra unchecked (a config printed with --cfg may well hold ???).
INFO_FLAGS = ("-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package",
              "-i", "--info", "-sc", "--shell-completion", "--experimental-rerun",
              # another config dir: this module composes from the package's conf/ only
              "-cp", "--config-path", "-cd", "--config-dir")
MULTIRUN_FLAGS = ("-m", "--multirun")


_ABSENT = object()


def _plain_value(override: str) -> bool:
    """Whether an override sets a value in the job's config (``dataset.size=64``), not a
    config group, Hydra's own node, an addition or a deletion."""
    key = override.partition("=")[0]
    return not (key.startswith(("+", "~", "hydra.")) or is_group_key(key))


def _split_command_line(argv: Sequence[str], config_name: str) -> tuple[list[str], bool, str] | None:
    """``(overrides, multirun, config name)`` of a Hydra command line, or ``None`` when it
    asks Hydra for something other than a run."""
    overrides: list[str] = []
    multirun = False
    args = iter(argv)
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in INFO_FLAGS:
            return None
        if flag in MULTIRUN_FLAGS:
            multirun = True
        elif flag in ("-cn", "--config-name"):
            config_name = value if eq else next(args, config_name)
        elif flag in ("-r", "--run"):
            multirun = False
        elif arg.startswith("-"):
            return None  # a flag Hydra will reject in its own words
        else:
            overrides.append(arg)
    return overrides, multirun, config_name


def _values(override: Override) -> list[str] | None:
    """One override per value of a sweep (``a=1,2`` → ``a=1``, ``a=2``), the override itself
    when it is not a sweep, ``None`` for a sweep whose values are not a list (``interval``,
    ``glob``: the sweeper draws them)."""
    if not override.is_sweep_override():
        return [override.input_line]
    if override.value_type is ValueType.GLOB_CHOICE_SWEEP or not override.is_discrete_sweep():
        return None
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def sweep_jobs(overrides: Sequence[str], sweeper_params: dict[str, Any] | None = None) -> list[list[str]]:
    """Command lines that, together, give every value of every sweep at least once; each is
    one job of the sweep (the i-th values of every sweep, the last value once a sweep runs
    out), so a problem found in one is a problem of a job Hydra would launch. Sweeps of the
    config (``hydra.sweeper.params`` of a study or search) come first, as the sweepers put them."""
    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items() if isinstance(v, (str, int, float))]
    parsed = parse_overrides([*lines, *overrides])
    choices = [values for values in map(_values, parsed) if values is not None]
    jobs = max((len(values) for values in choices), default=1)
    return [[values[min(i, len(values) - 1)] for values in choices] for i in range(jobs)]


def check_command_line(argv: Sequence[str], config_name: str) -> list[str]:
    """Compose and validate the config a Hydra command line asks for, as every job of a
    sweep would see it, and return the command line for Hydra: a key that is an argument of
    its node's ``_target_`` but absent from the config file (``trainer.limit_val_batches=2``)
    gets Hydra's ``++`` (add or override). Raises :class:`ConfigError` for the first problem."""
    error = renamed_key_error([arg for arg in argv if not arg.startswith("-")])
    if error is not None:
        raise error
    split = _split_command_line(argv, config_name)
    if split is None:
        return list(argv)
    overrides, multirun, config_name = split
    sweeps = [o.input_line for o in parse_overrides(overrides) if o.is_sweep_override()]
    fixed = [o for o in overrides if o not in sweeps]
    primary_only: set[str] = set()
    try:
        base, used = compose_overrides(fixed, config_name, with_hydra=True)
    except ConfigError:
        if not (multirun and sweeps):
            raise
        # Hydra composes a sweep's primary config without the swept values, so a key only the
        # swept configs have (dataset.max_distance=8 with experiment=pathfinder_pdn,pathfinder_fcn)
        # fails there: give such keys ++ and check them in every job below. Hydra's own settings
        # (hydra.mode, the sweeper's params: all this branch reads of the primary config) come
        # from the groups and hydra.* overrides alone.
        base, _ = compose_overrides([o for o in fixed if not _plain_value(o)], config_name, with_hydra=True)
        primary_only = {key for key in (o.partition("=")[0] for o in fixed if _plain_value(o))
                        if OmegaConf.select(base, key, default=_ABSENT) is _ABSENT}
    # The Optuna searches set hydra.mode: MULTIRUN themselves; then -m is optional.
    if not (multirun or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN):
        if sweeps:
            raise ConfigError(f"{sweeps[0]} is a sweep: add -m (--multirun) to run one job per value, or "
                              f"write {sweeps[0].partition('=')[0]}=[...] for a list value")
        validate_config(base, config_name)
        added = {o.partition("=")[0] for o, u in zip(overrides, used) if u != o}
    else:
        params = OmegaConf.select(base, "hydra.sweeper.params")
        params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else None
        added = set(primary_only)
        for job in sweep_jobs(overrides, params):
            cfg, used = compose_overrides(job, config_name)
            validate_config(cfg, config_name)
            added |= {o.partition("=")[0] for o, u in zip(job, used) if u != o}
    return [f"++{arg}" if arg in overrides and arg.partition("=")[0] in added else arg for arg in argv]
