"""Data-parallel training on PyTorch's own stack: torchrun starts the processes, FSDP2 (`fully_shard` per block)
shards parameters, gradients and optimiser state, torch.distributed.checkpoint writes sharded checkpoints.

With one process (no torchrun, or WORLD_SIZE=1) every function here is a no-op or the identity, so single-process
runs take exactly the code path they always did.

    d = dist.setup()                      # reads torchrun's env; NCCL on CUDA, gloo on CPU
    dist.shard(model)                     # FSDP2 per transformer block, then the root; a no-op at world size 1
    dist.all_sum(t)                       # a global normaliser (token count, sequence count)
    dist.gather_weights(model, copy)      # full weights into an inference copy, one tensor at a time
    with dist.gathered(model): ...        # forwards and backwards in any number per rank
    rows, first = dist.share(batch)       # this rank's contiguous share of a global batch
    path = dist.on_main(write_it)         # rank-0-only work; its result, or its error, on every rank

"""
from __future__ import annotations

import atexit
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as td

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def setup() -> Dist:
    """Join the process group torchrun describes in the environment (idempotent); Dist() without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not td.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            td.init_process_group("nccl")
        else:
            td.init_process_group("gloo")
        atexit.register(_close)
    return Dist(rank, world, local)


_failed = [False]  # set by mark_failed: this rank leaves alone, without the closing barrier


def _close() -> None:
    """Leave the group together: a rank that exits while another still talks aborts in gloo's threads. A rank that
    failed alone skips the barrier (its peers may be inside a collective it never joins): it exits at once, and
    torchrun stops the others, or their next collective fails on the closed connection."""
    if td.is_initialized():
        store, world = td.distributed_c10d._get_default_store(), td.get_world_size()
        try:
            if not _failed[0]:
                td.barrier()
        except RuntimeError:
            pass  # a peer is already gone
        finally:
            td.destroy_process_group()
        if _failed[0]:
            return
        # Exit only once every rank has torn its group down: a rank that exits (closing its sockets) while a peer is
        # still inside destroy_process_group made gloo's threads abort that peer ("terminate called without an
        # active exception"), about one run in seven. torchrun's store outlives the groups.
        try:
            store.add("r1kit/closed", 1)
            deadline = time.monotonic() + 30
            while store.add("r1kit/closed", 0) < world and time.monotonic() < deadline:
                time.sleep(0.01)
        except RuntimeError:
            pass  # the store went away: nobody is left to wait for


def mark_failed() -> None:
    """This rank stops on an error its peers may not share: leave without waiting for them (see _close)."""
    _failed[0] = True


def agreed(e: BaseException) -> bool:
    """Whether every rank raises this error (it came from on_main), so the ranks can still leave together."""
    return getattr(e, "r1kit_agreed", False)


def current() -> Dist:
    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (a copy; x itself is left alone). The identity with one process."""
    if not current().on:
        return x
    y = x.detach().clone().float()
    td.all_reduce(y)
    return y.to(x.dtype)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def shard(model, trainable: bool = True, root=None):
    """FSDP2: each transformer block (and MTP module) is one unit, the root holds embeddings, norm and head.
    root: the module whose forward the caller runs, when it is not `model` (a reward model around its backbone):
    FSDP2 gathers a unit's parameters in that unit's forward, so the root must be what is called.

    Gradients are summed across ranks, not averaged: the loss of each rank already carries the global normaliser
    (rl.loss.token_weights over all-reduced counts), so N ranks x B/N rows make exactly the update of 1 x B. On CUDA
    the parameters are cast to bf16 for compute while the sharded fp32 copies stay the master weights, and
    gradients are reduced in fp32.
    """
    if not current().on:
        return root if root is not None else model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if next(model.parameters()).device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in list(model.layers) + list(getattr(model, "mtp", None) or []):
        fully_shard(block, **kw)
    root = model if root is None else root
    fully_shard(root, **kw)
    if trainable:
        for m in root.modules():
            if is_sharded(m):
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no pre-multiplied sum
                m.set_reduce_scatter_unused_params(True, recurse=False)  # an MoE expert idle on one rank only
    return root


def _units(model) -> list:
    return [m for m in model.modules() if is_sharded(m)]


