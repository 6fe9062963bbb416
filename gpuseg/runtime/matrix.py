"""Read a per-customer block (Parquet keyed by customer_id) as one float32 matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gpuseg.runtime.errors import UserInputError


def read_matrix(path: str | Path) -> tuple[pa.Array, np.ndarray, list[str]]:
    """Customer ids, the float32 matrix and its column names from a block Parquet file.

    Numeric and boolean columns give one column each; ``fixed_size_list`` vector columns give
    ``dim`` columns named ``<name>[i]``. String columns other than customer_id are an error.
    """
    table = pq.read_table(path)
    if "customer_id" not in table.column_names:
        raise UserInputError(f"'{path}' has no customer_id column")
    blocks, names = [], []
    for name in table.column_names:
        if name == "customer_id":
            continue
        col = table[name].combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            dim = col.type.list_size
            values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
            blocks.append(values)
            names += [f"{name}[{i}]" for i in range(dim)]
        elif pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            blocks.append(col.cast(pa.float32()).to_numpy(zero_copy_only=False).reshape(-1, 1))
            names.append(name)
        else:
            raise UserInputError(f"'{path}': column '{name}' of type {col.type} is not numeric")
    if not blocks:
        raise UserInputError(f"'{path}' has no numeric columns")
    matrix = np.ascontiguousarray(np.hstack(blocks), dtype=np.float32)
    bad = ~np.isfinite(matrix).all(1)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise UserInputError(f"'{path}' has {int(bad.sum())} rows with NaN or infinity (first rows {first}); "
                             "the upstream job should have imputed them")
    return table["customer_id"].combine_chunks(), matrix, names
