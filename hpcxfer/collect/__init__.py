"""Records -> the paper's tables and figures.

read.py (the forgiving reader) -> aggregate.py (cells: mean ± std over replicates) and
metrics.py (every metrics record merged into learning curves) -> reports.py (the paper's
views, with paper.py's published numbers) -> render.py (table/csv/markdown/json),
figures.py (the data of Figs. 1-6, paired differences and learning curves) -> plotting.py (PNG/PDF/SVG),
provenance.py (what ran where, and what it cost) and html.py (the one-file report). build.py is what the
`collect` and `report` commands run; moments.py is the mean ± std formula of both.
(benchmarks/synthetic.py writes made-up studies for the benchmarks and tests.)
"""

from hpcxfer.collect.aggregate import summarize
from hpcxfer.collect.read import StudyRecords, read_study

__all__ = ["StudyRecords", "read_study", "summarize"]
