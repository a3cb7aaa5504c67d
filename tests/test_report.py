"""Figures 1-6, the one-file HTML report and the output formats, on small made-up studies."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest
from collect_study import ft, write

from hpcxfer.collect.build import ALL, build_views, collect
from hpcxfer.collect.figures import draw, paper_figures

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def study(tmp_path):
    """Two splits; sizes 10 and 25; the n sweep (0, 3, 6, 7 at h 8), the h sweep (1, 8 at n 6),
    d in {5, 30} at h 1 for n 3 and 6, and the optimal protocol at 10; split 1 of n 3 at 25 cut."""
    results = {}
    for s in (0, 1):
        for size in (10, 25):
            for n in (0, 3, 7):
                results[ft(s, size, n)] = 0.2 + 0.05 * n + 0.01 * s + (0.1 if size == 25 else 0)
            results[ft(s, size, 6, h=8)] = 0.5 + 0.01 * s
            results[ft(s, size, 6, h=1)] = 0.52 + 0.01 * s
            results[ft(s, size, 3, h=1)] = 0.42 + 0.01 * s
            for n in (3, 6):
                results[ft(s, size, n, h=1, d=5)] = 0.3 + 0.02 * n
        results[ft(s, 10, 6, h=1, d=10, f=6)] = 0.6
    results[ft(1, 25, 3)] = None
    return write(tmp_path / "study", results)


def test_figures_have_one_series_per_size(study, tmp_path, cli):
    figures, left_out = paper_figures(collect(study).protocol_cells)
    by_name = {f.name: f for f in figures}
    assert set(by_name) == {"fig1", "fig2", "fig3", "fig4", "fig6"}
    assert [s.label for s in by_name["fig1"].series] == ["10/class", "25/class"]
    assert by_name["fig1"].series[0].x == [0, 3, 6, 7]
    assert by_name["fig1"].series[1].n == [2, 1, 2, 2]  # n 3 at 25/class lost split 1
    assert by_name["fig1"].series[0].std[0] == pytest.approx(100 * 0.01 / 2 ** 0.5)  # two splits 1 point apart
    assert [s.label for s in by_name["fig2"].series] == ["10/class", "25/class"] and by_name["fig2"].series[0].x == [1, 8]
    # Fig. 3 varies n at h = 1 for each d: one line per size and d
    assert [s.label for s in by_name["fig3"].series] == ["10/class, d 5", "10/class, d 30", "25/class, d 5", "25/class, d 30"]
    assert [s.label for s in by_name["fig6"].series] == ["scratch", "common", "optimal"]
    assert by_name["fig6"].series[2].x == [10]
    assert [s.x for s in by_name["fig4"].series] == [[5, 30], [5, 30]]  # d at n 6, h 1
    assert len(left_out) == 1 and "Fig. 5" in left_out[0]  # f is not varied

    out = cli("collect", study.dir, "--plots", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    for name, data in by_name.items():
        png = (tmp_path / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        svg = (tmp_path / "plots" / f"{name}.svg").read_text()
        ET.fromstring(svg)
        assert len(set(re.findall(r'id="series-(\d+)', svg))) == len(data.series)
    assert not list((tmp_path / "plots").glob("fig5*"))
    assert len(draw(by_name["fig3"]).axes[0].containers) == 4  # one error-bar container per line


def test_report_is_one_valid_html_file_with_every_table(study, cli):
    out = cli("report", study.dir)
    assert out.returncode == 0, out.stderr
    text = (study.dir / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    root = ET.fromstring(text.split("\n", 1)[1])  # well-formed: parses as XML
    views = build_views(collect(study), ALL, explicit=False)
    assert [v.name for v in views] == ["cells", "table1", "table2", "compare", "incomplete"]
    tables = root.findall(".//table")
    assert [t.find("caption").text for t in tables] == [v.title for v in views]
    for table, view in zip(tables, views):
        assert len(table.findall("./tbody/tr")) == len(view.rows)
        assert [th.text for th in table.findall("./thead/tr/th")] == [c.header for c in view.columns]
    cells = {tuple(td.text for td in tr) for tr in tables[2].findall("./tbody/tr")}
    # two pairs, +5 and +4 points: Student's t with 1 df holds zero, so no best at 10/class
    assert ("10", "tied within noise: optimal (n6 h1 d10 f6), common (n7 h8 d30 f0)", "60.0 ± 0.0") in {c[:3] for c in cells}
    figures = root.findall(".//figure")
    assert [f.get("id") for f in figures] == ["fig1", "fig2", "fig3", "fig4", "fig6"]
    assert all(f.find(f"{SVG}svg") is not None for f in figures)  # embedded, not linked
    assert "src=" not in text and "href=\"http" not in text
    assert "cut" in root.find(".//ul[@id='summary']/li").text


def test_report_escapes_what_it_shows(tmp_path, cli):
    paths = write(tmp_path / "s", {ft(0, 10, 7): 0.5, ft(1, 10, 7): None})
    failed = paths.task(ft(1, 10, 7).task_id).failed
    failed.write_text(json.dumps({"error": "<script>alert(1)</script> & more"}))
    out = cli("report", paths.dir, "--out", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "r.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    ET.fromstring(text.split("\n", 1)[1])


def test_formats_and_out(study, tmp_path, cli):
    md = cli("collect", study.dir, "--view", "table2", "--format", "markdown").stdout
    assert md.startswith("### Table 2: the best protocol per size") and "| per class | best protocol |" in md
    rows = list(csv.DictReader(io.StringIO(cli("collect", study.dir, "--view", "compare", "--format", "csv").stdout)))
    assert [r["examples_per_class"] for r in rows] == ["10", "25"] and float(rows[0]["optimal_mean"]) == 0.6
    both = json.loads(cli("collect", study.dir, "--view", "table1,table2", "--format", "json").stdout)
    assert set(both) == {"views", "summary"} and set(both["views"]) == {"table1", "table2"}
    assert both["summary"]["notes"][0].startswith("36 tasks: 35 with results, 1 cut")
    bad = cli("collect", study.dir, "--view", "all", "--format", "csv", "--out", tmp_path / "x.csv")
    assert bad.returncode == 2 and "csv holds one view" in bad.stderr and not (tmp_path / "x.csv").exists()
    out = cli("collect", study.dir, "--view", "all", "--format", "json", "--out", tmp_path / "all.json")
    assert out.returncode == 0 and out.stdout == ""
    data = json.loads((tmp_path / "all.json").read_text())
    assert set(data["views"]) == {"cells", "table1", "table2", "compare", "incomplete"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".all.json")]  # no temporary left behind
    table = cli("collect", study.dir, "--view", "table2").stdout
    assert "Table 2" in table and "optimal" in table
