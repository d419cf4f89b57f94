"""Datasets (``sources``) and their division among federated clients (``partition``)."""
from fedsqueeze.data.partition import Partition, describe, dirichlet, iid, make_partition, natural, shards
from fedsqueeze.data.sources import Dataset, load_digits, load_fashion_mnist, load_synthetic

__all__ = [
    "Dataset", "load_fashion_mnist", "load_digits", "load_synthetic",
    "Partition", "make_partition", "describe", "iid", "dirichlet", "shards", "natural",
]
