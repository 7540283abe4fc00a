"""Config helpers: composing, resolvers, instantiation whose errors name the config key, and
the pointed message for config keys that were renamed."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

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
    (commands with their own argument parser, benchmarks, tests)."""
    error = renamed_key_error(overrides)
    if error is not None:
        raise error
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


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
            from hydra.utils import get_object

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
