"""The HS classification model as the app uses it: towers, joint model, predict, explain (no training code here).

The public names are re-exported lazily, so ``import hs_model.render`` (no torch) stays light::

    from hs_model import Classifier, Explainer
    prediction = Classifier().predict("men's knitted cotton T-shirt")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hs_model.checkpoint import CheckpointError, ModelCard
    from hs_model.errors import InputError
    from hs_model.explain import Explainer, Explanation, ExplanationSet
    from hs_model.predict import Candidate, Classifier, Prediction, Query

_EXPORTS = {
    "Candidate": "hs_model.predict",
    "Classifier": "hs_model.predict",
    "Prediction": "hs_model.predict",
    "Query": "hs_model.predict",
    "Explainer": "hs_model.explain",
    "Explanation": "hs_model.explain",
    "ExplanationSet": "hs_model.explain",
    "CheckpointError": "hs_model.checkpoint",
    "ModelCard": "hs_model.checkpoint",
    "InputError": "hs_model.errors",
}
__all__ = [
    "Candidate",
    "CheckpointError",
    "Classifier",
    "Explainer",
    "Explanation",
    "ExplanationSet",
    "InputError",
    "ModelCard",
    "Prediction",
    "Query",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hs_model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
