"""L1 clustering: :class:`MiniBatchKMeans` (CPU/CUDA, out-of-core, torch.distributed)."""

from gpuseg.cluster._validation import InputDataError, InvalidParameterError, NotFittedError
from gpuseg.cluster.kmeans import MiniBatchKMeans

__all__ = ["InputDataError", "InvalidParameterError", "MiniBatchKMeans", "NotFittedError"]
