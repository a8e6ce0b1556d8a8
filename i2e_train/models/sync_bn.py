"""SyncBatchNorm for multi-step (time-major) tensors.

``nn.SyncBatchNorm.convert_sync_batchnorm`` would treat dim 1 of a ``[T, B, C, H, W]`` tensor as the
channel dim; this subclass folds T into the batch first, exactly as SpikingJelly's multi-step
BatchNorm2d does, so statistics are taken over T*B*H*W as in single-GPU training.
"""

from __future__ import annotations

from torch import Tensor, nn


class SeqSyncBatchNorm(nn.SyncBatchNorm):
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:
            return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return super().forward(x)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (and subclasses) by :class:`SeqSyncBatchNorm`, keeping state."""
    if isinstance(module, nn.BatchNorm2d):
        sync = SeqSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        for p_new, p_old in zip(sync.parameters(), module.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        return sync.to(next(iter(module.state_dict().values())).device)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
