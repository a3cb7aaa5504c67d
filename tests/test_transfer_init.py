"""`hpcxfer init dissimilar`: the grid files with their data path made absolute, and the
digits written as a class-folder tree that the grid reads from any folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from hpcxfer.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[1]


def test_init_dissimilar_writes_its_grids_and_a_digits_tree(cli, tmp_path):
    out = cli("init", "dissimilar", tmp_path / "ex", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1797 images" in out.stdout
    digits = tmp_path / "ex" / "digits"
    counts = {part: {c.name: len(list(c.iterdir())) for c in (digits / part).iterdir()} for part in ("train", "val")}
    assert sorted(counts["val"]) == [str(d) for d in range(10)] and set(counts["val"].values()) == {50}
    assert sum(counts["train"].values()) + 500 == 1797
    grid = yaml.safe_load((tmp_path / "ex" / "dissimilar.yaml").read_text())
    assert grid["target"]["path"] == str(digits) and grid["source"] == {"dataset": "fashion-mnist"}
    shipped = (ROOT / "jobs" / "dissimilar.yaml").read_text()
    assert yaml.safe_load(shipped)["target"]["path"] == "digits"
    for name, arch, n in (("dissimilar.yaml", "resnet-narrow", 5), ("dissimilar-alexnet.yaml", "alexnet-narrow", 7)):
        tasks = expand(load_grid(tmp_path / "ex" / name))
        assert {t.arch for t in tasks} == {arch} and len(tasks) == 13
        assert {t.transfer_layers for t in tasks if t.stage == "finetune"} == {0, n}
    again = cli("init", "dissimilar", tmp_path / "ex")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    forced = cli("init", "dissimilar", tmp_path / "ex", "--force")
    assert forced.returncode == 0 and "kept" in forced.stdout
