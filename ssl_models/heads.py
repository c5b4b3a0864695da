"""Composable MLP heads (projection and prediction heads).

Every method in the SSL literature uses some stack of Linear -> (BN) -> ReLU
blocks; they differ only in widths, depth and whether the last layer has BN.
One small builder covers SimCLR, MoCo v2, BYOL, Barlow Twins and VICReg heads.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def mlp_head(
    dims: Sequence[int],
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_affine: bool = True,
) -> nn.Sequential:
    """An MLP mapping ``dims[0] -> ... -> dims[-1]``.

    Hidden layers are Linear -> BN (optional) -> ReLU; the last layer is a Linear,
    optionally followed by a BatchNorm (SimCLR v2 / Barlow Twins style) with or
    without affine parameters.
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP head needs at least input and output dims, got {list(dims)}")
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_affine))
    return nn.Sequential(*layers)


def projection_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                    output_batch_norm: bool = False) -> nn.Sequential:
    """SimCLR-style projection head: ``num_layers`` linear layers, BN in hidden layers.

    ``output_batch_norm`` adds a BatchNorm after the last linear layer, as SimCLR v2's
    head and LightlySSL's ``SimCLRProjectionHead`` have: it centres and whitens each
    output coordinate over the batch before the embeddings are L2-normalised.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    return mlp_head(dims, last_batch_norm=output_batch_norm)
