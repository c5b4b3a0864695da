"""SSL methods and a registry that builds one from plain arguments."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ssl_models.methods.base import SSLMethod
from ssl_models.methods.simclr import SimCLR

#: name -> constructor(backbone, feature_dim, **method kwargs)
METHODS: dict[str, Callable[..., SSLMethod]] = {"simclr": SimCLR}


def build_method(name: str, backbone: nn.Module, feature_dim: int, **kwargs: Any) -> SSLMethod:
    """Build a registered method; unknown names list the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](backbone, feature_dim, **kwargs)


__all__ = ["SSLMethod", "SimCLR", "METHODS", "build_method"]
