"""Gather-aware losses: 2 workers with negatives/statistics gathered across them
train exactly the objective of 1 worker on the whole batch.

Two real processes over torch.distributed (gloo). Each worker holds half the
batch, computes the loss and backpropagates. DDP averages gradients over
workers, so the checks are: mean of the worker losses == single-process loss,
and each worker's gradient / world_size == the single-process gradient of its rows.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_models.losses import barlow_twins_loss, dcl_loss, isogclr_loss, nt_xent_loss, unigrad_loss, vicreg_loss

WORLD = 2
BATCH, DIM = 8, 6  # global batch


def _isogclr(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    b = z1.shape[0]
    tau = torch.linspace(0.1, 0.8, b, dtype=z1.dtype)
    return isogclr_loss(z1, z2, tau, torch.full((b, 2), float("nan"), dtype=z1.dtype), gamma=0.9, rho=0.5).loss


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ntxent": lambda a, b: nt_xent_loss(a, b, 0.3),
    "dcl": lambda a, b: dcl_loss(a, b, 0.3),
    "dclw": lambda a, b: dcl_loss(a, b, 0.3, weighting="vmf"),
    "barlow": lambda a, b: barlow_twins_loss(a, b, 0.01),
    "vicreg": vicreg_loss,
    # targets carry no gradient (EMA branch): only the prediction's gradient is compared
    "unigrad": lambda a, b: unigrad_loss(a, b, 0.3),
}


def _grad(t: torch.Tensor) -> torch.Tensor:
    return t.grad.clone() if t.grad is not None else torch.zeros_like(t)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, DIM, generator=g, dtype=torch.float64), torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        z1, z2 = _data()
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        for name, fn in {**LOSSES, "isogclr": _isogclr_local}.items():
            a, b = z1[local].clone().requires_grad_(), z2[local].clone().requires_grad_()
            loss = fn(a, b) if name != "isogclr" else fn(a, b, local)
            loss.backward()
            results[name] = (float(loss.detach()), _grad(a), _grad(b))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _isogclr_local(a: torch.Tensor, b: torch.Tensor, local: slice) -> torch.Tensor:
    """iSogCLR with each worker passing the temperatures of its own samples."""
    tau = torch.linspace(0.1, 0.8, BATCH, dtype=a.dtype)[local]
    return isogclr_loss(a, b, tau, torch.full((a.shape[0], 2), float("nan"), dtype=a.dtype), gamma=0.9, rho=0.5).loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_worker_results() -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the children inherit the imported torch (a spawn re-imports it, ~10 s here);
        # start_processes is what mp.spawn calls, with the start method exposed
        mp.start_processes(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True, start_method="fork")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


@pytest.mark.parametrize("name", [*LOSSES, "isogclr"])
def test_two_workers_equal_one_worker(two_worker_results: list[dict], name: str) -> None:
    z1, z2 = _data()
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    fn = LOSSES.get(name, _isogclr)
    single = fn(a, b)
    single.backward()
    worker_losses = [r[name][0] for r in two_worker_results]
    assert abs(sum(worker_losses) / WORLD - float(single.detach())) < 1e-6 * max(1.0, abs(float(single.detach())))
    half = BATCH // WORLD
    for rank, r in enumerate(two_worker_results):
        rows = slice(rank * half, (rank + 1) * half)
        assert torch.allclose(r[name][1] / WORLD, _grad(a)[rows], atol=1e-6), f"{name}: view-1 gradient differs on rank {rank}"
        assert torch.allclose(r[name][2] / WORLD, _grad(b)[rows], atol=1e-6), f"{name}: view-2 gradient differs on rank {rank}"


def test_local_only_loss_would_differ() -> None:
    """Sanity of the test itself: without gathering, half-batch losses do not
    average to the full-batch loss, so the check above is not vacuous."""
    z1, z2 = _data()
    halves = [float(dcl_loss(z1[s], z2[s], 0.3)) for s in (slice(0, 4), slice(4, 8))]
    assert abs(sum(halves) / 2 - float(dcl_loss(z1, z2, 0.3))) > 1e-3
