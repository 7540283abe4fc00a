"""timm backbones as multi-scale feature extractors.

One wrapper, :class:`TimmBackbone`, over ``timm.create_model(..., features_only=True)``. It
returns the stage features (strides 4/8/16/32, or dilated to output stride 8/16 as in
DeepLab-v2, which both papers build on) together with their channel counts, and lets a head
insert a module at a block boundary inside it (PDN puts its module between res5b and res5c):
the block there is wrapped by :class:`InsertedAfter`, so the module shows in ``print(net)``
where it runs.

Weights come from the hub (``pretrained=True``) when the machine is online, or from a local
``.pth`` / ``.safetensors`` file (``weights=/path``) with no network at all.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

VALID_OUTPUT_STRIDES = (8, 16, 32)
DILATION_PATTERNS = ("timm", "deeplab")

# ImageNet statistics: the fallback when a timm model has no pretrained config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmBackbone(nn.Module):
    """Feature pyramid of a timm model.

    Args:
        name: timm model name, e.g. ``resnet101`` or ``test_resnet`` (tiny, for CPU tests).
        output_stride: 8, 16 or 32. 8 and 16 replace the last strides by dilation.
        pretrained: load ImageNet weights (from ``weights`` if given, else from the hub).
        weights: local checkpoint file (.pth / .pt / .bin / .safetensors) to load offline.
            Implies ``pretrained``.
        frozen_bn: replace every BatchNorm by a frozen copy (running statistics and affine
            parameters fixed): the papers' single-GPU, batch-1 setting.
        dilation_pattern: where the dilated stages (output stride 8/16) dilate. ``timm``:
            the first block of a dilated stage keeps the previous stage's dilation (timm's
            and torchvision's convention). ``deeplab``: *every* 3×3 conv of layer3 has
            dilation 2 and of layer4 dilation 4 at output stride 8 (DeepLab-v2's ResNet-101,
            res4a/res5a included, which the DifNet code and PDN's DeepLab-v2 base use).
            ResNet-family backbones only.
        out_indices: which stages to return (timm ``out_indices``).
        in_chans: input channels.
        activation_checkpointing: keep only each block's input of every returned stage in
            training and recompute the block in backward (:class:`CheckpointedStage`):
            memory of the stages drops to one tensor per block plus one block's activations,
            for about one extra forward pass of compute. Gradients and BatchNorm statistics
            are those of the plain backbone. Stages that are ``nn.Sequential`` of blocks
            (ResNets), or have one as ``.blocks``.
    """

    def __init__(
        self,
        name: str,
        output_stride: int = 8,
        pretrained: bool = False,
        weights: str | None = None,
        frozen_bn: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        in_chans: int = 3,
        dilation_pattern: str = "timm",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ValueError(
                f"backbone.output_stride={output_stride} is not supported; "
                f"allowed values: {list(VALID_OUTPUT_STRIDES)}"
            )
        if dilation_pattern not in DILATION_PATTERNS:
            raise ValueError(
                f"backbone.dilation_pattern={dilation_pattern!r} is invalid; allowed: "
                + ", ".join(DILATION_PATTERNS)
            )
        if name not in timm.list_models():
            raise ValueError(
                f"backbone.name={name!r} is not a timm model; "
                "see timm.list_models() for the available names"
            )
        kwargs: dict[str, Any] = {}
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"backbone.weights: no file at {path}. Point it to a .pth/.safetensors "
                    "ImageNet checkpoint of the same timm architecture, or set "
                    "backbone.weights=null (and backbone.pretrained=true to use the hub)."
                )
            # Loads into the plain model before the feature wrapper, non-strict on the
            # classifier (timm's `checkpoint_path=` loads strictly after the feature wrapper: fails).
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        self.config = {
            "name": name,
            "output_stride": output_stride,
            "pretrained": pretrained,
            "weights": weights,
            "frozen_bn": frozen_bn,
            "out_indices": tuple(out_indices),
            "in_chans": in_chans,
            "dilation_pattern": dilation_pattern,
            "activation_checkpointing": activation_checkpointing,
        }
        self.name = name
        self.output_stride = output_stride
        self.model = timm.create_model(
            name,
            pretrained=pretrained,
            features_only=True,
            out_indices=tuple(out_indices),
            output_stride=output_stride,
            in_chans=in_chans,
            **kwargs,
        )
        if dilation_pattern == "deeplab":
            dilate_every_block(self.model, name)
        if frozen_bn:
            self.model = freeze_batch_norm_2d(self.model)
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        self.stage_names: list[str] = list(info.module_name())
        if activation_checkpointing:
            checkpoint_stages(self.model, self.stage_names, name)
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(cfg.get("std", IMAGENET_STD))

    def stage(self, index: int) -> nn.Module:
        """The module of the ``index``-th returned stage (e.g. ``layer4`` for index -1)."""
        return self.model.get_submodule(self.stage_names[index])

    def forward(self, image: Tensor) -> list[Tensor]:
        return self.model(image)

    def insertion_points(self) -> list[str]:
        """Every insertion point, shallow to deep: ``<stage>.<i>`` after block i of a stage
        of blocks, the stage's name after its last block, and ``"output"`` for the end of
        the last stage (which may be named by its stage too)."""
        points = []
        for s, stage_name in enumerate(self.stage_names):
            stage = _unwrapped(self.stage(s))
            blocks = len(stage) if isinstance(stage, nn.Sequential) else 1
            points += [f"{stage_name}.{i}" for i in range(blocks - 1)] + [stage_name]
        points[-1] = "output"
        return points

    def insertion_channels(self, point: str) -> int:
        """Channels of the stream at ``point`` (every block of a ResNet stage outputs the
        stage's channels); ``ValueError`` naming ``model.insert_at`` for an unknown point."""
        if point == "output":
            return self.channels[-1]
        return self._slot(point)[2]

    def insert_after(self, point: str, module: nn.Module) -> InsertedAfter:
        """Put ``module`` after the block (or stage) at ``point``: the block is replaced in
        place by :class:`InsertedAfter` ``(block, module)``, and the rest of the backbone runs
        on the module's output. Points are those of the network as built (a block already
        wrapped still counts as the block). ``"output"`` has no block to wrap: the head runs
        a module there on the last feature."""
        if point == "output":
            raise ValueError("insert_after('output'): the output has no block to wrap; run the "
                             "module on the backbone's last feature")
        parent, child, _ = self._slot(point)
        inserted = InsertedAfter(getattr(parent, child), module)
        setattr(parent, child, inserted)
        return inserted

    def _slot(self, point: str) -> tuple[nn.Module, str, int]:
        """``(parent module, child name, channels)`` of the block or stage at ``point``."""
        stage_name, _, block = str(point).partition(".")
        if stage_name in self.stage_names:
            s = self.stage_names.index(stage_name)
            if not block:
                parent, _, child = stage_name.rpartition(".")
                return (self.model.get_submodule(parent) if parent else self.model), child, self.channels[s]
            stage = _unwrapped(self.stage(s))
            if isinstance(stage, nn.Sequential) and block.isdigit() and int(block) < len(stage):
                return stage, block, self.channels[s]
        raise ValueError(
            f"model.insert_at: {point!r} is not an insertion point of backbone {self.name}; "
            f"allowed: {self._describe_points()} (after that block)"
        )

    def _describe_points(self) -> str:
        parts = ["'output'"] + [f"'{name}'" for name in self.stage_names]
        for s, stage_name in enumerate(self.stage_names):
            stage = _unwrapped(self.stage(s))
            if isinstance(stage, nn.Sequential):
                last = f"..'{stage_name}.{len(stage) - 1}'" if len(stage) > 1 else ""
                parts.append(f"'{stage_name}.0'{last}")
        return ", ".join(parts)


class InsertedAfter(nn.Module):
    """A backbone block (or stage) and the module inserted after it, in the block's place
    (:meth:`TimmBackbone.insert_after`): ``forward(x) = module(block(x))[0]``.

    The module returns ``(stream, aux)``: the stream goes on through the backbone, and
    ``aux`` (a list of tensors, e.g. per-layer auxiliary logits), which cannot travel
    through the backbone's sequential stages, is kept here until the head that inserted the
    module takes it (:meth:`take_aux`) in the same forward pass of the network.
    """

    def __init__(self, block: nn.Module, module: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.module = module
        self.aux: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        x, self.aux = self.module(self.block(x))
        return x

    def take_aux(self) -> list[Tensor]:
        """The aux outputs of the last forward, handed over once."""
        aux, self.aux = self.aux, []
        return aux

    def __getstate__(self) -> dict[str, Any]:
        # A copy (EMA/SWA, pickling for spawned workers) carries no tensors of a past pass
        # (a forward of the backbone alone leaves some here): non-leaf tensors would not copy.
        return {**super().__getstate__(), "aux": []}


def _unwrapped(module: nn.Module) -> nn.Module:
    """The block under any modules inserted after it."""
    while isinstance(module, InsertedAfter):
        module = module.block
    return module



def dilate_every_block(model: nn.Module, name: str) -> None:
    """Give every 3×3 conv of each dilated ResNet stage the stage's dilation (DeepLab-v2).

    timm builds a dilated stage with its first block at the previous stage's dilation (1 in
    layer3, 2 in layer4 at output stride 8); DeepLab-v2's Caffe ResNet dilates res4a and
    res5a too. Weights are unchanged, only the sampling grid of those convs widens.
    """
    for stage_name in ("layer3", "layer4"):
        try:
            stage = model.get_submodule(stage_name)
        except AttributeError:
            raise ValueError(
                f"backbone.dilation_pattern=deeplab needs a ResNet-family backbone (layer3, "
                f"layer4); {name} has no {stage_name}"
            ) from None
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        dilation = max(m.dilation[0] for m in convs)
        if dilation == 1:  # a strided stage (output stride 32 at this depth): nothing to do
            continue
        for conv in convs:
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers in ``module`` run exactly as in training (batch statistics, the same
    saved tensors) but the recomputation in backward must not count the batch twice: momentum
    0 leaves the running statistics as they are, and ``num_batches_tracked`` is set back."""
    norms = [
        m for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.sub_(1)


class CheckpointedStage(nn.Sequential):
    """A stage (``nn.Sequential`` of blocks) that, when gradients are on, runs every block
    under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): only the block inputs
    are kept, each block is recomputed in backward with the same random state (dropout)
    and without a second update of its BatchNorm running statistics. A block with a module
    inserted after it (:class:`InsertedAfter`: PDN, LG-LSTM) is recomputed with its module,
    and the auxiliary logits it keeps for the head get their gradients. Same children, so
    the same parameter names and ``state_dict`` as the plain stage."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.is_grad_enabled():
            return super().forward(x)
        for block in self:
            if torch.compiler.is_compiling():  # Dynamo traces the recomputation itself
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = checkpoint(
                    block, x, use_reentrant=False,
                    context_fn=lambda b=block: (contextlib.nullcontext(), _running_stats_frozen(b)),
                )
        return x


def checkpoint_stages(model: nn.Module, stage_names: Sequence[str], name: str) -> None:
    """Swap every named stage (or its ``.blocks``) for a :class:`CheckpointedStage` with the
    same children (``backbone.activation_checkpointing=true``)."""
    for stage_name in stage_names:
        path = stage_name
        stage = model.get_submodule(path)
        if not isinstance(stage, nn.Sequential) and isinstance(getattr(stage, "blocks", None), nn.Sequential):
            path, stage = f"{path}.blocks", stage.blocks
        if not isinstance(stage, nn.Sequential):
            raise ValueError(
                f"backbone.activation_checkpointing=true needs stages made of sequential blocks; "
                f"{name}'s {stage_name} is a {type(stage).__name__}"
            )
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, CheckpointedStage(OrderedDict(stage.named_children())))
