"""Figures 1-6, the one-file HTML report and the output formats, on small made-up studies."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import xml.etree.ElementTree as ET

import pytest
from collect_study import ft, write

from hpcxfer.collect import read_study
from hpcxfer.collect.build import ALL, build_views, collect
from hpcxfer.collect.figures import paper_figures
from hpcxfer.collect.plotting import draw

SVG = "{http://www.w3.org/2000/svg}"
COMMON_LABEL = "common (n7 h8 d30 f0)"


def _png_dpi(png: bytes) -> int:
    """The resolution a PNG's pHYs chunk states, in dots per inch."""
    at = png.index(b"pHYs") + 4
    per_metre = struct.unpack(">I", png[at:at + 4])[0]
    assert png[at + 8] == 1  # the unit is the metre
    return round(per_metre * 0.0254)


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
        assert _png_dpi(png) == 300
        assert (tmp_path / "plots" / f"{name}.pdf").read_bytes().startswith(b"%PDF-")
        svg = (tmp_path / "plots" / f"{name}.svg").read_text()
        ET.fromstring(svg)
        assert len(set(re.findall(r'id="series-(\d+)', svg))) == len(data.series)
    assert not list((tmp_path / "plots").glob("fig5*"))
    assert _png_dpi((tmp_path / "plots" / "delta.png").read_bytes()) == 300  # the paired view's figure too
    assert len(draw(by_name["fig3"]).axes[0].containers) == 4  # one error-bar container per line


def test_report_is_one_valid_html_file_with_every_table(study, cli):
    out = cli("report", study.dir)
    assert out.returncode == 0, out.stderr
    text = (study.dir / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    root = ET.fromstring(text.split("\n", 1)[1])  # well-formed: parses as XML
    views = {v.name: v for v in build_views(collect(study), ALL, explicit=False)}
    assert set(views) == {"cells", "table1", "table2", "compare", "paired", "incomplete"}
    # the paper's tables first, the raw cells and unfinished tasks last, collapsed
    order = ["table2", "compare", "paired", "table1", "cells", "incomplete"]
    sections = [s.get("id") for s in root.findall("./body/section")]
    assert sections == order[:4] + ["figures", "learning-curves", "provenance"] + order[4:]
    assert [s.get("id") for s in root.findall("./body/section[details]")][-2:] == ["cells", "incomplete"]
    assert root.find("./body/section[@id='table2']/details") is None
    tables = root.findall(".//table")
    assert [t.find("caption").text for t in tables] == [views[n].title for n in order]
    for table, name in zip(tables, order):
        view = views[name]
        assert len(table.findall("./tbody/tr")) == len(view.rows)
        assert [th.text for th in table.findall("./thead/tr/th")] == [c.header for c in view.columns]
        # numeric headers are aligned with their numbers
        assert [th.get("class") == "num" for th in table.findall("./thead/tr/th")] == [c.numeric for c in view.columns]
    cells = {tuple(td.text for td in tr) for tr in tables[0].findall("./tbody/tr")}
    # two pairs, +5 and +4 points: Student's t with 1 df holds zero, so no best at 10/class
    assert ("10", "tied within noise: optimal (n6 h1 d10 f6), common (n7 h8 d30 f0)", "60.0 ± 0.0") in {c[:3] for c in cells}
    assert "td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }" in text
    figures = root.findall(".//figure")
    assert [f.get("id") for f in figures] == ["fig1", "fig2", "fig3", "fig4", "fig6", "delta", "curves"]
    assert all(f.find(f"{SVG}svg") is not None for f in figures)  # embedded, not linked
    # every caption says over how many splits (split 1 of n 3 at 25/class was cut: 1-2)
    captions = [f.find("figcaption").text for f in figures]
    assert "mean ± std over 1-2 splits" in captions[0] and "mean ± std over 2 splits" in captions[1]
    assert "mean paired difference over 1-2 pairs, 95 % interval" in captions[5]
    assert "src=" not in text and "href=\"http" not in text
    assert "pending" in root.find(".//ul[@id='summary']/li").text


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
    assert both["summary"]["notes"][0].startswith("36 tasks: 35 with results, 1 pending")
    bad = cli("collect", study.dir, "--view", "all", "--format", "csv", "--out", tmp_path / "x.csv")
    assert bad.returncode == 2 and "csv holds one view" in bad.stderr and not (tmp_path / "x.csv").exists()
    out = cli("collect", study.dir, "--view", "all", "--format", "json", "--out", tmp_path / "all.json")
    assert out.returncode == 0 and out.stdout == ""
    data = json.loads((tmp_path / "all.json").read_text())
    assert set(data["views"]) == {"cells", "table1", "table2", "compare", "paired", "incomplete"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".all.json")]  # no temporary left behind
    table = cli("collect", study.dir, "--view", "table2").stdout
    assert "Table 2" in table and "optimal" in table


