"""The reliability suite's machinery (issue #9): fuzzing strategies, the hostile model-file corpus and
crash-resume chaos runs. Used by ``tests/test_reliability_*.py`` (fast profile) and
``benchmarks/reliability.py`` (long profile, the figures of ``docs/RELIABILITY.md``)."""
