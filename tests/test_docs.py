"""The documentation: README and the docs site (mkdocs.yml, docs/).

Fast (``make test-fast``): the README's length and links, the generated configuration
reference against ``conf/``, the error catalogue against the source, the example head of
docs/extending.md. Slow: the strict MkDocs build, every shell command of the docs (run, checked
as the commands check their command line, or skipped by a rule below with its reason), and a
headless Chromium that loads the built site and checks that math and pictures rendered.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))


@functools.lru_cache(maxsize=None)
def _hooks():
    """docs/hooks.py, the generator of the reference pages, as a module."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_hooks"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- README


def github_slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's toc anchor (``toc.slugify``)."""
    import unicodedata

    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(path: Path) -> list[str]:
    lines, fence = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#{1,6} ", line):
            lines.append(line.lstrip("#").strip())
    return lines


def markdown_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_is_short_and_keeps_the_ci_test_command():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make test " in text and "make train" in text  # the two Quickstart commands
    assert "test metrics (epoch 18, step 864)" in text and "mIoU           89.25" in text


def test_every_readme_link_resolves():
    text = README.read_text()
    links = markdown_links(text)
    assert len(links) >= 20
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (README.parent / target).resolve() if target else README
        assert path.exists(), f"README links to {link}: no such file"
        if anchor:
            assert path.suffix == ".md", link
            slugs = {github_slug(h) for h in headings(path)} | {mkdocs_slug(h) for h in headings(path)}
            assert anchor in slugs, f"README links to {link}: no such heading"


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in PAGES:
        uri = page.relative_to(DOCS).as_posix()
        assert f" {uri}\n" in nav, f"docs/{uri} is not in mkdocs.yml's nav"


# --------------------------------------------------------------------------- generated pages


