"""What a study will cost before it is submitted: images processed, GPU-hours, Gadi SU.

A task's time on one GPU is modelled as

    start-up + decode + epochs x train images / train rate + evaluations x val images / eval rate

A protocol group (hpcxfer/grid/groups.py) pays start-up and decoding once and the
training and evaluation arithmetic once per member; a streamed group's pass takes the
longer of its members' GPU work and one decode of the set, which they share.

Decoded images stay in GPU memory when they fit (`memory_gb` of the device): JPEGs are then
decoded once, by the job's CPUs. A set that does not fit is streamed (hpcxfer/worker/feed.py):

- its first pass decodes, by nvJPEG on the GPU when `runtime.gpu_decode` (the GPU decodes,
  then trains: the two rates add up serially) or by the job's CPUs (in parallel with the
  GPU: the slower of the two sets the pace);
- with `runtime.decode_cache` (default auto) that pass writes the decoded images to
  node-local disk and every later pass reads them back, at the slower of the GPU and the
  disk (`cache_read_mb_s` / bytes per image); with `off` every pass decodes again.

Rates are for AlexNet at 224 px; another architecture's rates scale by its speed relative
to AlexNet (ARCH_SPEED). SU (docs/design.md §4) = rate per CPU-hour x CPUs per GPU x
hours; a GPU's share of a node's memory is within its CPU share on every queue below, so
the CPU count decides.

Every figure in the tables says where it comes from; a grid's `cost:` section overrides
any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from hpcxfer.errors import ConfigError
from hpcxfer.grid.schema import FOLDER_DATASETS, Grid
from hpcxfer.grid.task import Task
from hpcxfer.sites import GADI_QUEUES, GPU_MEMORY_GB, Queue

if TYPE_CHECKING:
    from hpcxfer.grid.expansion import Expansion


class UnknownSize(ValueError):
    """The data set's size is needed for an estimate and not known."""


@dataclass(frozen=True)
class Device:
    train: float            # AlexNet training images/s (forward + backward + step)
    eval: float             # AlexNet evaluation images/s (forward only)
    decode_per_cpu: float   # JPEG decodes/s per CPU core (PIL, short side to 256)
    memory_gb: float        # decoded uint8 images a task may keep on the GPU
    source: str
    precision: str = "fp32"  # what the worker trains in there (runtime.amp: auto), which the rates are of
    nvjpeg: float = 0.0             # batched nvJPEG decodes/s on the GPU (0: none; decode on the CPUs)
    cache_read_mb_s: float = 2000.0  # the node-local disk's read rate, for the decode cache


#: Seeded from published references (docs/design.md §5) and measurements; `source` says
#: which is which. Training and evaluation rates are at the precision the worker uses there
#: with `amp: auto` (bf16 where the GPU has it, fp16 with a gradient scaler on V100), images
#: resident on the GPU, batched random resized crop + flip included; `benchmarks/gpu.sh` and
#: `benchmarks/throughput.py` measure them. Decoding per CPU core: the worker's PIL path
#: (500x375 JPEG to 256 px), measured on the development VM's AMD EPYC cores (BENCHMARKS.md,
#: "ImageNet at scale") and on the H200's host; Gadi's Xeons are not measured. nvJPEG and the
#: node-local disk are not measured anywhere yet (`benchmarks/gpu.sh` measures nvJPEG on a GPU).
DECODE_PER_CPU = 310  # measured: PIL, 500x375 JPEG to 256 px, one core of the development VM
CACHE_SOURCE = ("cache read: assumed 2,000 MB/s node-local SSD, not measured (faster when the set "
                "fits the node's page cache)")
DEVICES: dict[str, Device] = {
    "v100": Device(3900, 11700, DECODE_PER_CPU, 24, "train: a published reference (docs/design.md §5; "
                   "TensorFlow, real data, precision not stated; fp16 not measured here, so likely an "
                   "under-estimate); eval: assumed 3x train; decode: measured on the development VM's CPU, not "
                   "Gadi's; nvJPEG: assumed half an A100's; " + CACHE_SOURCE + "; images: 24 of 32 GB",
                   "fp16", nvjpeg=3900),
    "a100": Device(7800, 23400, DECODE_PER_CPU, 64, "train: assumed 2x V100; eval: assumed 3x train; decode: "
                   "measured on the development VM's CPU, not Gadi's; nvJPEG: a published figure (torchvision "
                   "on an A100; not measured here); " + CACHE_SOURCE + "; images: 64 of 80 GB", "bf16", nvjpeg=7800),
    "h200": Device(35358, 85900, 360, 120, "train: measured on an H200 (benchmarks/gpu.sh, torch 2.11, batch 256, "
                   "bf16 channels_last; fp32 21,766); eval: measured (benchmarks/throughput.py, bf16); decode: "
                   "measured, PIL on its host, 500x375 JPEG; nvJPEG: assumed an A100's, not measured; "
                   + CACHE_SOURCE + "; images: 120 of 141 GB", "bf16", nvjpeg=7800),
}

