"""Every registered method passes the common checks of scrutiny.testing."""

from scrutiny.registry import list_methods
from scrutiny.testing import parametrize_with_checks


@parametrize_with_checks(list_methods())
def test_common(spec, check):
    check(spec)
