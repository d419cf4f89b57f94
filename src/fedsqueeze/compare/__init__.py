"""``fedsqueeze compare``: several methods on one federation — accuracy vs bytes vs time.

suite.py (the suite file), runner.py (runs, cached and resumable), table.py (MB / rounds / time to
target), network.py (network profiles and simulated round times), budget.py (rdq budget mode),
plots.py (accuracy vs MB, rounds, simulated time).
"""
