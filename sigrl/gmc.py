"""GMC: graph-based multi-label correlation (spec §1.3).

A dense two-layer GATv2 over the complete graph of the label vocabulary (self-loops included).
The pairwise score tensor of a layer is C×C×F (≈2 GB at C = 1006, F = 512 in fp32), so the
attention is computed over chunks of target nodes; softmax and aggregation are per target node,
which makes the chunked result identical to the unchunked one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sigrl.chunking import run_chunk


class DenseGATv2(nn.Module):
    """One GATv2 layer on a complete graph: e_ij = aᵀ LeakyReLU(W h_i + W h_j), softmax over j.

    W is a single bias-free linear map shared by source and target nodes; heads are concatenated.
    """

    def __init__(self, in_dim: int, heads: int, head_dim: int, dropout: float = 0.0,
                 negative_slope: float = 0.2, node_chunk: int = 64) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.negative_slope = negative_slope
        self.node_chunk = node_chunk
        self.grad_checkpointing = False
        self.lin = nn.Linear(in_dim, heads * head_dim, bias=False)
        self.att = nn.Parameter(torch.empty(heads, head_dim))
        self.attn_drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att)

    def attend(self, targets: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
        """Features of a chunk of target nodes (c×H×F) aggregated over all C source nodes ``wh``."""
        pair = F.leaky_relu(targets[:, None] + wh[None], self.negative_slope)  # c×C×H×F
        # matmuls rather than einsum (ONNX has no bf16 Einsum); the softmax and the sum over source nodes
        # run in fp32 at any precision (the casts are no-ops in fp32)
        scores = (pair[..., None, :] @ self.att[:, :, None])[..., 0, 0]  # aᵀ pair per head: c×C×H
        alpha = self.attn_drop(scores.float().softmax(dim=1))
        out = alpha.permute(2, 0, 1) @ wh.float().transpose(0, 1)  # Σ_j α_ijh wh_jhf: H×c×F
        return out.transpose(0, 1).to(wh.dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: C×in_dim node features → C×(heads·head_dim)."""
        num_nodes = h.shape[0]
        wh = self.lin(h).view(num_nodes, self.heads, self.head_dim)
        outputs = [run_chunk(self.grad_checkpointing, self.attend, wh[start:start + self.node_chunk], wh)
                   for start in range(0, num_nodes, self.node_chunk)]
        return torch.cat(outputs).reshape(num_nodes, self.heads * self.head_dim)


class LabelGraph(nn.Module):
    """GMC: input dropout → GATv2 (heads × head_dim) → ELU → dropout → GATv2 (1 head, back to dim)."""

    def __init__(self, dim: int, heads: int = 4, head_dim: int = 32, dropout: float = 0.3,
                 node_chunk: int = 64) -> None:
        super().__init__()
        self.input_drop = nn.Dropout(dropout)
        self.layer1 = DenseGATv2(dim, heads, head_dim, dropout, node_chunk=node_chunk)
        self.hidden_drop = nn.Dropout(dropout)
        self.layer2 = DenseGATv2(heads * head_dim, 1, dim, dropout, node_chunk=node_chunk)

    def set_node_chunk(self, node_chunk: int) -> None:
        """Change how many target nodes are attended at once (memory only; results are identical)."""
        self.layer1.node_chunk = self.layer2.node_chunk = node_chunk

    def forward(self, label_emb: torch.Tensor) -> torch.Tensor:
        """label_emb: C×dim → graph embedding G, C×dim (no residual, no final activation)."""
        x = self.layer1(self.input_drop(label_emb))
        return self.layer2(self.hidden_drop(F.elu(x)))
