"""The failover benchmark; run it as `python bench/failover.py` (see bench/README.md)."""
