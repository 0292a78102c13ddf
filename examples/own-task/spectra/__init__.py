"""A team's own kubetune task: spectra classification from a data set on a shared volume."""

from spectra.task import SpectraClassifier, SpectraFiles

__all__ = ["SpectraClassifier", "SpectraFiles"]
