"""Running work: sweep specs, trials, Ray Tune sweeps, lmms-eval scoring, the results store, the CLI."""
