"""Reports: pure functions turning a results store into tables, statistics and figures."""