# ---------------------------------------------------------------- issue #12: figures and report
@pytest.fixture
def wide(tmp_path):
    """Fig. 3's shape with more series than one axes holds: 5 sizes x d in {5, 30}, n 3 and 6
    at h 1, two splits (10 series)."""
    results = {}
    for s in (0, 1):
        for size in (10, 25, 50, 100, 250):
            for d in (5, 30):
                for n in (3, 6):
                    results[ft(s, size, n, h=1, d=d)] = 0.3 + 0.01 * n + 0.001 * size + 0.02 * s + (0.05 if d == 5 else 0)
    return write(tmp_path / "wide", results)


def test_a_crowded_figure_becomes_small_multiples_coloured_by_size(wide):
    from matplotlib.colors import to_hex

    from hpcxfer.collect.plotting import MAX_SERIES

    figures, _ = paper_figures(collect(wide).protocol_cells)
    fig3 = next(f for f in figures if f.name == "fig3")
    assert len(fig3.series) == 10 > MAX_SERIES
    fig = draw(fig3)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["10/class", "25/class", "50/class", "100/class", "250/class"]
    for ax in panels:
        lines = [c.lines[0] for c in ax.containers]
        assert len(lines) == 2  # d 5 and d 30
        assert len({to_hex(line.get_color()) for line in lines}) == 1  # one colour: the size's
        assert len({line.get_linestyle() for line in lines}) == 2  # a line style for each d
        # error bars shifted apart: the two lines' points are not at the same x
        xs = [list(line.get_xdata()) for line in lines]
        assert [b - a for a, b in zip(*xs)] == [1.0, 1.0]  # a third of the step between n 3 and 6
        assert [(a + b) / 2 for a, b in zip(*xs)] == [3, 6]
    assert len({to_hex(ax.containers[0].lines[0].get_color()) for ax in panels}) == 5  # every size its own colour
    # one legend, outside every panel
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in panels)
    assert legend.get_title().get_text() == "d"
    assert "mean ± std over 2 splits" in fig._suptitle.get_text()


