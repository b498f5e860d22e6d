"""Training losses: symmetric InfoNCE (CLIP) between modalities, and cross-entropy at the label's own level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over a batch of aligned pairs (Radford et al. 2021). Row i of `a` matches row i of `b`."""

    def __init__(self, init_scale: float = 20.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(init_scale).log())

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[N, D], [N, D] unit vectors -> scalar."""
        if len(a) < 2:
            return a.new_zeros(())
        logits = self.log_scale.exp().clamp(max=100) * a @ b.T  # [N, N]
        target = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def hierarchical_nll(
    level_log_probs, logits: torch.Tensor, targets: torch.Tensor, levels: torch.Tensor
) -> torch.Tensor:
    """Mean NLL where each row is labelled at its own level (6-digit codes, or weak 4/2-digit labels).

    Args:
        level_log_probs: `HsJointModel.level_log_probs`-like callable (logits, level) -> [B, n_level] log P.
        logits: [B, S] subheading logits.
        targets: [B] index of the gold code within its level's code list.
        levels: [B] 2, 4 or 6.
    """
    total = logits.new_zeros(())
    for level in (2, 4, 6):
        rows = levels == level
        if rows.any():
            logp = level_log_probs(logits[rows], level)
            total = total - logp.gather(1, targets[rows, None]).sum()
    return total / max(len(targets), 1)
