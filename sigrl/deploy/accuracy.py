"""The paper's accuracy report computed through deployed engines, so users measure what they ship.

``sigrl eval --engines DIR`` scores a dataset with an :class:`EngineRuntime` (ONNX Runtime on the
exported graphs, or PyTorch at a chosen precision) instead of the training model, with the same
datasets, vocabularies and metrics as ``sigrl eval`` on a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from sigrl.data.common import MultiLabelDataset, data_loader
from sigrl.deploy.runtimes import EngineRuntime
from sigrl.evaluation import evaluate_scorer
from sigrl.tokenizer import tokenize


def runtime_predict(runtime: EngineRuntime, template: str, dataset: MultiLabelDataset,
                    vocabularies: dict[str, Sequence[str]], batch_size: int = 32, workers: int = 0,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """Scores N×C of every image against each vocabulary: text engine once per vocabulary, image engine per batch."""
    encoded = {name: runtime.encode_labels(tokenize(list(vocab), template)) for name, vocab in vocabularies.items()}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in vocabularies}
    loader = data_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    for batch in tqdm(loader, desc=f"scoring ({runtime.name}, {runtime.precision})", disable=not progress,
                      leave=False):
        images = batch["image"].numpy()
        for name, (label_emb, graph_emb) in encoded.items():
            outputs[name].append(runtime.score_images(images, label_emb, graph_emb))
    return {name: np.concatenate(chunks) for name, chunks in outputs.items()}


def evaluate_runtime(runtime: EngineRuntime, template: str, image_size: int, data: str, root: str | None = None,
                     split: str = "test", batch_size: int = 32, workers: int = 0, progress: bool = False,
                     **dataset_kwargs) -> dict[str, dict[str, float]]:
    """The ``sigrl eval`` report (metrics in percent per task row) with ``runtime`` doing the scoring."""
    def scorer(dataset: MultiLabelDataset, vocabularies: dict[str, Sequence[str]]) -> dict[str, np.ndarray]:
        return runtime_predict(runtime, template, dataset, vocabularies, batch_size, workers, progress)

    return evaluate_scorer(scorer, image_size, data, root, split, **dataset_kwargs)
