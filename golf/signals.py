"""Signals: what a teacher says about the positions of one batch, typed (rows in the order of
batch.x.flatten()). Each knows the keywords of golf.losses.distill_terms it feeds (`loss_inputs`), so the objective
never asks where a signal came from. Below the teachers and the models that make them (golf/teachers.py,
golf/ngram.py), importing nothing of the library.
"""
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class Signal(ABC):
    """Base of the signals; every field is a tensor whose first dimension runs over the batch's positions, except
    parts shared by all of them (CountDist's rows and shared)."""

    def apply(self, fn) -> "Signal":
        """The same signal with `fn` applied to every tensor (pinning, moving to the device)."""
        return dataclasses.replace(self, **{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})

    @abstractmethod
    def loss_inputs(self, shape: torch.Size) -> dict:
        """The teacher keywords of golf.losses.distill_terms, widened and shaped like the targets `shape`."""


def _valid_input(valid, shape) -> dict:
    return {} if valid is None else {"teacher_valid": valid.view(shape)}


@dataclass
class TopK(Signal):
    """The teacher's top-K ids and log-probabilities at T = 1, sorted descending (compact dtypes: int16 /
    float16 from a cache, widened on the device)."""

    ids: torch.Tensor  # (n, K)
    logprobs: torch.Tensor  # (n, K)
    valid: torch.Tensor | None = None  # bool (n,): False where the row is not about the student's target

    def loss_inputs(self, shape):
        k = self.ids.shape[-1]
        return {"idx": self.ids.long().view(*shape, k), "vals": self.logprobs.float().view(*shape, k),
                **_valid_input(self.valid, shape)}


@dataclass
class Top1(Signal):
    """The teacher's most likely next token (a hard label)."""

    ids: torch.Tensor  # (n,)
    valid: torch.Tensor | None = None  # as TopK's

    def loss_inputs(self, shape):
        return {"teacher_top1": self.ids.long().view(shape), **_valid_input(self.valid, shape)}


@dataclass
class Sampled(Signal):
    """N draws with replacement from the teacher's distribution at the distillation temperature, as each row's
    distinct ids and how many of the N draws each got (Anshumann et al. 2025): counts / N is an unbiased
    estimate of the tempered distribution. Rows are ragged, so they come padded to the batch's widest row;
    a padding entry has count 0 (its id is arbitrary and contributes nothing)."""

    ids: torch.Tensor  # (n, M) distinct sampled ids
    counts: torch.Tensor  # (n, M) draws per id, summing to N over a row (0 on padding)
    valid: torch.Tensor | None = None  # as TopK's

    def loss_inputs(self, shape):
        m = self.ids.shape[-1]
        return {"sample_ids": self.ids.long().view(*shape, m), "sample_counts": self.counts.float().view(*shape, m),
                **_valid_input(self.valid, shape)}


@dataclass
class Logits(Signal):
    """The teacher's full-vocabulary logits (an online teacher)."""

    logits: torch.Tensor  # (..., V) shaped like the batch

    def loss_inputs(self, shape):
        return {"teacher_logits": self.logits}


@dataclass
class CountDist(Signal):
    """A count teacher's distribution at T = 1 over N positions, never as an N x V tensor:
    p[n, v] = sum of weight[e] over the entries e of position n (entry_row[e] == n) with ids[e] == v
              + rho[n] * rows[row_of[n], v]  +  beta[n] * rows[-1, v].

    sum_v p[n, v] = the entries' weights + rho[n] + beta[n] = 1. The sparse part is ragged: each position has its
    own number of entries, stored flat and grouped by position (entry_row ascending); an id may repeat within a
    position (its entries add) and a padding entry has weight 0. rows[-1] is shared by every position (a count
    model's lowest order, every entry > 0). How golf.ngram splits its model between the parts is in its
    docstring (orders >= 3 sparse; bigram rows by previous token; the order-1 model last)."""

    ids: torch.Tensor  # (E,) int64 token id of each entry
    weight: torch.Tensor  # (E,) float32; may be negative (a leave-one-out correction of a shared part), p >= 0 overall
    entry_row: torch.Tensor  # (E,) int64 the position of each entry, ascending
    rows: torch.Tensor  # (R, V) float32 shared row distributions, each sums to 1; the last one is every position's
    row_of: torch.Tensor  # (N,) int64, < R - 1 (any where R = 1: rows is the shared row alone, rho adds to beta)
    rho: torch.Tensor  # (N,) float32
    beta: torch.Tensor  # (N,) float32: the weight of rows[-1]
    target_logprob: torch.Tensor  # (N,) float32: log p[n, y_n], the teacher's log-prob of the target

    @classmethod
    def padded(cls, ids, weight, rows, row_of, rho, shared, beta, target_logprob) -> "CountDist":
        """From a sparse part padded to a common width, ids / weight (N, W), and the shared vector apart from the
        rows (tests, benchmarks)."""
        n, w = ids.shape
        entry_row = torch.arange(n, device=ids.device).repeat_interleave(w)
        table = torch.cat([rows.to(shared.dtype), shared[None]])
        return cls(ids.reshape(-1), weight.reshape(-1), entry_row, table, row_of, rho, beta, target_logprob)

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        rows = self.rows.to(dtype)
        p = rows[self.row_of] * self.rho.to(dtype)[:, None]
        p += self.beta.to(dtype)[:, None] * rows[-1]
        v = rows.shape[1]
        p.view(-1).index_add_(0, self.entry_row * v + self.ids, self.weight.to(dtype))
        return p

    def dense(self) -> torch.Tensor:
        """float64 (N, V) probabilities: for tests and references only (the point of the type is not to make it)."""
        return self._dense(torch.float64)

    def dense_log_probs(self) -> torch.Tensor:
        """float32 (N, V) log-probabilities (floored at the smallest normal float: a leave-one-out correction can
        leave a rounding error's worth below 0 where p is ~0)."""
        return self._dense(torch.float32).clamp_min_(torch.finfo(torch.float32).tiny).log_()

    def loss_inputs(self, shape):
        return {"count": self}
