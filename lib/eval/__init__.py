"""Evaluation of trained policies (notebooks 04 and 05).

- generation: completions of each model, cached (`GenerationCache`) and seeded per request
- scoring: the judges' per-item scores of those completions, the held-out judge, case-study entries
- metrics: diagnostics of completions, score tables with bootstrap intervals, paired gains, two-judge comparison
- report: case-study pages and the one-file run report
"""
