"""Freed memory goes back to the system between stages (`loopline.offline.memory`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopline.offline.memory import _malloc_trim

# In a fresh process: 300,000 blocks of 1,000 bytes (Python objects' buffers come from
# malloc's heap), the last one still alive, so the freed ones below it cannot be trimmed from
# the heap's top: they stay in the RSS until they are released.
KEPT_THEN_RELEASED = """
import psutil
from loopline.offline.memory import release_freed_memory
rss = lambda: psutil.Process().memory_info().rss
blocks = [bytearray(1000) for _ in range(300_000)]
last = blocks[-1]
del blocks
kept = rss()
release_freed_memory()
print((kept - rss()) / 2**20)
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_the_memory_a_stage_freed_leaves_the_process():
    done = subprocess.run(
        [sys.executable, "-c", KEPT_THEN_RELEASED], capture_output=True, text=True, check=True
    )
    released_mb = float(done.stdout)
    assert released_mb > 200, f"released {released_mb:.0f} MB of about 290 MB freed"
