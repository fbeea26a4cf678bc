"""Hand-worked checks of the ranking, distillation and single-positive losses and of APL's labeler."""

import io
import math

import pytest
import torch

from sigrl.losses import (
    SPML_HYPERPARAMETERS,
    PseudoNegativeLabeler,
    distillation_loss,
    ranking_loss,
    spml_loss,
)

# --------------------------------------------------------------------------- ranking loss


def _two_by_three():
    # Column 2 is all 0 (unknown) -> dropped; image 1 has no positive -> dropped.
    scores = torch.tensor([[1.0, 0.5, 9.0], [1.0, 3.0, -4.0]], requires_grad=True)
    labels = torch.tensor([[1, -1, 0], [-1, -1, 0]])
    return scores, labels


def test_ranking_loss_two_by_three_drops_unknown_column_and_positive_free_image():
    scores, labels = _two_by_three()
    loss = ranking_loss(scores, labels)
    # Only image 0, one pair (pos 0, neg 1): max(0, 1 + 0.5 - 1.0) = 0.5, one violating pair -> 0.5 / (1 + 1e-8).
    assert loss.item() == pytest.approx(0.5 / (1 + 1e-8), abs=1e-7)

    loss.backward()
    # d/ds_pos = -1, d/ds_neg = +1 (divided by 1 + 1e-8); the dropped column and image get nothing.
    expected = torch.tensor([[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(scores.grad, expected)

    # Whatever the dropped entries hold, the loss does not move.
    other = scores.detach().clone()
    other[:, 2] = torch.tensor([-50.0, 50.0])
    other[1] = torch.tensor([100.0, -100.0, 7.0])
    assert ranking_loss(other, labels).item() == pytest.approx(loss.item())


def test_ranking_loss_averages_over_violating_pairs_only_then_over_images():
    scores = torch.tensor([[3.0, 0.5, 0.0, 2.5], [0.0, 2.0, 5.0, 0.5]])
    labels = torch.tensor([[1, 1, -1, -1], [-1, 1, 0, -1]])
    # Image 0 pairs: (p0,n2) 1+0-3 = -2 -> 0 (not violating); (p0,n3) 1+2.5-3 = 0.5; (p1,n2) 1+0-0.5 = 0.5;
    #   (p1,n3) 1+2.5-0.5 = 3.0. Sum 4.0 over 3 violating pairs = 4/3 (over all 4 pairs it would be 1.0).
    # Image 1 pairs: (p1,n0) 1+0-2 = -1 -> 0; (p1,n3) 1+0.5-2 = -0.5 -> 0. No violation: 0 / (0 + 1e-8) = 0,
    #   but the image has a positive, so it still counts in the mean: (4/3 + 0) / 2 = 2/3.
    assert ranking_loss(scores, labels).item() == pytest.approx(2.0 / 3.0, rel=1e-6)


def test_ranking_loss_scale_multiplies_scores_and_learns():
    scores, labels = _two_by_three()
    scale = torch.tensor(0.5, requires_grad=True)
    loss = ranking_loss(scores.detach(), labels, scale=scale)
    # Scaled pair: max(0, 1 + 0.5*0.5 - 0.5*1.0) = 0.75; d/dscale = 0.5 - 1.0 = -0.5.
    assert loss.item() == pytest.approx(0.75, abs=1e-7)
    loss.backward()
    assert scale.grad.item() == pytest.approx(-0.5, abs=1e-7)
    # A scale of 1 (float) is the faithful loss.
    assert ranking_loss(scores, labels, scale=1.0).item() == pytest.approx(ranking_loss(scores, labels).item())


def test_ranking_loss_without_qualifying_image_is_zero_with_graph():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = ranking_loss(scores, torch.tensor([[-1, 0], [0, -1]]))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.zeros_like(scores))


def test_ranking_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="labels may only hold"):
        ranking_loss(torch.zeros(2, 3), torch.tensor([[1, 2, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="scalar"):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 3), scale=torch.ones(2))


# --------------------------------------------------------------------------- distillation


def test_distillation_is_mean_abs_and_leaves_teacher_without_grad():
    student = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 4.0], [3.0, 1.0]], requires_grad=True)
    loss = distillation_loss(student, teacher)
    # |1-0| + |2-4| + |3-3| + |4-1| = 1 + 2 + 0 + 3 = 6, over 4 entries = 1.5.
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert teacher.grad is None
    torch.testing.assert_close(student.grad, torch.tensor([[0.25, -0.25], [0.0, 0.25]]))
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(torch.zeros(2, 4), torch.zeros(2, 3))