def _flat_keys(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flat_keys(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def test_config_reference_lists_every_option_of_every_group():
    """Walk conf/ independently of the generator: every file is a section and every key of it
    (nested keys dotted, with the group's package) is a row of that section."""
    page = _hooks().config_reference()
    sections = dict(re.findall(r"^### `([^`]+)`\n(.*?)(?=^### |^## |\Z)", page, flags=re.S | re.M))
    conf = ROOT / "conf"
    files = sorted(conf.rglob("*.yaml"))
    assert len(files) > 100
    for path in files:
        relative = path.relative_to(conf)
        title = path.name if len(relative.parts) == 1 else f"{'/'.join(relative.parts[:-1])}={path.stem}"
        assert title in sections, f"conf/{relative} has no section"
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        first = text.split("\n", 1)[0]
        if len(relative.parts) == 1 or ("@package" in first and "_global_" in first):
            prefix = ""
        elif "@package" in first:
            prefix = first.split("@package", 1)[1].strip() + "."
        else:
            prefix = ".".join(relative.parts[:-1]) + "."
        for key in _flat_keys({k: v for k, v in data.items() if k != "defaults"}):
            assert f"| `{prefix}{key}` |" in sections[title], f"conf/{relative}: {prefix}{key} missing"
    # the comment above a key reaches its row
    assert "Seeds python, numpy, torch and dataloader workers" in sections["train.yaml"]


def test_error_catalogue_lists_the_raised_messages():
    hooks = _hooks()
    sites = hooks.error_sites()
    assert len(sites) > 100
    kinds = {s.kind for s in sites}
    assert {"ConfigError", "DatasetNotFoundError", "BadSampleError", "CheckpointError", "ExportError",
            "PrepareError", "ReportError", "printed"} <= kinds
    page = hooks.error_catalogue()
    # every user-error type raised in the package is one the catalogue knows
    raised = set(re.findall(r"raise (\w+Error)\(", "\n".join(p.read_text() for p in (ROOT / "diffusion_seg").rglob("*.py"))))
    from diffusion_seg.errors import UserError

    import diffusion_seg.data.convert, diffusion_seg.deploy, diffusion_seg.lightning.safety, diffusion_seg.studies  # noqa: E401,F401
    user_types = {cls.__name__ for cls in _subclasses(UserError)}
    assert raised & user_types <= set(hooks.USER_ERRORS), raised & user_types - set(hooks.USER_ERRORS)
    assert "is invalid; allowed" in page and "no checkpoint at" in page


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# --------------------------------------------------------------------------- extending.md


def test_the_example_head_of_extending_builds_and_runs(tmp_path, monkeypatch):
    import torch
    from hydra.utils import instantiate

    from diffusion_seg.models.backbone import TimmBackbone
    from diffusion_seg.models.segmentor import Segmentor

    text = (DOCS / "extending.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))
    package = tmp_path / "my_heads"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "context_head.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("my_heads")]:
        monkeypatch.delitem(sys.modules, name)
    net = Segmentor(TimmBackbone("test_resnet"), instantiate(config), num_classes=5)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 5, 8, 8) and set(out.aux) == {"layer3"}
    assert "context_norm" in net.head.diagnostics()
    assert any(n.startswith("head.") for n, _ in net.named_parameters())


# --------------------------------------------------------------------------- shell commands

HYDRA_COMMANDS = {"train", "eval", "predict", "export", "visualize", "check"}

# Commands of the docs that the suite does not run here, by rule: (pattern, reason).
SKIPPED = [
    (r"^make (train|test|test-fast|study|verify-weights|eval|setup)\b", "minutes of training or the whole suite"),
    (r"diffusion_seg\.(train|eval|predict|export|visualize|check) --help",
     "the build runs every command's --help in one process for the command-line reference"),
    (r"^make docs\b", "the docs build: test_docs_build_strict_and_render runs it"),
    (r"^make bench\b|diffusion_seg\.bench (?!--help)", "a benchmark: minutes (tests/test_bench_*.py run them --quick)"),
    (r"ckpt_path=|--ckpt ", "needs a trained checkpoint (tests/test_eval_outputs.py, test_predict.py, "
                            "test_export.py, test_visualize.py run these commands on one)"),
    (r"\bstudy=", "a study: composing every job takes seconds each (tests/test_experiments.py composes every study)"),
    (r"diffusion_seg\.prepare\b|^tar ", "needs the downloaded dataset release (tests/test_prepare.py runs the converters)"),
    (r"diffusion_seg\.report\b", "needs a finished sweep dir (tests/test_report.py)"),
    (r"diffusion_seg\.pretrain\b", "minutes of pretraining (make verify-weights)"),
    (r"^\.venv/bin/pytest|^\.venv/bin/python -m tests\.", "the test suite itself"),
    (r"^wandb ", "needs a W&B account"),
    (r"<[^>]*\s[^>]*>", "a placeholder for the user's own overrides"),
    (r"\bmodel=context\b", "the example head of docs/extending.md, which is not in conf/: "
                           "test_the_example_head_of_extending_builds_and_runs builds and runs it"),
]


def shell_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, expected output lines) of every ```bash / ```console block of the docs
    and the README; continuation lines joined."""
    found = []
    for page in [README, *PAGES]:
        for lang, body in re.findall(r"^ *```(bash|console)\n(.*?)^ *```", page.read_text(), re.S | re.M):
            lines = [line.strip() for line in body.splitlines()]
            joined: list[tuple[str, list[str]]] = []
            pending = ""
            for line in lines:
                if lang == "console" and not line.startswith("$ ") and not pending:
                    if joined:
                        joined[-1][1].append(line)
                    continue
                line = line[2:] if lang == "console" and line.startswith("$ ") else line
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                command = (pending + line).strip()
                pending = ""
                if command and not command.startswith("#"):
                    joined.append((command, []))
            found += [(page.relative_to(ROOT).as_posix(), c, out) for c, out in joined]
    return found


def _argv(command: str) -> list[str] | None:
    try:
        return shlex.split(command, comments=True)
    except ValueError:
        return None


PLACEHOLDERS = {"<date>": "2026-11-21_10-00-00", "<run dir>": "logs/train/runs/x", "<partition>": "gpu",
                "<account>": "acct"}


def classify(command: str) -> tuple[str, str]:
    """("skip", reason) | ("check", config name) | ("run", "")"""
    for pattern, reason in SKIPPED:
        if re.search(pattern, command):
            return "skip", reason
    argv = _argv(command)
    if argv and argv[0] in ("python", ".venv/bin/python") and argv[1:2] == ["-m"]:
        module = argv[2]
        name = module.rpartition(".")[2]
        if "--help" in argv or module == "diffusion_seg.bench":
            return "run", ""
        if module.startswith("diffusion_seg.") and name in HYDRA_COMMANDS:
            return "check", name
    if argv and argv[0] == "make" and argv[1:] in (["help"],):
        return "run", ""
    return "unknown", ""


def test_every_docs_command_is_run_checked_or_skipped_with_a_reason():
    commands = shell_commands()
    assert len(commands) > 60
    unknown = [(page, c) for page, c, _ in commands if classify(c)[0] == "unknown"]
    assert not unknown, f"add a rule to SKIPPED (with its reason) or make these runnable: {unknown}"


@pytest.mark.slow
def test_docs_commands_pass_the_start_up_checks(monkeypatch):
    """Every train / eval / predict / export / visualize / check line of the docs goes through
    the check each command runs before it starts (diffusion_seg.validation: composition, keys,
    types, ranges, every job of a sweep); a line followed by its output in a ```console block
    must fail with exactly that message."""
    from diffusion_seg.errors import ConfigError
    from diffusion_seg.validation import check_command_line

    monkeypatch.setenv("WANDB_MODE", "offline")
    checked = 0
    failures = []
    for page, command, output in shell_commands():
        kind, config = classify(command)
        if kind != "check":
            continue
        for placeholder, value in PLACEHOLDERS.items():
            command = command.replace(placeholder, value)
        argv = _argv(command)[3:]
        expected = next((line.removeprefix("error: ") for line in output if line.startswith("error: ")), None)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                check_command_line(argv, config)
            error = None
        except ConfigError as err:
            error = str(err)
        if error != expected:
            failures.append(f"{page}: {command}\n    expected {expected!r}\n    got      {error!r}")
        checked += 1
    assert checked >= 30
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_docs_commands_that_run_in_seconds():
    """The commands of the docs that run in seconds on CPU, run as written."""
    ran = 0
    env = {**os.environ, "WANDB_MODE": "offline"}
    for page, command, _ in shell_commands():
        if classify(command)[0] != "run":
            continue
        argv = _argv(command)
        if argv[0] in ("python", ".venv/bin/python"):
            argv[0] = sys.executable
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, f"{page}: {command}\n{result.stderr[-2000:]}"
        assert result.stdout.strip(), command
        ran += 1
    assert ran >= 1


# --------------------------------------------------------------------------- the built site


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """``mkdocs build --strict`` once per test session (pytest-xdist workers share it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's
    site = shared / "docs-site"
    with FileLock(str(shared / "docs-site.lock")):
        log = shared / "docs-site.log"
        if not (site / "index.html").exists():
            result = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                timeout=600)
            log.write_text(f"{result.returncode}\n{result.stdout}\n{result.stderr}")
        returncode, _, output = log.read_text().partition("\n")
    return site, int(returncode), output


@pytest.mark.slow
def test_docs_build_strict_with_no_warnings(built_site):
    site, returncode, output = built_site
    assert returncode == 0, output[-4000:]
    assert "WARNING" not in output, output[-4000:]
    for page in ["index.html", "heads/pdn.html", "heads/difnet.html", "reference/configuration.html",
                 "reference/commands.html", "reference/errors.html", "reference/api.html",
                 "reports/index.html", "reports/builtin_heads_difficulty/report.html",
                 "reports/builtin_heads_difficulty/report.png", "assets/katex/katex.min.js"]:
        assert (site / page).is_file(), page
    commands = (site / "reference/commands.html").read_text()
    assert "Train (and then test) a segmentation model" in commands and "usage: python -m diffusion_seg.bench" in commands
    api = (site / "reference/api.html").read_text()
    assert 'id="diffusion_seg.models.heads.SegmentationHead"' in api
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()  # no network needed


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_the_built_site_renders_math_and_pictures_in_chromium(built_site):
    site, returncode, output = built_site
    assert returncode == 0, output[-4000:]
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium: make setup installs Debian's chromium where it runs as root with apt-get")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (docs extra) not installed")
    from PIL import Image

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=browser, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("data:")
                    else problems.append(f"request outside the site: {r.url}"))
            checks = {"index.html": (0, 1), "heads/pdn.html": (8, 2), "heads/difnet.html": (8, 2),
                      "reports/builtin_difnet_walks/report.html": (0, 1)}
            for url, (min_math, min_images) in checks.items():
                page.goto(base + url, wait_until="networkidle")
                page.wait_for_timeout(300)
                math = page.locator(".arithmatex").count()
                rendered = page.locator(".arithmatex .katex").count()
                assert math >= min_math and rendered == math, f"{url}: {rendered} of {math} formulas rendered"
                assert page.locator(".katex-error").count() == 0, url
                images = page.evaluate("Array.from(document.querySelectorAll('article img'))"
                                       ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
                assert len(images) >= min_images, f"{url}: {images}"
                assert all(ok for _, ok in images), f"{url}: not loaded: {images}"
                shot = Image.open(io.BytesIO(page.screenshot())).convert("L")
                low, high = shot.getextrema()
                assert high - low > 100 and len(set(shot.getdata())) > 20, f"{url}: blank screenshot"
                if min_math:  # a display formula drawn as glyphs, not left as TeX source
                    box = page.locator(".arithmatex .katex-display").first
                    box.scroll_into_view_if_needed()
                    formula = Image.open(io.BytesIO(box.screenshot())).convert("L")
                    assert formula.getextrema()[0] < 100, f"{url}: display math drew nothing"
                    assert "\\frac" not in box.inner_text() and "\\begin" not in box.inner_text()
            chromium.close()
    finally:
        server.shutdown()
    assert not problems, problems
