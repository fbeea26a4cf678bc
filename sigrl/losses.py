"""Training losses: the BiAM ranking loss, feature distillation, and the single-positive (SPML) losses.

Spec §3. L = L_rank + L_distill for the zero-shot recipe; the SPML losses (AN, IUN, EM, EM_APL) of
Zhou et al. 2022, "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels",
replace L_rank in the single-positive experiments. EM_APL's pseudo-labels are kept by
:class:`PseudoNegativeLabeler`, which is separate so its bookkeeping can be tested and checkpointed.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sigrl.registry import SPML_KINDS

__all__ = [
    "SPML_HYPERPARAMETERS",
    "PseudoNegativeLabeler",
    "distillation_loss",
    "ranking_loss",
    "spml_loss",
]

class SPMLHyperparameters(NamedTuple):
    """One dataset's SPML settings: ``alpha`` and ``beta`` of the losses, ``warm_up`` epochs of EM_APL."""

    alpha: float
    warm_up: int
    beta: float


# Per-dataset SPML settings (spec §3, matching the APL authors' defaults). All three train for 10 epochs
# with Adam at lr 1e-5; `warm_up` is in the 1-based epoch numbers of PseudoNegativeLabeler.update.
SPML_HYPERPARAMETERS: dict[str, SPMLHyperparameters] = {
    "voc": SPMLHyperparameters(alpha=0.2, warm_up=5, beta=0.02),
    "coco": SPMLHyperparameters(alpha=0.1, warm_up=5, beta=0.9),
    "nus-wide": SPMLHyperparameters(alpha=0.1, warm_up=4, beta=0.2),
}

LOG_EPSILON = 1e-5  # nl(x) = -log(x + 1e-5): keeps the log finite at p = 0 or 1
_RANK_EPSILON = 1e-8  # guards the division by the number of violating pairs


# --------------------------------------------------------------------------- validation helpers


def _check_matrix(name: str, tensor: Tensor, shape: torch.Size | None = None) -> None:
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be a [B, C] matrix, got shape {tuple(tensor.shape)}")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


def _check_values(name: str, tensor: Tensor, allowed: tuple[int, ...]) -> None:
    bad = torch.ones_like(tensor, dtype=torch.bool)
    for value in allowed:
        bad &= tensor != value
    if bad.any():
        raise ValueError(f"{name} may only hold values {allowed}, found {tensor[bad].unique().tolist()}")


# --------------------------------------------------------------------------- zero-shot training losses


def ranking_loss(scores: Tensor, labels: Tensor, scale: Tensor | float | None = None) -> Tensor:
    """BiAM ranking loss: every positive should outscore every negative of its image by a margin of 1.

    ``scores`` and ``labels`` are [B, C]; labels are 1 (positive), -1 (negative) or 0 (unknown).
    Classes with no non-zero label in the batch and images without a positive are dropped. Per image,
    l = max(0, 1 + s_neg - s_pos) over all (positive, negative) pairs, summed and divided by the number
    of violating pairs (l > 0) + 1e-8, so satisfied pairs do not dilute the loss; then the mean over
    the kept images. ``scale`` (e.g. a learnable scalar) multiplies the scores first; None or 1 is the
    faithful loss. With no qualifying image the result is a zero still attached to the graph.
    """
    _check_matrix("scores", scores)
    _check_matrix("labels", labels, scores.shape)
    _check_values("labels", labels, (1, -1, 0))
    if isinstance(scale, Tensor) and scale.numel() != 1:
        raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
    if scale is not None:
        scores = scores * scale

    known_classes = (labels != 0).any(dim=0)
    scores, labels = scores[:, known_classes], labels[:, known_classes]
    has_positive = (labels == 1).any(dim=1)
    if not has_positive.any():
        return scores.sum() * 0.0
    scores, labels = scores[has_positive], labels[has_positive]

    # margins[b, j, k] = 1 + s[b, k] - s[b, j] for positive j and negative k
    margins = 1.0 + scores.unsqueeze(1) - scores.unsqueeze(2)
    pairs = (labels == 1).unsqueeze(2) & (labels == -1).unsqueeze(1)
    hinge = torch.where(pairs, margins.clamp(min=0.0), torch.zeros_like(margins))
    violating = (hinge > 0).sum(dim=(1, 2))
    per_image = hinge.sum(dim=(1, 2)) / (violating + _RANK_EPSILON)
    return per_image.mean()


def distillation_loss(student_global: Tensor, teacher_global: Tensor) -> Tensor:
    """L1 feature distillation, mean |g - teacher(x)|; the frozen teacher receives no gradient."""
    if student_global.shape != teacher_global.shape:
        raise ValueError(
            f"student and teacher features differ in shape: {tuple(student_global.shape)} vs "
            f"{tuple(teacher_global.shape)}"
        )
    return (student_global - teacher_global.detach()).abs().mean()


# --------------------------------------------------------------------------- single-positive losses


def _soft_cross_entropy(probs: Tensor, target: Tensor | float) -> Tensor:
    """Elementwise t*nl(p) + (1-t)*nl(1-p): nl(p) at t = 1, nl(1-p) at t = 0, the entropy H(p) at t = p."""
    return target * -torch.log(probs + LOG_EPSILON) + (1.0 - target) * -torch.log(1.0 - probs + LOG_EPSILON)


