"""RFM+ tabular features (point-in-time, streamed from the canonical events) and their fitted
transform to the model matrix used for clustering."""

from gpuseg.features.rfm import (
    BASE_FEATURES,
    DEFAULT_ROLES,
    RFMFeaturizer,
    compute_rfm_features,
    sanitize_name,
)
from gpuseg.features.transform import TabularTransform

__all__ = [
    "BASE_FEATURES",
    "DEFAULT_ROLES",
    "RFMFeaturizer",
    "TabularTransform",
    "compute_rfm_features",
    "sanitize_name",
]
