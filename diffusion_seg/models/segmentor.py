"""Backbone + head = a segmentation network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn

from diffusion_seg.models.backbone import InsertedAfter, TimmBackbone
from diffusion_seg.models.heads import SegmentationHead, SegmentationOutput

HeadFactory = Callable[..., SegmentationHead]


class Segmentor(nn.Module):
    """A timm backbone and a head built on it.

    Args:
        backbone: the feature extractor.
        head: a callable ``head(backbone=..., num_classes=...)`` returning the head, e.g.
            ``functools.partial(FCNHead, channels=512)`` or a Hydra ``_partial_`` config.
            Heads get the backbone itself so they can read its channels, insert modules
            into it (PDN, LG-LSTM) or clone it (DifNet's similarity branch).
        num_classes: number of classes K.

    Parameters split into two learning-rate groups (both papers: new layers at 10× the
    pretrained ones' lr). The split is recorded by parameter *name* (``backbone.model.conv1
    .weight``), not by object identity, so it survives pickling (``ddp_spawn``), ``deepcopy``
    (EMA/SWA copies) and ``torch.compile`` — as timm's ``group_matcher`` and torchvision's
    segmentation reference do.

    ``load_state_dict`` also takes the layout of checkpoints written when PDN's and LG-LSTM's
    modules were hooked into the backbone (up to commit 79d199a): see :meth:`former_keys`.
    """

    def __init__(self, backbone: TimmBackbone, head: HeadFactory, num_classes: int) -> None:
        super().__init__()
        # Parameters that exist before the head is built are the (possibly pretrained)
        # backbone's; everything the head adds, even inside the backbone, counts as new,
        # unless the head declares it pretrained.
        backbone_ids = {id(p) for p in backbone.parameters()}
        self.backbone = backbone
        self.head = head(backbone=backbone, num_classes=num_classes)
        pretrained_ids = backbone_ids | {id(p) for p in self.head.pretrained_parameters()}
        self.pretrained_names = frozenset(
            name for name, p in self.named_parameters() if id(p) in pretrained_ids
        )
        self.num_classes = num_classes

    def forward(self, image: Tensor) -> SegmentationOutput:
        return self.head(self.backbone(image), image)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained parameters: the backbone's and those the head declares (base lr)."""
        return (p for n, p in self.named_parameters() if n in self.pretrained_names)

    def new_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the head added (the papers' "newly added layers", 10× learning rate)."""
        return (p for n, p in self.named_parameters() if n not in self.pretrained_names)

    def param_groups(self, lr: float, new_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, by parameter name (as timm's ``group_matcher``):
        ``backbone`` (pretrained, at ``lr``) and ``new`` (what the head added, at
        ``lr × new_lr_mult``). Frozen parameters and empty groups are left out; each group
        has its ``name`` (logged learning rates, the non-finite step's message)."""
        groups = [
            {"params": [p for p in params if p.requires_grad], "lr": group_lr, "name": name}
            for name, params, group_lr in (
                ("backbone", self.backbone_parameters(), lr),
                ("new", self.new_parameters(), lr * new_lr_mult),
            )
        ]
        return [group for group in groups if group["params"]]

    def former_keys(self) -> dict[str, str]:
        """``{key now: key in an older checkpoint}`` for every key that moved.

        Up to commit 79d199a a module inside the backbone was the head's child, run by a
        forward hook: its weights were under the head (``head.pdn.0.``, ``head.lg.``; the
        head's :meth:`~diffusion_seg.models.heads.SegmentationHead.moved_modules`) and the
        block it follows had no ``block.`` level (:class:`InsertedAfter`).
        """
        paths = {id(module): name for name, module in self.named_modules()}
        moved = {
            f"{paths[id(module)]}.": f"head.{name}."
            for name, module in self.head.moved_modules().items()
        }
        # Deepest first, so a block wrapped twice (a module after the block and one after its
        # stage) loses its inner level before its outer one.
        wrappers = sorted(
            (name for name, module in self.named_modules() if isinstance(module, InsertedAfter)),
            key=len, reverse=True,
        )
        former = {}
        for key in self.state_dict(keep_vars=True):
            prefix = next((path for path in moved if key.startswith(path)), None)
            if prefix is not None:
                former[key] = moved[prefix] + key[len(prefix):]
                continue
            old = key
            for wrapper in wrappers:
                if old.startswith(f"{wrapper}.block."):
                    old = f"{wrapper}.{old[len(wrapper) + len('.block.'):]}"
            if old != key:
                former[key] = old
        return former

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Runs before the children load: a checkpoint in the older layout gets today's keys.
        for key, old in self.former_keys().items():
            if prefix + key not in state_dict and prefix + old in state_dict:
                state_dict[prefix + key] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args)
