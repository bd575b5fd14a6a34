"""calipers.checks: the argument checks the simulators share."""
import numpy as np
import pytest

from calipers.checks import checked_number


def test_checked_number_accepts_and_converts():
    assert checked_number("n", np.int64(3), int, 1) == 3 and isinstance(checked_number("n", np.int64(3), int), int)
    assert checked_number("x", 2, float, 0.0, 2.0) == 2.0


@pytest.mark.parametrize("value, kind, kw, match", [
    (True, int, {}, "must be a number"), (2.5, int, {}, "must be an integer"), (float("nan"), float, {}, "finite"),
    (0.0, float, {"low": 0.0, "low_open": True}, "must be > 0.0"), (-1, int, {"low": 0}, "must be >= 0"),
    (3.0, float, {"high": 2.0}, "must be <= 2.0")])
def test_checked_number_names_the_argument(value, kind, kw, match):
    with pytest.raises(ValueError, match=f"Config.field.*{match}"):
        checked_number("Config.field", value, kind, **kw)