#: NCI Gadi (docs/design.md §4): the device, CPUs that come with each GPU, SU per CPU-hour;
#: the one table of Gadi's queues (hpcxfer/sites.py) that the Gadi backend requests them by.
QUEUES: dict[str, Queue] = dict(GADI_QUEUES)

#: Training speed relative to AlexNet's at 224 px. VGG-11: measured on the H200 (fp32
#: 3,107 vs 19,307 images/s; 7.6 vs 0.714 G multiply-adds would say 0.094). The narrow
#: AlexNet on 28-32 px images: assumed from its multiply-adds (2.9 M), an upper bound.
#: The ResNets: measured on this repository's 2-core CPU (one torch thread, SGD training
#: steps, best of 3: batch 8 at 224 px for AlexNet 4.3, ResNet-18 2.4, ResNet-50 1.0
#: images/s; batch 64 at 28 px for the narrow AlexNet 614 and the narrow ResNet 199); on
#: GPUs the same ratios are assumed, not measured.
ARCH_SPEED = {"alexnet": 1.0, "vgg11": 0.161, "alexnet-narrow": 0.714 / 0.0029, "resnet18": 0.56,
              "resnet50": 0.23, "resnet-narrow": 0.714 / 0.0029 * 0.32}

#: (classes, training images, validation images) of each named data set.
DATA_COUNTS = {
    "imagenet": (1000, 1_281_167, 50_000),
    "cifar10": (10, 50_000, 10_000),
    "cifar100": (100, 50_000, 10_000),
    "fashion-mnist": (10, 60_000, 10_000),
}

STARTUP_S = 60.0  # assumed: interpreter, torch and CUDA start, file index, model build
#: Measured: the quick start on an H200 started each task in 8-11 s (four at once, cold
#: caches), on 2 CPU cores in about 5 s; an array data set has no file index to read.
STARTUP_S_ARRAY = 10.0


@dataclass
class Model:
    """The cost model with a grid's overrides applied."""

    devices: dict[str, Device]
    queues: dict[str, Queue]
    startup_s: float
    classes: int
    train_images: int
    val_images: int
    bytes_per_image: int
    decodes: bool
    speed: float
    eval_every: int
    group_max: int = 1  # runtime.group_max: protocol groups priced as one worker each
    decode_cache: bool = True   # runtime.decode_cache is not off
    gpu_decode: bool = True     # runtime.gpu_decode
    cache_gb: float = math.inf  # node-local disk a task's decode cache may take


@dataclass
class Cost:
    """Totals for a set of tasks: images and, per queue, GPU-hours and SU."""

    tasks: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # per queue: tasks alone plus protocol groups
    train_images: float = 0.0
    eval_images: float = 0.0
    gpu_hours: dict[str, float] = field(default_factory=dict)
    su: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> float:
        return self.train_images + self.eval_images


def model_for(grid: Grid, counts: tuple[int, int, int] | None = None) -> Model:
    """The cost model of a grid. counts: (classes, train images, val images) of its data,
    when known better than the named data set's (a folder data set's index)."""
    over = grid.cost
    devices = dict(DEVICES)
    for name, speed in over.devices.items():
        given = {k: v for k, v in speed.model_dump().items() if v is not None}
        if name not in devices:
            lacking = [k for k in ("train", "eval", "decode_per_cpu") if k not in given]
            if lacking:
                raise ConfigError(grid._source, f"cost.devices.{name}", f"a new device needs {', '.join(lacking)}")
            devices[name] = Device(**given, memory_gb=0, source="grid cost.devices")  # nvjpeg 0 unless given
        else:
            base = devices[name]
            devices[name] = replace(base, **given, source=f"grid cost.devices; else {base.source}")
    if over.memory_gb is not None:
        devices = {n: replace(d, memory_gb=over.memory_gb) for n, d in devices.items()}
    queues = {**QUEUES, **{n: Queue(**q.model_dump()) for n, q in over.queues.items()}}
    for name, q in queues.items():
        if q.device not in devices:
            raise ConfigError(grid._source, f"cost.queues.{name}.device",
                              f"{q.device!r} is not a device of the cost table ({', '.join(devices)})")
    classes, train, val = counts or DATA_COUNTS.get(grid.data.dataset, (0, 0, 0))
    classes = over.classes or classes
    train = over.train_images or train
    val = over.val_images or val
    if grid.data.dataset not in FOLDER_DATASETS:  # kept as decoded arrays: nothing to decode
        size = {"fashion-mnist": 28}.get(grid.data.dataset, 32)
        bpi, decodes = (1 if grid.data.dataset == "fashion-mnist" else 3) * size * size, False
    else:
        bpi, decodes = 3 * grid.data.image_size ** 2, True
    startup = STARTUP_S if grid.data.dataset in FOLDER_DATASETS else STARTUP_S_ARRAY
    return Model(devices, queues, startup if over.startup_s is None else over.startup_s,
                 classes, train, val, bpi, decodes, ARCH_SPEED[grid.arch], grid.runtime.eval_every,
                 grid.runtime.group_max, decode_cache=grid.runtime.decode_cache != "off",
                 gpu_decode=grid.runtime.gpu_decode, cache_gb=cache_share_gb(grid))


def cache_share_gb(grid: Grid, slots: int | None = None) -> float:
    """Node-local disk for one task's decode cache on Gadi: the job's jobfs shared by the
    tasks it runs at once (`slots`, one per GPU; default the grid's gpus_per_job, else 1),
    less the worker's reserve (2 %, at least 1 GiB)."""
    share = grid.gadi.jobfs_gb / (slots or grid.gadi.gpus_per_job or 1)
    return max(0.0, min(share * 0.98, share - 1.074))


def evaluations(epochs: int, eval_every: int) -> int:
    """Evaluations of a task: every eval_every epochs and after the last."""
    return epochs // eval_every + (1 if epochs % eval_every else 0)


def task_images(task: Task, m: Model) -> tuple[int, int]:
    """(training images, validation images) of one task: the half's classes."""
    half = m.classes // 2
    if not (m.classes and m.val_images and (m.train_images or task.examples_per_class != "full")):
        raise UnknownSize("the size of this data set is not known: set cost.classes, cost.train_images "
                          "and cost.val_images in the grid for an estimate")
    if task.examples_per_class == "full":
        n_train = round(m.train_images * half / m.classes)
    else:
        n_train = int(task.examples_per_class) * half
    return n_train, round(m.val_images * half / m.classes)


def decoding_rate(work_rate: float, dev: Device, q: Queue, m: Model) -> float:
    """Images/s of a streamed pass that decodes while the GPU works at `work_rate`."""
    if not m.decodes:
        return work_rate
    if m.gpu_decode and dev.nvjpeg:
        return 1 / (1 / work_rate + 1 / dev.nvjpeg)  # one GPU: decode, then train
    return min(work_rate, dev.decode_per_cpu * q.cpus_per_gpu)  # CPUs and GPU side by side


def task_seconds(task: Task, m: Model, queue: str, members: int = 1) -> float:
    """One worker's time: `task` alone, or a protocol group of `members` tasks like it
    (same data and epochs): start-up and decoding once, the arithmetic once per member."""
    q = m.queues[queue]
    dev = m.devices[q.device]
    n_train, n_val = task_images(task, m)
    evals = evaluations(task.epochs, m.eval_every)
    # A group's members each do the arithmetic: the set goes through the GPU `members`
    # times as slowly, while decoding and reading the cache happen once for all of them.
    train_rate, eval_rate = dev.train * m.speed / members, dev.eval * m.speed / members
    if (n_train + n_val) * m.bytes_per_image <= dev.memory_gb * 1e9:
        decode_rate = dev.decode_per_cpu * q.cpus_per_gpu if m.decodes else math.inf
        decode_s = (n_train + n_val) / decode_rate
        return m.startup_s + decode_s + task.epochs * n_train / train_rate + evals * n_val / eval_rate
    # streamed: the first pass over each set decodes; later ones read the cache, or decode again
    first_train, first_eval = decoding_rate(train_rate, dev, q, m), decoding_rate(eval_rate, dev, q, m)
    if m.decode_cache and m.decodes and (n_train + n_val) * m.bytes_per_image <= m.cache_gb * 1e9:
        read = dev.cache_read_mb_s * 1e6 / m.bytes_per_image
        later_train, later_eval = min(train_rate, read), min(eval_rate, read)
    else:
        later_train, later_eval = first_train, first_eval
    return (m.startup_s + n_train / first_train + (task.epochs - 1) * n_train / later_train
            + n_val / first_eval + (evals - 1) * n_val / later_eval)


def workers(tasks: list[Task], m: Model, queue: str) -> list[tuple[Task, int]]:
    """(a task standing for the worker, its member count) for each worker the tasks need on
    `queue`: automatic groups are as large as its GPU's memory allows."""
    from hpcxfer.grid.groups import Group, make_groups

    by_id = {t.task_id: t for t in tasks}
    device_gb = GPU_MEMORY_GB.get(m.queues[queue].device)
    return [(by_id[u.members[0]], len(u.members)) if isinstance(u, Group) else (u, 1)
            for u in make_groups(tasks, m.group_max, device_gb)]


def stage_workers(grid: Grid, tasks: list[Task], queue: Queue, slots: int = 1) -> dict[str, list[float]]:
    """stage -> the estimated seconds of each of its workers (a task alone or a protocol
    group, in the order they are formed) on one GPU of `queue`, `slots` tasks sharing a
    job's node-local disk: what sizes a job's walltime (hpcxfer/backends/resources.py).
    Raises UnknownSize where the data set's size is not known."""
    m = model_for(grid)
    m = replace(m, queues={**m.queues, "job": queue}, cache_gb=cache_share_gb(grid, slots))
    out: dict[str, list[float]] = {}
    for stage in ("pretrain", "finetune"):
        units = workers([t for t in tasks if t.stage == stage], m, "job")
        out[stage] = [task_seconds(t, m, "job", k) for t, k in units]
    return out


def price(tasks: list[Task], m: Model) -> Cost:
    cost = Cost(tasks=len(tasks))
    for q in m.queues:
        units = workers(tasks, m, q)
        cost.workers[q] = len(units)
        hours = sum(task_seconds(t, m, q, k) for t, k in units) / 3600
        cost.gpu_hours[q] = hours
        cost.su[q] = hours * m.queues[q].cpus_per_gpu * m.queues[q].su_per_cpu_hour
    for t in tasks:
        n_train, n_val = task_images(t, m)
        cost.train_images += t.epochs * n_train
        cost.eval_images += evaluations(t.epochs, m.eval_every) * n_val
    return cost


#: The labels of price_study's total rows, which say what each adds up.
TOTAL_ALONE = "total alone (sum of rows)"
TOTAL_GROUPED = "total in groups (as run)"
TOTAL = "total (sum of rows)"
#: What the rows of price_study are, for a table's caption.
ROWS_NOTE = ("rows: each task priced alone, counted in the first sub-grid that has it, so they add up to the "
             "total below them")
GROUPED_NOTE = ("'in groups': what runs, one start-up and one decoding per protocol group; no split into "
                "sub-grids adds up to it, since a group may take members of several")


def price_study(grid: Grid, counts: tuple[int, int, int] | None = None,
                expansion: Expansion | None = None) -> list[tuple[str, Cost]]:
    """(row name, cost) for pre-training, each sub-grid, and the whole study, the total
    last. The rows above a total add up to it: a task that two sub-grids share is counted
    in the first that has it, and each task is priced alone. With protocol groups a last
    row prices what runs (a group's start-up and decoding once), which no split into
    sub-grids adds up to, since one group may take members of several.
    expansion: the grid's, when the caller has it (the grid is then not expanded again)."""
    from hpcxfer.grid.expansion import expand_study

    m = model_for(grid, counts)
    alone = replace(m, group_max=1)
    expansion = expansion or expand_study(grid)
    tasks, blocks = expansion.tasks, expansion.blocks
    rows = [("pretrain", price([t for t in tasks if t.stage == "pretrain"], alone))]
    if len(blocks) > 1:
        seen: set[str] = set()
        for name, block in blocks:
            new = [t for t in {t.task_id: t for t in block}.values() if t.task_id not in seen]
            seen.update(t.task_id for t in new)
            rows.append((name, price(new, alone)))
    else:
        rows.append(("finetune", price([t for t in tasks if t.stage == "finetune"], alone)))
    if m.group_max == 1:
        return rows + [(TOTAL, price(tasks, m))]
    return rows + [(TOTAL_ALONE, price(tasks, alone)), (TOTAL_GROUPED, price(tasks, m))]


def fmt_number(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def summary_line(total: Cost) -> str:
    """One line with the study's total, printed by both plan and submit."""
    per_queue = "; ".join(f"{q} {fmt_number(total.gpu_hours[q])} GPU-h = {fmt_number(total.su[q])} SU"
                          for q in total.su)
    counts = sorted(set(total.workers.values()))
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    grouped = f" in {span} workers" if counts and counts != [total.tasks] else ""
    return f"estimated cost of {total.tasks} tasks{grouped}: {fmt_images(total.images)} images; {per_queue}"


def fmt_images(n: float) -> str:
    return f"{n / 1e9:,.2f} G" if n >= 1e8 else f"{n / 1e6:.3g} M"


def assumptions(grid: Grid, tasks: list[Task] | None = None) -> list[str]:
    """What the estimate assumes, one line each; `tasks`: the grid's, when the caller has them."""
    m = model_for(grid)
    lines = [f"{name}: train {d.train:,.0f}/s, eval {d.eval:,.0f}/s, decode {d.decode_per_cpu:,.0f}/s per CPU"
             + (f", nvJPEG {d.nvjpeg:,.0f}/s" if d.nvjpeg else "")
             + f", cache read {d.cache_read_mb_s:,.0f} MB/s, {d.memory_gb:g} GB for images ({d.source})"
             for name, d in m.devices.items() if name in {q.device for q in m.queues.values()}]
    if not m.decodes:
        stream = "a set that does not fit is streamed from its arrays"
    elif m.decode_cache:
        how = "nvJPEG where the device has it, else the CPUs" if m.gpu_decode else "the CPUs"
        stream = (f"a set that does not fit is decoded once ({how}) into a node-local cache "
                  f"({m.bytes_per_image / 1e3:,.0f} KB an image; runtime.decode_cache) and read back every later pass")
    else:
        stream = "a set that does not fit is decoded every pass (runtime.decode_cache: off)"
    lines.append(f"start-up {m.startup_s:g} s per worker; eval every {m.eval_every} epochs; "
                 f"{grid.arch} at {m.speed:.3g} x AlexNet's speed; {stream}")
    precisions = ", ".join(f"{name} {d.precision}" for name, d in m.devices.items())
    lines.append(f"rates at the precision the worker trains in ({precisions})")
    if m.group_max != 1:
        lines.append("protocol groups (runtime.group_max " + (str(m.group_max) if m.group_max else "0 = automatic")
                     + "): start-up and decoding once per group, arithmetic once per member, members "
                     "looped (no gain assumed from fused execution)")
    if m.decodes and m.decode_cache:
        lines += cache_sizes(grid, m, tasks)
    return lines


def cache_sizes(grid: Grid, m: Model, tasks: list[Task] | None = None) -> list[str]:
    """The decode cache of the largest streamed task, against the node-local disk asked for."""
    from hpcxfer.grid.expansion import expand

    memory = min(d.memory_gb for n, d in m.devices.items() if n in {q.device for q in m.queues.values()})
    try:
        sizes = [task_images(t, m) for t in (expand(grid) if tasks is None else tasks)]
    except UnknownSize:
        return []
    streamed = [(a, b) for a, b in sizes if (a + b) * m.bytes_per_image > memory * 1e9]
    if not streamed:
        return []
    n_train, n_val = max(streamed)
    gb = (n_train + n_val) * m.bytes_per_image / 1e9
    fits = "fits" if gb <= m.cache_gb else "does not fit: such tasks decode every pass"
    return [(f"decode cache of the largest streamed task: {gb:,.1f} GB on node-local disk; a task's share of "
            f"gadi.jobfs_gb {grid.gadi.jobfs_gb} over gpus_per_job {grid.gadi.gpus_per_job or 1} is "
            f"{m.cache_gb:,.1f} GB: it {fits}")]
