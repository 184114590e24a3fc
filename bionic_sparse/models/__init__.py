"""Models: BioNIC and the conventional baseline."""

from .bionic import BioNIC, BioNICConfig, ConventionalBaseline

__all__ = ["BioNIC", "BioNICConfig", "ConventionalBaseline"]
