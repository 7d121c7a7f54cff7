"""The failover benchmark; run it as `python bench/failover.py` (README "Benchmarks")."""
