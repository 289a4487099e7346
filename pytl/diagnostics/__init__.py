"""Domain-shift diagnostics: is the target data different from the source data, and how much?

* :func:`mmd_test` (permutation_test.py) - the kernel two-sample permutation test of Gretton et al.
  (JMLR 2012) on the multi-bandwidth RBF MMD, every permutation from one fused sweep over the pairs
  (:func:`rbf_kernel_matmul`), in O(N x chunk) memory.
* :func:`proxy_a_distance` (domain_classifier.py) - Ben-David et al.'s proxy A-distance 2 (1 - 2 eps)
  from a domain classifier.
* :func:`domain_divergence` (divergence.py) - both, with a verdict ("low" / "moderate" / "high") and a
  plain-English explanation.
* :func:`transfer_feasibility` (feasibility.py), :func:`rank_sources` (source_ranking.py) - before training: Ben-David's bound
  term by term (source error, divergence, joint error lambda*) with intervals, the MMD test and a verdict;
  and which of several candidate sources to transfer from.
* :func:`estimate_label_shift` (label_shift.py) - the target's class proportions from a classifier's
  predictions on unlabelled target data (BBSE, Lipton et al. 2018), and the class weights q(y)/p(y).
* :func:`label_proportion_test` (label_proportions.py) - do the few target labels' class proportions differ
  from the source's? (the trainer warns before a marginal alignment when they do).

They take numpy arrays, nested lists or tensors (samples, features), like the trainer.
:func:`rbf_kernel_matmul` is the op wrapper of pytl.ops, also importable from here.
"""

from pytl.diagnostics.divergence import (
    PAD_HIGH,
    PAD_LOW,
    VERDICT_HIGH,
    VERDICT_LOW,
    DivergenceReport,
    domain_divergence,
)
from pytl.diagnostics.feasibility import FEASIBILITY_VERDICTS, FeasibilityReport, Term, transfer_feasibility
from pytl.diagnostics.source_ranking import SourceRanking, rank_sources
from pytl.diagnostics.domain_classifier import CLASSIFIERS, MIN_PAD_SAMPLES, proxy_a_distance
from pytl.diagnostics.label_proportions import LabelProportionTest, label_proportion_test
from pytl.diagnostics.label_shift import (
    RELIABLE_CONDITION,
    LabelShiftEstimate,
    estimate_label_shift,
    label_shift_from_predictions,
)
from pytl.diagnostics.permutation_test import (
    PERMUTATION_CHUNK_ELEMENTS,
    PERMUTATION_CHUNK_RANGE,
    MMDTestResult,
    mmd_test,
)
from pytl.ops import SigmasLike, WeightsLike, rbf_kernel_matmul

__all__ = [
    "CLASSIFIERS",
    "FEASIBILITY_VERDICTS",
    "MIN_PAD_SAMPLES",
    "PAD_HIGH",
    "PAD_LOW",
    "PERMUTATION_CHUNK_ELEMENTS",
    "PERMUTATION_CHUNK_RANGE",
    "RELIABLE_CONDITION",
    "VERDICT_HIGH",
    "VERDICT_LOW",
    "DivergenceReport",
    "FeasibilityReport",
    "LabelShiftEstimate",
    "MMDTestResult",
    "SigmasLike",
    "SourceRanking",
    "Term",
    "WeightsLike",
    "domain_divergence",
    "estimate_label_shift",
    "LabelProportionTest",
    "label_proportion_test",
    "label_shift_from_predictions",
    "mmd_test",
    "proxy_a_distance",
    "rank_sources",
    "rbf_kernel_matmul",
    "transfer_feasibility",
]
