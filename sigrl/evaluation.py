"""Scoring datasets and the reports behind ``sigrl eval`` (spec §5), laid out like the paper's tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from sigrl.data import build_dataset
from sigrl.data.common import MultiLabelDataset, data_loader
from sigrl.metrics import evaluate_multilabel
from sigrl.model import SigRL
from sigrl.registry import EVAL_PRECISIONS

TABLE_COLUMNS = ("P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP")


def scoring_autocast(device: str | torch.device, precision: str = "fp32") -> torch.autocast:
    """The autocast context scoring runs in: off for ``fp32`` (the paper's protocol; also switches off an
    enclosing autocast), bf16 autocast on the device for ``bf16`` (faster on GPUs, but more tied scores)."""
    if precision not in EVAL_PRECISIONS:
        raise ValueError(f"precision must be one of {EVAL_PRECISIONS}, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def predict(model: SigRL, dataset: MultiLabelDataset, vocabularies: dict[str, Sequence[str]], batch_size: int = 64,
            device: str | torch.device = "cpu", workers: int = 0, progress: bool = False,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Scores [N, C] of every image of ``dataset`` against each named vocabulary, in ``precision``
    (see :func:`scoring_autocast`).

    Each vocabulary is encoded once (text engine) and the image backbone runs once per batch, however
    many vocabularies are scored (e.g. NUS-WIDE's ZSL and GZSL share the test images).
    """
    autocast = scoring_autocast(device, precision)
    was_training = model.training
    model.eval()
    with scoring_autocast(device, "fp32"):  # vocabularies are encoded once, always in fp32
        encoded = {name: model.encode_labels(model.tokenize(list(vocab)).to(device))
                   for name, vocab in vocabularies.items()}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in vocabularies}
    loader = data_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for batch in tqdm(loader, desc="scoring", disable=not progress, leave=False):
        with autocast:
            global_feat, patches = model.encode_image(batch["image"].to(device, non_blocking=True))
            for name, (label_emb, graph_emb) in encoded.items():
                outputs[name].append(model.svfr(global_feat, patches, label_emb, graph_emb).float().cpu())
    model.train(was_training)
    return {name: torch.cat(chunks).numpy() for name, chunks in outputs.items()}


def _labels(dataset: MultiLabelDataset) -> np.ndarray:
    return np.asarray(dataset.labels, dtype=np.float32)


Scorer = Callable[[MultiLabelDataset, dict[str, Sequence[str]]], dict[str, np.ndarray]]
"""``scorer(dataset, {name: vocabulary}) -> {name: scores N×C}``: what evaluation needs of a model or runtime."""


def evaluate_dataset(model: SigRL, data: str, root: str | None = None, split: str = "test", batch_size: int = 64,
                     device: str | torch.device = "cpu", workers: int = 0, progress: bool = False,
                     precision: str = "fp32", **dataset_kwargs) -> dict[str, dict[str, float]]:
    """Metrics in percent per task row: NUS-WIDE → ``ZSL`` and ``GZSL``; COCO/VOC → the SPML protocol;
    synthetic (and any validation split) → one row named after the dataset."""
    scorer = partial(predict, model, batch_size=batch_size, device=device, workers=workers, progress=progress,
                     precision=precision)
    return evaluate_scorer(scorer, model.config.vision_cfg["image_size"], data, root, split, **dataset_kwargs)


def evaluate_scorer(scorer: Scorer, image_size: int, data: str, root: str | None = None, split: str = "test",
                    **dataset_kwargs) -> dict[str, dict[str, float]]:
    """:func:`evaluate_dataset` for any scorer (e.g. exported engines behind an ``EngineRuntime``)."""
    if data == "nus-wide" and split == "test":
        zsl = build_dataset(data, "test", root, image_size, vocabulary="zsl", **dataset_kwargs)
        gzsl = build_dataset(data, "test", root, image_size, vocabulary="gzsl", **dataset_kwargs)
        scores = scorer(zsl, {"ZSL": zsl.vocabulary, "GZSL": gzsl.vocabulary})
        return {"ZSL": evaluate_multilabel(scores["ZSL"], _labels(zsl)),
                "GZSL": evaluate_multilabel(scores["GZSL"], _labels(gzsl))}
    dataset = build_dataset(data, split, root, image_size, **dataset_kwargs)
    own = scorer(dataset, {"own": dataset.vocabulary})["own"]
    return {f"{data} {split}": evaluate_multilabel(own, _labels(dataset))}


def evaluate_split(model: SigRL, dataset: MultiLabelDataset, batch_size: int = 64, device: str | torch.device = "cpu",
                   workers: int = 0, progress: bool = False, precision: str = "fp32") -> dict[str, float]:
    """Metrics in percent of one built dataset against its own vocabulary (validation during training).

    COCO/VOC evaluation labels are complete (±1, no 0), where the BiAM mAP equals the SPML protocol's.
    """
    scores = predict(model, dataset, {"own": dataset.vocabulary}, batch_size, device, workers, progress,
                     precision)["own"]
    return evaluate_multilabel(scores, _labels(dataset))


def format_report(report: dict[str, dict[str, float]]) -> str:
    """Rows of tasks, columns Top-3 P/R/F1, Top-5 P/R/F1, mAP (as in the paper's Tables I–III)."""
    width = max(len("task"), *(len(task) for task in report)) + 2
    lines = [f"{'':<{width}}{'Top-3':^24}{'Top-5':^24}{'':>8}",
             f"{'task':<{width}}" + "".join(f"{c.split('@')[0]:>8}" for c in TABLE_COLUMNS)]
    for task, metrics in report.items():
        lines.append(f"{task:<{width}}" + "".join(f"{metrics[c]:>8.2f}" for c in TABLE_COLUMNS))
    return "\n".join(lines)
