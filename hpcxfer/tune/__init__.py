"""Tune: successive halving over a grid's protocols, per target size (docs/design.md, "Tune").

settings.py resolves the grid's `search:` section against its tasks and prices a search;
rule.py is the decision at a rung, a pure function of the candidates' metrics.
"""
