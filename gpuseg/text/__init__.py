"""L1 text: transformer sentence embeddings and per-customer text blocks.

- :class:`TextEmbedder` - texts -> float32 vectors, equal to sentence-transformers' for the same
  model, with de-duplication, length-bucketed batches and CUDA OOM back-off.
- :func:`aggregate_by_customer` / :func:`customer_text_table` - per customer and source: mean,
  count, recency-weighted mean; customers without texts get zeros and ``has_text = False``.
- :class:`StaticEmbedder` - the fast CPU path (``text.model=static``): a model2vec static model
  distilled once from the transformer and cached in the work dir.
- :func:`resolve_model` - find a model on local disk (never downloads).
"""

from gpuseg.text.aggregate import aggregate_by_customer, customer_text_table
from gpuseg.text.embedder import TextEmbedder
from gpuseg.text.model_path import read_model_info, resolve_model
from gpuseg.text.static import StaticEmbedder

__all__ = [
    "StaticEmbedder",
    "TextEmbedder",
    "aggregate_by_customer",
    "customer_text_table",
    "read_model_info",
    "resolve_model",
]
