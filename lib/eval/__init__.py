"""Evaluation of trained policies (notebooks 04 and 05).

- generation: completions of each model, cached (`GenerationCache`) and seeded per request
- scoring: the judges' per-item scores of those completions, the held-out judge, case-study entries
- metrics: diagnostics of completions, score tables with bootstrap intervals, paired gains, two-judge comparison
- winrate: pairwise win rate of each trained model against its base under the training judge
- report: case-study pages and the one-file run report
"""
