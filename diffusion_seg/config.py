"""Config helpers: custom resolvers and instantiation with errors that name the config key."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def _first_not_none(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def register_resolvers() -> None:
    """``${ds_first:a,b}``: the first non-null argument (``resume`` dir, else a new dated dir)."""
    if not OmegaConf.has_resolver("ds_first"):
        OmegaConf.register_new_resolver("ds_first", _first_not_none)


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
        message = str(cause)
        if isinstance(cause, TypeError):
            raise unknown_option_error(key, node.get("_target_", "?"), cause) from cause
        raise ConfigError(message if message.startswith(f"{key}.") else f"{key}: {message}") from cause


def unknown_option_error(key: str, target: object, err: TypeError) -> ConfigError:
    """``TypeError: ... unexpected keyword argument 'x'`` → "key.x is not an option of ..."."""
    message = str(err)
    if "unexpected keyword argument" not in message or message.count("'") < 2:
        return ConfigError(f"{key}: {message}")
    bad = message.split("'")[-2]
    name = getattr(target, "__qualname__", str(target))
    return ConfigError(
        f"{key}.{bad} is not an option of {name}; remove it or fix its spelling "
        "(the options are that class's constructor arguments)"
    )
