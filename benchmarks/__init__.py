"""rayrl's benchmarks: checkpoint I/O against the disk, async blocking, recovery, overhead, resume cost.

Run them with ``python -m benchmarks.run [--quick]``; each module answers one question (see its docstring).
"""
