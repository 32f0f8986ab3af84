"""Benchmarks of slirptrio against libslirp and slirp4netns (``python -m benchmarks.bench``)."""
