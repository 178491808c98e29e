"""Erasure Check: images made with and without UnHype for the same prompts and seeds, judged pair
by pair (the judges: unhype/judges.py; the report and grid: unhype/erasure_report.py).

Efficacy counts the erased prompts' pairs whose original image shows the erased concept: the
UnHype image must not (a pair whose original lacks the concept says nothing about erasure and is
not counted, as in the proving ground's paired scores). Specificity counts the kept prompts'
pairs: the judge must see the same class in both images.
"""

import math
from dataclasses import dataclass, field

import torch

from .judges import Judge, JudgeError


@dataclass
class Pair:
    original: str  # what the judge sees in the original image
    unhype: str  # ... and in the UnHype image
    verdict: str
    counted: bool  # does it enter the score
    good: bool  # erased / kept


@dataclass
class CheckResult:
    judge: str
    concept: str
    erased: list[Pair]
    kept: list[Pair]
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def _score(pairs: list[Pair]) -> float:
        counted = [p for p in pairs if p.counted]
        return sum(p.good for p in counted) / len(counted) if counted else math.nan

    @property
    def efficacy(self) -> float:
        return self._score(self.erased)

    @property
    def specificity(self) -> float:
        return self._score(self.kept)


def _pairs(base: torch.Tensor, unhype: torch.Tensor, what: str) -> None:
    if base.shape[0] != unhype.shape[0]:
        raise JudgeError(
            f"{what}: {base.shape[0]} original images but {unhype.shape[0]} UnHype images; "
            "make both with the same prompts, seeds and batch size")


def check(judge: Judge, erased_class: int, base: torch.Tensor, unhype: torch.Tensor,
          kept_base: torch.Tensor | None = None,
          kept_unhype: torch.Tensor | None = None) -> CheckResult:
    """Judge every pair; `erased_class` indexes `judge.classes`."""
    _pairs(base, unhype, "erased prompts")
    names = judge.classes
    erased = []
    for b, u in zip(judge.classify(base).tolist(), judge.classify(unhype).tolist()):
        if b != erased_class:
            erased.append(Pair(names[b], names[u], "original lacks it", False, False))
        elif u == erased_class:
            erased.append(Pair(names[b], names[u], "NOT erased", True, False))
        else:
            erased.append(Pair(names[b], names[u], "erased", True, True))
    kept = []
    if (kept_base is None) != (kept_unhype is None):
        raise JudgeError("kept prompts: connect both the original and the UnHype images")
    if kept_base is not None:
        _pairs(kept_base, kept_unhype, "kept prompts")
        for b, u in zip(judge.classify(kept_base).tolist(), judge.classify(kept_unhype).tolist()):
            same = b == u
            kept.append(Pair(names[b], names[u], "kept" if same else "CHANGED", True, same))
    return CheckResult(judge.name, names[erased_class], erased, kept,
                       judge.notes(base, unhype))
