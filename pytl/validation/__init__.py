"""Label-free model selection: which of several trained models will do best on the target domain,
without a single target label?

Each criterion is ``f(model, source_val, target_unlabeled, **options) -> float``, HIGHER IS BETTER.
``source_val``: labelled (X, y) source samples the model was not trained on; ``target_unlabeled``:
target X (arrays, tensors or DataLoaders, as everywhere in pytl). The model runs in eval mode without
gradients, in batches, its modes restored after; every score is computed in float64 and is
deterministic (the density-ratio classifier is seeded).

* :func:`importance_weighted` (``iwv.py``, "iwv") - Sugiyama et al. (JMLR 2007): −mean w·ℓ over source_val.
* :func:`deep_embedded` (``dev.py``, "dev") - You et al. (ICML 2019): IWV with a control variate.
* :func:`soft_neighborhood_density` (``snd.py``, "snd") - Saito et al. (ICCV 2021), chunked.
* :func:`prediction_entropy` (``entropy.py``, "entropy") - −mean entropy of the target predictions.
* :func:`information_maximization` (``im.py``, "im") - H(mean prediction) − mean H(prediction).

``CRITERIA`` maps the names to the functions and :func:`score` calls one by name (``criteria.py``).
Shared parts: ``outputs.py`` (inputs, logits, embeddings), ``ratios.py`` (density ratios w = p_T/p_S
from a domain classifier). A score ranks models on one problem; it is not an accuracy, and two scores
of different problems or criteria are not comparable. docs/validation.md says when each one fails.
"""

from pytl.validation.criteria import CRITERIA, score
from pytl.validation.dev import deep_embedded, dev_risk
from pytl.validation.entropy import prediction_entropy
from pytl.validation.im import information_maximization
from pytl.validation.iwv import importance_weighted, iwv_risk
from pytl.validation.outputs import FEATURES, LOSSES
from pytl.validation.ratios import density_ratios
from pytl.validation.snd import snd_from_probabilities, soft_neighborhood_density

__all__ = [
    "CRITERIA",
    "FEATURES",
    "LOSSES",
    "deep_embedded",
    "density_ratios",
    "dev_risk",
    "importance_weighted",
    "information_maximization",
    "iwv_risk",
    "prediction_entropy",
    "score",
    "snd_from_probabilities",
    "soft_neighborhood_density",
]
