"""Data-parallel training over several processes (torch DistributedDataParallel).

One process per GPU (or several CPU processes), started by torch's launcher::

    torchrun --nproc_per_node 4 -m cac.cli train DATASET --out M.safetensors
    cac train DATASET --out M.safetensors --nproc 4          # the same, launched for you

Every rank draws the same epoch order and cuts the same global batches as a
one-process run (:func:`CACTrainerLib.training._epoch_batches`); rank ``r``
trains on the ``r``-th of ``N`` equal slices of every global batch, so the
global batch stays the recipe's (per-rank batch = batch / N).  Gradients are
averaged by DDP, so the step equals the one-process step on the global batch
up to floating-point summation order *and* BatchNorm: by default each rank
normalises with its own slice's statistics (as DDP does; the recipe's
BatchNorm on a smaller batch), ``--sync-bn`` uses torch's SyncBatchNorm
(global-batch statistics; CUDA only).  Augmentation of rank ``r``'s slice of
batch ``i`` is drawn from ``default_rng([seed, stage, epoch, i, r])``.  Per-patch
hard-negative scores are gathered from all ranks after every step, so all
ranks draw the same next epoch.  Validation runs on every rank (same weights,
same result: no broadcast of the checkpoint choice is needed); only rank 0
writes checkpoints, progress, curves and the model.

Rendezvous comes from the environment that ``torchrun`` sets (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); backend ``nccl``
on CUDA, ``gloo`` on the CPU.  ``WORLD_SIZE=1`` is the ordinary one-process
path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from CACIdentifierLib.errors import CacError

# The module that `python -m` / torchrun starts for `cac train`.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
LAUNCH_HINT = ("launch with `torchrun --nproc_per_node N -m cac.cli train ...` or "
               "`cac train ... --nproc N`, or set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE for every process")


@dataclass
class Context:
    """This process's place in the group."""

    rank: int
    world: int
    local_rank: int
    device: str
    backend: str
    sync_bn: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    # -- batches ---------------------------------------------------------------------------
    def usable(self, batches: list) -> list:
        """The epoch's global batches, less a last one too small to give every rank two samples."""
        if len(batches) > 1 and len(batches[-1]) < 2 * self.world:
            return batches[:-1]
        return batches

    def slice_of(self, batch) -> tuple[int, int]:
        """``(start, stop)`` of this rank's share of a global batch (equal shares; the last batch as even as
        it can be)."""
        bounds = np.linspace(0, len(batch), self.world + 1).round().astype(int)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])

    def local(self, batches: list) -> list:
        out = []
        for b in batches:
            s, e = self.slice_of(b)
            out.append(b[s:e])
        return out

    def loss_weight(self, n_local: int, n_global: int) -> float:
        """Factor making DDP's mean of per-rank mean losses the global batch's mean (1 for equal shares)."""
        return n_local * self.world / n_global

    # -- collectives -----------------------------------------------------------------------
    def gather_scores(self, per: torch.Tensor, batch) -> np.ndarray:
        """All ranks' per-sample values of one global batch, in the batch's order (for hard negatives)."""
        import torch.distributed as dist

        s, e = self.slice_of(batch)
        full = torch.zeros(len(batch), dtype=torch.float32, device=per.device)
        full[s:e] = per.detach().float()
        dist.all_reduce(full)  # shares are disjoint: the sum is the gather
        return full.cpu().numpy()

    def sum(self, values) -> list:
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.cpu().tolist()

    def wrap(self, module: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (one device per process on CUDA)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [torch.device(self.device).index] if self.backend == "nccl" else None
        return DDP(module, device_ids=ids, find_unused_parameters=find_unused)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def exchange(self, local: dict, owners: dict) -> dict:
        """Items made on their owner ranks, on every rank: each rank makes its share, all get all.

        ``owners`` maps every key to the rank that makes it (the same on all ranks); ``local``
        holds this rank's items, each ``(arrays, info)``: a dict of numpy arrays and a
        JSON-serialisable dict.  Returns every key's ``(arrays, info)``, in ``owners``' order.
        Raw bytes and a JSON header travel over a CPU (gloo) group, nothing is pickled.
        """
        import json

        import torch.distributed as dist

        if self.backend != "gloo" and getattr(self, "_cpu_group", None) is None:
            self._cpu_group = dist.new_group(backend="gloo")  # CPU tensors, also beside NCCL
        group = getattr(self, "_cpu_group", None)
        out = {}
        for key, owner in owners.items():
            mine = owner == self.rank
            if mine:
                arrays, info = local[key]
                arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
                header = json.dumps({"info": info, "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in
                                                              arrays.items()]}).encode()
                size = torch.tensor([len(header)], dtype=torch.int64)
            else:
                size = torch.zeros(1, dtype=torch.int64)
            dist.broadcast(size, owner, group=group)
            buf = (torch.frombuffer(bytearray(header), dtype=torch.uint8) if mine
                   else torch.empty(int(size.item()), dtype=torch.uint8))
            dist.broadcast(buf, owner, group=group)
            meta = json.loads(buf.numpy().tobytes().decode())
            got = {}
            for name, dtype, shape in meta["arrays"]:
                if mine:
                    t = torch.from_numpy(arrays[name].reshape(-1).view(np.uint8))
                else:
                    t = torch.empty(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, dtype=torch.uint8)
                if t.numel():  # an empty array has nothing to send; its shape is in the header
                    dist.broadcast(t, owner, group=group)
                got[name] = arrays[name] if mine else t.numpy().view(np.dtype(dtype)).reshape(shape)
            out[key] = (got, meta["info"])
        return out


