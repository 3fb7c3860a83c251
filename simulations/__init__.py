"""feddel.simulations: everything on one machine without real hospitals (feddel-sim): the
synthetic federation (synth/), simulated runs on two engines, the centralized reference,
comparisons and benchmarks (benchmarks/)."""
