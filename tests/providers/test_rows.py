"""providers/base.py `stack_rows`: one row or many, the array np.stack makes (new, writeable, C order)."""

from __future__ import annotations

import numpy as np
import pytest

from providers.base import stack_rows


@pytest.mark.parametrize("count", [1, 3])
def test_rows_stack_as_np_stack_does(count: int) -> None:
    raw = np.arange(count * 5, dtype="<f4").tobytes()
    rows = [np.frombuffer(raw, "<f4", 5, offset=i * 20) for i in range(count)]  # read-only views, as decoded
    stacked = stack_rows(rows)
    reference = np.stack(rows)
    assert stacked.shape == reference.shape == (count, 5) and stacked.dtype == reference.dtype
    np.testing.assert_array_equal(stacked, reference)
    assert stacked.flags.writeable and stacked.flags.c_contiguous
    assert not any(np.shares_memory(stacked, row) for row in rows)
