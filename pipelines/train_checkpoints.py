"""A training run's checkpoints: what one holds, where a worker writes it, and how a resume reads it back.

Ray Train keeps the checkpoints a worker reports (``ray.train.report``); in-process runs
(``train.num_workers=0``) write ``epoch_*`` folders of their own under ``run_dir/<name>/local_checkpoints``.
Either way a checkpoint is one ``state.pt`` (weights-only loadable types), and a checkpoint to resume from
is untrusted input: a weights-only load that refuses it becomes one clear ``CheckpointRefused`` line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint

import storage
from storage import InputError

CHECKPOINT_FILE = "state.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The method inside a DDP wrapper (or the module itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def checkpoint_at(location: str) -> Checkpoint:
    """A Ray ``Checkpoint`` for a folder that is local or in object storage (downloaded on ``as_directory``)."""
    if not storage.is_uri(location):
        return Checkpoint.from_directory(location)
    fs, path = storage.filesystem_for(location)
    return Checkpoint(path, filesystem=fs)


def save_local_checkpoint(state: dict[str, Any], root: str, name: str, keep: int = 2) -> Checkpoint:
    """Write ``root/NAME/state.pt`` whole or not at all (``storage.open_output``: temp + rename locally,
    one upload to a bucket) and prune old ones; ``root`` is a local folder or a uri.

    ``NAME`` is ``epoch_NNNNNN`` (epochs finished) or ``epoch_NNNNNN_step_SSSSSSSSS`` (inside the next
    epoch), so names sort in training order."""
    final = storage.join(root, name)
    with storage.open_output(storage.join(final, CHECKPOINT_FILE)) as f:
        torch.save(state, f)
    done = [n for n in storage.list_dir(root) if n.startswith("epoch_")]
    for old in done[:-keep]:
        storage.delete(storage.join(root, old))
    return checkpoint_at(final)


def latest_local_checkpoint(root: str) -> Checkpoint | None:
    """The newest ``epoch_*`` folder under ``root`` that holds a whole checkpoint file (a kill can leave
    an empty folder behind, never a partial file)."""
    for name in reversed(storage.list_dir(root)):
        if name.startswith("epoch_") and storage.is_file(storage.join(root, name, CHECKPOINT_FILE)):
            return checkpoint_at(storage.join(root, name))
    return None


class CheckpointRefused(InputError):
    """A checkpoint that a weights-only load refuses (pickled code, truncation, not a torch file)."""


def read_state(path: str | Path, action: str = "load") -> dict[str, Any]:
    """The one weights-only load of a checkpoint file, local or in object storage: a checkpoint is untrusted
    input, so anything else is one ``CheckpointRefused`` line ("cannot ACTION PATH: ...")."""
    try:
        with storage.local_copy(path) as local:
            state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code, truncation, not a torch file
        raise CheckpointRefused(
            f"cannot {action} {path}: a weights-only load refused it ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict):
        raise CheckpointRefused(f"cannot {action} {path}: it holds a {type(state).__name__}, not a checkpoint's dict")
    return state


def load_resume_state(path: Path) -> dict[str, Any]:
    """Weights-only load of a checkpoint to resume from, with what to do about a refused one."""
    try:
        return read_state(path, "resume from")
    except CheckpointRefused as exc:
        raise CheckpointRefused(f"{exc}; remove that checkpoint directory to resume from an earlier one, or start "
                                "over with --overwrite") from None


def checkpoint_epoch(name: str) -> int:
    """The epochs finished in a checkpoint folder named by ``checkpoint_name`` (``epoch_NNNNNN[_step_S]``)."""
    return int(name.split("_")[1])


def local_checkpoint_folders(root: Path) -> list[Path]:
    """An in-process run's ``epoch_*`` checkpoint folders under ``root``, oldest first (names sort in order)."""
    return sorted(root.glob("epoch_*")) if root.exists() else []


def refused_checkpoint(exc: BaseException) -> CheckpointRefused | None:
    """The CheckpointRefused inside a Ray Train failure, if that is what stopped it."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointRefused):
            return e
        if "CheckpointRefused" in type(e).__name__ or "cannot resume from" in str(e):
            line = next((text for text in str(e).splitlines() if "cannot resume from" in text), str(e))
            return CheckpointRefused(line[line.index("cannot resume from"):] if "cannot resume from" in line else line)
        stack.extend([e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
                     if isinstance(getattr(e, "worker_failures", None), dict) else [e.__cause__, e.__context__])
    return None


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """``epoch_NNNNNN`` after ``epoch`` epochs, or ``epoch_NNNNNN_step_SSSSSSSSS`` inside the next one
    (``train.checkpoint_every_steps``): names sort in training order."""
    return f"epoch_{epoch:06d}" if step is None else f"epoch_{epoch:06d}_step_{step:09d}"


def train_state(model: torch.nn.Module, opt: torch.optim.Optimizer, loop_config: dict[str, Any], *, epoch: int,
                step: int, epoch_step: int, history: list[dict[str, Any]], resumes: int,
                generator: torch.Generator | None, shard_order: list[int] | None, keep_list: str | None) -> dict[str, Any]:
    """What a checkpoint holds: enough to continue at ``step`` exactly (weights-only loadable types)."""
    state: dict[str, Any] = {
        "method": unwrap(model).state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,  # epochs finished
        "step": step,
        "epoch_step": epoch_step,  # batches already trained in epoch ``epoch`` (0 at an epoch's end)
        "history": history,
        "resumes": resumes,
        "keep_list": keep_list,  # run-dir-relative keep-list of the last stream pruning round, if any
        "config": loop_config["config"],  # a checkpoint can be evaluated or exported on its own
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if shard_order is not None:
        state["shard_order"] = shard_order
    return state


def report_checkpoint(state: dict[str, Any], metrics: dict[str, Any], local_dir: str | None, rank: int, name: str) -> None:
    """Every rank reports; rank 0's checkpoint is the one kept."""
    if local_dir is not None:  # in-process mode: Ray keeps checkpoints only in memory
        ray.train.report(metrics, checkpoint=save_local_checkpoint(state, local_dir, name))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
