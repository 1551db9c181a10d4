"""glibc settings of the server process: the trimmer really gives freed heap memory back."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from fedpress.deploy.memory import MemoryTrimmer, cap_malloc_arenas

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

# freed 2 KiB blocks come from the heap; one live block at the top keeps glibc from giving the
# rest back by itself, so only a trim can return it
PROBE = textwrap.dedent(
    """
    import sys, time
    from fedpress.deploy.memory import MemoryTrimmer, cap_malloc_arenas

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    assert cap_malloc_arenas()
    blocks = [bytes(2048) for _ in range(100_000)]
    pin = bytes(2048)
    before = rss()
    del blocks
    freed = rss()
    if sys.argv[1] == "trim":
        t = MemoryTrimmer(every_s=0.05).start()
        time.sleep(0.5)
        t.stop()
        assert t.trims > 0
    else:
        time.sleep(0.5)
    print(before, freed, rss())
    """
)


def _probe(mode: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    before, freed, after = map(float, out.stdout.split())
    return before, freed, after


@glibc
def test_trimmer_returns_freed_heap_memory_that_glibc_keeps_otherwise():
    before, freed, after = _probe("none")
    assert before - after < 50  # ~200 MiB freed, still resident: glibc kept it
    before, freed, after = _probe("trim")
    assert before - after > 100  # the trimmer gave it back


def test_trimmer_settings():
    with pytest.raises(ValueError, match="positive"):
        MemoryTrimmer(every_s=0)
    t = MemoryTrimmer(every_s=10).start()
    t.stop()  # stops at once, not after its period
    if sys.platform.startswith("linux"):
        assert cap_malloc_arenas() is True
