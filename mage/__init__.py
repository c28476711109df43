"""MAGE: a vision tower, the Intelligent Alignment Network (IAN) and a causal LLM,
trained with cross-entropy plus mean squared error (arXiv 2507.21741), configurable end to end."""

__version__ = "0.1.0"
