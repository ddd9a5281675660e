import platform

import pytest

from golf.dist import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings exist only in glibc")
def test_keep_freed_memory_settings_are_accepted_by_glibc():
    """mallopt returns 0 for a parameter code or a value it does not take: the setting every CPU process relies
    on for its step time must really be taken."""
    assert keep_freed_memory() is True
