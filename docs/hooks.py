"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages generated at build time, so they cannot
drift from the code.

- ``reference/configuration.md``: every config group of ``conf/``, every option, every key with
  its default and the comment above it (:func:`config_reference`);
- ``reference/commands.md``: every command's ``--help`` as the command prints it
  (``docs/cli_help.py``, one process);
- ``reference/errors.md``: every user-error message the package can raise, found in its source
  (:func:`error_catalogue`);
- ``reports/``: the committed study reports of ``experiments/reports/`` with their pictures.

The functions are importable without MkDocs (``tests/test_docs.py`` uses them).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
PACKAGE = ROOT / "diffusion_seg"
REPORTS = ROOT / "experiments" / "reports"

# --------------------------------------------------------------------------- conf/ → reference


@dataclass
class Key:
    """One key of a config file: its dotted path, its default as written, its comment."""

    path: str
    value: Any
    comment: str = ""


@dataclass
class ConfigFile:
    path: Path  # relative to conf/
    package: str  # "_global_", the group's path with dots, or "" for a root config
    header: str  # the comment at the top of the file
    keys: list[Key] = field(default_factory=list)
    defaults: list[str] = field(default_factory=list)


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_$][\w.$/+~-]*|\"[^\"]+\"|'[^']+')\s*:(?:\s|$)")
_INLINE = re.compile(r"\s#\s*(.*)$")


def _line_comments(text: str) -> dict[str, str]:
    """Dotted key path → the comment right above its line (the last paragraph of ``#`` lines),
    else its inline ``# comment``. Keys inside lists are not separate entries."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    paragraph: list[str] = []
    in_list_indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if not body.startswith("@package"):
                paragraph = paragraph + [body] if body else []
            continue
        indent = len(line) - len(line.lstrip(" "))
        if in_list_indent is not None and indent > in_list_indent:
            paragraph = []
            continue
        in_list_indent = None
        if stripped.startswith("- "):
            in_list_indent = indent
            paragraph = []
            continue
        match = _KEY_LINE.match(line)
        if not match:
            paragraph = []
            continue
        key = match.group("key").strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        inline = _INLINE.search(line[match.end():])
        comment = " ".join(paragraph) or (inline.group(1) if inline else "")
        comments.setdefault(path, comment)
        rest = line[match.end():].split(" #")[0].strip()
        if rest == "" or rest.startswith("&"):
            stack.append((indent, key))
            # a list under this key: its items are not keys of ours
        paragraph = []
    return comments


def flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of a mapping as (dotted path, value); lists and empty mappings are leaves."""
    if isinstance(node, dict) and node:
        out: list[tuple[str, Any]] = []
        for key, value in node.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [(prefix, node)]


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        body = stripped[1:].strip()
        if not body.startswith("@package"):
            lines.append(body)
    return " ".join(" ".join(lines).split())


def read_config(path: Path) -> ConfigFile:
    """One YAML file of ``conf/`` as a :class:`ConfigFile`."""
    text = path.read_text()
    relative = path.relative_to(CONF)
    first = text.split("\n", 1)[0]
    if "@package" in first:
        package = first.split("@package", 1)[1].strip()
    elif len(relative.parts) == 1:
        package = ""
    else:
        package = ".".join(relative.parts[:-1])
    data = yaml.safe_load(text) or {}
    comments = _line_comments(text)
    entry = ConfigFile(relative, package, _header(text))
    for key, value in flatten({k: v for k, v in data.items() if k != "defaults"}):
        entry.keys.append(Key(key, value, comments.get(key, "")))
    for item in data.get("defaults", []) or []:
        entry.defaults.append(item if isinstance(item, str) else ", ".join(f"{k}: {v}" for k, v in item.items()))
    return entry


