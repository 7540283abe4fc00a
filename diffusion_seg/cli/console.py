"""What the commands show: the package logger, the start-up config print, each command's
``--help`` (generated from its root config, so it lists what the command really takes) and the
copy of the terminal in the run's log file."""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from diffusion_seg import CONFIG_DIR

log = logging.getLogger("diffusion_seg")


def quiet_known_warnings() -> None:
    """Silence what the commands know to be noise; called as a command starts (and where a
    launched job starts in a process of its own), never at import, so importing the library
    leaves a user's warning filters alone."""
    # Epoch metrics come from a torchmetrics state that is already summed across processes,
    # so Lightning's advice to add sync_dist=True would only average identical numbers.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")
    # conf/hydra/launcher/{submitit_slurm,submitit_local,joblib}.yaml carry the plugins' own
    # config names on purpose (README, "Cluster and long runs"); Hydra 1.3 type-checks such a
    # file against the plugin's schema and warns that this matching is deprecated. The files
    # hold every key and their _target_, so they also stand alone where the matching is gone.
    warnings.filterwarnings(
        "ignore",
        message=r"\s*'hydra/launcher/(submitit_slurm|submitit_local|joblib)' is validated against ConfigStore",
    )
    # Optuna's SQLite storage logs every alembic plugin it loads at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    """Print the composed config (unresolved, so paths read as written) once per run."""
    print(OmegaConf.to_yaml(cfg, resolve=False), flush=True)


# --------------------------------------------------------------------------- --help

_TOP_KEY = re.compile(r"^([A-Za-z_]\w*):")
_DEFAULTS_ENTRY = re.compile(r"^\s+-\s+(?:override\s+)?([\w/]+)(?:@[\w.]+)?:")
_INLINE_COMMENT = re.compile(r"\s#\s*(.*)$")
_WIDTH = 100


def yaml_comments(path: Path) -> dict[str, str]:
    """The comment of each top-level key and each defaults-list group of a config file: the
    last paragraph of the ``#`` lines right above it (a bare ``#`` separates paragraphs), else
    its inline ``# comment``."""
    comments: dict[str, str] = {}
    paragraph: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if not text.startswith("@package"):
                paragraph = paragraph + [text] if text else []
            continue
        match = _TOP_KEY.match(line) or _DEFAULTS_ENTRY.match(line)
        if match:
            inline = _INLINE_COMMENT.search(line[match.end():])
            comments.setdefault(match.group(1), " ".join(paragraph) or (inline.group(1) if inline else ""))
        paragraph = []
    return comments


def _is_global(path: Path) -> bool:
    return path.is_file() and "@package _global_" in path.read_text().split("\n", 1)[0]


def _value(value: Any) -> str:
    if value == "???":
        return "???  (required)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _wrapped(text: str, indent: str) -> str:
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent)


def _console_script(module: str) -> str | None:
    return next((ep.name for ep in entry_points(group="console_scripts") if ep.value == f"{module}:main"), None)


