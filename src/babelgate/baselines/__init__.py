"""Baselines behind the guard's interface (`generate(prompts, languages, ...)` returning
`GuardedCompletion` records with per-row `fired`; `describe()` with parameters and budget):
unconditional directional ablation, unconditional activation addition, CAST and AdaSteer.
All are fitted from the user's own prompts or activations; nothing is downloaded."""

from babelgate.baselines.ablation import DirectionalAblation
from babelgate.baselines.adasteer import AdaSteer, Coefficient
from babelgate.baselines.addition import ActivationAddition
from babelgate.baselines.cast import CAST, ConditionPoint, pairwise_pca
from babelgate.generation import Unsteered

__all__ = [
    "CAST",
    "ActivationAddition",
    "AdaSteer",
    "Coefficient",
    "ConditionPoint",
    "DirectionalAblation",
    "Unsteered",
    "pairwise_pca",
]
