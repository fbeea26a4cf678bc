"""Parity between two runtimes of the same engines: embeddings, scores and the labels they rank first.

Three comparisons per vocabulary and image batch: the text engine (T and G from the same token ids),
the image engine alone (both runtimes score the *reference* T and G, so text errors do not leak in),
and the composed pipeline (each runtime uses its own T and G, as a deployment does).

Tolerances are per precision (``sigrl.deploy.tolerances``) and per engine: each engine is held to
its own precision's, read from the candidate runtime (an int8 export keeps its text engine fp32).
fp32 engines must reproduce the eager model to rounding error; reduced precisions are held to what
they can keep: small score errors and the same ranking up to near-ties.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sigrl.data.synthetic import SyntheticShapes
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine
from sigrl.deploy.runtimes import EngineRuntime
from sigrl.deploy.tolerances import TOLERANCES
from sigrl.tokenizer import tokenize


@dataclass
class ParityRow:
    """One comparison: what was compared, at which sizes, the measured errors and the verdict."""

    stage: str
    precision: str
    classes: int
    batch: int | None
    max_abs: float
    rel_l2: float
    top1: float | None = None
    top5: float | None = None
    passed: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """‖candidate − reference‖₂ / ‖reference‖₂ (0 when both are zero)."""
    ref = reference.astype(np.float64)
    norm = np.linalg.norm(ref)
    diff = np.linalg.norm(candidate.astype(np.float64) - ref)
    return float(diff / norm) if norm > 0 else float(diff)


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int, tie_tolerance: float) -> float:
    """Fraction of images whose top-k label set is the same in both score matrices (B×C).

    A swap counts as agreement only when it is a near-tie: every label that differs has a reference
    score within ``tie_tolerance`` of the reference's k-th best score, i.e. inside the precision's
    error bar. Anything else is a ranking error.
    """
    k = min(k, reference.shape[1])
    agree = 0
    for ref_row, cand_row in zip(reference, candidate):
        ref_top = set(np.argsort(-ref_row, kind="stable")[:k])
        cand_top = set(np.argsort(-cand_row, kind="stable")[:k])
        kth = np.sort(ref_row)[::-1][k - 1]
        differing = ref_top ^ cand_top
        agree += all(abs(ref_row[c] - kth) <= tie_tolerance for c in differing)
    return agree / len(reference)


def _embedding_row(stage: str, reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityRow:
    tol = TOLERANCES[precision]
    max_abs, rel = float(np.abs(candidate - reference).max()), rel_l2(reference, candidate)
    return ParityRow(stage, precision, reference.shape[0], None, max_abs, rel,
                     passed=max_abs <= tol.embedding_max_abs and rel <= tol.embedding_rel_l2)


def _score_row(stage: str, reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityRow:
    tol = TOLERANCES[precision]
    max_abs = float(np.abs(candidate - reference).max())
    top1 = topk_agreement(reference, candidate, 1, 2 * tol.score_max_abs)
    top5 = topk_agreement(reference, candidate, 5, 2 * tol.score_max_abs)
    return ParityRow(stage, precision, reference.shape[1], reference.shape[0], max_abs, rel_l2(reference, candidate),
                     top1, top5,
                     passed=max_abs <= tol.score_max_abs and top1 == 1.0 and top5 == 1.0)


def parity_inputs(vocabulary: list[str], template: str, image_size: int, class_counts: list[int],
                  batch_sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Token ids for the first C labels of ``vocabulary`` (extended with made-up names beyond its end)
    for each C, and a batch of synthetic test images (normalised, B×3×S×S) for each B."""
    names = list(vocabulary) + [f"concept {i}" for i in range(max(class_counts))]
    vocabularies = [tokenize(names[:count], template).numpy() for count in class_counts]
    images = SyntheticShapes("test", num_images=max(batch_sizes), image_size=image_size)
    stacked = np.stack([images[i]["image"].numpy() for i in range(max(batch_sizes))])
    return vocabularies, [stacked[:batch] for batch in batch_sizes]


def compare_runtimes(reference: EngineRuntime, candidate: EngineRuntime, vocabularies: list[np.ndarray],
                     image_batches: list[np.ndarray], precision: str | None = None) -> list[ParityRow]:
    """Compare ``candidate`` with ``reference`` on every vocabulary (token ids) × image batch.

    Each engine is held to the tolerances of the candidate's precision for it, or of ``precision``
    where given (to hold engines to another precision's bar, e.g. fp32 engines to fp16's).
    """
    if precision is not None and precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)}, got {precision!r}")
    text = precision or candidate.engine_precisions[TextGMCEngine.name]
    image = precision or candidate.engine_precisions[ImageSVFREngine.name]
    rows = []
    for token_ids in vocabularies:
        ref_t, ref_g = reference.encode_labels(token_ids)
        cand_t, cand_g = candidate.encode_labels(token_ids)
        rows += [_embedding_row("text_gmc:label_emb", ref_t, cand_t, text),
                 _embedding_row("text_gmc:graph_emb", ref_g, cand_g, text)]
        for images in image_batches:
            ref_scores = reference.score_images(images, ref_t, ref_g)
            for stage, vocabulary in (("image_svfr:scores", (ref_t, ref_g)), ("pipeline:scores", (cand_t, cand_g))):
                rows.append(_score_row(stage, ref_scores, candidate.score_images(images, *vocabulary), image))
    return rows


def format_rows(rows: list[ParityRow]) -> str:
    """A fixed-width table of parity rows."""
    lines = [f"{'stage':<22}{'prec':>5}{'C':>6}{'B':>4}{'max abs':>11}{'rel L2':>11}{'top-1':>7}{'top-5':>7}  ok"]
    for r in rows:
        top = f"{r.top1:>7.3f}{r.top5:>7.3f}" if r.top1 is not None else f"{'':>14}"
        lines.append(f"{r.stage:<22}{r.precision:>5}{r.classes:>6}{'' if r.batch is None else r.batch:>4}"
                     f"{r.max_abs:>11.2e}{r.rel_l2:>11.2e}{top}  {'yes' if r.passed else 'NO'}")
    return "\n".join(lines)
