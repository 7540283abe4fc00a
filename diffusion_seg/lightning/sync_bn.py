"""Synchronised BatchNorm that keeps timm's fused BN + activation layers intact.

Lightning's ``sync_batchnorm=True`` uses torch's converter, which turns timm's
``BatchNormAct2d`` (EfficientNet, RegNet, ...) into a plain ``SyncBatchNorm`` and silently
drops its activation. ``timm.layers.convert_sync_batchnorm`` keeps it. The ``ddp`` trainer
config passes this plugin instead of ``sync_batchnorm: true``.
"""

from __future__ import annotations

from lightning.pytorch.plugins import LayerSync
from timm.layers import convert_sync_batchnorm
from torch import nn


class TimmSyncBatchNorm(LayerSync):
    """Lightning layer-sync plugin built on timm's BatchNorm converter."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        # Checkpoints hold the same parameter and buffer names either way; nothing to undo.
        return model
