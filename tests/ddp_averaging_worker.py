"""Worker for tests/test_realnet_averaging.py::test_ddp_two_ranks_same_average (run under torchrun, gloo, CPU).

Each rank trains the same DDP model on its own batches (gradients are all-reduced, so the parameters agree),
keeps three averages of the DDP-wrapped model and writes their flat parameters, and the explicit weighted sum
of its own stored snapshots, to ``OUT/rank{r}.pt``.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from realnet.averaging import KernelAveragedModel

SPECS = (("twopoint:4", 6), ("ema:0.25", None), ("swa:3", None))
STEPS = 6


def _flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # same initial parameters on every rank
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    avgs = [KernelAveragedModel(ddp, spec, at_step=T) for spec, T in SPECS]
    snaps = [_flat(model).clone()]
    g = torch.Generator().manual_seed(100 + rank)  # different batches per rank
    for _ in range(STEPS):
        x = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = x.sum(1, keepdim=True)
        opt.zero_grad()
        ((ddp(x) - y) ** 2).mean().backward()
        opt.step()
        for a in avgs:
            a.update_parameters(ddp)
        snaps.append(_flat(model).clone())
    H = torch.stack(snaps)  # theta_0..theta_STEPS
    refs = [
        0.5 * (H[STEPS] + H[STEPS - 4]),
        _ema(H, 0.25),
        (H[STEPS] + H[STEPS - 1] + H[STEPS - 2]) / 3.0,
    ]
    torch.save({"avg": [_flat(a.module) for a in avgs], "ref": refs,
                "types": [type(a.module).__name__ for a in avgs]}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _ema(H: torch.Tensor, a: float) -> torch.Tensor:
    e = H[0].clone()
    for t in range(1, H.shape[0]):
        e = (1 - a) * e + a * H[t]
    return e


if __name__ == "__main__":
    main(sys.argv[1])
