"""The library's own exceptions.

Bad configuration or arguments raise one of these with a message that names the
thing that is wrong; the CLI turns them into one line on stderr and exit code 2.
Malformed *packets* never raise: they get a per-packet verdict (see ``Reason``).
"""

from __future__ import annotations


class NetoffloadError(Exception):
    """Base class of every error netoffload raises on purpose."""


class ConfigError(NetoffloadError):
    """A configuration value, file or argument is wrong."""


class CapabilityError(NetoffloadError):
    """A task was enabled that the device did not report, or outside its limits."""

    def __init__(self, device: str, task: str, limit: str) -> None:
        self.device = device
        self.task = task
        self.limit = limit
        super().__init__(f"device {device!r}: cannot enable {task!r}: {limit}")


class BufferFormatError(NetoffloadError):
    """A binary buffer (capability chain, capture file, ring) is corrupt or truncated."""

    def __init__(self, what: str, offset: int, problem: str) -> None:
        self.what = what
        self.offset = offset
        self.problem = problem
        super().__init__(f"{what}: at offset {offset}: {problem}")


class CaptureError(NetoffloadError):
    """A capture file is unreadable; names the record at fault."""


class DeviceError(NetoffloadError):
    """A device failed (submit refused, vanished, I/O error)."""


class DeviceDown(DeviceError):
    """The device is gone; in-flight work must be redone in software."""
