"""Benchmarks: scripts run by hand (``python bench/<name>.py``) that print figures; not tests.

Results and how to reproduce them are recorded in ``docs/performance.md``.
"""
