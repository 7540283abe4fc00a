"""``torch.compile`` for a network, in place, with an optional graph-break report.

:func:`compile_network` is the one place train, eval and predict compile the network (keys
``compile``, ``compile_mode``, ``compile_backend``, ``compile_debug`` of their configs, read by
:func:`diffusion_seg.builders.compile_from_config`). It uses :meth:`torch.nn.Module.compile`:
the module's call is compiled and the module itself stays what it was, so parameter names,
``state_dict`` keys and checkpoints are those of the eager network (no ``_orig_mod.``), the
learning-rate groups (by name) are unchanged, and a checkpoint written by a compiled run loads
into an eager one and back. Modules inserted inside the backbone (PDN's and LG-LSTM's,
:class:`~diffusion_seg.models.backbone.InsertedAfter`) are traced with it. Pickling or deep-copying the network drops the
compilation (``nn.Module.__getstate__``): a ``ddp_spawn`` worker runs eagerly.

With ``debug=True`` the first call in training mode and the first in eval mode are first run
through :func:`explain_graph_breaks` (:func:`torch._dynamo.explain`'s way: eagerly, with the
buffers and the random state restored afterwards, so the run's numbers do not change): one log
line with the number of graphs and graph breaks, then one line per distinct break reason with its count and where it happens,
and one per frame Dynamo gave up on. This resets Dynamo's caches, so graphs compiled before
(the other mode's) compile once more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# torch.compile's modes (inductor only); "reduce-overhead" and "max-autotune" use CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_backends() -> list[str]:
    """Every backend name ``torch.compile`` accepts, the debug ones included (``aot_eager``:
    Dynamo + AOT autograd without code generation, ``eager``: Dynamo only)."""
    return sorted(torch._dynamo.list_backends(exclude_tags=()))


def check_compile_options(mode: str, backend: str) -> None:
    """Raise ``ValueError`` naming the config key for a mode or backend torch does not know."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={mode!r} is invalid; allowed: {list(COMPILE_MODES)}")
    # (The default is known without importing Dynamo: a run with compile=false pays nothing.)
    if backend != "inductor" and backend not in compile_backends():
        shown = [b for b in compile_backends() if "TESTING" not in b and "minifier" not in b]
        raise ValueError(f"compile_backend={backend!r} is invalid; allowed: {shown}")
    if backend != "inductor" and mode != "default":
        raise ValueError(
            f"compile_mode={mode!r} applies to compile_backend=inductor only "
            f"(compile_backend={backend!r}); use compile_mode=default"
        )


def compile_network(
    net: nn.Module, mode: str = "default", backend: str = "inductor", debug: bool = False
) -> nn.Module:
    """Compile ``net`` in place (:meth:`torch.nn.Module.compile`) and return it.

    Args:
        net: the network; its parameters, buffers and ``state_dict`` keys are unchanged.
        mode: one of :data:`COMPILE_MODES` (inductor's).
        backend: a :func:`torch.compile` backend (:func:`compile_backends`).
        debug: log the graph breaks of the first call in each of train and eval mode.
    """
    check_compile_options(mode, backend)
    net.compile(backend=backend, mode=mode if backend == "inductor" else None)
    log.info("torch.compile: the network is compiled on its first call (backend=%s, mode=%s); "
             "a new input shape or train/eval switch compiles again", backend, mode)
    if debug:
        _explain_first_calls(net)
    return net


@dataclass
class GraphBreaks:
    """What :func:`explain_graph_breaks` found: graphs, breaks and their distinct reasons, and
    the frames Dynamo gave up on and ran eagerly (a break inside a loop skips the whole frame)."""

    graphs: int
    # (reason, where) → how often Dynamo reported it, most frequent first.
    reasons: list[tuple[tuple[str, str], int]] = field(default_factory=list)
    eager_frames: list[tuple[tuple[str, str], int]] = field(default_factory=list)

    @property
    def breaks(self) -> int:
        """Graph breaks: one fewer than the graphs (``explain``'s count), none without graphs."""
        return max(self.graphs - 1, 0)

    def lines(self, what: str = "") -> list[str]:
        what = f" ({what})" if what else ""
        head = f"torch.compile{what}: {self.graphs} graph(s), {self.breaks} graph break(s)"
        if self.eager_frames:
            head += f", {sum(n for _, n in self.eager_frames)} frame(s) run eagerly"
        if self.reasons or self.eager_frames:
            head += ":"
        return ([head]
                + [f"  graph break ×{n}: {reason} [{where}]" for (reason, where), n in self.reasons]
                + [f"  eager frame ×{n}: {reason} [{where}]" for (reason, where), n in self.eager_frames])


