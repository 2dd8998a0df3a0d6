"""netoffload: per-packet, load-aware offload of packet-processing tasks."""

from netoffload.batch import Batch, Ext
from netoffload.errors import NetoffloadError
from netoffload.tasks import Direction, Task

__all__ = ["Batch", "Direction", "Ext", "NetoffloadError", "Task"]
__version__ = "0.1.0"