# --------------------------------------------------------------------------- SPML losses

SCORES = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)], [2.0, -1.0, 0.5]])
OBSERVED = torch.tensor([[1, 0, 0], [0, 1, 0]])
TRUE = torch.tensor([[1, 1, 0], [0, 1, 0]])
PSEUDO = torch.tensor([[False, False, True], [True, False, False]])
SOFT = torch.tensor([[0.0, 0.0, 0.2], [0.1, 0.0, 0.0]])


def _nl(x: float) -> float:
    return -math.log(x + 1e-5)


def _reference(kind, scores, observed, *, true=None, alpha=0.1, beta=0.0, pseudo=None, soft=None, logit_scale=1.0):
    """The SPML losses written out entry by entry, straight from spec §3."""
    rows, cols = scores.shape
    total = 0.0
    for b in range(rows):
        for c in range(cols):
            p = 1.0 / (1.0 + math.exp(-logit_scale * scores[b, c].item()))
            entropy = p * _nl(p) + (1 - p) * _nl(1 - p)
            if observed[b, c] == 1:
                total += _nl(p)
            elif kind == "an":
                total += _nl(1 - p)
            elif kind == "iun":
                total += _nl(1 - p) if true[b, c] == 0 else 0.0
            elif kind == "em_apl" and pseudo[b, c]:
                s = soft[b, c].item()
                total += beta * (s * _nl(p) + (1 - s) * _nl(1 - p))
            else:
                total += -alpha * entropy
    return total / (rows * cols)


def test_an_at_p_one_half_by_hand():
    # p = 0.5 everywhere: every entry costs -log(0.5 + 1e-5) = 0.6931272, and so does their mean.
    loss = spml_loss("an", torch.zeros(2, 3), OBSERVED)
    assert loss.item() == pytest.approx(-math.log(0.50001), rel=1e-6)


def test_an_matches_formula():
    assert spml_loss("an", SCORES, OBSERVED).item() == pytest.approx(_reference("an", SCORES, OBSERVED), rel=1e-5)


def test_iun_matches_formula_and_ignores_true_positives():
    loss = spml_loss("iun", SCORES, OBSERVED, true_labels=TRUE)
    assert loss.item() == pytest.approx(_reference("iun", SCORES, OBSERVED, true=TRUE), rel=1e-5)
    # Entry (0, 1) is an unobserved true positive: it costs nothing, so its score has no gradient.
    scores = SCORES.clone().requires_grad_(True)
    spml_loss("iun", scores, OBSERVED, true_labels=TRUE).backward()
    assert scores.grad[0, 1].item() == 0.0
    assert scores.grad[0, 2].item() > 0.0  # true negative: pushed down


def test_iun_without_true_labels_errors():
    with pytest.raises(ValueError, match="true_labels"):
        spml_loss("iun", SCORES, OBSERVED)


def test_em_matches_formula_with_alpha_and_logit_scale():
    loss = spml_loss("em", SCORES, OBSERVED, alpha=0.2, logit_scale=2.0)
    assert loss.item() == pytest.approx(_reference("em", SCORES, OBSERVED, alpha=0.2, logit_scale=2.0), rel=1e-5)


def test_em_by_hand_pushes_unknowns_towards_one_half():
    # Scores [0, log 3], observed [1, 0]: p = [0.5, 0.75].
    # Positive: nl(0.5) = -ln(0.50001) = 0.693127.
    # Unknown: H = 0.75*nl(0.75) + 0.25*nl(0.25) = 0.75*0.287669 + 0.25*1.386254 = 0.562315, cost -0.1 * H.
    # Mean over the 1 x 2 matrix: (0.693127 - 0.0562315) / 2 = 0.318448.
    scores = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    loss = spml_loss("em", scores, torch.tensor([[1, 0]]), alpha=0.1)
    assert loss.item() == pytest.approx(0.318448, abs=1e-6)
    loss.backward()
    # Maximising entropy lowers p where p > 0.5 (and the positive is pushed up).
    assert scores.grad[0, 1].item() > 0.0
    assert scores.grad[0, 0].item() < 0.0


