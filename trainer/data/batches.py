"""Batch sources with one exactly resumable order: on-device uint8 indexing, or a sharded DataLoader stream.

Every epoch all processes share one permutation of the dataset and process r takes every world-th index, so
processes see disjoint data and (epoch, cursor) is the whole data state to checkpoint. Both sources walk the same
`ShardOrder`, so for the same seed they yield the same batches, and a restored state continues the sequence exactly.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.errors import TrainerError


class ShardOrder:
    """The (epoch, cursor) walk over this process's share of an epoch permutation, in batches; drops the ragged end."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.per_rank = n // world
        if self.per_rank < batch_size:
            raise TrainerError(
                f"train.batch_size={batch_size} is larger than the {self.per_rank} images each of the {world} "
                f"processes holds ({n} in all). Lower train.batch_size or use fewer processes."
            )
        self.epoch, self.cursor = 0, 0
        self._cache: dict[str, tuple[int, Tensor]] = {}  # per-epoch permutation and flip coins, by name

    def shard(self, epoch: int) -> Tensor:
        """This process's indices for `epoch`: the same permutation on every process, every world-th element."""
        if self._cache.get("shard", (-1,))[0] != epoch:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            self._cache["shard"] = (epoch, perm[self.rank :: self.world][: self.per_rank])
        return self._cache["shard"][1]

    def flips(self, indices: Tensor) -> Tensor:
        """Whether to mirror each sample: a fixed coin per (seed, epoch, index), so resume and both paths agree."""
        if self._cache.get("coins", (-1,))[0] != self.epoch:
            seed = self.seed * 100_003 + self.epoch + 2**40
            self._cache["coins"] = (self.epoch, torch.rand(self.n, generator=torch.Generator().manual_seed(seed)) < 0.5)
        return self._cache["coins"][1][indices]

    def next_indices(self) -> Tensor:
        if self.cursor + self.batch_size > self.per_rank:
            self.epoch, self.cursor = self.epoch + 1, 0
        indices = self.shard(self.epoch)[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def to_unit_range(images: Tensor, flip: Optional[Tensor] = None) -> Tensor:
    """uint8 images -> float32 in [-1, 1] (x / 127.5 - 1, the generator's tanh range); mirrored where `flip`."""
    x = images.float() / 127.5 - 1
    if flip is not None and bool(flip.any()):
        x = torch.where(flip.to(x.device).reshape(-1, 1, 1, 1), x.flip(-1), x)
    return x


class _LabelledSource:
    """What both sources share: `next()` for images, `next_labelled()` for (images, labels), the resumable state."""

    order: ShardOrder
    num_classes: int  # 0 = the dataset has no labels

    def next_labelled(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def next(self) -> Tensor:
        return self.next_labelled()[0]

    def state_dict(self) -> dict:
        return self.order.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)


class ImageBatches(_LabelledSource):
    """Batches drawn by index from uint8 images (and int64 labels) held on the device: no DataLoader, no workers."""

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        labels: Optional[Tensor] = None,
        num_classes: int = 0,
        flip: bool = False,
    ) -> None:
        self.order = ShardOrder(images.shape[0], batch_size, rank, world, seed)
        self.images, self.flip, self.skipped = images, flip, 0
        self.labels = labels.to(images.device) if labels is not None else None
        self.num_classes = num_classes if labels is not None else 0
        self.last_indices = torch.empty(0, dtype=torch.long)

    def shard(self, epoch: int) -> Tensor:
        return self.order.shard(epoch)

    def next_indices(self) -> Tensor:
        return self.order.next_indices()

    def next_labelled(self) -> tuple[Tensor, Tensor]:
        indices = self.last_indices = self.order.next_indices()
        on_device = indices.to(self.images.device)
        images = to_unit_range(self.images[on_device], self.order.flips(indices) if self.flip else None)
        labels = self.labels[on_device] if self.labels is not None else torch.zeros_like(on_device)
        return images, labels


class ShardBatchSampler(Sampler[list[int]]):
    """Endless batches of indices continuing `order` from its state when iteration starts (a copy walks ahead)."""

    def __init__(self, order: ShardOrder) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        o = self.order
        walker = ShardOrder(o.n, o.batch_size, o.rank, o.world, o.seed)
        walker.load_state_dict(o.state_dict())
        while True:
            yield walker.next_indices().tolist()


class StreamBatches(_LabelledSource):
    """A DataLoader stream (workers, pinned memory) over a map-style dataset of (uint8 image, label, index, replaced).

    The batch sampler continues the `ShardOrder` from its state, so the stream yields exactly the batches the
    on-device source would; `load_state_dict` restarts the stream at the restored (epoch, cursor). `skipped` counts
    unreadable files replaced so far on this process (see trainer.data.files.SafeImages).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        device: torch.device,
        num_workers: int = 0,
        num_classes: int = 0,
        flip: bool = False,
    ) -> None:
        self.order = ShardOrder(len(dataset), batch_size, rank, world, seed)  # type: ignore[arg-type]
        self.device, self.flip, self.num_classes, self.skipped = device, flip, num_classes, 0
        self.loader = DataLoader(
            dataset,
            batch_sampler=ShardBatchSampler(self.order),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if num_workers else None,
            generator=torch.Generator().manual_seed(seed),  # worker seeds: never from the global RNG (the noise)
        )
        self._stream: Optional[Iterator] = None
        self.last_indices = torch.empty(0, dtype=torch.long)

    def next_labelled(self) -> tuple[Tensor, Tensor]:
        if self._stream is None:
            self._stream = iter(self.loader)
        images, labels, indices, replaced = next(self._stream)
        expected = self.order.next_indices()
        if not torch.equal(indices, expected):  # the stream and the order walk in lockstep; anything else is a bug
            raise RuntimeError(f"data stream out of step: got indices {indices[:4].tolist()}...")
        self.last_indices, self.skipped = indices, self.skipped + int(replaced.sum())
        flip = self.order.flips(indices) if self.flip else None
        images = to_unit_range(images.to(self.device, non_blocking=True), flip)
        return images, labels.to(self.device, non_blocking=True)

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state)
        self._stream = None  # the next batch starts a fresh stream at the restored position

    def close(self) -> None:
        """Stops the worker processes (they also stop when this object is garbage-collected)."""
        self._stream = None
