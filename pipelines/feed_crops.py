"""The stream feed's read tasks: a segment of a shard in, fixed-size uint8 crops of every view out.

Runs inside Ray Data (``crop_segments`` is the UDF ``pipelines.feed.StreamFeed`` maps over its
segments). Crop boxes are drawn per chunk of a shard's own positions from a generator seeded by
``(seed, epoch, shard, chunk)``, so a sample's crops do not depend on which worker reads it or
where its segment starts; each image is decoded at its own size, reduced (JPEG draft) only as far
as every crop still has its full resolution.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch

from curation.decode import Intensity, decode_image, open_image
from ssl_models.augment import ViewRecipe, crop_box_pixels, sample_crop_params

#: positions of a shard that share one crop-parameter generator in the Ray Data stage
CROP_CHUNK = 256
#: stream mode: bytes of crops per block the Ray Data stage hands on (a few per worker are in flight)
BLOCK_BYTES = 8 * 2**20


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: no correlated neighbouring seeds)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def chunk_crop_params(recipe: ViewRecipe, num_views: int, aspects: torch.Tensor, seed: int, epoch: int,
                      shard: int, chunk: int) -> list:
    """Crop boxes + flips of every view of one chunk of a shard's positions.

    The generator depends only on ``(seed, epoch, shard, chunk)`` and the draws do not depend on
    the aspects, so a sample's crops are the same whichever worker reads it and wherever its
    segment starts (a resumed epoch cuts the same crops as the uninterrupted one).
    """
    gen = torch.Generator().manual_seed(_mix(seed, epoch, shard, chunk, 0xC50))
    return [sample_crop_params(len(aspects), recipe, aspects, gen) for _ in range(num_views)]


def draft_for_boxes(boxes: list[tuple[float, float, float, float]], width: int, height: int, size: int) -> tuple[int, int]:
    """The smallest whole-image size a reduced (JPEG draft) decode may have so every box still holds
    ``size`` x ``size`` source pixels: the crop is never upsampled from a reduced decode."""
    need_w = max(size * width / max(b[2] - b[0], 1e-6) for b in boxes)
    need_h = max(size * height / max(b[3] - b[1], 1e-6) for b in boxes)
    return min(width, math.ceil(need_w)), min(height, math.ceil(need_h))


def render_crops(data: bytes, params: list, j: int, size: int, channels: int, max_pixels: int,
                 intensity: Intensity = "full_range") -> np.ndarray:
    """Decode one image (reduced where the crops allow) and cut its views: uint8 [V, size, size, C].
    ``intensity``: how a 16-bit/float image is scaled to 8 bits (``data.intensity``)."""
    from PIL import Image

    width, height = open_image(data, max_pixels).size
    boxes = [crop_box_pixels(p, j, width, height) for p in params]
    im = decode_image(data, channels, intensity=intensity, max_pixels=max_pixels,
                      draft_size=draft_for_boxes(boxes, width, height, size))
    sx, sy = im.size[0] / width, im.size[1] / height
    out = np.empty((len(params), size, size, channels), np.uint8)
    for v, (box, p) in enumerate(zip(boxes, params)):
        scaled = (max(0.0, box[0] * sx), max(0.0, box[1] * sy), min(im.size[0], box[2] * sx), min(im.size[1], box[3] * sy))
        view = im.resize((size, size), Image.Resampling.BILINEAR, box=scaled)
        if bool(p.flip[j]):
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(view, dtype=np.uint8)
        out[v] = arr[:, :, None] if channels == 1 else arr
    return out


class _CropBlocks:
    """The rows a segment has produced so far, handed on as blocks of ``rows_per_block`` rows.

    An error row (a shard cut short, an image that no longer decodes) has blank crops, so every
    block has the same columns and crop shape whatever went wrong."""

    def __init__(self, uri: str, num_views: int, size: int, channels: int, rows_per_block: int) -> None:
        self.uri, self.num_views, self.size, self.channels = uri, num_views, size, channels
        self.rows_per_block = rows_per_block
        self.rows: dict[str, list] = {"key": [], "label": [], "sample_id": [], "views": [], "error": [], "source": []}
        self.blank = np.zeros((num_views, size, size, channels), np.uint8)

    def add(self, key: str, label: int, sample_id: int, views: np.ndarray, error: str = "") -> None:
        for name, value in (("key", key), ("label", label), ("sample_id", sample_id), ("views", views),
                            ("error", error), ("source", self.uri)):
            self.rows[name].append(value)

    def add_error(self, key: str, reason: str, label: int = -1, sample_id: int = -1) -> None:
        self.add(key, label, sample_id, self.blank, reason)

    def full(self) -> bool:
        return len(self.rows["key"]) >= self.rows_per_block

    def emit(self) -> dict[str, np.ndarray]:
        """The rows collected so far as one block (numpy columns); the collection starts again empty."""
        rows, size = self.rows, self.size
        out = {"key": np.array(rows["key"], dtype=object), "label": np.array(rows["label"], np.int64),
               "sample_id": np.array(rows["sample_id"], np.int64),
               "views": np.stack(rows["views"]) if rows["views"] else np.zeros((0, self.num_views, size, size, self.channels),
                                                                                np.uint8),
               "error": np.array(rows["error"], dtype=object), "source": np.array(rows["source"], dtype=object)}
        for v in rows.values():
            v.clear()
        return out


def crop_segments(batch: dict[str, np.ndarray], recipe: ViewRecipe, num_views: int, channels: int, seed: int,
                  epoch: int, max_pixels: int, rows_per_block: int = 0, env: dict[str, str] | None = None,
                  intensity: Intensity = "full_range") -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF (one segment per call): read positions ``[start, stop)`` of a shard, decode each
    image at its own size, cut ``num_views`` crops, yield blocks of fixed-size uint8 crops.

    A shard that cannot be opened or is cut short, and an image that no longer decodes, come out
    as rows with an ``error`` (and blank crops), so the worker counts them instead of crashing.
    With a keep-list (``keys``), positions count only the kept samples of the shard.
    """
    from curation.ingest import iter_samples
    from storage.uri import apply_env

    apply_env(env)
    uri, shard = str(batch["uri"][0]), int(batch["shard"][0])
    start, stop, first_id = int(batch["start"][0]), int(batch["stop"][0]), int(batch["first_id"][0])
    keep = batch["keys"][0] if "keys" in batch else None
    keep = set(keep) if keep is not None and len(keep) else None
    size = recipe.size
    if rows_per_block <= 0:  # blocks of about BLOCK_BYTES of crops
        rows_per_block = max(8, BLOCK_BYTES // (num_views * size * size * channels))
    blocks = _CropBlocks(uri, num_views, size, channels, rows_per_block)
    for pending in _segment_chunks(iter_samples(uri), keep, start, stop, blocks):
        yield from _render_chunk(pending, blocks, recipe, seed, epoch, shard, first_id, max_pixels, intensity)
    if blocks.rows["key"]:
        yield blocks.emit()


def _segment_chunks(samples: Iterator[dict[str, Any]], keep: set[str] | None, start: int, stop: int,
                    blocks: _CropBlocks) -> Iterator[list[tuple[int, int, dict[str, Any]]]]:
    """The segment's samples as (position, member index, row), one list per crop chunk of the shard.

    Crop parameters are drawn per chunk of positions, so a chunk is rendered whole. A shard that
    broke after curation is recorded as an error row when it is met (curated shards hold only
    readable samples), so its rows stay in the order the shard is read."""
    pending: list[tuple[int, int, dict[str, Any]]] = []
    pos = member = 0
    for row in samples:
        if row["read_error"]:
            # a curated shard holds only readable samples: this one broke (or went) after curation
            if row["read_error"] in ("unreadable_shard", "truncated_shard"):
                blocks.add_error(row["key"], row["read_error"])
            continue
        this_member = member
        member += 1
        if keep is not None and row["key"] not in keep:
            continue
        if pos >= stop:
            break
        if pos >= start:
            if pending and pos // CROP_CHUNK != pending[0][0] // CROP_CHUNK:
                yield pending
                pending = []
            pending.append((pos, this_member, row))
        pos += 1
    if pending:
        yield pending


def _chunk_sizes(pending: list[tuple[int, int, dict[str, Any]]],
                 max_pixels: int) -> tuple[dict[int, tuple[int, int]], torch.Tensor]:
    """Each readable image's size by position, and the chunk's aspect ratios (1 where an image does not
    open: the crop draws do not depend on aspects, so one bad image changes no other sample's crops)."""
    aspects = torch.ones(CROP_CHUNK)
    sizes: dict[int, tuple[int, int]] = {}
    for pos, _, row in pending:
        try:
            w, h = open_image(row["image"], max_pixels).size
            sizes[pos], aspects[pos % CROP_CHUNK] = (w, h), w / h
        except Exception:  # noqa: BLE001 - recorded as a row error by the caller
            pass
    return sizes, aspects


def _render_chunk(pending: list[tuple[int, int, dict[str, Any]]], blocks: _CropBlocks, recipe: ViewRecipe, seed: int,
                  epoch: int, shard: int, first_id: int, max_pixels: int,
                  intensity: Intensity) -> Iterator[dict[str, np.ndarray]]:
    """Cut every view of one chunk's samples into ``blocks``, yielding each block as it fills up."""
    chunk = pending[0][0] // CROP_CHUNK
    sizes, aspects = _chunk_sizes(pending, max_pixels)
    params = chunk_crop_params(recipe, blocks.num_views, aspects, seed, epoch, shard, chunk)
    for pos, member, row in pending:
        sample_id = first_id + member
        if pos not in sizes:
            blocks.add_error(row["key"], "decode_error", int(row["label"]), sample_id)
            continue
        try:
            views = render_crops(row["image"], params, pos % CROP_CHUNK, blocks.size, blocks.channels, max_pixels,
                                 intensity)
        except Exception:  # noqa: BLE001 - an image that decoded at curation but not now
            blocks.add_error(row["key"], "decode_error", int(row["label"]), sample_id)
            continue
        blocks.add(row["key"], int(row["label"]), sample_id, views)
        if blocks.full():
            yield blocks.emit()
