"""Records -> summary tables (and the paper's tables and figures)."""

from hpcxfer.collect.aggregate import summarize
from hpcxfer.collect.read import read_results

__all__ = ["read_results", "summarize"]
