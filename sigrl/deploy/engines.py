"""One small class per engine: input/output names, dtypes, dynamic axes and min/opt/max shapes.

ONNX export, ONNX Runtime, TensorRT profiles and Triton's ``config.pbtxt`` all read the same
description, so an engine's interface is written once (TensorRT diffusion-demo style). Shapes are
tuples of fixed sizes and axis names; the names are the dynamic axes: ``C`` classes, ``L`` token
positions, ``B`` images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sigrl.bpe import CONTEXT_LENGTH, EOT_TOKEN_ID, SOT_TOKEN_ID
from sigrl.config import SigRLConfig
from sigrl.registry import MAX_CLASSES

if TYPE_CHECKING:  # torch only where an engine is exported: the served models read the specs without it
    import torch

Shape = tuple[int | str, ...]
OPT_CLASSES = 81  # the C TensorRT optimises for (NUS-WIDE's unseen labels), or the largest C where that is less


def _class_range(opt_classes: int, max_classes: int) -> tuple[int, int, int]:
    """(min, opt, max) of the class axis C; ValueError for a largest C below 1."""
    if max_classes < 1:
        raise ValueError(f"--max-classes must be a positive number of labels, got {max_classes}")
    return 1, min(opt_classes, max_classes), max_classes


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: name, numpy dtype name, shape (ints fixed, strings dynamic)."""

    name: str
    dtype: str
    shape: Shape

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for the given sizes of the dynamic axes."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass
class EngineSpec:
    """An engine's interface plus the range of each dynamic axis: ``{axis: (min, opt, max)}``."""

    name: ClassVar[str]
    file_name: ClassVar[str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axis_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT-style optimisation profile: per input, its (min, opt, max) shape."""
        low, opt, high = ({axis: r[i] for axis, r in self.axis_ranges.items()} for i in range(3))
        return {t.name: (t.resolve(low), t.resolve(opt), t.resolve(high)) for t in self.inputs}

    def warmup_inputs(self) -> dict[str, np.ndarray]:
        """Inputs at the smallest shapes of the profile that every runtime accepts: zeros for floats, and token
        ids of empty prompts (start and end token, then padding) for the int32 input (zeros would be refused)."""
        feeds = {}
        for tensor in self.inputs:
            array = np.zeros(self.profile()[tensor.name][0], dtype=tensor.dtype)
            if tensor.dtype == "int32":
                array[:, :2] = SOT_TOKEN_ID, EOT_TOKEN_ID
            feeds[tensor.name] = array
        return feeds

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Raise ValueError naming the input whose name, dtype or shape is wrong; return the axis sizes."""
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            raise ValueError(f"{self.name}: expected inputs {self.input_names}, "
                             f"missing {missing}, unexpected {unknown}")
        dims: dict[str, int] = {}
        for spec in self.inputs:
            array = feeds[spec.name]
            if array.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{self.name}: input {spec.name!r} must be {spec.dtype}, got {array.dtype}")
            if array.ndim != len(spec.shape):
                raise ValueError(f"{self.name}: input {spec.name!r} must have shape {list(spec.shape)}, "
                                 f"got {list(array.shape)}")
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(want, str):
                    low, _, high = self.axis_ranges[want]
                    if dims.setdefault(want, got) != got:
                        raise ValueError(f"{self.name}: axis {want} of {spec.name!r} is {got}, "
                                         f"but {dims[want]} elsewhere")
                    if not low <= got <= high:
                        raise ValueError(f"{self.name}: axis {want} of {spec.name!r} is {got}, "
                                         f"outside the engine's range [{low}, {high}]")
                elif got != want:
                    raise ValueError(f"{self.name}: input {spec.name!r} must have shape {list(spec.shape)}, "
                                     f"got {list(array.shape)} (axis {axis})")
        return dims

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs to trace the export with."""
        raise NotImplementedError

    def export_dynamic_shapes(self) -> dict[str, dict[int, object]]:
        """``dynamic_shapes`` for torch.export: every named axis is dynamic.

        ``Dim.DYNAMIC`` rather than ranged ``Dim``s: the chunk loops make torch.export assume at least
        two chunks and a C that is not a multiple of the chunk size for the *traced* program, a
        constraint the ONNX graph does not have (the tests run C = 1 and exact multiples).
        """
        import torch

        return {t.name: dict.fromkeys(t.dynamic_axes(), torch.export.Dim.DYNAMIC) for t in self.inputs}


class TextGMCEngine(EngineSpec):
    """Text encoder + GMC: token ids (C×L, int32) → label_emb, graph_emb (C×D, float32)."""

    name = "text_gmc"
    file_name = "text_gmc.onnx"
    TOKEN_IDS, LABEL_EMB, GRAPH_EMB = "token_ids", "label_emb", "graph_emb"

    def __init__(self, config: SigRLConfig, max_classes: int = MAX_CLASSES, opt_classes: int = OPT_CLASSES) -> None:
        dim = config.embed_dim
        super().__init__(
            inputs=(TensorSpec(self.TOKEN_IDS, "int32", ("C", "L")),),
            outputs=(TensorSpec(self.LABEL_EMB, "float32", ("C", dim)),
                     TensorSpec(self.GRAPH_EMB, "float32", ("C", dim))),
            axis_ranges={"C": _class_range(opt_classes, max_classes), "L": (2, 16, CONTEXT_LENGTH)},
        )
        self.example_classes = 2 * config.gmc_node_chunk + 3  # > 2 chunks, not a multiple (see graphs.py)

    @classmethod
    def feeds(cls, token_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's inputs by name."""
        return {cls.TOKEN_IDS: token_ids}

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Token ids to trace the export with (the prompt length is the longest of these names)."""
        import torch

        from sigrl.tokenizer import tokenize, trim_token_ids

        ids = trim_token_ids(tokenize([f"example label {i}" for i in range(self.example_classes)]))
        return (ids.to(torch.int32).contiguous(),)


class ImageSVFREngine(EngineSpec):
    """Image encoder + SVFR: images (B×3×H×W) and a vocabulary (label_emb, graph_emb) → scores B×C."""

    name = "image_svfr"
    file_name = "image_svfr.onnx"
    IMAGES, LABEL_EMB, GRAPH_EMB, SCORES = "images", TextGMCEngine.LABEL_EMB, TextGMCEngine.GRAPH_EMB, "scores"

    def __init__(self, config: SigRLConfig, max_batch: int = 32, opt_batch: int = 8, max_classes: int = MAX_CLASSES,
                 opt_classes: int = OPT_CLASSES) -> None:
        size, dim = config.vision_cfg["image_size"], config.embed_dim
        super().__init__(
            inputs=(TensorSpec(self.IMAGES, "float32", ("B", 3, size, size)),
                    TensorSpec(self.LABEL_EMB, "float32", ("C", dim)),
                    TensorSpec(self.GRAPH_EMB, "float32", ("C", dim))),
            outputs=(TensorSpec(self.SCORES, "float32", ("B", "C")),),
            axis_ranges={"B": (1, opt_batch, max_batch), "C": _class_range(opt_classes, max_classes)},
        )
        self.example_classes = 2 * config.class_chunk + 3
        self.image_size, self.dim = size, dim

    @classmethod
    def feeds(cls, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's inputs by name."""
        return {cls.IMAGES: images, cls.LABEL_EMB: label_emb, cls.GRAPH_EMB: graph_emb}

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Two images and random embeddings: tracing needs B ≥ 2 and C above two chunks."""
        import torch

        generator = torch.Generator().manual_seed(0)
        shape = (self.example_classes, self.dim)
        return (torch.randn(2, 3, self.image_size, self.image_size, generator=generator),
                torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))


def engine_specs(config: SigRLConfig, max_classes: int = MAX_CLASSES) -> tuple[TextGMCEngine, ImageSVFREngine]:
    """Both engines of a model configuration for vocabularies of up to ``max_classes`` labels."""
    return TextGMCEngine(config, max_classes=max_classes), ImageSVFREngine(config, max_classes=max_classes)
