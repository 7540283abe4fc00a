"""`compile=true`: every head compiles in place (checkpoints unchanged) and trains to the eager
loss; `compile_debug=true` lists real graph breaks; the CLI runs compiled and its checkpoint
evaluates eagerly.

Most heads compile with ``aot_eager`` (Dynamo + AOT autograd: graph capture, hooks and the
backward are exercised without generating C++); one with inductor, the default backend."""

from __future__ import annotations

import copy
import csv
import logging
import warnings

import pytest
import torch
import yaml
from torch import nn
from torch._dynamo import lookup_backend, register_backend

from diffusion_seg.builders import build_segmentor, build_task, compile_from_config
from diffusion_seg.checkpoints import load_checkpoint_file
from diffusion_seg.data.preprocess import Preprocessor
from diffusion_seg.errors import ConfigError
from diffusion_seg.inference import Predictor
from diffusion_seg.models.compile import COMPILE_MODES, compile_network, explain_graph_breaks

from .conftest import FAST_TRAIN, compose_config, run_cli, run_dirs

pytestmark = pytest.mark.slow  # inductor compiles: seconds each

# Small variants of every head on the tiny backbone (conf/model/<name>.yaml + overrides).
HEADS = {
    "fcn": ["model.channels=16"],
    "deeplabv2": [],
    "pdn": ["model.hidden=4", "model.layers=1", "model.modules=2"],  # one module hooked in layer4
    "difnet": ["model.walks=1", "model.psi_channels=8"],  # scaled_dot_product_attention
    "lg_lstm": ["model.hidden=4", "model.layers=1", "model.insert_at=layer3"],  # hooked
    "pspnet": ["model.channels=16", "model.aux_channels=8"],
    "deeplabv3": ["model.channels=16", "model.aux_channels=8"],
}


def build(head: str, *overrides: str):
    cfg = compose_config(["backbone=tiny", f"model={head}", *HEADS[head], *overrides])
    torch.manual_seed(0)
    net = build_segmentor(cfg, num_classes=3)
    return cfg, net


def train_step(cfg, net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The task's training step (loss + aux losses) and its backward, outside a Trainer."""
    task = build_task(cfg, net, ["a", "b", "c"])
    torch.manual_seed(1)  # the same dropout masks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = task.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}


GRAPHS: list[torch.fx.GraphModule] = []


@register_backend
def counting_aot_eager(gm: torch.fx.GraphModule, example_inputs):
    """``aot_eager`` that also counts the graphs Dynamo captured: one means no graph break."""
    GRAPHS.append(gm)
    return lookup_backend("aot_eager")(gm, example_inputs)


@pytest.mark.parametrize("head", list(HEADS))
def test_compiled_training_step_gives_the_eager_loss(head):
    cfg, eager = build(head)
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    GRAPHS.clear()
    compile_network(compiled, backend="counting_aot_eager")
    assert list(compiled.state_dict()) == keys  # compiled in place: no _orig_mod. prefix
    assert not any("_orig_mod" in k for k in keys)
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=g),
             "mask": torch.randint(0, 3, (2, 32, 32), generator=g)}
    batch["mask"][:, :4] = 255
    loss, grads = train_step(cfg, eager, batch)
    loss_c, grads_c = train_step(cfg, compiled, batch)
    if len(GRAPHS) != 1:  # a graph break: list the reasons
        report = explain_graph_breaks(copy.deepcopy(eager), batch["image"])
        pytest.fail("\n".join(report.lines(f"{head}, {len(GRAPHS)} graphs compiled")))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-6)
    assert grads_c.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), b_c in zip(eager.named_buffers(), compiled.buffers()):  # BatchNorm statistics
        torch.testing.assert_close(b_c, b, rtol=1e-4, atol=1e-6, msg=name)


def test_inductor_network_then_the_eager_dense_crf(monkeypatch):
    """The default backend (C++ kernels on CPU) at inference, as eval and predict run it; the
    CRF after it stays eager (predict and eval share inference.predict)."""
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)  # no worker pool to start
    _, net = build("deeplabv2")
    inference = {"crf": True, "crf_params": {"iterations": 2}}
    preprocessor = Preprocessor([0.5] * 3, [0.25] * 3, 8)
    eager = Predictor(copy.deepcopy(net), preprocessor, inference)
    compiled = Predictor(compile_network(net), preprocessor, inference)
    images = torch.randn(2, 3, 32, 32)
    sizes = [(32, 32), (32, 32)]
    with torch.no_grad():  # (one input shape: another batch size would compile again)
        torch.testing.assert_close(compiled.net(images).logits, eager.net(images).logits, rtol=1e-4, atol=1e-5)
    for (label, prob), (label_c, prob_c) in zip(eager(images, sizes, sizes), compiled(images, sizes, sizes)):
        assert (label == label_c).mean() > 0.999
        assert abs(prob - prob_c).max() < 1e-4


def scale(x: torch.Tensor) -> torch.Tensor:
    return x * x.sum().item()  # a graph break (a Python number out of a tensor)


class Breaking(nn.Module):
    """Three known graph breaks: one place twice (``scale``'s ``.item()``), ``print`` once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = scale(x)
        x = scale(x)
        print("in forward")
        return x + 1


class BreakingInALoop(nn.Module):
    """A break inside a loop: Dynamo skips the whole frame and runs it eagerly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = x * x.sum().item()
        return x


