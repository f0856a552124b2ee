"""The functions of `streams demo`'s scenarios (run by the local mapping, as on Lambda)."""
