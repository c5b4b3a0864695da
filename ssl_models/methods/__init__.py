"""SSL methods and a registry that builds one from plain arguments.

Every constructor has the form ``Cls(backbone, feature_dim, *, <method kwargs>)``;
the config layer passes only the kwargs a constructor's signature names.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ssl_models.methods.barlow import BarlowTwins, MixedBarlowTwins
from ssl_models.methods.base import SSLMethod
from ssl_models.methods.byol import BYOL
from ssl_models.methods.dcl import DCL, DCLW
from ssl_models.methods.isogclr import ISogCLR
from ssl_models.methods.mae import MAE
from ssl_models.methods.moco import MoCHi, MoCoV2
from ssl_models.methods.siameseim import SiameseIM
from ssl_models.methods.simclr import SimCLR
from ssl_models.methods.vicreg import VICReg

#: name -> constructor(backbone, feature_dim, **method kwargs)
METHODS: dict[str, Callable[..., SSLMethod]] = {
    "simclr": SimCLR,
    "dcl": DCL,
    "dclw": DCLW,
    "moco_v2": MoCoV2,
    "mochi": MoCHi,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "mixed_barlow_twins": MixedBarlowTwins,
    "vicreg": VICReg,
    "isogclr": ISogCLR,
    "mae": MAE,
    "siameseim": SiameseIM,
}


def build_method(name: str, backbone: nn.Module, feature_dim: int, **kwargs: Any) -> SSLMethod:
    """Build a registered method; unknown names list the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](backbone, feature_dim, **kwargs)


__all__ = [
    "SSLMethod", "SimCLR", "DCL", "DCLW", "MoCoV2", "MoCHi", "BYOL", "BarlowTwins", "MixedBarlowTwins",
    "VICReg", "ISogCLR", "MAE", "SiameseIM", "METHODS", "build_method",
]
