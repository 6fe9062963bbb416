"""Per-customer tables joined on ``customer_id``: one way for every reader that wants two artifacts.

Jobs write their own per-customer artifacts (segments, scores, embeddings) and never rewrite
another job's; a reader that wants several columns side by side joins them here, in the first
table's row order, and hears about any customer one of them lacks.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.runtime.errors import UserInputError


def join_on_customer_id(base: pa.Table, *others: pa.Table, names: tuple[str, ...] = ()) -> pa.Table:
    """Columns of ``others`` appended to ``base``, matched on ``customer_id``, in ``base``'s order.

    Parameters
    ----------
    base : pyarrow.Table
        The table whose rows and order are kept; it must have a ``customer_id`` column.
    *others : pyarrow.Table
        Tables with ``customer_id`` and further columns; a column name already present is an error.
    names : tuple of str, optional
        A name for each of ``others`` (e.g. its artifact path), used in error messages.

    Returns
    -------
    pyarrow.Table

    Raises
    ------
    UserInputError
        When a table lacks ``customer_id``, misses customers of ``base``, or repeats a column.
    """
    ids = base["customer_id"].combine_chunks()
    out = base
    for i, other in enumerate(others):
        label = names[i] if i < len(names) else f"table {i + 1}"
        if "customer_id" not in other.column_names:
            raise UserInputError(f"{label} has no customer_id column", column="customer_id")
        index = pc.index_in(ids, value_set=other["customer_id"].combine_chunks())
        if index.null_count:
            missing = ids.filter(pc.is_null(index))[:3].to_pylist()
            raise UserInputError(f"{label} lacks {index.null_count} customer(s), e.g. {missing}: the artifacts come "
                                 "from different runs; re-run the job that wrote it", column="customer_id")
        for name in other.column_names:
            if name == "customer_id":
                continue
            if name in out.column_names:
                raise UserInputError(f"column {name!r} of {label} is already in the joined table", column=name)
            out = out.append_column(name, other[name].take(index))
    return out
