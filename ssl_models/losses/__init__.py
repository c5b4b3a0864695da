"""Loss functions: small, pure, gather-aware. One file per family."""

from ssl_models.losses.barlow import barlow_twins_loss, mixed_barlow_regulariser
from ssl_models.losses.byol import negative_cosine
from ssl_models.losses.dcl import dcl_loss
from ssl_models.losses.isogclr import ISogCLROutput, isogclr_loss
from ssl_models.losses.mae import mae_loss, patchify
from ssl_models.losses.moco import MochiDraw, draw_mochi, mochi_negatives, moco_loss
from ssl_models.losses.ntxent import nt_xent_loss
from ssl_models.losses.unigrad import unigrad_loss
from ssl_models.losses.vicreg import vicreg_loss

#: every loss function (and MoCHi's negatives, computed like one): each runs in fp32 under autocast
LOSSES = {
    "nt_xent_loss": nt_xent_loss,
    "dcl_loss": dcl_loss,
    "moco_loss": moco_loss,
    "mochi_negatives": mochi_negatives,
    "negative_cosine": negative_cosine,
    "barlow_twins_loss": barlow_twins_loss,
    "mixed_barlow_regulariser": mixed_barlow_regulariser,
    "vicreg_loss": vicreg_loss,
    "isogclr_loss": isogclr_loss,
    "mae_loss": mae_loss,
    "unigrad_loss": unigrad_loss,
}

__all__ = [
    "LOSSES",
    "nt_xent_loss",
    "dcl_loss",
    "moco_loss",
    "draw_mochi",
    "mochi_negatives",
    "MochiDraw",
    "negative_cosine",
    "barlow_twins_loss",
    "mixed_barlow_regulariser",
    "vicreg_loss",
    "isogclr_loss",
    "ISogCLROutput",
    "mae_loss",
    "patchify",
    "unigrad_loss",
]