def config_groups() -> dict[str, list[Path]]:
    """Group path (``model``, ``hydra/launcher``) → its option files, sorted."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        relative = path.relative_to(CONF)
        if len(relative.parts) > 1:
            groups.setdefault("/".join(relative.parts[:-1]), []).append(path)
    return groups


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text else "`\"\"`"


def _text(comment: str) -> str:
    return comment.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _key_table(entry: ConfigFile) -> list[str]:
    if not entry.keys:
        return ["No keys of its own."]
    prefix = "" if entry.package in ("", "_global_") else entry.package + "."
    lines = ["| key | default | comment |", "|---|---|---|"]
    for key in entry.keys:
        lines.append(f"| `{prefix}{key.path}` | {_cell(key.value)} | {_text(key.comment)} |")
    return lines


def config_reference() -> str:
    """The configuration reference page: root configs, then every group, option and key."""
    groups = config_groups()
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/` when the docs are built (`docs/hooks.py`): every root config, "
        "every group, every option and every key, with its default as written in the file and "
        "the comment above it. A key is set on the command line as shown "
        "(`python -m diffusion_seg.train model=pdn model.layers=2`); options marked "
        "`@package _global_` set top-level keys. How the groups fit together: "
        "[Configuration](../configuration.md).",
        "",
        "Groups: " + ", ".join(f"[`{g}`](#{_anchor(g)})" for g in groups),
        "",
        "## Root configs",
        "",
    ]
    for path in sorted(CONF.glob("*.yaml")):
        entry = read_config(path)
        out += [f"### `{path.name}`", "", f"`python -m diffusion_seg.{path.stem}`. {_text(entry.header)}".rstrip(), ""]
        if entry.defaults:
            out += ["Defaults list: " + ", ".join(f"`{d}`" for d in entry.defaults), ""]
        out += _key_table(entry) + [""]
    for group, files in groups.items():
        option = "hydra/launcher" if group == "hydra/launcher" else group
        out += [f"## {group}", "", f"{len(files)} options: " + ", ".join(f"`{p.stem}`" for p in files), ""]
        for path in files:
            entry = read_config(path)
            package = " (`@package _global_`: its keys are top-level)" if entry.package == "_global_" else ""
            out += [f"### `{option}={path.stem}`", "", f"`conf/{entry.path}`{package}. {_text(entry.header)}".rstrip(), ""]
            if entry.defaults:
                out += ["Defaults list: " + ", ".join(f"`{d}`" for d in entry.defaults), ""]
            out += _key_table(entry) + [""]
    return "\n".join(out)


def _anchor(group: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", group.lower().replace("/", ""))


# --------------------------------------------------------------------------- --help → reference


def commands_reference() -> str:
    """Every command's ``--help``, run at build time (``docs/cli_help.py``)."""
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_help.py"))],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"docs/cli_help.py failed:\n{result.stderr[-4000:]}")
    texts: dict[str, str] = json.loads(result.stdout)
    out = [
        "# Command-line reference",
        "",
        "Each command's `--help`, run when the docs are built (`docs/cli_help.py`), so this page "
        "is what the commands print. The Hydra commands (train, eval, predict, visualize, export, "
        "check) take `key=value` overrides of the [configuration](configuration.md); the "
        "others take flags. Every command is also a console script in the venv "
        "(`diffusion-seg-<command>`).",
        "",
    ]
    for title, text in texts.items():
        out += [f"## {title}", "", f"```text\n$ python -m diffusion_seg.{title.replace(' ', ' ')} --help\n{text.rstrip()}\n```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- errors → catalogue

USER_ERRORS = {
    "UserError": "diffusion_seg.errors",
    "ConfigError": "diffusion_seg.errors",
    "DatasetNotFoundError": "diffusion_seg.errors",
    "BadSampleError": "diffusion_seg.errors",
    "CheckpointError": "diffusion_seg.errors",
    "CheckpointNotFoundError": "diffusion_seg.errors",
    "NonFiniteError": "diffusion_seg.lightning.safety",
    "PrepareError": "diffusion_seg.data.convert",
    "ExportError": "diffusion_seg.deploy",
    "ReportError": "diffusion_seg.studies",
}


@dataclass
class ErrorSite:
    kind: str
    message: str
    where: str  # module path:line (function)


def _template(node: ast.AST | None) -> str:
    """A message expression as its text with ``{…}`` where values go."""
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{" + ast.unparse(value.value) + "}")  # type: ignore[attr-defined]
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _template(node.left) + _template(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _template(node.func.value)
    if isinstance(node, ast.IfExp):
        return _template(node.body) + " | " + _template(node.orelse)
    return "{" + ast.unparse(node) + "}"


def _is_config_message(message: str) -> bool:
    """A ``ValueError`` of a constructor that names a config key: the commands report it as a
    ``ConfigError`` (``diffusion_seg.config.as_config_error``)."""
    return bool(re.match(r"^\{?[a-z_]+\.[\w.{}]+", message)) or "is invalid; allowed" in message


def error_sites() -> list[ErrorSite]:
    """Every ``raise <UserError type>(message)`` and every ``print("error: …")`` in the package."""
    sites: list[ErrorSite] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions: dict[int, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    functions.setdefault(getattr(child, "lineno", -1), node.name)
        relative = path.relative_to(ROOT).as_posix()
        for node in ast.walk(tree):
            call = None
            # `raise ConfigError(...)`, and helpers that build one: `return DatasetNotFoundError(...)`
            value = node.exc if isinstance(node, ast.Raise) else node.value if isinstance(node, ast.Return) else None
            if isinstance(value, ast.Call):
                call = value
                name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
                if name in USER_ERRORS:
                    kind = name
                elif name == "ValueError" and isinstance(node, ast.Raise) and _is_config_message(_template(call.args[0]) if call.args else ""):
                    kind = "ValueError"
                else:
                    continue
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
                  and node.args and _template(node.args[0]).startswith("error: ")):
                call, kind = node, "printed"
            else:
                continue
            message = _template(call.args[0]) if call.args else ""
            message = message.removeprefix("error: ")
            where = f"{relative}:{node.lineno}"
            if node.lineno in functions:
                where += f" ({functions[node.lineno]})"
            sites.append(ErrorSite(kind, " ".join(message.split()), where))
    return sites


_KIND_NOTES = {
    "ValueError": "Raised by a constructor (a head, a dataset, a layer) for a value only it can "
                  "judge; the commands report it as a `ConfigError` line that starts with the key.",
    "printed": "Printed by a command itself (no exception).",
}


def error_catalogue() -> str:
    """The catalogue page: every user-error message grouped by type."""
    sites = error_sites()
    out = [
        "# Every error message",
        "",
        "Generated from the source when the docs are built (`docs/hooks.py`): every "
        "`raise` of one of the project's user-error types and every `error: …` the commands "
        "print. Each stops the command with one line, `error: <message>`, and exit status 2 "
        "(a file predict or visualize could not read: status 1 after the others). `{…}` is "
        "where the message names your value. What each type means and what to do: "
        "[Troubleshooting](../troubleshooting.md).",
        "",
        f"{len(sites)} messages.",
        "",
    ]
    order = list(USER_ERRORS) + ["ValueError", "printed"]
    for kind in order:
        chosen = [s for s in sites if s.kind == kind]
        if not chosen:
            continue
        out += [f"## {kind}", "", _KIND_NOTES.get(kind, ""), "", "| message | raised in |", "|---|---|"]
        for site in chosen:
            message = site.message.replace("|", "\\|").replace("`", "'")
            out.append(f"| `{message}` | `{site.where}` |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- MkDocs events

_GENERATED = {
    "reference/configuration.md": config_reference,
    "reference/commands.md": commands_reference,
    "reference/errors.md": error_catalogue,
}


def on_files(files, config):  # noqa: ANN001 - MkDocs' event signature
    from mkdocs.structure.files import File

    for uri, make in _GENERATED.items():
        files.append(File.generated(config, uri, content=make()))
    for path in sorted(REPORTS.rglob("*")):
        if not path.is_file():
            continue
        uri = "reports/" + path.relative_to(REPORTS).as_posix()
        if path.name == "report.md":
            text = path.read_text()
            if "report.png" not in text and (path.parent / "report.png").exists():
                # the report's picture under its title line
                title, _, rest = text.partition("\n")
                text = f"{title}\n\n![{path.parent.name}: report.png](report.png)\n{rest}"
            if "curves.png" not in text and (path.parent / "curves.png").exists():
                text += "\n\n![learning curves](curves.png)\n"
            files.append(File.generated(config, uri, content=text))
        else:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
