"""`streams demo`: the scenarios, run on the embedded endpoint and verified from their outputs."""
