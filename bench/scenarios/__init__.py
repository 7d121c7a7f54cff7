"""One module per part of the benchmark: how one run is measured, and the series of runs the part makes."""
