"""Training data for a run: the generator call, the batch of every step, the loss targets.

Every step's batch is a pure function of (config, step): epoch `e` is a permutation drawn
from a generator seeded by (seed, e), and with `data.fresh_samples` epoch `e >= 1` is a
newly generated train set seeded by (data seed, e). Resuming at any step needs no RNG state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.config.schema import RunConfig
from models.data.mqar import mqar_dataset
from models.data.synthetics import ICLData, icl_dataset
from models.errors import UserError

IGNORE_INDEX = -100

# The task registry: data.task → its generator, called with (data config, train count, test
# count, seed). One entry per task; `generate` looks the task up here.
TASKS = {
    "ar": lambda d, n, m, seed: icl_dataset("assoc_recall", d.vocab_size, d.input_seq_len, n, m, seed,
                                            remove_overlap=d.remove_overlap),
    "ih": lambda d, n, m, seed: icl_dataset("induction_head", d.vocab_size, d.input_seq_len, n, m, seed,
                                            remove_overlap=d.remove_overlap),
    "mqar": lambda d, n, m, seed: mqar_dataset(d.vocab_size, d.input_seq_len, d.num_kv_pairs, n, m, seed,
                                               remove_overlap=d.remove_overlap),
}

# tags that keep the derived seeds of different uses apart
TAG_ORDER, TAG_DROPOUT, TAG_FRESH = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: no collisions by offset)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generate(cfg: RunConfig, seed: int, num_examples: int | None = None,
             num_test_examples: int | None = None) -> ICLData:
    """The run's dataset (or, with other counts/seed, a fresh train set)."""
    d = cfg.data
    n = d.num_examples if num_examples is None else num_examples
    m = d.num_test_examples if num_test_examples is None else num_test_examples
    try:
        return TASKS[d.task](d, n, m, seed)
    except UserError as e:
        raise UserError(f"impossible dataset (data.task={d.task}): {e}") from None


def loss_targets(targets: Tensor, answer: Tensor, loss: str) -> Tensor:
    """Targets of the training loss: every scored position ('all') or the answers ('last')."""
    if loss == "all":
        return targets
    return torch.where(answer, targets, torch.full_like(targets, IGNORE_INDEX))


def data_vocab_size(data) -> int:
    return len(data.vocab)


@dataclass
class _TrainSet:
    inputs: Tensor
    targets: Tensor  # loss targets, already masked for the run's loss


class Batches:
    """`batch(step)`: the (inputs, loss targets) of the update taking step -> step + 1."""

    def __init__(self, cfg: RunConfig, data, device: torch.device):
        self.cfg, self.device = cfg, device
        self.n = int(data.train_inputs.shape[0])
        self.batch_size = cfg.schedule.batch_size
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        s = cfg.schedule
        self.total_steps = s.steps if s.steps is not None else s.epochs * self.steps_per_epoch
        self._base = self._prepare(data)
        self._cache: tuple[int, _TrainSet, Tensor] | None = None

    def _prepare(self, data) -> _TrainSet:
        targets = loss_targets(data.train_targets, data.train_roles.answer, self.cfg.loss)
        return _TrainSet(data.train_inputs.to(self.device), targets.to(self.device))

    def _epoch(self, epoch: int) -> tuple[_TrainSet, Tensor]:
        if self._cache is None or self._cache[0] != epoch:
            train = self._base
            if self.cfg.data.fresh_samples and epoch > 0:
                seed = derive_seed(self.cfg.data_seed, TAG_FRESH, epoch) % 2**32
                fresh = generate(self.cfg, seed, num_examples=self.n, num_test_examples=1)
                train = self._prepare(fresh)
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, TAG_ORDER, epoch))
            perm = torch.randperm(self.n, generator=g).to(self.device)
            self._cache = (epoch, train, perm)
        return self._cache[1], self._cache[2]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        train, perm = self._epoch(epoch)
        idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
        return train.inputs[idx], train.targets[idx]

    def epochs_done(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 6)


def dropout_seed(cfg: RunConfig, step: int) -> int:
    return derive_seed(cfg.seed, TAG_DROPOUT, step)
