"""HyenaLens benchmark suite (the performance issue): `python -m benchmarks [--device cuda]
[--quick] [--only SECTION] [--out BENCHMARKS.md] [--demo]`. Not part of `make test`;
tests/test_benchmarks.py runs it with `--quick` to check the machinery."""