def _relative(path: str) -> str:
    """``path`` relative to the working directory when it lies under it."""
    with contextlib.suppress(ValueError):
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel
    return path


def _where(stack: list[Any]) -> str:
    """The innermost frame of a break's user stack."""
    if not stack:
        return "?"
    frame = stack[-1]
    return f"{_relative(frame.filename)}:{frame.lineno} in {frame.name}"


def _reason(message: str) -> str:
    """A Dynamo graph-break message (type, explanation, hints, debug context) → one line: its
    type and explanation."""
    lines = [line.strip() for line in message.strip().splitlines()]
    explanation = next((line.removeprefix("Explanation:").strip() for line in lines
                        if line.startswith("Explanation:")), "")
    return f"{lines[0]}: {explanation}" if explanation else lines[0]


_FRAME_SKIPPED = re.compile(r"frame skipped|skip(ping)? (the )?frame", re.IGNORECASE)
# How Dynamo chains the reasons in one message (a break, then "graph break in loop").
_ANOTHER_BREAK = "*** While handling this graph break, another graph break occurred: ***"


def _skipped_frame(message: str) -> tuple[str, str]:
    """A Dynamo message of a frame it skipped → (first line of each reason, the frame)."""
    reasons = [_reason(part) for part in message.split(_ANOTHER_BREAK) if part.strip()]
    match = re.search(r"frame skipped: (\S+) \((.*) line (\d+)\)", message)
    where = f"{_relative(match[2])}:{match[3]} in {match[1]}" if match else "?"
    return " → ".join(reasons), where


def explain_graph_breaks(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GraphBreaks:
    """Run ``fn(*args, **kwargs)`` once under Dynamo, as :func:`torch._dynamo.explain` does
    (a backend that only counts the graphs and runs them eagerly, between two
    :func:`torch._dynamo.reset`), and collect every graph break Dynamo recorded, deduplicated
    by reason and place, and the frames it skipped. ``explain``'s own report keeps only the
    reasons of graphs that end in a break, so it misses a break with no op before it, and it
    does not see skipped frames.

    A break inside a called function is reported for the caller's frame and again for the
    function's own frame: the ×N of a reason counts Dynamo's reports of it.
    """
    counters = torch._dynamo.utils.counters
    recorded = torch._dynamo.utils.graph_break_reasons
    graphs: list[torch.fx.GraphModule] = []

    def count(gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    before = Counter(counters["unimplemented"])
    try:
        torch.compile(fn, backend=count)(*args, **kwargs)
        reasons = Counter((_reason(r.reason), _where(r.user_stack)) for r in recorded)
    finally:
        torch._dynamo.reset()
    skipped: Counter[tuple[str, str]] = Counter()
    for message, n in (Counter(counters["unimplemented"]) - before).items():
        # Only frames of the traced code Dynamo gave up on; "unimplemented" also holds the
        # cause of each (counted again) and helpers it never traces (generators).
        if _FRAME_SKIPPED.search(message):
            skipped[_skipped_frame(message)] += n
    return GraphBreaks(len(graphs), reasons.most_common(), skipped.most_common())


@contextlib.contextmanager
def _unchanged(net: nn.Module) -> Iterator[None]:
    """Restore the buffers (BatchNorm statistics) and the random state after an extra pass."""
    saved = [(b, b.detach().clone()) for b in net.buffers()]
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    devices = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        yield
    with torch.no_grad():
        for buffer, value in saved:
            buffer.copy_(value)


def _explain_first_calls(net: nn.Module) -> None:
    """Wrap the compiled call so that its first call in each mode is explained first."""
    compiled = net._compiled_call_impl
    seen: set[bool] = set()

    def call(*args: Any, **kwargs: Any) -> Any:
        if net.training not in seen:
            seen.add(net.training)
            if len(seen) == 2:
                net._compiled_call_impl = compiled  # both modes explained: no more checks
            with _unchanged(net):
                report = explain_graph_breaks(net._call_impl, *args, **kwargs)
            name = type(getattr(net, "head", net)).__name__
            for line in report.lines(f"{name}, {'train' if net.training else 'eval'} mode"):
                log.info(line)
        return compiled(*args, **kwargs)

    net._compiled_call_impl = call
