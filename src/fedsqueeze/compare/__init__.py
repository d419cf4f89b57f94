"""``fedsqueeze compare``: several methods on one federation — accuracy vs bytes vs time.

suite.py (the suite file, its seeds), runner.py (runs, cached and resumable, once per seed), table.py
(MB / rounds / time to target; mean ± 95% t-interval over seeds), stats.py (the t-interval),
network.py (network profiles and simulated round times), budget.py (rdq budget mode), plots.py
(accuracy vs MB, rounds, simulated time; mean curves with min–max bands over seeds).
"""
