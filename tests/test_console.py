"""The run's log file holds what the terminal showed: prints, loggers outside the root logger
(Lightning's), tables; progress bars leave their final frame, not every redraw."""

from __future__ import annotations

import io
import logging
import sys

from rich.console import Console
from rich.progress import Progress

from diffusion_seg.cli.console import TerminalCopy, TerminalLog, _Tee


def screen(*chunks: str) -> list[str]:
    lines: list[str] = []
    copy = TerminalCopy(lambda line: lines.append(line))
    for chunk in chunks:
        copy.feed(chunk)
    copy.close()
    assert all(line.endswith("\n") for line in lines)
    return [line[:-1] for line in lines]


def test_carriage_returns_leave_the_last_state_and_escapes_are_dropped():
    bar = [f"\rEpoch 1: {p:3d}%|{'#' * (p // 10):<10}|" for p in range(0, 101, 5)]
    assert screen("start\n", *bar, "\n", "\x1b[1;35mval\x1b[0m metrics   \r\n", "\n", "end") == [
        "start", "Epoch 1: 100%|##########|", "val metrics", "", "end"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_rich_live_progress_bar_leaves_its_final_frame_and_the_terminal_is_unchanged():
    terminal = FakeTerminal()
    lines: list[str] = []
    copy = TerminalCopy(lambda line: lines.append(line))
    tee = _Tee(terminal, copy)
    assert tee.isatty() and tee.getvalue() == ""  # everything else is the terminal's
    console = Console(file=tee, force_terminal=True, width=80)
    with Progress(console=console, auto_refresh=False) as progress:  # two lines: redraws move up
        task = progress.add_task("training", total=200)
        val = progress.add_task("validation", total=200)
        for step in range(200):
            progress.update(task, advance=1, description=f"training {step}")
            progress.update(val, advance=1, description=f"validation {step}")
            progress.refresh()
            if step == 100:
                progress.console.print("[bold]val metrics[/bold] step 100")  # printed above the bar
    console.print("test metrics")
    copy.close()
    drawn = terminal.getvalue()
    assert drawn.count("\x1b[1A") >= 200  # the terminal got every redraw, escape codes and all
    text = "".join(lines)
    assert "\x1b" not in text and "\r" not in text
    assert sum("training" in line for line in lines) <= 2, lines  # not one per redraw
    assert lines[-3].startswith("training 199 ") and lines[-2].startswith("validation 199 ")  # the final frame
    assert lines[-1] == "test metrics\n"
    assert lines.index("val metrics step 100\n") < len(lines) - 2


def test_terminal_log_copies_prints_and_lightnings_logger_once(tmp_path, capsys):
    """As Hydra sets it up: a root logger with a console and a file handler, and a logger with
    its own terminal handler that does not propagate (Lightning's)."""
    log_file = tmp_path / "train.log"
    root = logging.getLogger()
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    console_handler = logging.StreamHandler(sys.stdout)
    saved = root.handlers[:], root.level
    root.handlers[:] = [console_handler, file_handler]
    root.setLevel(logging.INFO)
    lightning = logging.getLogger("fake_lightning")
    lightning_handler = logging.StreamHandler(sys.stderr)
    lightning.addHandler(lightning_handler)
    lightning.propagate = False
    lightning.setLevel(logging.INFO)
    stdout, stderr = sys.stdout, sys.stderr
    callback = TerminalLog()
    try:
        callback.on_job_start(config=None)
        print("a config line")
        logging.getLogger("diffusion_seg").info("Run dir: here")
        lightning.info("\nval metrics\nclass IoU")
        print("\r loading 50%\r loading 100%")
        callback.on_job_end(config=None, job_return=None)
    finally:
        root.handlers[:], root.level = saved
        lightning.handlers.clear()
        file_handler.close()
    assert sys.stdout is stdout and sys.stderr is stderr and lightning_handler.stream is stderr  # restored
    assert log_file.read_text() == ("a config line\n[diffusion_seg] Run dir: here\n\nval metrics\nclass IoU\n"
                                    " loading 100%\n")
    shown = capsys.readouterr()
    assert shown.out == "a config line\nRun dir: here\n\r loading 50%\r loading 100%\n"  # unchanged
    assert shown.err == "\nval metrics\nclass IoU\n"
