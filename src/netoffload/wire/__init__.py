"""Parse and emit of headers: bytes in, values out, and back. No I/O, no sockets.

Header modules (``ethernet``, ``ipv4``, ``ipv6``, ``tcp``, ``udp``) give frozen
dataclasses with ``parse(data) -> (header, payload_offset)`` and ``emit()``;
``parse.parse_batch`` fills the header layout of a whole batch at once.
"""

from netoffload.errors import NetoffloadError


class WireError(NetoffloadError):
    """A header could not be parsed (used by the per-packet slow path and tests)."""