def spml_loss(
    kind: str,
    scores: Tensor,
    observed: Tensor,
    *,
    true_labels: Tensor | None = None,
    alpha: float = 0.1,
    beta: float = 0.0,
    pseudo_negatives: Tensor | None = None,
    soft_target: Tensor | float | None = None,
    logit_scale: float = 1.0,
) -> Tensor:
    """Single-positive multi-label loss; the B x C loss matrix is summed and divided by B*C.

    p = sigmoid(logit_scale * scores); ``observed`` [B, C] is 1 for the observed positive, 0 for unknown.
    Observed positives always cost nl(p). Unobserved entries cost, by ``kind``:

    - ``'an'`` (assume negative): nl(1 - p).
    - ``'iun'``: nl(1 - p) only where ``true_labels`` ([B, C], 1/0 ground truth) is 0, else nothing;
      an upper-bound baseline that needs the full labels.
    - ``'em'`` (entropy maximisation): -alpha * H(p), H(p) = p*nl(p) + (1-p)*nl(1-p).
    - ``'em_apl'``: as EM, except entries flagged in ``pseudo_negatives`` ([B, C] bool, from
      :meth:`PseudoNegativeLabeler.targets`) cost beta * [s*nl(p) + (1-s)*nl(1-p)].

    In APL the soft target s of a pseudo-negative is not a constant: it is that entry's own predicted
    probability when it was marked, frozen from then on (the authors' code stores -p in the observed
    matrix and uses its negation as the target). So ``soft_target`` is required for ``'em_apl'``: pass
    :meth:`PseudoNegativeLabeler.soft_targets` for the faithful loss, or a float for a fixed target.
    """
    if kind not in SPML_KINDS:
        raise ValueError(f"unknown SPML loss kind {kind!r}; expected one of {SPML_KINDS}")
    _check_matrix("scores", scores)
    _check_matrix("observed", observed, scores.shape)
    _check_values("observed", observed, (1, 0))
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale}")
    if kind != "iun" and true_labels is not None:
        raise ValueError(f"true_labels is only used by 'iun', not by {kind!r}")
    if kind != "em_apl" and (pseudo_negatives is not None or soft_target is not None):
        raise ValueError(f"pseudo_negatives / soft_target are only used by 'em_apl', not by {kind!r}")

    probs = torch.sigmoid(logit_scale * scores)
    positive = observed == 1
    loss = torch.where(positive, _soft_cross_entropy(probs, 1.0), torch.zeros_like(probs))

    if kind == "an":
        loss = torch.where(positive, loss, _soft_cross_entropy(probs, 0.0))
    elif kind == "iun":
        if true_labels is None:
            raise ValueError("the 'iun' loss needs true_labels (the full ground truth) to know the true negatives")
        _check_matrix("true_labels", true_labels, scores.shape)
        _check_values("true_labels", true_labels, (1, 0))
        true_negative = true_labels == 0
        if (positive & true_negative).any():
            raise ValueError("an observed positive is a negative in true_labels")
        loss = torch.where(true_negative, _soft_cross_entropy(probs, 0.0), loss)
    else:
        loss = torch.where(positive, loss, -alpha * _soft_cross_entropy(probs, probs))
        if kind == "em_apl":
            loss = _apply_pseudo_negatives(loss, probs, positive, beta, pseudo_negatives, soft_target)
    return loss.mean()


def _apply_pseudo_negatives(
    loss: Tensor,
    probs: Tensor,
    positive: Tensor,
    beta: float,
    pseudo_negatives: Tensor | None,
    soft_target: Tensor | float | None,
) -> Tensor:
    """Replace the EM term of flagged entries by beta * soft cross-entropy towards their soft target."""
    if pseudo_negatives is None or soft_target is None:
        raise ValueError(
            "the 'em_apl' loss needs pseudo_negatives and soft_target "
            "(PseudoNegativeLabeler.targets(idx) and .soft_targets(idx))"
        )
    _check_matrix("pseudo_negatives", pseudo_negatives, probs.shape)
    if pseudo_negatives.dtype != torch.bool:
        raise ValueError(f"pseudo_negatives must be a bool tensor, got {pseudo_negatives.dtype}")
    if (pseudo_negatives & positive).any():
        raise ValueError("an observed positive is flagged as a pseudo-negative")
    if isinstance(soft_target, Tensor):
        _check_matrix("soft_target", soft_target, probs.shape)
    target = torch.as_tensor(soft_target, dtype=probs.dtype, device=probs.device)
    if ((target < 0) | (target > 1)).any():
        raise ValueError("soft_target must lie in [0, 1]")
    return torch.where(pseudo_negatives, beta * _soft_cross_entropy(probs, target), loss)


