"""A reporter plugin that finds the disk full: the bad-input table (tests/test_bad_inputs.py) and the battery
(benchmarks/bad_inputs.py) write it as a plugin file and run it."""

REPORTER = """
import errno
from probe.hookspecs import hookimpl
from probe.store.files import write_atomic

def half_then_full(tmp):
    tmp.write_bytes(b"x" * 1500)
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

def fills(results, output_dir, run):
    {how}

@hookimpl
def register_reporters(register):
    register("fills", fills)
"""


def full_disk_reporter(how: str, error: str = "ENOSPC") -> str:
    """The plugin's source: reporter ``fills`` does ``how`` (one line); ``error``: the errno it raises."""
    return REPORTER.replace("errno.ENOSPC", f"errno.{error}").format(how=how)
