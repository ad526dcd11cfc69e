"""Speed benchmark: the plain reference network and the benchmark suite."""