@contextmanager
def gathered(model):
    """Hold a sharded model's full parameters across a stretch of forwards (and backwards): one all-gather at the
    start, resharded at the end, so forwards issue no collectives and ranks may run different numbers of them
    (the no-grad passes, whose rows differ in length). A no-op for an unsharded model."""
    units = _units(model)
    for u in units:
        u.set_reshard_after_forward(False, recurse=False)
        u.set_reshard_after_backward(False, recurse=False)
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()


def micro_batch_count(n: int) -> int:
    """How many backward passes every rank runs: the most any rank needs. Each backward reduces gradients
    (a collective), so a rank with fewer micro-batches pads with passes that contribute zero. Gradients are
    reduced every micro-batch rather than accumulated unsynced: FSDP2 would reduce zeros for a parameter unused in
    the last micro-batch (an MoE expert) and drop what earlier ones accumulated for it."""
    if not current().on:
        return n
    t = torch.tensor(float(n))
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return int(t)


@torch.no_grad()
def drop_unused_grads(model) -> None:
    """Give a parameter whose gradient is exactly zero no gradient at all, so AdamW leaves it (and its moments)
    alone this step. An MoE expert that no token reached, or only prompt tokens whose loss weight is zero, gets
    None from autograd in one process but zeros from FSDP2's reduce-scatter; this makes both the same, so N
    ranks update exactly as one process does."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    used = torch.stack([(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).ne(0).any().float()
                        for p in params])
    if current().on:
        td.all_reduce(used)
    for p, u in zip(params, used.tolist()):
        if u == 0:
            p.grad = None



@torch.no_grad()
def gather_weights(model, into) -> None:
    """Copy the full weights of a (possibly sharded) model into `into`, an unsharded model of the same shape, one
    tensor at a time, so a rank never holds a second full copy beyond `into` itself."""
    from torch.distributed.tensor import DTensor

    dst = dict(into.named_parameters())
    for name, p in model.named_parameters():
        full = p.full_tensor() if isinstance(p, DTensor) else p
        dst[name].copy_(full)
        del full


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank."""
    if not current().on:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 alone (writing the run folder, deciding what is cached) and its result on every rank. If
    it fails, every rank raises: an R1kitError as the same one line, anything else as the original on rank 0 and
    a one-line R1kitError naming it elsewhere. So no rank waits forever for a rank that gave up."""
    from r1kit.errors import R1kitError

    d = current()
    if not d.on:
        return fn()
    result, problem, err = None, None, None
    if d.main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - told to every rank, then re-raised here
            err = e
            problem = str(e) if isinstance(e, R1kitError) else f"rank 0 failed: {type(e).__name__}: {e}"
    result, problem = broadcast_object((result, problem))
    if problem is not None:
        e = err if err is not None else R1kitError(problem)
        e.r1kit_agreed = True
        raise e
    return result


def share(items: Sequence[T]) -> tuple[list[T], int]:
    """This rank's contiguous share of a global list and the global index of its first item; the shares of
    ranks 0..N-1 concatenated are the list (the whole list with one process)."""
    d = current()
    lo, hi = len(items) * d.rank // d.world, len(items) * (d.rank + 1) // d.world
    return list(items[lo:hi]), lo


def check_batch(n: int, what: str) -> None:
    """Every rank needs a row of each batch: a batch smaller than the world is a usage error, said before work."""
    from r1kit.errors import R1kitError

    if n < current().world:
        raise R1kitError(f"{what} {n} is smaller than the {current().world} processes: each needs a share")


def gather_lists(mine: list) -> list:
    """Every rank's list (picklable items), concatenated in rank order: the inverse of share."""
    d = current()
    if not d.on:
        return mine
    parts = [None] * d.world
    td.all_gather_object(parts, mine)
    return [x for p in parts for x in p]


def full_state_dict(model) -> dict:
    """A model's full state dict for an export: gathered from the shards to rank 0 (other ranks get {}; every rank
    must call it) under FSDP2, the model's own state dict otherwise."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main_file(path):
    """open(path, "w") on rank 0 and a sink elsewhere: logs and metrics are written once, not per rank."""
    return open(path if current().main else os.devnull, "w")


def barrier() -> None:
    if current().on:
        td.barrier()
