"""The transformer of the panoramic LRM (``PanoLRM.transformer`` and ``PanoLRM.transformer_gs``).

The official network stacks ``nn.TransformerEncoderLayer(d_model=1024, nhead=4, dropout=0.1,
activation='gelu', batch_first=True)`` (post-norm, FFN 2048, LayerNorm eps 1e-5) in two
``nn.TransformerEncoder``s of 4 layers and feeds every layer's output to a DPT head. These are
the same layers with the same parameter names (``layers.{i}.self_attn.in_proj_weight``,
``.self_attn.out_proj``, ``.linear1``, ``.linear2``, ``.norm1``, ``.norm2``), with attention
written directly as ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on a
GPU, in training too) and every layer's output returned.

Shapes: tokens [B, N, D] in and out (N = T * gh * gw, token order (t, y, x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters, through SDPA."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} does not divide by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, D] -> [B, N, D]
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, D/heads]
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, 'gelu', eps, batch_first=True)``
    (post-norm), with the same parameter names and SDPA attention."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # [B, N, D] -> [B, N, D]
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(x))))))


class EncoderStack(nn.Module):
    """``nn.TransformerEncoder`` without a final norm (``layers.{i}``), returning every layer's output."""

    def __init__(self, layers: int, dim: int, heads: int, ffn_dim: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout, eps) for _ in range(layers))

    def forward(self, x: Tensor) -> list[Tensor]:  # [B, N, D] -> layers x [B, N, D]
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs
