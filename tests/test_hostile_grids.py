"""Hostile grid files: whatever a grid holds, `plan` and `submit` end with one line naming
the file (and the field), exit status 2, no traceback, and nothing written.

Each case runs `plan` and `submit --dry-run` in process (`hpcxfer.cli.main`, fast); a few
run through the real command line too. The printed line's markup is not what is tested
here (the CLI prints it as plain text); its text is.
"""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from conftest import TINY_GRID, merge
from hpcxfer import cli
from hpcxfer.errors import ConfigError
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.limits import MAX_GRID_BYTES, MAX_SEED, MAX_SPLIT, MAX_TASKS

ROOT = Path(__file__).resolve().parents[1]
BIG = 10**400  # 401 digits


def over(overrides: dict, *words: str):
    """A case: TINY_GRID with `overrides` merged in (None deletes a key)."""
    return ("over", overrides, words)


def text(extra: str, *words: str, base: bool = True, dup: bool = False):
    """A case: YAML text after the valid grid, less the top-level keys `extra` sets (all of
    it with dup=True; none with base=False)."""
    return ("text", (extra, base, dup), words)


def raw(data: bytes, *words: str):
    return ("bytes", data, words)


def made(make, *words: str):
    """A case: make(tmp_path) -> (grid path, file the error must name)."""
    return ("made", make, words)


def bomb(levels: int = 9, width: int = 9) -> str:
    """A billion laughs: each anchor a list of `width` uses of the one before."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines)


def _extends(tmp: Path, files: dict[str, str], main: str = "grid.yaml", named: str | None = None):
    for name, body in files.items():
        (tmp / name).write_text(body, encoding="utf-8")
    return tmp / main, tmp / (named or main)


def _chain(tmp: Path, n: int):
    """g0 extends g1 extends ... g{n}: the file that reaches the 65th names it."""
    for i in range(n):
        (tmp / f"g{i}.yaml").write_text(f"extends: g{i + 1}.yaml\n")
    (tmp / f"g{n}.yaml").write_text("study: x\n")
    return tmp / "g0.yaml", tmp / "g64.yaml"


def _fifo(tmp: Path):
    os.mkfifo(tmp / "pipe.yaml")
    return tmp / "pipe.yaml", tmp / "pipe.yaml"


def _link_to_zero(tmp: Path):
    (tmp / "zero.yaml").symlink_to("/dev/zero")
    return tmp / "zero.yaml", tmp / "zero.yaml"


def _directory(tmp: Path):
    (tmp / "dir.yaml").mkdir()
    return tmp / "dir.yaml", tmp / "dir.yaml"


VALID = yaml.safe_dump(TINY_GRID, sort_keys=False)
BASE_BAD = yaml.safe_dump({**TINY_GRID, "pretrain": {"lr": -1}})

#: id -> case. Every one must end in exit 2 and one line naming its file.
CASES = {
    # ---- wrong types
    "study-int": over({"study": 5}, "study", "valid string"),
    "study-list": over({"study": ["a"]}, "study"),
    "study-null": text("study: null\n", "study", base=False),
    "data-string": over({"data": "fashion-mnist"}, "data", "expected a mapping"),
    "dataset-int": over({"data": {"dataset": 5}}, "data.dataset"),
    "finetune-list": over({"finetune": []}, "finetune", "expected a mapping"),
    "epochs-string": over({"finetune": {"epochs": "3"}}, "finetune.epochs", "not an integer"),
    "epochs-float": over({"finetune": {"epochs": 3.0}}, "finetune.epochs", "not an integer"),
    "epochs-bool": over({"finetune": {"epochs": True}}, "finetune.epochs", "not an integer"),
    "pretrain-epochs-bool": over({"pretrain": {"epochs": True}}, "pretrain.epochs", "valid integer"),
    "pretrain-epochs-string": over({"pretrain": {"epochs": "2"}}, "pretrain.epochs", "valid integer"),
    "pretrain-lr-string": over({"pretrain": {"lr": "0.01"}}, "pretrain.lr", "valid number"),
    "pretrain-lr-bool": over({"pretrain": {"lr": True}}, "pretrain.lr", "valid number"),
    "pretrain-size-bool": over({"pretrain": {"examples_per_class": True}}, "pretrain.examples_per_class"),
    "bool-as-string": over({"runtime": {"keep_checkpoints": "yes"}}, "runtime.keep_checkpoints"),
    "bool-as-int": over({"runtime": {"keep_checkpoints": 1}}, "runtime.keep_checkpoints"),
    "amp-on": text("runtime: {amp: on}", "runtime.amp", "'on'"),  # a word, and not one amp takes
    "bool-as-word": text("runtime: {compile: sometimes}", "runtime.compile", "'sometimes'"),
    "cpus-float": over({"resources": {"cpus": 1.5}}, "resources.cpus"),
    "negative-parallel": over({"local": {"max_parallel": -1}}, "local.max_parallel"),
    "experiments-mapping": over({"experiments": {"name": "x"}}, "experiments"),
    "experiments-int": over({"experiments": [5]}, "experiments[0]", "expected a mapping"),
    "experiments-nested": over({"experiments": [[{"protocol": "common"}]]}, "experiments[0]"),
    "experiments-empty": over({"experiments": []}, "experiments"),
    "seed-nested-list": over({"finetune": {"seed": [[0, 1]]}}, "finetune.seed", "not an integer"),
    "split-nested-list": over({"finetune": {"split": [0, [1]]}}, "finetune.split"),
    "rate-string-item": over({"finetune": {"lr_high": [0.1, "x"]}}, "finetune.lr_high", "not a number"),
    "protocol-empty": over({"experiments": [{"protocol": []}]}, "experiments[0].protocol", "empty list"),
    "protocol-int": over({"experiments": [{"protocol": [1]}]}, "experiments[0].protocol", "not a named"),
    "sizes-empty": over({"finetune": {"examples_per_class": []}}, "finetune.examples_per_class", "empty"),
    "layers-bool": over({"experiments": [{"transfer_layers": [True]}]}, "transfer_layers", "not an integer"),
    "momentum-one": over({"finetune": {"momentum": [1.0]}}, "finetune.momentum", "out of range"),
    "extends-int": text("extends: 5\n", "extends"),
    "extends-empty-list": text("extends: []\n", "extends"),
    "date-as-study": text("study: 2020-01-01\n", "study", base=False),
    "binary-as-study": text("study: !!binary aGVsbG8=\n", "study", base=False),
    "set-as-value": text("study: !!set {a, b}\n", "study", base=False),
    # ---- numbers too large, negative, not finite
    "huge-int-epochs": over({"finetune": {"epochs": BIG}}, "finetune.epochs", "out of range"),
    "huge-int-pretrain": over({"pretrain": {"epochs": BIG}}, "pretrain.epochs", "out of range"),
    "huge-int-rate": over({"finetune": {"lr_high": BIG}}, "finetune.lr_high", "out of range"),
    "huge-int-float-field": over({"pretrain": {"lr": BIG}}, "pretrain.lr", "out of range"),
    "huge-int-deep": over({"cost": {"devices": {"x": {"train": -BIG}}}}, "cost.devices.x.train"),
    "float-overflow": text("resources: {mem_gb: 1.0e+400}\n", "resources.mem_gb", "finite"),
    "seed-2-64": over({"finetune": {"seed": 2**64}}, "finetune.seed", "out of range"),
    "seed-above-max": over({"finetune": {"seed": [0, MAX_SEED + 1]}}, "finetune.seed", "out of range"),
    "split-2-32": over({"finetune": {"split": 2**32}}, "finetune.split", "out of range"),
    "pretrain-seed-above-max": over({"pretrain": {"seed": MAX_SEED + 1}}, "pretrain.seed"),
    "size-huge": over({"finetune": {"examples_per_class": 10**10}}, "finetune.examples_per_class"),
    "walltime-digits": over({"resources": {"time": "9" * 40}}, "resources.time"),
    "gadi-walltime-digits": over({"gadi": {"walltime": "9" * 40 + ":00:00"}}, "gadi.walltime"),
    "signal-delay-huge": over({"slurm": {"signal_delay": 10**7}}, "slurm.signal_delay"),
    "batch-negative": over({"finetune": {"batch_size": -5}}, "finetune.batch_size", "out of range"),
    "pretrain-batch-zero": over({"pretrain": {"batch_size": 0}}, "pretrain.batch_size"),
    "train-images-huge": over({"cost": {"train_images": 10**13}}, "cost.train_images"),
    "lr-inf": text("pretrain: {lr: .inf}\n", "pretrain.lr", "finite"),
    "lr-nan": text("pretrain: {lr: .nan}\n", "pretrain.lr", "finite"),
    "rate-minus-inf": text("finetune: {lr_high: [-.inf], epochs: 3}\n", "finetune.lr_high", "finite"),
    "decay-nan": text("finetune: {weight_decay: .NaN, epochs: 3}\n", "finetune.weight_decay"),
    "minutes-inf": text("runtime: {checkpoint_minutes: .inf}\n", "runtime.checkpoint_minutes"),
    "device-speed-inf": text("cost: {devices: {v100: {train: .inf}}}\n", "cost.devices.v100.train"),
    # ---- too many tasks (counted, never built)
    "tasks-product": over({"finetune": {"seed": list(range(10_000)), "lr_high": [0.1] * 100},
                           "experiments": None}, "finetune", f"at most {MAX_TASKS:,}"),
    "tasks-experiments": over({"experiments": [{"seed": list(range(10_000)), "lr_low": [0.1] * 6}] * 2},
                              "experiments[0]", "expands to 120,001 tasks"),
    "list-too-long": over({"finetune": {"seed": list(range(20_000))}}, "finetune.seed", "items"),
    # ---- keys: not strings, twice, structured
    "list-key": text("? [a, b]\n: 1\n", "a list or a mapping as a key", base=False),
    "mapping-key": text("? {a: 1}\n: 1\n", "a list or a mapping as a key"),
    "int-key": text("1: x\n", "key 1 is not a string"),
    "null-key": text("null: x\n", "key None is not a string"),
    "bool-key-nested": text("finetune: {true: 1, epochs: 3}\n", "finetune", "key True is not a string"),
    "int-key-devices": text("cost: {devices: {5: {train: 1}}}\n", "cost.devices"),
    "duplicate-key": text("study: again\n", "study", "given twice", dup=True),
    "duplicate-nested": text("local: {max_parallel: 1, max_parallel: 2}\n", "max_parallel", "given twice"),
    "merge-not-mapping": text("local: {<<: 5}\n", "not valid YAML"),
    "undefined-alias": text("arch: *nowhere\n", "not valid YAML"),
    "two-documents": text("---\nstudy: b\n", "not valid YAML", dup=True),
    "python-tag": text("x: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    "bad-indent": text("pbs:\n\tqueue: x\n", "not valid YAML"),
    # ---- control characters, unicode, markup
    "study-line-separator": over({"study": "a\u2028b"}, "study"),
    "root-newline": over({"root": "runs/x\ntouch pwned #"}, "root", "U+000A"),
    "root-carriage-return": over({"root": "runs/x\rtouch pwned"}, "root", "U+000D"),
    "root-line-separator": over({"root": "runs/x\u2028touch pwned"}, "root", "U+2028"),
    "root-paragraph-separator": over({"root": "runs/x\u2029y"}, "root", "U+2029"),
    "root-nel": over({"root": "runs/x\x85y"}, "root", "U+0085"),
    "root-del": over({"root": "runs/x\x7fy"}, "root", "U+007F"),
    "root-nul": text('root: "runs/\\0x"\n', "root", "U+0000"),
    "root-surrogate": text('root: "runs/\\udc80"\n'),  # libyaml refuses it; PyYAML's parser: root
    "path-newline": over({"data": {"dataset": "fashion-mnist", "path": "/data\nrm -rf /"}}, "data.path"),
    "index-cache-tab": over({"data": {"dataset": "folders", "index_cache": "a\tb"}}, "data.index_cache"),
    "experiment-name-newline": over({"experiments": [{"name": "a\nb", "protocol": "common"}]},
                                    "experiments[0].name"),
    "partition-newline": over({"slurm": {"partition": "debug\ntouch pwned"}}, "slurm.partition"),
    "queue-nul": text('pbs: {queue: "q\\0"}\n', "pbs.queue"),
    "key-newline": text('"a\\nb": 1\n', "U+000A"),
    "key-unicode": text("étude: x\n", "unknown key 'étude'"),
    "study-emoji": over({"study": "\U0001f642"}, "study"),
    "raw-control-byte": raw(VALID.encode() + b"x: \x01\n", "not valid YAML"),
    "markup-close-key": text("'[/red]': 1\n", "unknown key '[/red]'"),
    "markup-open-key": text("'[bold]x': 1\n", "unknown key '[bold]x'"),
    "markup-link-key": text("finetune: {'[link=x]y[/link]': 1, epochs: 3}\n", "[link=x]y[/link]"),
    "markup-study": over({"study": "[red]x"}, "study", "pattern"),
    "markup-dataset": over({"data": {"dataset": "[/bold]"}}, "data.dataset", "[/bold]"),
    # ---- anchors and aliases
    "alias-bomb-unknown-key": text(bomb(), "values (aliases count at each use)", base=False),
    "alias-bomb-seed": text(bomb() + "\nfinetune: {seed: *a8}\n", "aliases", base=False),
    "alias-bomb-experiments": text("experiments: [&e {seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}, "
                                   + ", ".join(["*e"] * 9_999) + "]\n", "values"),
    "alias-recursive": text("y: &y [*y]\n", "nested more than"),
    "deep-nesting-flow": text("x: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    "deep-nesting-tree": text("x: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "nested more than 32"),
    # ---- long strings
    "study-300-chars": over({"study": "s" * 300}, "study", "at most 100"),
    "experiment-name-long": over({"experiments": [{"name": "n" * 10_000, "protocol": "common"}]},
                                 "experiments[0].name"),
    "root-component-long": over({"root": "r" * 300}, "root", "255 bytes"),
    "key-long": text("? " + "k" * 5000 + "\n: 1\n", "at most 4096"),
    "path-long": over({"data": {"dataset": "fashion-mnist", "path": "/p" * 3000}}, "data.path"),
    # ---- the file itself
    "empty-file": raw(b"", "YAML mapping"),
    "only-comments": raw(b"# nothing\n", "YAML mapping"),
    "scalar-document": raw(b"hello\n", "YAML mapping"),
    "list-document": raw(b"- a\n- b\n", "YAML mapping"),
    "not-utf8": raw(b"study: caf\xe9\n", "not UTF-8"),
    "utf16-with-bom": raw("study: x\n".encode("utf-16"), "not UTF-8"),
    "bom-then-bad": raw(b"\xef\xbb\xbfstudy: [\n", "not valid YAML"),
    "too-large": raw(b"# " + b"x" * MAX_GRID_BYTES + b"\n", f"at most {MAX_GRID_BYTES}"),
    "directory": made(_directory, "a directory"),
    "dev-zero": made(lambda tmp: (Path("/dev/zero"), Path("/dev/zero")), "not a regular file"),
    "symlink-to-dev-zero": made(_link_to_zero, "not a regular file"),
    "fifo": made(_fifo, "not a regular file"),
    "missing": made(lambda tmp: (tmp / "missing.yaml", tmp / "missing.yaml"), "no such grid file"),
    # ---- extends
    "extends-cycle": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: b.yaml\n",
                                                     "b.yaml": "extends: grid.yaml\n"}, named="b.yaml"), "cycle"),
    "extends-self": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: grid.yaml\n"}), "cycle"),
    "extends-missing": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: nope.yaml\n"}), "no such grid file"),
    "extends-directory": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: ..\n"}), "not a regular file"),
    "extends-dev-zero": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: /dev/zero\n"}), "not a regular"),
    "extends-newline": made(lambda tmp: _extends(tmp, {"grid.yaml": 'extends: "b\\n.yaml"\n'}), "extends"),
    "extends-bad-base": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: b.yaml\nstudy: y\n",
                                                        "b.yaml": BASE_BAD}, named="b.yaml"), "pretrain.lr"),
    "extends-bad-yaml-base": made(lambda tmp: _extends(tmp, {"grid.yaml": "extends: b.yaml\n",
                                                             "b.yaml": "study: [\n"}, named="b.yaml"), "YAML"),
    "extends-chain-too-long": made(lambda tmp: _chain(tmp, 80), "extends", "more than 64 grid files"),
}


@pytest.fixture
def run(monkeypatch, capsys):
    """run(*argv) -> (exit status, stderr lines, stdout): `hpcxfer.cli.main` in process."""
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, markup=False, highlight=False, emoji=False,
                                                    soft_wrap=True), raising=False)

    def _run(*argv) -> tuple[int, list[str], str]:
        code = cli.main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, [line for line in out.err.splitlines() if line.strip()], out.out

    return _run


def write_case(kind: str, payload, tmp: Path) -> tuple[Path, Path]:
    """(grid path to run, the file the error must name)."""
    path = tmp / "grid.yaml"
    if kind == "over":
        path.write_text(yaml.safe_dump(merge(merge(TINY_GRID, {"root": str(tmp / "runs")}), payload),
                                       sort_keys=False, allow_unicode=False))
    elif kind == "text":
        extra, base, dup = payload
        grid = merge(TINY_GRID, {"root": str(tmp / "runs")}) if base else {}
        if not dup:
            grid = {k: v for k, v in grid.items() if not re.search(rf"^{re.escape(k)}:", extra, re.M)}
        path.write_text((yaml.safe_dump(grid, sort_keys=False) if grid else "") + extra, encoding="utf-8")
    elif kind == "bytes":
        path.write_bytes(payload)
    else:
        path, named = payload(tmp)
        return path, named
    return path, path


def files_under(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_grid_is_one_line_exit_2_and_writes_nothing(case, run, tmp_path, monkeypatch):
    kind, payload, words = CASES[case]
    monkeypatch.chdir(tmp_path)  # a relative root, if one got through, would land here
    grid, named = write_case(kind, payload, tmp_path)
    before = files_under(tmp_path)
    started = time.monotonic()
    for argv in (["plan", grid], ["submit", grid, "--backend", "local", "--dry-run"]):
        code, err, _ = run(*argv)
        assert code == 2, (argv, err)
        assert len(err) == 1, err
        line = err[0]
        assert str(named) in line, line
        for w in words:
            assert w in line, (w, line)
        assert "Traceback" not in line
    assert files_under(tmp_path) == before
    assert time.monotonic() - started < 10, "a hostile grid must be refused quickly"


def test_every_case_fails_in_the_library_too_with_the_same_one_line(tmp_path):
    """The ConfigError itself (what any front end prints) carries the file and is one line."""
    for case, (kind, payload, _) in CASES.items():
        sub = tmp_path / re.sub(r"\W", "_", case)
        sub.mkdir()
        grid, named = write_case(kind, payload, sub)
        with pytest.raises(ConfigError) as err:
            expand(load_grid(grid))
        assert str(named) in str(err.value) and "\n" not in str(err.value), (case, str(err.value))


def test_the_readme_states_the_number_of_cases():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"(\d+) hostile grids\s+\(tests/test_hostile_grids\.py\)", readme)
    assert m and int(m.group(1)) == len(CASES), f"README must say {len(CASES)} hostile grids"


@pytest.mark.parametrize("case, command", [
    ("huge-int-epochs", "plan"), ("list-key", "plan"), ("alias-bomb-seed", "plan"), ("dev-zero", "plan"),
    ("lr-inf", "plan"), ("extends-cycle", "plan"), ("root-newline", "submit"), ("protocol-empty", "submit"),
])
def test_through_the_real_command_line(case, command, cli, tmp_path):
    kind, payload, words = CASES[case]
    grid, named = write_case(kind, payload, tmp_path)
    before = files_under(tmp_path)
    argv = ["plan", grid] if command == "plan" else ["submit", grid, "--backend", "local", "--dry-run"]
    out = cli(*argv, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert str(named) in lines[0] and "Traceback" not in out.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert files_under(tmp_path) == before


def test_an_alias_bomb_is_refused_fast_and_small(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(levels=12, width=12) + "\nstudy: x\nfinetune: {seed: *a11}\n")  # 12**12 leaves
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError, match="values"):
        load_grid(path)
    assert time.monotonic() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB


def test_task_count_is_checked_before_any_task_is_built(tmp_path):
    path = tmp_path / "g.yaml"
    grid = merge(TINY_GRID, {"finetune": {"seed": list(range(10_000)), "lr_high": [0.1 * i for i in range(1, 101)],
                                          "lr_low": [0.01 * i for i in range(1, 101)]}, "experiments": None})
    path.write_text(yaml.safe_dump(grid))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"expands to 100,000,001 tasks"):
        expand(load_grid(path))
    assert time.monotonic() - started < 5


def test_limits_allow_what_real_grids_use(tmp_path):
    """The bounds refuse nothing a study needs: the largest split and seed, a byte-order
    mark, anchors and merge keys, unicode and brackets in names, `%` in the root, and
    every shipped job file."""
    path = tmp_path / "ok.yaml"
    body = f"""\ufeffstudy: edge
root: {tmp_path / "r u n s 50%x"}
data: {{dataset: fashion-mnist}}
pretrain: {{seed: {MAX_SEED}}}
finetune: {{epochs: &three 3, batch_size: *three, split: [0, {MAX_SPLIT}], seed: [0, {MAX_SEED}]}}
runtime: {{<<: {{eval_every: 2}}, threads: 1}}
experiments: [{{name: "étude [bold] n° 1 [/red]", protocol: [common]}}]
"""
    path.write_text(body, encoding="utf-8")
    grid = load_grid(path)
    tasks = expand(grid)
    assert {t.split for t in tasks} == {0, MAX_SPLIT} and {t.seed for t in tasks} == {0, MAX_SEED}
    assert grid.finetune.batch_size == [3] and grid.runtime.eval_every == 2
    for job in sorted((ROOT / "jobs").rglob("*.yaml")):
        expand(load_grid(job))


def test_the_extreme_split_and_seed_run_through_the_code_that_uses_them():
    """Bounds checked against numpy and torch, not assumed."""
    import torch

    from hpcxfer.data import class_split
    from hpcxfer.worker.learners import PRETRAIN_SEED_OFFSET

    source, target = class_split(1000, MAX_SPLIT)
    assert len(source) == len(target) == 500 and not set(source) & set(target)
    with pytest.raises(ValueError):
        class_split(10, MAX_SPLIT + 1)  # what the bound keeps out
    gen = torch.Generator().manual_seed(MAX_SEED)
    assert torch.randperm(10, generator=gen).tolist() == torch.randperm(
        10, generator=torch.Generator().manual_seed(MAX_SEED)).tolist()
    torch.manual_seed(MAX_SEED + PRETRAIN_SEED_OFFSET)  # init_seed of a pre-training task
    assert MAX_SEED + PRETRAIN_SEED_OFFSET < 2**63


@pytest.mark.parametrize("root, words", [
    ("", "empty"),
    ("/".join(["d" * 100] * 40), "at most 3800"),
    ("r" * 256, "255 bytes"),
    ("runs/\u2028x", "U+2028"),
    ("runs/\udcff", "not UTF-8"),  # a byte that is not UTF-8, as Python passes it on from argv
])
def test_bad_root_options_are_refused_before_anything_is_written(root, words, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid, _ = write_case("over", {}, tmp_path)
    before = files_under(tmp_path)
    code, err, _ = run("submit", grid, "--backend", "local", "--dry-run", f"--root={root}")
    assert code == 2 and len(err) == 1 and "--root" in err[0] and words in err[0], err
    assert files_under(tmp_path) == before


def test_a_relative_root_under_a_folder_with_a_line_break_is_refused(run, tmp_path, monkeypatch):
    """The current folder is part of the study directory's path, and so of the scripts."""
    odd = tmp_path / "a\nb"
    odd.mkdir()
    monkeypatch.chdir(odd)
    grid, _ = write_case("over", {"root": "runs"}, tmp_path)
    code, err, _ = run("submit", grid, "--backend", "local", "--dry-run")
    assert code == 2 and len(err) == 1 and f"{grid}: root" in err[0] and "U+000A" in err[0], err
    assert list(odd.iterdir()) == []


# ---------------------------------------------------------------- YAML's words, and paths
def test_the_readmes_own_off_spellings_are_accepted(tmp_path):
    """YAML 1.1 reads a plain `off` as false; the settings that take the word get the word,
    and a bool setting still reads off/on/yes/no: the README's own lines, as written."""
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"^ +(\w+): (off|on|yes|no) .*$", readme, flags=re.M)
    assert {"amp", "decode_cache", "compile"} <= {k for k, _ in lines}, lines
    body = "".join(f"  {key}: {word}\n" for key, word in lines)
    rest = yaml.safe_dump(merge(TINY_GRID, {"runtime": None, "root": str(tmp_path)}), sort_keys=False)
    (tmp_path / "g.yaml").write_text(rest + "runtime:\n" + body)
    runtime = load_grid(tmp_path / "g.yaml").runtime
    assert runtime.amp == "off" and runtime.decode_cache == "off" and runtime.compile is False


def test_a_quoted_word_is_never_a_bool(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(merge(TINY_GRID, {"runtime": {"compile": "off"}})))
    with pytest.raises(ConfigError, match="runtime.compile"):
        load_grid(tmp_path / "g.yaml")


def test_data_path_is_relative_to_the_grid_file_that_gives_it(tmp_path, monkeypatch):
    """As `extends` is: whatever folder hpcxfer runs in, and in a base file, its folder.
    The path is no part of a task's identity: the ids are those of the grid without it."""
    grids = tmp_path / "grids"
    (grids / "exp").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    base = merge(TINY_GRID, {"data": {"path": "fm"}, "root": "runs"})
    (grids / "base.yaml").write_text(yaml.safe_dump(base))
    (grids / "exp" / "one.yaml").write_text("extends: ../base.yaml\n")
    (grids / "exp" / "own.yaml").write_text("extends: ../base.yaml\ndata: {path: ../data/fm}\n")
    (grids / "exp" / "abs.yaml").write_text("extends: ../base.yaml\ndata: {path: /srv/fm}\n")
    (grids / "none.yaml").write_text(yaml.safe_dump(merge(base, {"data": {"path": None}})))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_grid(grids / "exp" / "one.yaml").data.path == str(grids / "fm")
    assert load_grid(Path("../grids/base.yaml")).data.path == str(grids / "fm")
    assert load_grid(grids / "exp" / "own.yaml").data.path == str(grids / "data" / "fm")
    assert load_grid(grids / "exp" / "abs.yaml").data.path == "/srv/fm"
    ids = [t.task_id for t in expand(load_grid(grids / "none.yaml"))]
    assert [t.task_id for t in expand(load_grid(grids / "exp" / "one.yaml"))] == ids
