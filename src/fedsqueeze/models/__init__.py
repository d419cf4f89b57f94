"""Models built by name: see ``zoo``."""
from fedsqueeze.models.zoo import SplitModel, build_model, count_parameters

__all__ = ["SplitModel", "build_model", "count_parameters"]