class PseudoNegativeLabeler:
    """EM_APL's self-paced negative pseudo-labelling over the whole training set.

    Built from the observed label matrix [N, C] (1 observed positive, 0 unknown), the number of training
    epochs E and the warm-up epochs. U_i, the initial number of unknown entries of class i, fixes how many
    samples each round marks: floor(0.9 * U_i / (E - warm_up)).

    Epoch convention (as in the authors' ``train.py``): ``update(epoch, ...)`` is called after training
    epoch ``epoch``, numbered from 1, and labels when ``epoch >= warm_up``. With E = 10, warm_up = 5 the
    rounds follow epochs 5..10, i.e. E - warm_up + 1 rounds; the marks of the last one are never trained
    on, so the E - warm_up rounds that matter cover 90 % of U_i. A trainer counting epochs from 0 must
    pass ``epoch_index + 1``. Each mark also freezes the entry's probability sigmoid(logit_scale * score)
    as its soft target s (see :func:`spml_loss`).
    """

    def __init__(
        self,
        observed: Tensor,
        epochs: int,
        warm_up: int,
        *,
        proportion: float = 0.9,
        logit_scale: float = 1.0,
    ) -> None:
        _check_matrix("observed", observed)
        _check_values("observed", observed, (1, 0))
        if not 1 <= warm_up < epochs:
            raise ValueError(f"need 1 <= warm_up < epochs, got warm_up={warm_up}, epochs={epochs}")
        if not 0 < proportion <= 1:
            raise ValueError(f"proportion must be in (0, 1], got {proportion}")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        self.epochs = epochs
        self.warm_up = warm_up
        self.logit_scale = logit_scale
        self.observed_positive = observed.detach().cpu() == 1
        self.initial_unlabelled = (~self.observed_positive).sum(dim=0)
        # float64 floor, as Python's int(0.9 * U / (E - warm_up)) in the reference
        self.per_round = torch.floor(proportion * self.initial_unlabelled.double() / (epochs - warm_up)).long()
        self.pseudo_negatives = torch.zeros_like(self.observed_positive)
        self.soft_target_matrix = torch.zeros(self.observed_positive.shape, dtype=torch.float32)
        self.last_epoch = 0

    def update(self, epoch: int, scores_all: Tensor) -> Tensor:
        """Mark this round's lowest-scored still-unlabelled samples per class; returns the [C] counts marked.

        ``scores_all`` [N, C] are the scores of every training sample after epoch ``epoch`` (1-based).
        Epochs must come in increasing order, so a repeated call cannot mark a round twice.
        """
        if not self.last_epoch < epoch <= self.epochs:
            raise ValueError(f"epoch must be in ({self.last_epoch}, {self.epochs}], got {epoch}")
        _check_matrix("scores_all", scores_all, self.observed_positive.shape)
        scores = scores_all.detach().cpu().float()
        if not torch.isfinite(scores).all():
            raise ValueError("scores_all must be finite")
        self.last_epoch = epoch
        if epoch < self.warm_up:
            return torch.zeros_like(self.per_round)

        candidates = ~(self.observed_positive | self.pseudo_negatives)
        counts = torch.minimum(self.per_round, candidates.sum(dim=0))
        order = torch.argsort(scores.masked_fill(~candidates, math.inf), dim=0, stable=True)
        in_quota = torch.arange(scores.shape[0]).unsqueeze(1) < counts.unsqueeze(0)
        marked = torch.zeros_like(candidates).scatter_(0, order, in_quota)

        self.pseudo_negatives |= marked
        probs = torch.sigmoid(self.logit_scale * scores)
        self.soft_target_matrix = torch.where(marked, probs, self.soft_target_matrix)
        return counts

    def targets(self, indices: Tensor) -> Tensor:
        """The pseudo-negative flags [len(indices), C] (bool) of the given samples, on indices' device."""
        return self.pseudo_negatives[indices.cpu()].to(indices.device)

    def soft_targets(self, indices: Tensor) -> Tensor:
        """The frozen soft targets s [len(indices), C] of the given samples (0 where not marked)."""
        return self.soft_target_matrix[indices.cpu()].to(indices.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume labelling exactly."""
        return {
            "epochs": self.epochs,
            "warm_up": self.warm_up,
            "last_epoch": self.last_epoch,
            "per_round": self.per_round.clone(),
            "pseudo_negatives": self.pseudo_negatives.clone(),
            "soft_targets": self.soft_target_matrix.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; refuses a state from another label matrix or schedule."""
        if (state["epochs"], state["warm_up"]) != (self.epochs, self.warm_up):
            raise ValueError(
                f"state is for epochs={state['epochs']}, warm_up={state['warm_up']}; "
                f"this labeler has epochs={self.epochs}, warm_up={self.warm_up}"
            )
        if not torch.equal(state["per_round"], self.per_round):
            raise ValueError("state was built from a different observed label matrix (per-class quotas differ)")
        pseudo_negatives = state["pseudo_negatives"].cpu()
        if pseudo_negatives.shape != self.pseudo_negatives.shape or (pseudo_negatives & self.observed_positive).any():
            raise ValueError("state's pseudo-negatives do not fit this observed label matrix")
        self.pseudo_negatives = pseudo_negatives.clone()
        self.soft_target_matrix = state["soft_targets"].cpu().float().clone()
        self.last_epoch = int(state["last_epoch"])
