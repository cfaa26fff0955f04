"""One run on many processes: who am I, which share is mine, and sums/agreements across processes.

Distribution has its own reason to change (launchers, backends, clusters), so it lives here alone; the run
asks ``Dist`` plain questions (``is_main``, ``shard``, ``sum``, ``agree``, ``gather``) and never looks at
ranks itself. Started without world variables, ``Dist()`` is one process and every call is a no-op.

World variables come from ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) or, inside a
submitit job of several tasks (``hydra/launcher=submitit_slurm`` with ``tasks_per_node``), from submitit's
``TorchDistributedEnvironment``. Two process groups: a gloo group for control (stop flags, RNG states,
checkpoints: CPU objects) and the compute group that DDP and the metric sums use (NCCL on CUDA, else the
same gloo group). Both use ``device.dist_timeout_s``, so a dead peer stops the others instead of a hang.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from birnn.schema.errors import BirnnError

log = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_S = 600  # before the config is known: rank 0 composing the config and making the run dir


def world_env() -> dict[str, int] | None:
    """``{"rank", "world_size", "local_rank"}`` of this process when it is one of several, else None.

    Inside a submitit job of several tasks the torch.distributed variables are exported first.
    """
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        env = submitit.helpers.TorchDistributedEnvironment()
        if env.world_size > 1:  # keep every GPU visible: local rank r uses cuda:r, as under torchrun
            env.export(set_cuda_visible_devices=False, overwrite=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": world, "local_rank": int(os.environ.get("LOCAL_RANK", "0"))}


def init_default_group(timeout_s: float = BOOTSTRAP_TIMEOUT_S) -> None:
    """Join the default (gloo) process group from the world variables, once per process.

    Like ``env://``, but every torchrun restart gets keys of its own in the rendezvous store: a restarted
    group otherwise reads the dead workers' addresses that torchrun's store still holds (torch 2.14).
    """
    if torch_dist.is_initialized():
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=timeout_s)
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_hosts_store,
        timeout=timeout,
        multi_tenant=not agent_hosts_store,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch_dist.init_process_group(
        "gloo",
        store=torch_dist.PrefixStore(f"birnn/attempt-{attempt}", store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of the default group."""
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_from_all(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank of the default group."""
    values: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(values, value)
    return values


def quiet_logging() -> None:
    """Non-main ranks: warnings and errors only, to stderr (the run's ``train.log`` is rank 0's)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) or getattr(handler, "stream", None) is sys.stdout:
            root.removeHandler(handler)
            handler.close()
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        root.addHandler(logging.StreamHandler(sys.stderr))
    root.setLevel(logging.WARNING)


@dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank, and the groups to talk through."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # gloo ProcessGroup (None: one process)
    compute: Any = None  # ProcessGroup of DDP and the metric sums

    @classmethod
    def start(cls, kind: str, timeout_s: float) -> Dist:
        """Join the world named by the environment (one process: a plain ``Dist()``).

        ``kind`` is the device type the run trains on: NCCL computes on CUDA, gloo on the CPU.
        """
        env = world_env()
        if env is None:
            return cls()
        init_default_group()
        timeout = datetime.timedelta(seconds=timeout_s)
        control = torch_dist.new_group(backend="gloo", timeout=timeout)
        compute = torch_dist.new_group(backend="nccl", timeout=timeout) if kind == "cuda" else control
        dist = cls(env["rank"], env["world_size"], env["local_rank"], control, compute)
        if not dist.is_main:
            quiet_logging()
        return dist

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:<local rank>`` on CUDA (refused when there are too few GPUs)."""
        if device.type != "cuda" or not self.enabled:
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise BirnnError(
                f"Local rank {self.local_rank} has no GPU: this machine has {count} "
                f"(device=cuda needs one per process; use --nproc_per_node={count} or fewer)."
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def check_batch(self, batch_size: int) -> None:
        """``data.batch_size`` is the global batch: every process takes the same share of it."""
        if batch_size % self.world_size:
            raise BirnnError(
                f"data.batch_size={batch_size} is the global batch and must be divisible by the "
                f"number of processes ({self.world_size}); e.g. "
                f"data.batch_size={batch_size - batch_size % self.world_size or self.world_size}."
            )

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one; some may be empty)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` behind DistributedDataParallel (gradients averaged every step), or itself alone."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, process_group=self.compute
        )

    def sum(self, tensor: Tensor) -> Tensor:
        """Elementwise sum over ranks (in place), for tensors on the training device."""
        if self.enabled:
            torch_dist.all_reduce(tensor, group=self.compute)
        return tensor

    def agree(self, value: int) -> int:
        """The largest of every rank's ``value`` (e.g. a stop signal, 0 for none), known to all ranks."""
        if not self.enabled:
            return value
        flag = torch.tensor([value], dtype=torch.int64)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self.control)
        return int(flag.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable; tensors go through the CPU), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(values, value, group=self.control)
        return values

    def cat(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor`` concatenated in rank order (through the CPU), on ``tensor``'s device."""
        if not self.enabled:
            return tensor
        return torch.cat([t.to(tensor.device) for t in self.gather(tensor.cpu())])

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def lost_peer(self, error: BaseException) -> BirnnError | None:
        """A clear error when ``error`` is a collective that failed because another process died or fell
        silent (for longer than ``device.dist_timeout_s``); None for any other error."""
        text = str(error)
        if not self.enabled or not (
            isinstance(error, torch_dist.DistError)
            or isinstance(error, RuntimeError)
            and any(
                mark in text for mark in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "imed out")
            )
        ):
            return None
        reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return BirnnError(
            f"Rank {self.rank} lost contact with another process of this run, which died or stopped "
            f"answering ({reason[:200]}). The run's checkpoints are intact: run the same command "
            "with hydra.run.dir=<run dir> to resume."
        )

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
