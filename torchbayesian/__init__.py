"""Turn any PyTorch module into a Bayesian neural network trained by variational inference."""

from torchbayesian import bnn

__all__ = ["__version__", "bnn"]

__version__ = "0.1.0"