def command_help(
    config_name: str,
    cfg: DictConfig,
    choices: Mapping[str, str | None] | None = None,
    option_choices: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The ``--help`` text of the command whose root config is ``conf/<config_name>.yaml``:
    the docstring of ``diffusion_seg.cli.<config_name>``, its top-level options with their
    values in ``cfg`` (the composed config, so overrides on the command line show) and their
    comments in the config files, then its config groups with their choices.

    Args:
        choices: the group → option selections (``hydra.runtime.choices``); the groups listed
            are those of them with a folder in ``conf/``.
        option_choices: the values an option takes, for options that take one of a few
            (default: the module's ``OPTION_CHOICES``).
    """
    module_name = f"diffusion_seg.cli.{config_name}"
    module = importlib.import_module(module_name)
    if option_choices is None:
        option_choices = getattr(module, "OPTION_CHOICES", {})
    comments = yaml_comments(CONFIG_DIR / f"{config_name}.yaml")
    order = list(comments)  # the root config's groups in its defaults order, the others after
    selected = sorted((choices or {}).items(), key=lambda gc: order.index(gc[0]) if gc[0] in order else len(order))
    groups = {g: c for g, c in selected if g != "hydra" and (CONFIG_DIR / g).is_dir()}
    for group, choice in groups.items():  # keys of `@package _global_` groups are top-level options
        path = CONFIG_DIR / group / f"{choice}.yaml"
        if _is_global(path):
            comments = {**yaml_comments(path), **comments}

    script = _console_script(module_name)
    lines = [textwrap.dedent(module.__doc__ or "").strip(), "",
             f"Usage: python -m diffusion_seg.{config_name} [key=value ...]"
             + (f"   (or: {script} [key=value ...])" if script else ""), "",
             "Options (key=value; the values shown are the current ones):"]
    values = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(values, dict)
    for key, value in values.items():
        if key == "hydra" or (key in groups and isinstance(value, dict)):
            continue
        allowed = option_choices.get(key)
        lines.append(f"  {key}={_value(value)}" + (f"   (one of: {', '.join(allowed)})" if allowed else ""))
        if comments.get(key):
            lines.append(_wrapped(comments[key], "      "))
    if groups:
        lines += ["", "Config groups (group=option; a group's own keys: group.key=value):"]
        for group, choice in groups.items():
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            if choice is not None and choice not in options:
                options.insert(0, choice)  # built into Hydra (hydra/launcher=basic)
            lines.append(f"  {group}={'null' if choice is None else choice}")
            lines.append(_wrapped("choices: " + ", ".join(options), "      "))
            if comments.get(group):
                lines.append(_wrapped(comments[group], "      "))
    if "hydra" in cfg:  # run by Hydra: its flags work too
        lines += ["", "--cfg job prints the whole composed config (with any overrides given); "
                  "--hydra-help lists Hydra's own flags."]
    return "\n".join(lines) + "\n"


def _help_template(*, _root_: DictConfig) -> str:
    """``hydra.help.template`` (conf/hydra/default.yaml): :func:`command_help` of the config
    Hydra composed for ``--help``."""
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices)
    assert isinstance(choices, dict)
    text = command_help(str(_root_.hydra.job.config_name), _root_, choices)
    return text.replace("$", "$$")  # Hydra fills `$NAME` placeholders in the template


if not OmegaConf.has_resolver("ds_command_help"):
    OmegaConf.register_new_resolver("ds_command_help", _help_template)


# --------------------------------------------------------------------------- the terminal in the log

# Plain text, the escape sequences terminals act on, carriage returns and newlines.
_TERMINAL_TOKEN = re.compile(
    r"(?P<text>[^\x1b\r\n]+)|(?P<csi>\x1b\[(?P<arg>[0-9;?]*)(?P<cmd>[@-~]))"
    r"|(?P<osc>\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?)|(?P<cr>\r)|(?P<nl>\n)|(?P<esc>\x1b.?)"
)


class TerminalCopy:
    """Terminal output → the lines it leaves on screen, for a log file.

    Progress bars redraw in place: tqdm with a carriage return, rich by moving the cursor up
    over its live lines and erasing them. Text after a carriage return or an erase replaces the
    line; a cursor-up (``ESC[nA``) discards the n lines above, which is why the last n finished
    lines are held back until no redraw can reach them (n: the most lines a redraw has gone
    back so far). Colours and other escape sequences are dropped. So each bar leaves its final
    state, once, whatever the refresh rate.

    Args:
        write: receives whole lines (with their newline), in order.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._line = ""
        self._returned = False  # a carriage return: the next text replaces the line
        self._held: list[str] = []
        self._reach = 0
        self._lock = threading.RLock()

    def feed(self, text: str) -> None:
        with self._lock:
            for token in _TERMINAL_TOKEN.finditer(text):
                kind = token.lastgroup
                if kind == "text":
                    if self._returned:
                        self._line, self._returned = "", False
                    self._line += token.group()
                elif kind == "cr":
                    self._returned = True
                elif kind == "nl":
                    self._finish_line()
                elif kind == "csi" and token.group("cmd") in "AF":  # cursor up n lines
                    arg = token.group("arg")
                    up = int(arg) if arg.isdigit() else 1
                    self._reach = max(self._reach, up)
                    del self._held[max(len(self._held) - up, 0):]
                    self._line = ""
                elif kind == "csi" and token.group("cmd") == "K":  # erase the line
                    self._line = ""

    def _finish_line(self) -> None:
        self._held.append(self._line.rstrip())
        self._line, self._returned = "", False
        while len(self._held) > self._reach:
            self._write(self._held.pop(0) + "\n")

    def flush(self) -> None:
        """Write the held lines (e.g. before a log record, which goes below them)."""
        with self._lock:
            for line in self._held:
                self._write(line + "\n")
            self._held.clear()

    def close(self) -> None:
        with self._lock:
            if self._line.strip():
                self._finish_line()
            self.flush()


class _Tee:
    """A text stream that writes to ``stream`` unchanged (the terminal sees exactly what it
    would) and feeds the same text to a :class:`TerminalCopy`; everything else (``isatty``,
    ``fileno``, ``encoding``...) is the stream's, so libraries format for the real terminal."""

    def __init__(self, stream: IO[str], copy: TerminalCopy) -> None:
        self._stream = stream
        self._copy = copy

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._copy.feed(text)
        return written

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _reaches(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether ``logger``'s records reach ``handler`` (on it or on an ancestor it propagates to)."""
    node: logging.Logger | None = logger
    while node is not None:
        if handler in node.handlers:
            return True
        if not node.propagate:
            return False
        node = node.parent
    return False


class TerminalLog(Callback):
    """Hydra callback (conf/hydra/default.yaml): for the job's duration, what the terminal shows
    is also written to the job's log file (the root logger's file handler, ``<task_name>.log``),
    as the lines it leaves on screen (:class:`TerminalCopy`): prints, Lightning's messages and
    metric tables, the final frame of each progress bar. Records of loggers that reach the file
    handler are written by it alone (no line twice); loggers with their own terminal handler
    that do not reach it (Lightning's: it sets ``propagate=False`` when imported before Hydra
    configures logging) write through the copy."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        root = logging.getLogger()
        handler = next((h for h in root.handlers if isinstance(h, logging.FileHandler)), None)
        if handler is None:  # hydra/job_logging without a file: nothing to copy into
            return
        file = open(handler.baseFilename, "a", encoding="utf-8")  # appends, as the handler does

        def write(line: str) -> None:
            file.write(line)
            file.flush()  # each line lands before the handler's next record

        copy = TerminalCopy(write)

        def flush_before_record(record: logging.LogRecord) -> bool:
            copy.flush()
            return True

        handler.addFilter(flush_before_record)
        tees = {id(sys.stdout): _Tee(sys.stdout, copy), id(sys.stderr): _Tee(sys.stderr, copy)}
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = tees[id(sys.stdout)], tees[id(sys.stderr)]
        redirected = []
        loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
        for logger in loggers:
            for h in logger.handlers:
                if (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                        and id(h.stream) in tees and not _reaches(logger, handler)):
                    redirected.append((h, h.setStream(tees[id(h.stream)])))

        def undo() -> None:
            for h, stream in redirected:
                h.setStream(stream)
            sys.stdout, sys.stderr = saved
            handler.removeFilter(flush_before_record)
            copy.close()
            file.close()

        self._undo.append(undo)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        while self._undo:
            self._undo.pop()()
