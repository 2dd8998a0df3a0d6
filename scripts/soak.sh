#!/usr/bin/env bash
# Soak: iperf3 through a netoffload pair in namespaces for MINUTES (default 10), with a
# rekey forced every few seconds, watching error counters and memory (not in CI).
#
#   sudo scripts/soak.sh [MINUTES] [--rekey-after S] [--every S] [--warmup S]
#                        [--json FILE] [-- UP-OPTIONS...]
#
# Rekeys: the testing knob NETOFFLOAD_TEST_REKEY_AFTER (seconds, default here 6) makes
# the initiator rekey when it sends with a session that old instead of after 120 s (a
# new initiation still waits REKEY_TIMEOUT = 5 s after the last one). UP-OPTIONS go to
# both `netoffload up` (e.g. -- --nic crypto). Prints a summary: throughput, handshakes,
# every counter that rose (expected or not), RSS at start / after the warm-up / at the
# end. Exit 0: no unexpected counter rose and RSS grew < 5 % after the warm-up (2 min,
# at most a third of the run); 1: one of them failed; 2: the soak cannot run here
# (needs root, /dev/net/tun, iperf3).
#
# RSS (all the tunnel's processes) is judged between the median of the first minute
# after the warm-up and that of the last minute. glibc keeps freed big buffers in its
# heap (its dynamic mmap threshold rises), so RSS used to climb in steps to a high-water
# mark (measured: +9.9 % after the warm-up); `netoffload up` now runs heap.start_trimmer()
# (malloc_trim every 10 s, in every worker), and RSS wanders by a few % between trims.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec "$PY" -m netoffload.testing.soak "$@"