def test_debug_lists_graph_breaks_with_counts(caplog, capsys):
    report = explain_graph_breaks(Breaking(), torch.ones(3))
    assert report.breaks == 3 and report.graphs == 4 and not report.eager_frames
    ((item, where), n), ((printed, _), m) = report.reasons
    # scale's break is reported for forward (twice) and for scale's own frame (once)
    assert (n, m) == (3, 1) and "Tensor.item()" in item and "builtin operator `print`" in printed
    assert where.startswith("tests/test_compile.py:") and where.endswith(" in scale")
    capsys.readouterr()

    net = compile_network(Breaking(), backend="eager", debug=True)
    with caplog.at_level(logging.INFO, logger="diffusion_seg.models.compile"):
        out = net(torch.ones(3))  # train mode: explained, then run compiled
        net(torch.ones(3))  # not explained again
    torch.testing.assert_close(out, torch.full((3,), 28.0))
    lines = [r.getMessage() for r in caplog.records
             if r.name == "diffusion_seg.models.compile" and "graph" in r.getMessage()]
    assert lines[0] == "torch.compile (Breaking, train mode): 4 graph(s), 3 graph break(s):"
    assert lines[1].startswith("  graph break ×3: ") and "item()" in lines[1] and "in scale]" in lines[1]
    assert lines[2].startswith("  graph break ×1: ") and "print" in lines[2] and len(lines) == 3
    assert capsys.readouterr().out.count("in forward") == 3  # explained, then compiled, twice

    report = explain_graph_breaks(BreakingInALoop(), torch.ones(3))
    assert report.graphs == 0 and report.breaks == 0
    ((reason, where), n), = report.eager_frames
    assert n == 1 and "item()" in reason and "graph break in loop" in reason
    assert where.endswith(" in forward") and "test_compile.py" in where
    assert report.lines()[0] == "torch.compile: 0 graph(s), 0 graph break(s), 1 frame(s) run eagerly:"


def test_debug_leaves_the_step_unchanged(caplog):
    """The extra explained pass restores BatchNorm statistics and the random state."""
    cfg, net = build("fcn")  # BatchNorm + dropout
    plain = copy.deepcopy(net)
    compile_network(plain, backend="eager")
    compile_network(net, backend="eager", debug=True)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    expected = plain(x).logits
    torch.manual_seed(3)
    with caplog.at_level(logging.INFO, logger="diffusion_seg.models.compile"):
        got = net(x).logits
    assert "torch.compile (FCNHead, train mode): 1 graph(s), 0 graph break(s)" in caplog.messages
    torch.testing.assert_close(got, expected)
    for b, b_plain in zip(net.buffers(), plain.buffers()):
        torch.testing.assert_close(b, b_plain)


def test_invalid_options_name_the_key():
    cfg, net = build("fcn", "compile_mode=fast")
    with pytest.raises(ConfigError, match=r"^compile_mode='fast' is invalid; allowed: \['default', "):
        compile_from_config(cfg, net)
    cfg, net = build("fcn", "compile_backend=nope")
    with pytest.raises(ConfigError, match=r"^compile_backend='nope' is invalid; allowed: \[.*'inductor'"):
        compile_from_config(cfg, net)
    cfg, net = build("fcn", "compile_backend=aot_eager", "compile_mode=max-autotune")
    with pytest.raises(ConfigError, match="applies to compile_backend=inductor only"):
        compile_from_config(cfg, net)
    assert net._compiled_call_impl is None
    cfg, net = build("fcn", "compile=true", f"compile_mode={COMPILE_MODES[-1]}")
    assert compile_from_config(cfg, net)._compiled_call_impl is not None
    for name in ("eval", "predict"):  # the same keys in every command
        root = compose_config(["ckpt_path=x", "input=x", "output=x"] if name == "predict" else ["ckpt_path=x"],
                              config_name=name)
        assert (root.compile, root.compile_mode, root.compile_backend, root.compile_debug) == (
            False, "default", "inductor", False)


@pytest.mark.slow
def test_train_compiled_then_eval_eagerly(tmp_path):
    log_dir = tmp_path / "logs"
    proc = run_cli("diffusion_seg.train", *FAST_TRAIN, "model=deeplabv2", "compile=true",
                   "compile_backend=aot_eager", "compile_debug=true", log_dir=log_dir)
    out = proc.stdout + proc.stderr
    # the debug report, once per mode (the per-head test above checks there is no break)
    assert out.count("torch.compile (DeepLabV2Head, train mode): 1 graph(s), 0 graph break(s)") == 1
    assert out.count("torch.compile (DeepLabV2Head, eval mode): 1 graph(s), 0 graph break(s)") == 1
    assert "test metrics" in out  # fit, then test of the best checkpoint, compiled
    run_dir = run_dirs(log_dir)[0]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = load_checkpoint_file(ckpt)["state_dict"]
    eager = build_segmentor(compose_config(["backbone=tiny", "model=deeplabv2"]), 3)
    assert set(state) == {f"net.{k}" for k in eager.state_dict()}  # the eager names
    run_cli("diffusion_seg.eval", f"ckpt_path={ckpt}", log_dir=tmp_path)  # compile=false
    metrics = yaml.safe_load(next((tmp_path / "eval" / "runs").glob("*/metrics.yaml")).read_text())
    with open(run_dir / "csv" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("val/mIoU")][-1]
    assert metrics["val/mIoU"] == pytest.approx(float(logged["val/mIoU"]), abs=1e-3)
