"""Records -> the paper's tables and figures.

read.py (forgiving reader) -> aggregate.py (cells, mean ± std) and metrics.py (learning
curves) -> reports.py (named views) -> render.py (table/csv/markdown/json),
figures.py (PNG/SVG) and html.py (the one-file report).
"""

from hpcxfer.collect.aggregate import summarize
from hpcxfer.collect.read import StudyRecords, read_study

__all__ = ["StudyRecords", "read_study", "summarize"]