_CURRENT: Context | None = None


def current() -> Context | None:
    """The running group's context, or None in a one-process run."""
    return _CURRENT


def is_main() -> bool:
    """True in a one-process run and on rank 0."""
    return _CURRENT is None or _CURRENT.main


def requested(env=None) -> bool:
    """Whether the environment asks for a distributed run (a launcher's variables, world size above 1)."""
    env = os.environ if env is None else env
    if not any(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return False
    return env.get("WORLD_SIZE", "") != "1"


def check_environment(env, device: str = "auto", cuda_devices: int = 0, *, batch_size: int | None = None,
                      sync_bn: bool = False) -> Context:
    """Validate the launcher's environment and choose device and backend (no process group yet).

    Examples
    --------
    >>> env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "2"}
    >>> c = check_environment(env, "auto", cuda_devices=0, batch_size=32)
    >>> (c.rank, c.world, c.device, c.backend)
    (1, 2, 'cpu', 'gloo')
    >>> check_environment(dict(env, LOCAL_RANK="1"), "cuda", cuda_devices=2).device
    'cuda:1'
    """
    missing = [k for k in RENDEZVOUS if not env.get(k)]
    if missing:
        raise CacError(f"distributed run: {', '.join(missing)} not set; {LAUNCH_HINT}")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", env["RANK"]))
        local_world = int(env.get("LOCAL_WORLD_SIZE", 0)) or None
        int(env["MASTER_PORT"])
    except ValueError:
        raise CacError("distributed run: RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers; "
                       + LAUNCH_HINT) from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise CacError(f"distributed run: RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    if batch_size is not None and batch_size % world:
        raise CacError(f"--batch-size {batch_size} cannot be split over {world} ranks; "
                       f"use a multiple of {world} (the global batch is split equally)")
    if batch_size is not None and batch_size // world < 2:
        raise CacError(f"--batch-size {batch_size} over {world} ranks leaves fewer than 2 samples per rank "
                       "(BatchNorm needs two); use a larger batch or fewer ranks")
    kind = (device or "auto").strip().lower()
    if kind == "auto":
        kind = "cuda" if cuda_devices > 0 else "cpu"
    if kind.startswith("cuda:"):
        raise CacError(f"--device {device} with several ranks: use --device cuda (rank k takes GPU LOCAL_RANK)")
    if kind == "cuda":
        if cuda_devices == 0:
            raise CacError("distributed run on CUDA but no CUDA device is visible; use --device cpu")
        if local_rank >= cuda_devices or (local_world or 0) > cuda_devices:
            n = local_world or local_rank + 1
            raise CacError(f"distributed run: {n} ranks on this machine but only {cuda_devices} CUDA device(s); "
                           f"start at most {cuda_devices} (--nproc_per_node {cuda_devices})")
        return Context(rank, world, local_rank, f"cuda:{local_rank}", "nccl", sync_bn)
    if kind != "cpu":
        raise CacError(f"distributed training runs on CUDA or the CPU, not on {device!r}")
    if sync_bn:
        raise CacError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU); "
                       "leave it out for per-rank BatchNorm")
    return Context(rank, world, local_rank, "cpu", "gloo", sync_bn)


def init(device: str = "auto", *, batch_size: int | None = None, sync_bn: bool = False) -> Context | None:
    """Join the process group the environment describes; None (and nothing done) for a one-process run."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if not requested():
        if sync_bn:
            raise CacError("--sync-bn is for distributed runs (torchrun or --nproc N)")
        return None
    import torch.distributed as dist

    ctx = check_environment(os.environ, device, torch.cuda.device_count() if torch.cuda.is_available() else 0,
                            batch_size=batch_size, sync_bn=sync_bn)
    if ctx.backend == "nccl":
        torch.cuda.set_device(torch.device(ctx.device))
    dist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world,
                            **({"device_id": torch.device(ctx.device)} if ctx.backend == "nccl" else {}))
    _CURRENT = ctx
    return ctx


def shutdown() -> None:
    """Leave the process group (at the end of a run, on every rank)."""
    global _CURRENT
    if _CURRENT is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = None


def prepare_model(model: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm in place of BatchNorm when asked (before the optimiser and DDP see the model)."""
    if _CURRENT is not None and _CURRENT.sync_bn:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def launch_command(nproc: int, argv: list[str], entry_module: str) -> list[str]:
    """The launcher command that runs ``python -m <entry_module> <argv>`` in ``nproc`` local processes.

    The entry module (the ``cac`` command line) is named by the caller: this Lib sits below it.

    Examples
    --------
    >>> launch_command(2, ["train", "ds", "--out", "m.safetensors"], "mycli")[1:6]
    ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    """
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(int(nproc)),
            "-m", entry_module, *argv]


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out
