"""Where the labels of ``sslpipe shard`` come from: nowhere, the folder names, or a key,label table.

An uncurated collection has no labels, and a folder name is not always a class: a
date-partitioned tree (``2023/01/a.jpg``) would get the year as its "class". So labels are
taken from the layout only when asked (``--labels folder``), from a table when one is given
(``--labels FILE``), and otherwise not made up:

- ``none`` (the default of ``sslpipe shard``): an image folder's samples are unlabelled (-1);
  shards keep the labels stored in them (``.cls`` members, a ``label`` column).
- ``folder``: the torchvision ImageFolder convention: the first folder under the root names
  the class of everything below it, at any depth; classes are numbered by sorted name;
  images directly in the root are unlabelled (and counted as such).
- ``FILE``: a ``.csv`` (header ``key,label``) or ``.parquet`` (columns ``key``, ``label``).
  A key is the image's path relative to the folder, with or without its extension
  (``2023/01/a.jpg`` or ``2023/01/a``), or a shard sample's key. Integer labels are used as
  they are; text labels are numbered by sorted name. Samples not in the file are unlabelled.
- ``auto`` (what ``sslpipe run`` and library callers get): ``folder`` for an image folder,
  ``none`` for shards, as sharding behaved before labels became optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation.errors import InputError
from curation.ingest import filesystem_for
from curation.shards import IMAGE_EXTENSIONS

LABEL_MODES = ("none", "folder", "auto")


def is_label_file(labels: str) -> bool:
    """A ``--labels`` value that names a table rather than a mode."""
    return labels not in LABEL_MODES


@dataclass
class LabelTable:
    """The labels read from a file: one int64 label per key, and the class names of text labels."""

    path: str
    table: pa.Table  # key: string (normalized as ``label_key`` does), label: int64
    classes: list[str] = field(default_factory=list)


def label_key(text: str) -> str:
    """A label-file key as a sample key: ``./a/b.jpg`` -> ``a/b`` (an image extension is dropped)."""
    key = text.strip().removeprefix("./")
    stem, dot, ext = key.rpartition(".")
    if dot and "/" not in ext and ext.lower() in IMAGE_EXTENSIONS:
        return stem
    return key


def read_label_file(path: str) -> LabelTable:
    """Read and check a key,label table; every problem is an InputError naming the file and the fix."""
    fs, inner = filesystem_for(path)
    info = fs.get_file_info(inner)
    if info.type != pa.fs.FileType.File:
        raise InputError(f"--labels {path}: no such file; use --labels none, --labels folder, or a .csv/.parquet "
                         "file with columns key,label")
    expected = "expected a .csv with the header key,label (or a .parquet with columns key and label)"
    try:
        with fs.open_input_file(inner) as handle:
            if inner.endswith(".parquet"):
                table = pq.read_table(handle)
            elif inner.endswith((".csv", ".csv.gz")):
                table = pacsv.read_csv(handle, convert_options=pacsv.ConvertOptions(
                    column_types={"key": pa.string()}, strings_can_be_null=False))
            else:
                raise InputError(f"label file {path} is neither .csv nor .parquet; {expected}")
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"label file {path} cannot be read ({' '.join(str(exc).split())[:200]}); {expected}") from exc
    missing = [c for c in ("key", "label") if c not in table.column_names]
    if missing:
        raise InputError(f"label file {path} has no column {missing[0]!r} (columns: {table.column_names}); {expected}")
    keys = table.column("key").cast(pa.string())
    labels = table.column("label")
    if keys.null_count or labels.null_count:
        raise InputError(f"label file {path} has empty keys or labels; give every row a key and a label")
    classes: list[str] = []
    if pa.types.is_integer(labels.type):
        labels = labels.cast(pa.int64())
        if pc.any(pc.less(labels, 0)).as_py():
            raise InputError(f"label file {path} has negative labels; use labels >= 0 (-1 means unlabelled here)")
    elif pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        classes = sorted(set(labels.to_pylist()))
        labels = pc.index_in(labels, value_set=pa.array(classes)).cast(pa.int64())
    else:
        raise InputError(f"label file {path}: column 'label' is {labels.type}; use integers or class names")
    normalized = pa.array([label_key(k) for k in keys.to_pylist()], pa.string())
    table = pa.table({"key": normalized, "label": labels})
    counts = table.group_by("key").aggregate([("label", "count")])
    repeated = counts.filter(pc.greater(counts["label_count"], 1))
    if repeated.num_rows:
        raise InputError(f"label file {path} lists key {repeated['key'][0].as_py()!r} more than once; "
                         "give each image one label")
    return LabelTable(path, table, classes)


def apply_label_file(plan: pa.Table, labels: LabelTable, src: str) -> tuple[pa.Table, dict[str, int]]:
    """``plan`` with its labels replaced from ``labels`` (unmatched samples -1), and match counts.

    Raises InputError when no key matches: a file for another collection, or keys written
    another way (absolute paths, another root), would otherwise leave every sample unlabelled.
    """
    joined = plan.drop_columns(["label"]).join(labels.table, keys="key", join_type="left outer")
    matched = joined.num_rows - joined.column("label").null_count
    if plan.num_rows and matched == 0:
        example_label = labels.table["key"][0].as_py() if labels.table.num_rows else "(the file is empty)"
        example_image = plan["key"][0].as_py()
        raise InputError(f"no key of label file {labels.path} matches an image of {src} (file keys look like "
                         f"{example_label!r}, image keys like {example_image!r}); write each image's path relative "
                         f"to the folder, e.g. {example_image}{_example_ext(plan)}, or a shard sample's key")
    unmatched_keys = int(pc.sum(pc.invert(pc.is_in(labels.table["key"], value_set=plan["key"]))).as_py() or 0)
    filled = joined.set_column(joined.schema.get_field_index("label"), "label",
                               pc.fill_null(joined.column("label"), -1))
    return filled.select(plan.column_names), {"label_file_keys": labels.table.num_rows, "matched": matched,
                                              "label_keys_without_image": unmatched_keys}


def _example_ext(plan: pa.Table) -> str:
    ext = plan["ext"][0].as_py() if plan.num_rows else ""
    return f".{ext}" if ext else ""
