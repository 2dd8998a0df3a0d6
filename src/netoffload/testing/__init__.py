"""Test hosts in network namespaces and packet builders (also used by the demo and benchmarks)."""