def test_report_is_the_same_bytes_twice_with_unique_ids(wide, cli, tmp_path):
    from hpcxfer.collect.html import build_report

    for tp in wide.tasks_dir.iterdir():
        if (tp / "result.json").exists():
            os.utime(tp / "result.json", (1_600_000_000, 1_600_000_000))
    first = build_report(collect(wide), jobs=1)
    assert build_report(collect(wide), jobs=1) == first
    out = cli("report", wide.dir, "--out", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.html").read_text() == first
    # the date is the latest record's, not now
    assert "latest record 2020-09-13 12:26:40 UTC" in first
    ids = re.findall(r'\bid="([^"]+)"', first)
    assert len(ids) > 100 and len(ids) == len(set(ids))
    refs = set(re.findall(r'url\(#([^)]+)\)', first)) | set(re.findall(r'href="#([^"]+)"', first))
    assert refs and refs <= set(ids)  # every reference inside an SVG still finds its element
    ET.fromstring(first.split("\n", 1)[1])


def test_provenance_says_what_ran_where_and_what_it_cost(tmp_path):
    from hpcxfer.collect.html import build_report

    base = {"val_loss": 1.0, "train_loss": 0.5, "train_acc": 0.9, "epochs": 40, "restarts": 0,
            "versions": {"hpcxfer": "0.1.0", "torch": "2.4.0"}, "git_revision": "abc123"}
    v100 = {**base, "host": "gadi-gpu-v100-0001", "device": "cuda: Tesla V100-SXM2-32GB", "threads": 12,
            "deterministic": {"algorithms": False, "cudnn_benchmark": False, "cudnn_deterministic": False}}
    paths = write(tmp_path / "p", {
        # two members of one protocol group: one run of an hour, counted once
        ft(0, 10, 7): {**v100, "val_acc": 0.5, "wall_s": 3600.0, "group": "g-1"},
        ft(0, 10, 0): {**v100, "val_acc": 0.4, "wall_s": 3600.0, "group": "g-1"},
        ft(1, 10, 7): {**base, "val_acc": 0.5, "wall_s": 1800.0, "host": "dgx", "device": "cuda: NVIDIA A100-SXM4-80GB",
                       "threads": 16, "deterministic": {"algorithms": True, "cudnn_benchmark": False,
                                                        "cudnn_deterministic": True}},
        ft(1, 10, 0): {"val_acc": 0.4, "wall_s": 360.0},  # an old result: no environment at all
    })
    grid = tmp_path / "grid.yaml"
    grid.write_text("study: p  # the grid as written, comments & all\n")
    paths.study_json.write_text(json.dumps({"study": "p", "grids": [str(grid), str(tmp_path / "gone.yaml")]}))
    text = build_report(collect(paths), jobs=1)
    root = ET.fromstring(text.split("\n", 1)[1])
    grids = root.findall(".//section[@id='provenance']/details")
    assert [d.find("summary").text for d in grids] == [f"grid {tmp_path / 'gone.yaml'}", f"grid {grid}"]
    assert grids[1].find("pre").text == grid.read_text() and grids[0].find("pre") is None
    facts = dict(zip([dt.text for dt in root.iter("dt")], [dd.text for dd in root.iter("dd")]))
    # the two synthetic pre-trainings (collect_study.write): host "synthetic", no threads, 150 s each
    assert facts["CPU threads"] == "not recorded (3 tasks); 12 (2 tasks); 16 (1 task)"
    assert facts["deterministic settings"] == (
        "not recorded (3 tasks); algorithms off, cudnn_benchmark off, cudnn_deterministic off (2 tasks); "
        "algorithms on, cudnn_benchmark off, cudnn_deterministic on (1 task)")
    assert facts["hosts"] == "gadi-gpu-v100-0001 (2 tasks); synthetic (2 tasks); dgx (1 task); not recorded (1 task)"
    assert facts["git revision"] == "abc123 (3 tasks); not a checkout (2 tasks); not recorded (1 task)"
    assert facts["versions"] == "hpcxfer 0.1.0, torch 2.4.0 (3 tasks); not recorded (3 tasks)"
    assert facts["runs"].startswith("5 (6 results")
    # 1 h on a V100 (gpuvolta: 12 CPUs x 3.0 SU) + 0.5 h on an A100 (dgxa100: 16 x 4.5 SU)
    assert facts["GPU-hours"].startswith("1.500 (")
    assert facts["SU"].startswith(f"{1 * 36 + 0.5 * 72:.1f} at Gadi's rates")
    assert facts["wall time"] == f"{(3600 + 1800 + 360 + 2 * 150) / 3600:.3f} h summed over runs"


def test_delta_figure_is_the_paired_view(study):
    from hpcxfer.collect.figures import delta_figure
    from hpcxfer.collect.paired import paired_rows

    records = collect(study).records
    rows = paired_rows(records, "common")
    data = delta_figure(rows)
    at10 = {se.label: se for se in data.series if se.size == 10}
    for r in (r for r in rows if r["examples_per_class"] == 10 and r["mean_diff"] is not None):
        se = at10[r["protocol"]]
        assert se.mean == [pytest.approx(r["mean_diff"] * 100)] and se.n == [r["pairs"]]
        if r["ci_low"] is not None:
            assert (se.low, se.high) == ([pytest.approx(r["ci_low"] * 100)], [pytest.approx(r["ci_high"] * 100)])
    assert "common (n7 h8 d30 f0)" not in at10  # the reference is the zero line, not a point
    fig = draw(data)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["10/class", "25/class"]


def test_captions_count_splits_and_seeds_where_a_study_has_several(tmp_path):
    """Two splits x two seeds are four replicates, not four splits: every caption says so."""
    from hpcxfer.collect.figures import study_figures
    from hpcxfer.collect.html import build_report

    acc = {(0, 0): 0.60, (0, 1): 0.62, (1, 0): 0.70, (1, 1): 0.66}
    results = {ft(s, 10, n, seed=seed): a + n / 100 for (s, seed), a in acc.items() for n in (0, 3, 7)}
    results.update({ft(s, 25, n, seed=seed): a + 0.1 for (s, seed), a in acc.items() for n in (0, 3, 7)})
    paths = write(tmp_path / "s", results)
    figures, _ = study_figures(collect(paths))
    captions = {f.name: f.caption for f in figures}
    html = build_report(collect(paths))
    assert "Learning curves: validation accuracy by epoch; mean ± std over 4 replicates (2 splits x 2 seeds)" in html
    assert "mean ± std over 4 replicates (2 splits x 2 seeds)" in captions["fig1"]
    assert "mean paired difference over 4 pairs (2 splits x 2 seeds), 95 % interval" in captions["delta"]
    assert all("4 splits" not in c for c in captions.values())


# ---------------------------------------------------------------- what the report says is what it shows
@pytest.fixture
def three(tmp_path):
    """Two splits at 10 and 25/class: scratch, common, and n3, n5, n6 (h 8), whose order by
    difference from scratch flips between the sizes; no optimal protocol."""
    results = {}
    for s in (0, 1):
        for size, step in ((10, 0.02), (25, -0.03)):
            results[ft(s, size, 0)] = 0.4 + 0.01 * s
            results[ft(s, size, 7)] = 0.5 + 0.01 * s
            for i, n in enumerate((3, 5, 6)):
                results[ft(s, size, n)] = 0.5 + step * i + 0.013 * s
    return write(tmp_path / "three", results)


def test_report_ref_chooses_the_reference_and_refuses_an_unknown_one(three, cli, tmp_path):
    out = cli("report", three.dir, "--ref", "scratch", "--out", tmp_path / "r.html")
    assert out.returncode == 0, out.stderr
    root = ET.fromstring((tmp_path / "r.html").read_text().split("\n", 1)[1])
    assert root.find(".//section[@id='paired']//caption").text == "Paired differences from scratch, per size"
    caption = root.find(".//figure[@id='delta']/figcaption").text
    assert caption.startswith("Difference from scratch (n0 h8 d30 f0) by size")
    common = {tuple(td.text for td in tr)[:2] for tr in root.findall(".//section[@id='paired']//tbody/tr")}
    assert ("10", "common (n7 h8 d30 f0)") in common
    default = cli("report", three.dir, "--out", tmp_path / "d.html")
    assert default.returncode == 0 and "Paired differences from common, per size" in (tmp_path / "d.html").read_text()
    bad = cli("report", three.dir, "--ref", "n9 h8 d30 f0", "--out", tmp_path / "bad.html")
    assert bad.returncode == 2 and not (tmp_path / "bad.html").exists()
    (line,) = bad.stderr.strip().splitlines()
    assert "--ref" in line and "'n9 h8 d30 f0'" in line


def test_fig6_is_titled_with_what_it_draws(three, study):
    figures, _ = paper_figures(collect(three).protocol_cells)
    fig6 = next(f for f in figures if f.name == "fig6")
    assert [se.label for se in fig6.series] == ["scratch", "common"]
    assert fig6.spec.title == "Fig. 6: common vs scratch"
    assert draw(fig6)._suptitle.get_text().startswith("Fig. 6: common vs scratch; mean ± std over 2 splits")
    full = next(f for f in paper_figures(collect(study).protocol_cells)[0] if f.name == "fig6")
    assert full.spec.title == "Fig. 6: optimal vs common vs scratch"  # all three drawn: all three named


def test_sparse_learning_curves_mark_each_evaluation(tmp_path):
    from hpcxfer.collect.figures import curve_figure
    from hpcxfer.collect.metrics import merge_metrics
    from hpcxfer.collect.plotting import SPARSE

    def lines(records: int) -> list:
        paths = write(tmp_path / f"r{records}", {ft(0, 10, 7): 0.5, ft(0, 10, 0): 0.4}, records=records)
        fig = draw(curve_figure(merge_metrics(read_study(paths), jobs=1)))
        return [line for ax in fig.axes for line in ax.get_lines()]

    sparse = lines(2)
    assert len(sparse) == 2 and all(len(line.get_xdata()) == 2 for line in sparse)
    assert all(line.get_marker() not in (None, "None", "", " ") for line in sparse)
    dense = lines(SPARSE + 3)
    assert dense and all(line.get_marker() in (None, "None", "", " ") for line in dense)


def test_delta_figure_keeps_one_order_in_every_panel(three):
    from hpcxfer.collect.figures import delta_figure
    from hpcxfer.collect.paired import paired_rows

    data = delta_figure(paired_rows(read_study(three), "scratch"))
    fig = draw(data)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    orders = [[t.get_text().rsplit(" (", 1)[0] for t in ax.get_yticklabels()][::-1] for ax in panels]  # top first
    # common (named) first, then by the mean difference over both sizes (n3 +10.2, n5 +9.7,
    # n6 +9.2 points), though at 10/class n6 leads n5 and n3 and at 25/class trails them
    assert orders == [[COMMON_LABEL, "n3 h8 d30 f0", "n5 h8 d30 f0", "n6 h8 d30 f0"]] * 2


def test_report_tables_wrap_or_scroll_and_empty_views_are_a_line(tmp_path):
    from hpcxfer.collect.html import build_report

    paths = write(tmp_path / "s", {ft(0, 10, 5): 0.5, ft(1, 10, 5): 0.6, ft(0, 10, 3): 0.4, ft(1, 10, 3): 0.3})
    text = build_report(collect(paths), jobs=1)
    root = ET.fromstring(text.split("\n", 1)[1])
    assert "div.scroll { overflow-x: auto; max-width: 100%; }" in text
    assert re.search(r"\bth \{[^}]*white-space: normal", text)
    tables = root.findall(".//table")
    assert tables and len(root.findall(".//div[@class='scroll']/table")) == len(tables)
    assert all(t.findall("./tbody/tr") for t in tables)  # no empty table
    # neither common nor scratch: the paired view has no row, and says so in one line
    paired = root.find(".//section[@id='paired']")
    assert paired.find(".//table") is None
    (line,) = paired.findall("p[@class='empty']")
    assert "".join(line.itertext()).startswith("Paired differences from a reference protocol: difference = protocol")
