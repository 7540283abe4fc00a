"""Config helpers: composing (a misspelt key named with the nearest existing one), resolvers,
instantiation whose errors name the config key, and the pointed message for renamed keys."""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from diffusion_seg import CONFIG_DIR
from diffusion_seg.errors import ConfigError, UserError

# Old spelling → new spelling, for command-line overrides (prefix match on the key).
RENAMED_KEYS = {
    "dataset.dataset.": "dataset.",
    "dataset.dataset": "dataset.dataset_class",
    "inference.": "task.inference.",
    "loss.aux_weight": "task.aux_weight",
    "loss.ignore_index": "task.ignore_index",
    "new_lr_mult": "task.new_lr_mult",
    "channels_last": "task.channels_last",
    "scheduler.": "task.scheduler.",
    "scheduler": "task.scheduler",
    "dataset.seed": "dataset.sample_seed",
}


def renamed_key_error(overrides: Sequence[str]) -> ConfigError | None:
    """The error for the first override that uses a renamed key (``dataset.dataset.root=x``
    → "use dataset.root"), else ``None``. Checked before Hydra parses the command line, whose
    own message ("Key 'dataset' is not in struct") would not say what the key is now."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        for old, new in RENAMED_KEYS.items():
            if key == old or (old.endswith(".") and key.startswith(old)):
                now = new + key[len(old):] if old.endswith(".") else new
                return ConfigError(
                    f"{key} was renamed: use {now} (every dataset option is one key under "
                    "dataset., the LightningModule's under task.; see conf/)"
                )
    return None


def _first_not_none(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def register_resolvers() -> None:
    """``${ds_first:a,b}``: the first non-null argument (``resume`` dir, else a new dated dir)."""
    if not OmegaConf.has_resolver("ds_first"):
        OmegaConf.register_new_resolver("ds_first", _first_not_none)


def compose_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """``conf/<config_name>.yaml`` with command-line style overrides, outside ``@hydra.main``
    (commands with their own argument parser, benchmarks, tests); see :func:`compose_overrides`."""
    return compose_overrides(overrides, config_name)[0]


def compose_overrides(
    overrides: Sequence[str], config_name: str = "train", with_hydra: bool = False
) -> tuple[DictConfig, list[str]]:
    """The composed config (with Hydra's own node if ``with_hydra``) and the overrides as Hydra
    must be given them.

    A key that is an argument of its node's ``_target_`` needs no ``+`` although the config
    file does not list it (``trainer.limit_val_batches=2``: every Lightning Trainer argument):
    it is passed on as ``++trainer.limit_val_batches=2``. Any other problem is one
    :class:`ConfigError`: a key that exists nowhere names the nearest one ("did you mean
    trainer.max_epochs?"), an unknown config of a group lists the group's configs."""
    error = renamed_key_error(overrides)
    if error is not None:
        raise error
    register_resolvers()
    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            overrides = _with_target_arguments(overrides, config_name, err)
            cfg = _compose(config_name, overrides)
    if not with_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg, overrides


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """``hydra.compose`` (inside an initialised Hydra) whose errors are one-line ConfigErrors."""
    try:
        return compose(config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None


def is_group_key(key: str) -> bool:
    """Whether an override's key names a config group (``model``, ``hydra/launcher``)."""
    return "/" in key or (CONFIG_DIR / key).is_dir()


def _with_target_arguments(overrides: list[str], config_name: str, err: BaseException) -> list[str]:
    """After a failed composition: ``++`` before each value override whose key the config
    lacks but its node's ``_target_`` takes; a key that is neither is a ConfigError naming the
    nearest existing key. Keys are looked up in the config composed from the other
    overrides (group choices, additions, deletions), which fixes which nodes exist."""
    parsed = parse_overrides(overrides)
    changes = [o.type is OverrideType.CHANGE and not is_group_key(o.key_or_group) for o in parsed]
    skeleton = _compose(config_name, [o for o, change in zip(overrides, changes) if not change])
    fixed = []
    for override, parsed_override, change in zip(overrides, parsed, changes):
        key = parsed_override.key_or_group
        if change and not _has_key(skeleton, key):
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(skeleton, parent_key) if parent_key else skeleton
            arguments = target_arguments(parent) if isinstance(parent, DictConfig) else None
            if arguments is None or leaf not in arguments.parameters:
                raise unknown_key_error(parsed_override, skeleton, config_name)
            override = f"++{override}"
        fixed.append(override)
    if fixed == overrides:  # every key exists: the failure was something else
        raise composition_error(err) from None
    return fixed


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of command-line overrides; a syntax error is one line naming the override."""
    parser = OverridesParser.create()
    parsed = []
    for override in overrides:
        try:
            parsed.append(parser.parse_override(override))
        except HydraException as err:  # "no viable alternative at input '['": which override?
            reason = str(composition_error(err)).removeprefix(f"Error parsing override '{override}'; ")
            raise ConfigError(f"cannot parse {override}: {reason} (see Hydra's override grammar: "
                              "key=value, +key=value, ~key)") from None
    return parsed


def _has_key(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def closest(word: str, options: Sequence[str]) -> str | None:
    """The option nearest to ``word`` (a misspelling), if one is near enough."""
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_error(override: Override, cfg: DictConfig, config_name: str) -> ConfigError:
    """``trainer.max_epoch=1`` → "trainer.max_epoch is not a key of trainer (did you mean
    trainer.max_epochs?)", with how to add a new key where the node takes one."""
    key = override.key_or_group
    parts = key.split(".")
    node: Any = cfg
    depth = 0
    while depth < len(parts) and _has_key(node, parts[depth]):
        node = node._get_node(parts[depth])
        depth += 1
    where = ".".join(parts[:depth])
    if not isinstance(node, DictConfig) or node._is_none():
        if OmegaConf.select(cfg, where) is None:  # eval's `dataset: null`: the checkpoint's
            return ConfigError(f"{key}: {where} is null in the {config_name} config; add the key "
                               f"with +{override.input_line.lstrip('+')}")
        return ConfigError(f"{key}: {where} is a value, not a group of keys; set {where}=... instead")
    if depth == 0 and is_group_key(parts[0]):  # a group with no config chosen (eval's dataset)
        return ConfigError(f"{key}: no {parts[0]} config is chosen in the {config_name} config; choose "
                           f"one with {parts[0]}=<name>, or add the key with +{override.input_line.lstrip('+')}")
    arguments = target_arguments(node)
    if arguments is not None and not arguments.any_keyword:
        return ConfigError(arguments.unknown(f"{where}." if where else "", parts[depth]))
    options = [str(k) for k in node.keys() if not str(k).startswith("_") and k != "hydra"]
    if arguments is not None:
        options += [p for p in arguments.parameters if p not in options]
    if depth == 0:  # a group's name, misspelt (modl=pdn)
        options += [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in options]
    guess = closest(parts[depth], options)
    message = f"{key} is not a key of {where or f'the {config_name} config'}"
    if guess is not None:
        message += f" (did you mean {'.'.join([*parts[:depth], guess, *parts[depth + 1:]])}?)"
    return ConfigError(f"{message}; add it with +{override.input_line.lstrip('+')} if it is meant as a new key")


def composition_error(err: BaseException) -> ConfigError:
    """Hydra's multi-line composition errors as one line."""
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options if o != "default"]
        guess = closest(name, options)
        hint = f"did you mean {group}={guess}?" if guess else f"choices: {', '.join(options)}"
        return ConfigError(f"{group}={name}: there is no conf/{group}/{name}.yaml ({hint})")
    lines = [line.strip() for line in str(err).splitlines()]
    if str(err).startswith("Error merging override") and err.__cause__ is not None:  # the reason is the cause's
        lines += str(err.__cause__).splitlines()[:1]
    text = "; ".join(line for line in lines if line and not line.startswith(("See https://", "full_key:",
                                                                            "object_type=", "reference_type=")))
    return ConfigError(text.rstrip(";"))


@dataclass(frozen=True)
class TargetArguments:
    """The arguments a config node's ``_target_`` takes (with a dataset node's
    ``dataset_class``'s: the DataModule passes every other key on to the dataset)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)  # argument → annotation
    any_keyword: bool = False  # the target takes **kwargs
    error: str | None = None  # "<key>=<target> cannot be imported: ..."

    def unknown(self, prefix: str, key: str) -> str:
        """The message for a key of the node that is no argument of the target."""
        guess = closest(key, list(self.parameters))
        hint = f"did you mean {prefix}{guess}?" if guess else f"its arguments: {', '.join(sorted(self.parameters))}"
        return f"{prefix}{key} is not an argument of {self.name} ({hint})"


def target_arguments(node: DictConfig) -> TargetArguments | None:
    """:class:`TargetArguments` of a node with a ``_target_``, else ``None``."""
    target = node.get("_target_") if "_target_" in node.keys() else None
    if not isinstance(target, str):
        return None
    dataset_class = node.get("dataset_class") if "dataset_class" in node.keys() else None
    return _arguments(target, dataset_class if isinstance(dataset_class, str) else None)


@functools.lru_cache(maxsize=None)
def _arguments(target: str, dataset_class: str | None) -> TargetArguments:
    arguments = _callable_arguments("_target_", target)
    if dataset_class is None or not arguments.any_keyword:
        return arguments
    dataset = _callable_arguments("dataset_class", dataset_class)
    if dataset.error:
        return dataset
    # split and transform are the DataModule's to give, never the config's.
    extra = {k: v for k, v in dataset.parameters.items() if k not in ("split", "transform")}
    return TargetArguments(f"{target} or {dataset_class}", arguments.parameters | extra, dataset.any_keyword)


def _callable_arguments(key: str, path: str) -> TargetArguments:
    """The arguments of the callable at import path ``path`` (the value of config key ``key``)."""
    try:
        obj = get_object(path)
    except Exception as err:  # ImportError, AttributeError, a module failing at import
        reason = " ".join(str(err).split()) or type(err).__name__
        return TargetArguments(path, error=f"{key}={path} cannot be imported: {reason}")
    try:
        signature = inspect.signature(obj).parameters
    except (TypeError, ValueError):  # no signature to read: any key may be right
        return TargetArguments(path, any_keyword=True)
    try:
        hints = typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    except Exception:  # a forward reference to a name imported only for type checkers
        hints = {}
    parameters = {}
    for name, p in signature.items():
        if name == "self" or p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        hint = hints.get(name, inspect.Parameter.empty)
        if p.default is None and hint is not inspect.Parameter.empty:
            hint = typing.Optional[hint]  # an argument defaulting to None takes None (PEP 484's old rule)
        parameters[name] = hint
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    return TargetArguments(path, parameters, any_keyword)


def _root_cause(err: BaseException) -> BaseException:
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def instantiate_node(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(cfg[key], **kwargs)``; failures become one :class:`ConfigError`
    naming ``key`` and the underlying reason instead of a traceback from deep inside."""
    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"config key '{key}' is missing or null")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = _root_cause(err)
        if isinstance(cause, UserError):  # already says what to fix (a missing dataset, ...)
            raise cause from None
        if isinstance(cause, TypeError):
            raise unknown_option_error(key, node.get("_target_", "?"), cause) from cause
        raise as_config_error(key, cause) from cause


def as_config_error(key: str, err: BaseException) -> ConfigError:
    """``err``'s message as a :class:`ConfigError` that starts with the config key."""
    message = str(err)
    return ConfigError(message if message.startswith(f"{key}.") else f"{key}: {message}")


def unknown_option_error(key: str, target: object, err: TypeError) -> ConfigError:
    """``TypeError: ... unexpected keyword argument 'x'`` → "key.x is not an option of ..."
    with the options that exist."""
    message = str(err)
    if "unexpected keyword argument" not in message or message.count("'") < 2:
        return ConfigError(f"{key}: {message}")
    bad = message.split("'")[-2]
    if isinstance(target, str):
        try:
            target = get_object(target)
        except (ImportError, ValueError):
            pass
    name = getattr(target, "__qualname__", str(target))
    try:
        options = [p for p in inspect.signature(target).parameters if p not in ("self", "backbone")]
    except (TypeError, ValueError):
        options = []
    listed = f" Options: {', '.join(options)}." if options else ""
    return ConfigError(f"{key}.{bad} is not an option of {name}; remove it or fix its spelling.{listed}")
