"""One module per scenario family; each ``run_*`` function returns a :class:`~benchmarks.harness.Scenario`."""
