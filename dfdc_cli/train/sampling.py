"""What a training epoch draws: :class:`BalancedSampler` (every real tube once plus as many fakes, from the
index or self-blended from real tubes; deterministic in seed and epoch; one stride per rank) and the
fixed validation items (:func:`val_items`). Items are ``(row, self_blend, sample_seed)``; the datasets
of :mod:`dfdc_cli.train.data` turn them into clips."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from dfdc_cli.errors import UserError


FAKES_MODES = ("real", "self-blended", "mixed")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _stream(n: int, start: int, count: int, seed: int, tag: int) -> np.ndarray:
    """Items [start, start + count) of an endless stream of permutations of range(n)."""
    if n <= 0 or count <= 0:
        return np.zeros(0, np.int64)
    out = []
    pos = start
    while pos < start + count:
        cycle, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, tag, cycle]).permutation(n)
        take = min(n - offset, start + count - pos)
        out.append(perm[offset : offset + take])
        pos += take
    return np.concatenate(out).astype(np.int64)


class BalancedSampler(Sampler):
    """Per epoch: every real tube once plus as many fakes, drawn across all fakes; shuffled.

    ``fakes``: "real" (fakes from the index), "self-blended" (each fake is a real tube self-blended,
    drawn across all reals), "mixed" (``selfblend_fraction`` of the fakes self-blended, the rest from
    the index). Items are ``(row, self_blend, sample_seed)``. Deterministic in (seed, epoch); with
    ``world_size > 1`` each rank gets the stride ``rank::world_size`` of the (padded) epoch list.

    ``paired`` (self-blended only): each real item is followed by its own self-blend, drawn with the
    same sample seed (so a frame model blends the very frame it just saw as real). Content alone then
    never separates the classes within a batch, which is what self-blended-image training relies on;
    an even batch size keeps every pair in one batch.
    """

    def __init__(
        self,
        labels: Sequence[int],
        seed: int = 0,
        fakes: str = "real",
        selfblend_fraction: float = 0.5,
        rank: int = 0,
        world_size: int = 1,
        repeat: int = 1,
        paired: bool = False,
    ):
        if fakes not in FAKES_MODES:
            raise UserError(f"--fakes must be one of {', '.join(FAKES_MODES)}, got {fakes!r}")
        y = np.asarray(labels, dtype=np.int64)
        self.reals = np.flatnonzero(y == 0)
        self.fakes_idx = np.flatnonzero(y == 1)
        self.seed = int(seed)
        self.mode = fakes
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.repeat = max(1, int(repeat))  # passes over the reals per epoch (few tubes, many frames)
        self.epoch = 0
        if paired and fakes != "self-blended":
            raise UserError("data.paired needs --fakes self-blended (a pair is a real tube and its own self-blend)")
        self.paired = bool(paired)
        n_real = len(self.reals)
        if n_real == 0:
            raise UserError("the training side has no real tubes; class balancing needs some")
        if fakes == "real":
            self.n_sbi = 0
        elif fakes == "self-blended":
            self.n_sbi = n_real
        else:
            self.n_sbi = int(round(float(selfblend_fraction) * n_real))
        self.n_fake = n_real - self.n_sbi
        if self.n_fake > 0 and len(self.fakes_idx) == 0:
            raise UserError("the training side has no fake tubes; use --fakes self-blended to train on reals only")

    @property
    def epoch_size(self) -> int:
        return 2 * len(self.reals) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_items(self, epoch: Optional[int] = None) -> list[tuple[int, bool, int]]:
        """The whole epoch's items, in order, before sharding (``repeat`` passes, each drawn as an
        epoch of its own: with repeat 1 exactly the plain epoch)."""
        e = self.epoch if epoch is None else int(epoch)
        if self.repeat == 1:
            return self._pass_items(e)
        return [it for r in range(self.repeat) for it in self._pass_items(e * self.repeat + r)]

    def _pass_items(self, e: int) -> list[tuple[int, bool, int]]:
        n_real = len(self.reals)
        if self.paired:
            order = np.random.default_rng([self.seed, 4, e]).permutation(n_real)
            return [
                (int(self.reals[j]), sbi, _seed(self.seed, e, pos))
                for pos, j in enumerate(order)
                for sbi in (False, True)
            ]
        rows = [self.reals]
        sbi = [np.zeros(n_real, bool)]
        if self.n_fake:
            rows.append(self.fakes_idx[_stream(len(self.fakes_idx), e * self.n_fake, self.n_fake, self.seed, 1)])
            sbi.append(np.zeros(self.n_fake, bool))
        if self.n_sbi:
            rows.append(self.reals[_stream(n_real, e * self.n_sbi, self.n_sbi, self.seed, 2)])
            sbi.append(np.ones(self.n_sbi, bool))
        all_rows = np.concatenate(rows)
        all_sbi = np.concatenate(sbi)
        order = np.random.default_rng([self.seed, 3, e]).permutation(len(all_rows))
        return [
            (int(all_rows[j]), bool(all_sbi[j]), _seed(self.seed, e, pos))
            for pos, j in enumerate(order)
        ]

    def _shard(self, items: list) -> list:
        if self.world_size <= 1:
            return items
        total = -(-len(items) // self.world_size) * self.world_size
        items = items + items[: total - len(items)]
        return items[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        return iter(self._shard(self.epoch_items()))

    def __len__(self) -> int:
        return -(-self.epoch_size // self.world_size)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "mode": self.mode, "n_sbi": self.n_sbi}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


def val_items(labels: Sequence[int], fakes: str = "real", seed: int = 0) -> list[tuple[int, bool, int]]:
    """Validation items, fixed across epochs: every tube once (in self-blended/mixed mode the real
    tubes also once more as self-blended fakes; in self-blended mode the index's fakes are left out)."""
    y = np.asarray(labels, dtype=np.int64)
    items: list[tuple[int, bool, int]] = []
    for i, lab in enumerate(y):
        if lab == 1 and fakes == "self-blended":
            continue
        items.append((int(i), False, _seed(seed, 7, i)))
    if fakes in ("self-blended", "mixed"):
        items += [(int(i), True, _seed(seed, 8, i)) for i in np.flatnonzero(y == 0)]
    return items


def shard(items: list, rank: int, world_size: int) -> list:
    """Rank's share of a list (no padding: every item is seen exactly once across ranks)."""
    return items[rank::world_size] if world_size > 1 else items
