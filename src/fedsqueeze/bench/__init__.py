"""Benchmarks: engine speed, codec rate-distortion, and more."""
