"""nmfailover: keep the default route on the most preferred uplink that really reaches the internet."""

__version__ = "0.1.0"