def test_em_apl_matches_formula():
    loss = spml_loss(
        "em_apl", SCORES, OBSERVED, alpha=0.1, beta=0.9, pseudo_negatives=PSEUDO, soft_target=SOFT, logit_scale=1.5
    )
    expected = _reference(
        "em_apl", SCORES, OBSERVED, alpha=0.1, beta=0.9, pseudo=PSEUDO, soft=SOFT, logit_scale=1.5
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # With no pseudo-negatives it is EM.
    none = torch.zeros_like(PSEUDO)
    assert spml_loss("em_apl", SCORES, OBSERVED, beta=0.9, pseudo_negatives=none, soft_target=SOFT).item() == (
        pytest.approx(spml_loss("em", SCORES, OBSERVED).item())
    )


def test_em_apl_scalar_soft_target():
    loss = spml_loss("em_apl", SCORES, OBSERVED, beta=0.5, pseudo_negatives=PSEUDO, soft_target=0.0)
    expected = _reference("em_apl", SCORES, OBSERVED, beta=0.5, pseudo=PSEUDO, soft=torch.zeros(2, 3))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_spml_rejects_bad_inputs():
    with pytest.raises(ValueError, match="unknown SPML loss kind"):
        spml_loss("bce", SCORES, OBSERVED)
    with pytest.raises(ValueError, match="shape"):
        spml_loss("an", SCORES, OBSERVED[:, :2])
    with pytest.raises(ValueError, match="observed may only hold"):
        spml_loss("an", SCORES, torch.tensor([[1, -1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="true_labels may only hold"):
        spml_loss("iun", SCORES, OBSERVED, true_labels=torch.tensor([[1, -1, 0], [0, 1, 0]]))
    with pytest.raises(ValueError, match="needs pseudo_negatives"):
        spml_loss("em_apl", SCORES, OBSERVED)
    with pytest.raises(ValueError, match="observed positive is flagged"):
        spml_loss("em_apl", SCORES, OBSERVED, pseudo_negatives=OBSERVED == 1, soft_target=0.0)
    with pytest.raises(ValueError, match="only used by 'em_apl'"):
        spml_loss("em", SCORES, OBSERVED, pseudo_negatives=PSEUDO)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        spml_loss("em_apl", SCORES, OBSERVED, pseudo_negatives=PSEUDO, soft_target=1.5)


def test_hyperparameters_from_the_spec():
    assert SPML_HYPERPARAMETERS["voc"]._asdict() == {"alpha": 0.2, "warm_up": 5, "beta": 0.02}
    assert SPML_HYPERPARAMETERS["coco"]._asdict() == {"alpha": 0.1, "warm_up": 5, "beta": 0.9}
    assert SPML_HYPERPARAMETERS["nus-wide"]._asdict() == {"alpha": 0.1, "warm_up": 4, "beta": 0.2}


# --------------------------------------------------------------------------- APL pseudo-negative labeler

# 6 samples, 2 classes. Class 0: observed positive at row 3 -> U_0 = 5; class 1: rows 0, 1 -> U_1 = 4.
LAB_OBSERVED = torch.tensor([[0, 1], [0, 1], [0, 0], [1, 0], [0, 0], [0, 0]])
# Class 0 scores: the observed positive (row 3) has the lowest score and must never be picked.
LAB_SCORES = torch.tensor([[-1.0, -9.0], [5.0, -8.0], [0.5, 1.0], [-3.0, 0.0], [2.0, 3.0], [-2.0, 2.0]])


def _labeler() -> PseudoNegativeLabeler:
    # E = 4, warm-up 2 -> quota floor(0.9 * U / 2): class 0 floor(2.25) = 2, class 1 floor(1.8) = 1.
    return PseudoNegativeLabeler(LAB_OBSERVED, epochs=4, warm_up=2)


def test_labeler_quota_per_class():
    assert _labeler().per_round.tolist() == [2, 1]
    # A realistic size: U = 100 unknowns, E = 10, warm-up 5 -> floor(0.9 * 100 / 5) = 18 a round.
    big = PseudoNegativeLabeler(torch.zeros(100, 1), epochs=10, warm_up=5)
    assert big.per_round.tolist() == [18]


def test_labeler_marks_lowest_unlabelled_per_round_and_never_positives_or_twice():
    labeler = _labeler()

    # Epoch 1 < warm-up 2: nothing.
    assert labeler.update(1, LAB_SCORES).tolist() == [0, 0]
    assert not labeler.pseudo_negatives.any()

    # Epoch 2: class 0 candidates rows 0,1,2,4,5 -> two lowest are rows 5 (-2) and 0 (-1), not row 3 (positive).
    #          class 1 candidates rows 2..5 -> lowest is row 3 (0.0).
    assert labeler.update(2, LAB_SCORES).tolist() == [2, 1]
    assert labeler.pseudo_negatives[:, 0].nonzero().flatten().tolist() == [0, 5]
    assert labeler.pseudo_negatives[:, 1].nonzero().flatten().tolist() == [3]

    # Epoch 3, every score +1 (same order): the marked rows are still the lowest but are not marked again;
    # class 0 takes rows 2 (1.5) and 4 (3.0), class 1 takes row 2 (2.0).
    assert labeler.update(3, LAB_SCORES + 1.0).tolist() == [2, 1]
    assert labeler.pseudo_negatives[:, 0].nonzero().flatten().tolist() == [0, 2, 4, 5]
    assert labeler.pseudo_negatives[:, 1].nonzero().flatten().tolist() == [2, 3]

    # Epoch 4: class 0 has only row 1 left (quota 2, one available); class 1 takes row 5 (2.0), leaving row 4.
    assert labeler.update(4, LAB_SCORES).tolist() == [1, 1]
    assert labeler.pseudo_negatives[:, 0].nonzero().flatten().tolist() == [0, 1, 2, 4, 5]
    assert labeler.pseudo_negatives[:, 1].nonzero().flatten().tolist() == [2, 3, 5]
    assert not (labeler.pseudo_negatives & (LAB_OBSERVED == 1)).any()


def test_labeler_freezes_soft_target_at_marking_time():
    labeler = _labeler()
    labeler.update(2, LAB_SCORES)
    labeler.update(3, LAB_SCORES + 1.0)
    soft = labeler.soft_targets(torch.arange(6))
    # Row 0 class 0 was marked at epoch 2 with score -1: s = sigmoid(-1) = 0.268941, not sigmoid(0) = 0.5.
    assert soft[0, 0].item() == pytest.approx(1.0 / (1.0 + math.exp(1.0)), rel=1e-6)
    # Row 2 class 0 was marked at epoch 3 with score 0.5 + 1 = 1.5: s = sigmoid(1.5) = 0.817574.
    assert soft[2, 0].item() == pytest.approx(1.0 / (1.0 + math.exp(-1.5)), rel=1e-6)
    assert soft[1, 0].item() == 0.0  # unmarked


def test_labeler_targets_rows_and_epoch_order():
    labeler = _labeler()
    labeler.update(2, LAB_SCORES)
    rows = labeler.targets(torch.tensor([5, 3]))
    assert rows.dtype == torch.bool
    assert rows.tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="epoch"):
        labeler.update(2, LAB_SCORES)  # the same round twice
    with pytest.raises(ValueError, match="shape"):
        labeler.update(3, LAB_SCORES[:5])
    with pytest.raises(ValueError, match="warm_up"):
        PseudoNegativeLabeler(LAB_OBSERVED, epochs=4, warm_up=4)


def test_labeler_state_round_trip_resumes_exactly():
    first = _labeler()
    first.update(1, LAB_SCORES)
    first.update(2, LAB_SCORES)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    resumed = _labeler()
    resumed.load_state_dict(torch.load(buffer))
    assert torch.equal(resumed.pseudo_negatives, first.pseudo_negatives)
    for labeler in (first, resumed):
        labeler.update(3, LAB_SCORES + 1.0)
    assert torch.equal(resumed.pseudo_negatives, first.pseudo_negatives)
    assert torch.equal(resumed.soft_targets(torch.arange(6)), first.soft_targets(torch.arange(6)))
    with pytest.raises(ValueError, match="epoch"):
        resumed.update(3, LAB_SCORES)  # resumed past epoch 3 already

    with pytest.raises(ValueError, match="warm_up"):
        PseudoNegativeLabeler(LAB_OBSERVED, epochs=4, warm_up=1).load_state_dict(first.state_dict())


def test_labeler_feeds_em_apl():
    labeler = _labeler()
    labeler.update(2, LAB_SCORES)
    idx = torch.tensor([0, 3, 5])
    batch_scores, batch_observed = LAB_SCORES[idx] * 0.5, LAB_OBSERVED[idx]
    pseudo, soft = labeler.targets(idx), labeler.soft_targets(idx)
    loss = spml_loss(
        "em_apl", batch_scores, batch_observed, alpha=0.1, beta=0.9, pseudo_negatives=pseudo, soft_target=soft
    )
    expected = _reference(
        "em_apl", batch_scores, batch_observed, alpha=0.1, beta=0.9, pseudo=pseudo, soft=soft
    )
    assert pseudo.any()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
