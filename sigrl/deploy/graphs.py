"""Trace-friendly wrappers around the trained submodules, one per engine (segment-anything style).

The eager model chunks GMC and SVFR with Python loops whose trip count depends on C, which an
exported graph cannot keep. Here the chunks become ``torch._higher_order_ops.scan`` loops (exported
as ONNX ``Scan``): C is padded with zero rows up to a multiple of the chunk size, the padded rows
are sliced off where outputs are per class, and masked out where VFR sums over classes. Peak memory
then follows the chunk size, not C, and the graphs take any C ≥ 1 and any batch size.

Where one chunk covers every vocabulary the engine accepts (chunk ≥ the engine's largest C), the
loop is left out and the step runs once on all classes, unpadded: the graph is loop-free there, so
TensorRT can fuse the SVFR math across classes instead of running loop iterations one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch._higher_order_ops.scan import scan

from sigrl.gmc import DenseGATv2, LabelGraph
from sigrl.model import SigRL
from sigrl.precision import model_dtype
from sigrl.svfr import SemanticReconstruction


def _chunked(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Pad dim 0 with zero rows to a multiple of ``chunk`` and split it: (n_chunks, chunk, ...)."""
    size = x.shape[0]
    num_chunks = (size + chunk - 1) // chunk  # ceil-div keeps n_chunks·chunk provable for torch.export
    padded = F.pad(x, [0, 0] * (x.ndim - 1) + [0, num_chunks * chunk - size])
    return padded.unflatten(0, (num_chunks, chunk))


def _unchunked(x: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of :func:`_chunked` for scan outputs (n_chunks, chunk, ...): merge and drop the padding.

    Chunks stay in dim 0 throughout, and the padding is dropped with ``index_select`` rather than a
    slice: moving a dynamic chunk axis or slicing makes torch.export guard on C (C ≥ 2 chunks, C not a
    multiple of the chunk size), and the exported graph would no longer take every C.
    """
    return x.flatten(0, 1).index_select(0, torch.arange(size, device=x.device))


def _per_class(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int,
               loop_free: bool) -> torch.Tensor:
    """``fn`` over the classes (dim 0) of ``x``, classes first in and out: one call when ``loop_free``,
    else a Scan over chunks of ``chunk`` classes. The Scan's carry is a placeholder torch's scan requires
    (``prune_scans`` drops it from the ONNX graph)."""
    if loop_free:
        return fn(x)

    def step(carry: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return carry.clone(), fn(xs)

    # the carried state is fp32: opset 18 has no bf16 ConstantOfShape
    _, out = scan(step, x.new_zeros((), dtype=torch.float32), _chunked(x, chunk))
    return _unchunked(out, x.shape[0])


def _gat_layer(layer: DenseGATv2, h: torch.Tensor, max_classes: int) -> torch.Tensor:
    """One GATv2 layer with the target nodes in chunks (eval mode: no dropout)."""
    num_nodes = h.shape[0]
    wh = layer.lin(h).view(num_nodes, layer.heads, layer.head_dim)
    out = _per_class(lambda targets: layer.attend(targets, wh), wh, layer.node_chunk, layer.node_chunk >= max_classes)
    return out.reshape(num_nodes, layer.heads * layer.head_dim)


class TextGMCGraph(nn.Module):
    """Text engine: token ids (C×L, int32) → (label_emb T, graph_emb G), both C×D, for C ≤ ``max_classes``."""

    def __init__(self, model: SigRL, max_classes: int) -> None:
        super().__init__()
        self.model, self.max_classes = model, max_classes

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        label_emb = self.model.encode_tokens(token_ids)
        gmc: LabelGraph = self.model.gmc
        hidden = F.elu(_gat_layer(gmc.layer1, label_emb, self.max_classes))
        # fp32 outputs at any precision: the engine contract
        return label_emb.float(), _gat_layer(gmc.layer2, hidden, self.max_classes).float()


def _softmax_parts(proj: nn.Linear, patches: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``SemanticReconstruction.attend`` laid out for ONNX Runtime: (exp weights B×c×P×D, their sum B×c×D).

    The eager model works in B×P×c×D and calls softmax over P. In ONNX Runtime a Softmax or a reduction
    over that middle axis is slow (it transposes the whole tensor, or reduces with a large stride): it
    took most of the vit-b16 image engine's time. With classes before patches, and the normalisation
    left to the caller, the same values come 2x faster. softmax_P(logits) = weights / sum.
    """
    logits = proj(torch.tanh(queries[:, :, None, :] * patches[:, None, :, :])).float()  # fp32 island
    weights = (logits - logits.amax(dim=2, keepdim=True)).exp()
    return weights, weights.sum(dim=2)


def _sda(svfr: SemanticReconstruction, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Category-specific features S = Σ_p α V for a set of classes (labels c×D): c×B×D, classes first."""
    weights, total = _softmax_parts(svfr.sda_proj, patches, labels[None].expand(patches.shape[0], -1, -1))
    return ((weights * patches[:, None]).sum(dim=2) / total).transpose(0, 1)


def _vfr_gate(svfr: SemanticReconstruction, patches: torch.Tensor, fused: torch.Tensor,
              real: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_c β over a set of classes (fused queries B×c×D): B×P×D. ``real`` (c) masks padded classes out."""
    weights, total = _softmax_parts(svfr.vfr_proj, patches, fused)
    scale = 1 / total if real is None else real[None, :, None] / total  # B×c×D
    return (weights * scale[:, :, None, :]).sum(dim=1)


class ImageSVFRGraph(nn.Module):
    """Image engine: images (B×3×H×W) and a vocabulary (T, G: C×D, C ≤ ``max_classes``) → scores B×C."""

    def __init__(self, model: SigRL, max_classes: int) -> None:
        super().__init__()
        self.model, self.max_classes = model, max_classes

    def forward(self, images: torch.Tensor, label_emb: torch.Tensor, graph_emb: torch.Tensor) -> torch.Tensor:
        svfr: SemanticReconstruction = self.model.svfr
        chunk = svfr.class_chunk
        dtype = model_dtype(self.model)  # fp32 I/O, the model's own precision inside
        images, label_emb, graph_emb = images.to(dtype), label_emb.to(dtype), graph_emb.to(dtype)
        global_feat, patches = self.model.encode_image(images)
        if not svfr.enabled:  # MKT baseline (use_svfr false): the local branch scores V, graph_emb is unused
            return svfr.score(global_feat, patches, label_emb)
        loop_free = chunk >= self.max_classes
        sda = _per_class(lambda labels: _sda(svfr, patches, labels), label_emb, chunk, loop_free)  # C×B×D
        fused = svfr.fuse_classes(sda.transpose(0, 1), label_emb, graph_emb)  # B×C×D
        if loop_free:
            gate = _vfr_gate(svfr, patches, fused)
        else:
            real = _chunked(torch.ones_like(label_emb[:, 0], dtype=torch.float32), chunk)  # n×k: 1 real, 0 padding

            def vfr_step(gate: torch.Tensor, xs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, list]:
                fused_chunk, mask = xs  # k×B×D, k
                return gate + _vfr_gate(svfr, patches, fused_chunk.transpose(0, 1), mask), []  # no per-chunk output

            gate, _ = scan(vfr_step, torch.zeros_like(patches, dtype=torch.float32),
                           (_chunked(fused.transpose(0, 1), chunk), real))
        return svfr.score(global_feat, patches * gate, label_emb)
