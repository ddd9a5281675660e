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
    """A count teacher's distribution at T = 1, never as an N x V tensor:
    p[n, v] = sum of weight[n, j] over j with ids[n, j] == v  +  rho[n] * rows[row_of[n], v]  +  beta[n] * shared[v].

    sum_v p[n, v] = weight[n].sum() + rho[n] + beta[n] = 1. How golf.ngram splits its model between the parts
    is in its docstring (orders >= 3 sparse; bigram rows by previous token; the order-1 model shared)."""

    ids: torch.Tensor  # (N, W) int64, padded: a padding slot has weight 0 (any id); within a row, non-padding ids are distinct
    weight: torch.Tensor  # (N, W) float32; may be negative (a leave-one-out correction of a shared part), p >= 0 overall
    rows: torch.Tensor  # (R, V) float32 shared row distributions, each sums to 1 (may be (0, V) with rho == 0)
    row_of: torch.Tensor  # (N,) int64
    rho: torch.Tensor  # (N,) float32
    shared: torch.Tensor  # (V,) float32, every entry > 0, sums to 1 (the order-1 model: continuation unigram and uniform)
    beta: torch.Tensor  # (N,) float32
    target_logprob: torch.Tensor  # (N,) float32: log p[n, y_n], the teacher's log-prob of the target

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        p = self.rows.to(dtype)[self.row_of] * self.rho.to(dtype)[:, None]
        p += self.beta.to(dtype)[:, None] * self.shared.to(dtype)
        return p.scatter_add_(1, self.ids, self.weight.to(dtype))

    def dense(self) -> torch.Tensor:
        """float64 (N, V) probabilities: for tests and references only (the point of the type is not to make it)."""
        return self._dense(torch.float64)

    def dense_log_probs(self) -> torch.Tensor:
        """float32 (N, V) log-probabilities (floored at the smallest normal float: a leave-one-out correction can
        leave a rounding error's worth below 0 where p is ~0)."""
        return self._dense(torch.float32).clamp_min_(torch.finfo(torch.float32).tiny).log_()

    def loss_inputs(self, shape):
        w = self.ids.shape[-1]
        return {"count_ids": self.ids.view(*shape, w), "count_weight": self.weight.view(*shape, w),
                "count_rows": self.rows, "count_row_of": self.row_of.view(shape), "count_rho": self.rho.view(shape),
                "count_shared": self.shared, "count_beta": self.beta.view(shape),
                "count_target_logprob": self.target_logprob.view(shape)}
