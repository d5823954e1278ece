"""Performance harnesses of vptsearch; ``python -m benchmarks`` runs them (see benchmarks/README.md).

Each ``bench_*.py`` also runs on its own (``python benchmarks/bench_<name>.py [--smoke]``) and prints
one JSON object; nothing here is imported by the library.
"""
