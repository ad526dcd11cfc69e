"""Speed benchmark (issue 7): the plain reference network and the benchmark suite."""
