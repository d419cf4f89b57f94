"""Evaluation, results files and plots."""
