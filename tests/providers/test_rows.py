"""providers/base.py `stack_rows`: one row or many, the array np.stack makes (new, writeable, C order); and
`check_shape`'s refusal of non-finite values."""

from __future__ import annotations

import numpy as np
import pytest

from providers.base import ErrorKind, ProviderError, check_shape, stack_rows


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("shape", [(1, 4), (2048, 1536)])
def test_a_non_finite_value_anywhere_is_refused(bad: float, shape: tuple[int, int]) -> None:
    vectors = np.ones(shape, "<f4")
    vectors[-1, -1] = bad
    with pytest.raises(ProviderError) as exc:
        check_shape(vectors, shape[0])
    assert exc.value.kind is ErrorKind.BAD_RESPONSE and "NaN or infinite" in exc.value.message


def test_huge_finite_values_are_kept() -> None:
    """Their squares overflow float32, so the quick sum of squares is not finite: each value is looked at."""
    vectors = np.full((3, 1 << 13), 3e38, "<f4")
    vectors[1] = -1e20
    np.testing.assert_array_equal(check_shape(vectors, 3), vectors)
