"""gazekit's benchmark harness (a source checkout only; not part of the installed package): `make bench` or
`python -m benchmarks`. See `benchmarks/bench.py`."""
