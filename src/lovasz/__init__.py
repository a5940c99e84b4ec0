"""lovasz: Lovász losses for PyTorch — optimize intersection-over-union directly.

Data flow: :mod:`lovasz.errors` builds the error vectors of each loss → :mod:`lovasz.engine` evaluates the
Lovász extension of the Jaccard loss for all groups at once → :mod:`lovasz.reduce` averages over classes
and images.
"""

from .engine import DEFAULT_BINS, BackendNotSupportedError, LovaszFallbackWarning
from .engine.backends import Explanation, explain
from .functional import lovasz_hinge, lovasz_sigmoid, lovasz_softmax
from .modules import CrossEntropyLovaszLoss, LovaszHingeLoss, LovaszSigmoidLoss, LovaszSoftmaxLoss

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BINS",
    "BackendNotSupportedError",
    "CrossEntropyLovaszLoss",
    "Explanation",
    "LovaszFallbackWarning",
    "LovaszHingeLoss",
    "LovaszSigmoidLoss",
    "LovaszSoftmaxLoss",
    "__version__",
    "explain",
    "lovasz_hinge",
    "lovasz_sigmoid",
    "lovasz_softmax",
]
