"""Local datasets (never downloaded at run time) and federated partitioners."""

from .datasets import (
    ArrayDataset,
    DatasetFormatError,
    available_datasets,
    canonical_name,
    dataset_available,
    load_dataset,
    normalisation,
    read_idx,
)
from .packages import find_data_package
from .partition import SCHEMES, label_counts, partition

__all__ = [
    "SCHEMES",
    "ArrayDataset",
    "DatasetFormatError",
    "available_datasets",
    "canonical_name",
    "dataset_available",
    "find_data_package",
    "label_counts",
    "load_dataset",
    "normalisation",
    "partition",
    "read_idx",
]
