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


def within_heading_kl(
    logits: torch.Tensor, teacher_logits: torch.Tensor, headings: torch.Tensor, sub_to_head: torch.Tensor
) -> torch.Tensor:
    """Mean KL(teacher || student) of the split of each row's gold heading into its subheadings.

    A row labelled only with its heading says nothing about which subheading it is; this keeps the model's order
    inside that heading where it started (the teacher: the model before this training run, e.g. zero-shot
    retrieval, which reads "of cotton" in a description), so weak heading labels cannot drag every item of a
    heading onto one subheading.

    Args:
        logits, teacher_logits: [B, S] subheading scores of the student and of the frozen teacher.
        headings: [B] index of each row's gold heading.
        sub_to_head: [S] heading index of each subheading.
    """
    inside = sub_to_head[None, :] == headings[:, None]  # [B, S]
    student = torch.log_softmax(logits.masked_fill(~inside, float("-inf")), dim=-1)
    teacher = torch.log_softmax(teacher_logits.masked_fill(~inside, float("-inf")), dim=-1)
    kl = torch.where(inside, teacher.exp() * (teacher - student), torch.zeros_like(student))
    return kl.sum(-1).mean()
