import pytest

from gazekit import RowTargets


def test_row_targets_check_each_row():
    assert RowTargets([1, [0, 0, 10, 10], "p3"]) == (1, (0, 0, 10, 10), "p3")  # boxes become tuples (hashable)
    for bad in ([], [0], [{1: 2}], [lambda s, t: 1], [True]):
        with pytest.raises(ValueError):
            RowTargets(bad)
