"""The grid file's schema: parsed once, validated loudly, typed from then on.

A fine-tuning field given as a list is an axis of the grid; a scalar is fixed. The four
protocol fields also take `optimal` (Table 2's value for each size), and the `protocol`
axis takes the named protocols `common`, `scratch` and `optimal`, which set all four.

Types are strict (no `true` for 1, no `"5"` for 5), numbers finite, every size bounded
(hpcxfer/grid/limits.py), and text that can reach a job script free of control characters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpcxfer.grid.fields import (
    BIG,
    DecayStart,
    Frozen,
    Gamma,
    HighLr,
    Layers,
    Momentum,
    NameText,
    PathText,
    PosInt,
    Protocols,
    Rate,
    Seed,
    Sizes,
    Split,
    Strict,
    plain_text,
    size_value,
)
from hpcxfer.grid.limits import MAX_NAME, MAX_SEED, MAX_STRING
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, UNITS
from hpcxfer.grid.runtime import DEFAULTS as _R
from hpcxfer.grid.runtime import RuntimeSettings
from hpcxfer.grid.search import SearchSpec
from hpcxfer.grid.task import CROP, IMAGE_SIZE
from hpcxfer.sites import GADI_QUEUES

DATASETS = ("fashion-mnist", "imagenet", "folders", "cifar10", "cifar100")
#: Data sets read from image files, which `data.image_size` and `data.crop` apply to.
FOLDER_DATASETS = ("imagenet", "folders")
#: Architectures, each with its transfer units (hpcxfer/grid/protocols.py `UNITS`).
ARCHS = tuple(UNITS)


class DataSpec(Strict):
    """Where the images are. Folder data sets (imagenet, folders) read `path`/`train_dir`
    and `path`/`val_dir`; see hpcxfer/data/folders.py and imagenet.py for the layouts."""

    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    path: PathText | None = Field(None, description="explicit data folder; searched before the defaults")
    train_dir: PathText = Field("train", description="training images in class folders, relative to path")
    val_dir: PathText = Field("val", description="validation images, relative to path")
    val_layout: Literal["auto", "folders", "devkit", "kaggle"] = Field(
        "auto", description="folders: val/<class>/*; devkit: flat + ground-truth file and class ids; "
        "kaggle: flat + LOC_val_solution.csv; auto: folders if val has subfolders, else by val_labels")
    val_labels: PathText | None = Field(
        None, description="ILSVRC2012_validation_ground_truth.txt or LOC_val_solution.csv (relative to path)")
    class_ids: PathText | None = Field(
        None, description="devkit layout: meta.mat, or a text file of 'ILSVRC2012_ID wnid' lines")
    image_size: int = Field(IMAGE_SIZE, ge=8, le=4096, description="folder data sets: images are stored decoded at "
                            "this size (short side resized, centre square cropped)")
    crop: int = Field(CROP, ge=8, le=4096, description="folder data sets: the model's input size")
    index_cache: PathText | None = Field(
        None, description="folder for the file index of a folder data set (default: $HPCXFER_CACHE/index)")
    verify: Literal["none", "sample", "headers", "decode"] = Field(
        "sample", description="before submission, check image files the study reads: a sample of headers, "
        "every header, or a full decode")

    @model_validator(mode="after")
    def _crop_fits(self) -> DataSpec:
        if self.crop > self.image_size:
            raise ValueError(f"crop {self.crop} is larger than image_size {self.image_size}")
        return self

    def task_fields(self) -> dict:
        """The data settings that decide a task's outcome, for its identity (hpcxfer/grid/task.py)."""
        if self.dataset not in FOLDER_DATASETS:
            return {}  # array data sets have one size; these settings do nothing there
        return {"image_size": self.image_size, "crop": self.crop}


class SourceSpec(DataSpec):
    """The source of a transfer: a data set (the keys of `data`), pre-trained by the study on
    all its classes, or a model from a file (`weights`: a state dict of the architecture,
    read with weights_only=True; nothing is fetched at run time)."""

    dataset: Literal[DATASETS] | None = None  # type: ignore[valid-type]
    weights: PathText | None = Field(None, description="a state dict of the grid's arch, instead of pre-training")

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        if (self.dataset is None) == (self.weights is None):
            raise ValueError("give either 'dataset' (pre-trained by the study) or 'weights' (a model file)")
        return self


class PretrainSpec(Strict):
    """Yosinski's solver by default; one pre-training task per split."""

    epochs: int = Field(90, ge=1, le=BIG)
    batch_size: int = Field(256, ge=1, le=BIG)
    lr: float = Field(0.01, gt=0, le=BIG)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=BIG)
    lr_gamma: float = Field(0.1, gt=0, le=1)
    decay_every: int = Field(30, ge=1, le=BIG)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    examples_per_class: Annotated[int | Literal["full"], BeforeValidator(size_value)] = Field(
        "full", description="the first x training images of each source class (default: all)")


class Axes(Strict):
    """Fine-tuning axes; every field optional so that an experiment can override a few."""

    split: Split | None = None
    examples_per_class: Sizes | None = None
    protocol: Protocols | None = None
    transfer_layers: Layers | None = None
    high_lr_layers: HighLr | None = None
    initial_decay_epochs: DecayStart | None = None
    frozen_layers: Frozen | None = None
    lr_high: Rate | None = None
    lr_low: Rate | None = None
    lr_gamma: Gamma | None = None
    decay_every: PosInt | None = None
    epochs: PosInt | None = None
    batch_size: PosInt | None = None
    momentum: Momentum | None = None
    weight_decay: Rate | None = None
    seed: Seed | None = None

    @model_validator(mode="after")
    def _protocol_or_fields(self) -> Axes:
        if self.protocol is not None:
            clash = [f for f in PROTOCOL_FIELDS if getattr(self, f) is not None]
            if clash:
                raise ValueError(
                    f"'protocol' sets {', '.join(PROTOCOL_FIELDS)}; remove {clash[0]!r} "
                    "or move it to its own experiment"
                )
        return self


class Experiment(Axes):
    name: NameText | None = None


#: What a fine-tuning field is when neither the grid nor a protocol sets it.
FINETUNE_DEFAULTS: dict[str, list] = {
    "split": [0],
    "examples_per_class": ["full"],
    "lr_high": [0.01],
    "lr_low": [0.001],
    "lr_gamma": [0.1],
    "decay_every": [30],
    "batch_size": [256],
    "momentum": [0.9],
    "weight_decay": [5e-4],
    "seed": [0],
}


def _decode_cache(value: str) -> str:
    """auto, off, or a folder the worker can resolve on its node (hpcxfer/worker/decode_cache.py)."""
    if value in ("auto", "off"):
        return value
    if not value.startswith(("/", "~", "$")) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} is not auto, off or an absolute folder (/..., ~/... or $VAR/...)")
    return value


DecodeCache = Annotated[str, AfterValidator(_decode_cache)]


class RuntimeSpec(Strict):
    """How tasks run; not part of a task's identity (changing it reruns nothing). The
    defaults are RuntimeSettings' (hpcxfer/grid/runtime.py), which the worker reads."""

    eval_every: int = Field(_R.eval_every, ge=1, le=BIG,
                            description="evaluate every k epochs and after the last")
    checkpoint_minutes: float = Field(_R.checkpoint_minutes, gt=0, le=BIG, description="checkpoint at the first "
                                      "step after this many minutes since the last one (and at epoch ends when cheap)")
    device: Literal["auto", "cpu", "cuda"] = _R.device
    threads: int = Field(_R.threads, ge=0, le=4096,
                         description="torch CPU threads per task; 0 = cores / parallel tasks")
    keep_checkpoints: bool = Field(_R.keep_checkpoints, description="keep checkpoints once a task is done")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        _R.amp, description="mixed precision: auto = bf16 on GPUs that have it, fp16 with a "
        "gradient scaler on those that do not (V100), fp32 on CPUs")
    channels_last: bool = Field(_R.channels_last, description="NHWC memory format on GPUs (ignored on CPUs)")
    compile: bool = Field(_R.compile, description="torch.compile the model (pays off on long tasks)")
    data_memory_gb: float = Field(_R.data_memory_gb, ge=0, le=BIG, description="decoded images up to this size are "
                                  "kept in memory (on the GPU when there is one); larger sets are streamed")
    loader_workers: int = Field(_R.loader_workers, ge=0, le=256,
                                description="decoding processes of the streaming path")
    decode_cache: DecodeCache = Field(
        _R.decode_cache, description="streamed sets are decoded once, to this node-local cache, and read back by "
        "later epochs: auto ($PBS_JOBFS, $SLURM_TMPDIR, $TMPDIR; removed at exit), off, or a folder "
        "(absolute, ~ or $VAR; kept for reuse)")
    gpu_decode: bool = Field(_R.gpu_decode, description="on a GPU, decode streamed JPEGs with nvJPEG (CPU fallback "
                             "for CMYK, PNG and what nvJPEG refuses)")
    tensorboard: bool = Field(_R.tensorboard, description="TensorBoard scalars in tasks/<id>/tb")
    profile: bool = Field(_R.profile, description="a torch.profiler trace of a few steps in tasks/<id>/profile")
    group_max: int = Field(_R.group_max, ge=0, le=4096, description="fine-tuning tasks that differ only in their "
                           "protocol train together in one worker, at most this many: 0 = automatic, 1 = every "
                           "task alone")
    group_mode: Literal["auto", "looped", "fused"] = Field(
        _R.group_mode, description="how a group steps its members: looped (one after another on each batch, each "
        "bit-identical to its solo run), fused (one batched computation, for GPUs), auto (fused on GPUs)")

    def settings(self) -> RuntimeSettings:
        """The typed settings a worker reads back from task.json."""
        return RuntimeSettings(**self.model_dump())


class LocalSpec(Strict):
    max_parallel: int = Field(0, ge=0, le=4096, description="tasks at once; 0 = one per CPU core")


class QueueCost(Strict):
    device: NameText
    cpus_per_gpu: int = Field(ge=1, le=4096)
    su_per_cpu_hour: float = Field(gt=0, le=BIG)


class DeviceSpeed(Strict):
    """Images per second of one device (AlexNet, 224 px; other archs scale by their FLOPs)."""

    train: float | None = Field(None, gt=0, le=1e12)
    eval: float | None = Field(None, gt=0, le=1e12)
    decode_per_cpu: float | None = Field(None, gt=0, le=1e12)
    nvjpeg: float | None = Field(None, ge=0, le=1e12, description="batched nvJPEG decodes/s on the GPU (0: none)")
    cache_read_mb_s: float | None = Field(None, gt=0, le=1e12, description="node-local disk read rate (decode cache)")


class CostSpec(Strict):
    """Overrides of the cost model's tables (hpcxfer/grid/cost.py); not part of task identity."""

    devices: Annotated[dict[NameText, DeviceSpeed], Field(max_length=100)] = Field(default_factory=dict)
    queues: Annotated[dict[NameText, QueueCost], Field(max_length=100)] = Field(default_factory=dict)
    startup_s: float | None = Field(None, ge=0, le=BIG, description="per-task start-up: imports, data "
                                    "index, model")
    memory_gb: float | None = Field(None, gt=0, le=BIG, description="decoded images a task keeps in memory "
                                    "per GPU")
    classes: int | None = Field(None, ge=2, le=BIG, description="classes of the data set, when not a named one")
    train_images: int | None = Field(None, ge=1, le=10**12, description="training images of the whole data "
                                     "set (for 'full' sizes), when the data set's own count is not known")
    val_images: int | None = Field(None, ge=1, le=10**12)


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+=:/@-]*$", max_length=MAX_NAME),
                 AfterValidator(plain_text)]
Walltime = Annotated[str, Field(pattern=r"^\d{1,6}(:[0-5]\d){0,2}$", description="H:MM:SS, MM:SS or minutes")]


class ResourcesSpec(Strict):
    """What one SLURM or PBS array element needs; each field left out is sized from the
    plan per stage (hpcxfer/backends/resources.py, docs/design.md §4)."""

    gpus: int | None = Field(None, ge=0, le=1024, description="default: 1 (0 with runtime.device: cpu)")
    gpu_memory_gb: float | None = Field(None, gt=0, le=BIG, description="memory of one GPU, which sizes "
                                        "automatic protocol groups (default: 32 where gpus > 0; Gadi: its queue's)")
    cpus: int | None = Field(None, ge=1, le=BIG, description="default: the site's CPUs per GPU")
    mem_gb: float | None = Field(None, gt=0, le=BIG, description="default: the site's memory per GPU")
    time: Walltime | None = Field(None, description="default: the stage's longest task, estimated, plus a margin")


class SlurmSpec(Strict):
    partition: Name | None = None
    account: Name | None = None
    qos: Name | None = None
    constraint: Annotated[str, Field(pattern=r"^[A-Za-z0-9_&|\[\]*,()-]+$", max_length=MAX_NAME * 10)] | None = None
    array_parallelism: int = Field(0, ge=0, le=BIG, description="array tasks at once (%K); 0 = no throttle")
    signal_delay: int = Field(90, ge=0, le=65535, description="seconds before the time limit that USR2 comes")
    max_requeues: int = Field(10, ge=0, le=BIG, description="requeues of one task after a checkpoint on request")
    max_time: Walltime = Field("24:00:00", description="the longest time limit the site allows a job")


class PbsSpec(Strict):
    queue: Name | None = None
    project: Name | None = None
    max_array_size: int = Field(0, ge=0, le=BIG, description="0 = read it from `qstat -Bf`")
    max_walltime: Walltime = Field("24:00:00", description="the longest walltime the site allows a job")
    resubmits: int = Field(0, ge=0, le=BIG, description="`hpcxfer submit`s after the first that the plan may "
                           "need to finish a task cut off at walltime")


class GadiSpec(Strict):
    project: Name | None = None
    queue: Literal["gpuvolta", "dgxa100", "gpuhopper"] = "gpuvolta"
    storage: Annotated[str, Field(pattern=r"^[a-z]+/[a-z0-9]+(\+[a-z]+/[a-z0-9]+)*$",
                                  max_length=MAX_STRING)] | None = None
    jobfs_gb: int = Field(10, ge=1, le=BIG)
    gpus_per_job: int | None = Field(None, ge=1, le=1024, description="default: the stage's tasks over max_jobs, "
                                     "at most a node's GPUs")
    walltime: Walltime | None = Field(None, description="default: the packed jobs' estimate plus a margin, at most 48 h")
    max_jobs: int = Field(8, ge=1, le=10_000, description="packed jobs per stage")
    resubmits: int = Field(0, ge=0, le=BIG, description="`hpcxfer submit`s after the first that the plan may need "
                           "to finish what a walltime cut off")

    @field_validator("gpus_per_job")
    @classmethod
    def _one_node(cls, v: int | None, info: ValidationInfo) -> int | None:
        queue = GADI_QUEUES.get(info.data.get("queue", ""))
        if v is not None and queue and v > queue.gpus_per_node:
            raise ValueError(f"{v} GPUs: a job of {queue.name} runs on one node, which has {queue.gpus_per_node}")
        return v


class Grid(Strict):
    _source: str = PrivateAttr("grid.yaml")
    _sources: tuple = PrivateAttr(())

    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=MAX_NAME)
    root: PathText = "runs"
    #: The data the fine-tuning tasks read: `data` (split into source and target halves by
    #: class), or `target` when the grid names `source` and `target` (it is then both).
    data: DataSpec | None = None
    # the grid's `source` key (`source` here names the grid file, as it always has)
    transfer_source: SourceSpec | None = Field(None, alias="source")
    target: DataSpec | None = None
    arch: Literal[ARCHS] = "alexnet-narrow"  # type: ignore[valid-type]
    pretrain: PretrainSpec = PretrainSpec()
    finetune: Axes
    experiments: Annotated[list[Experiment], Field(min_length=1, max_length=1000)] | None = None
    runtime: RuntimeSpec = RuntimeSpec()
    local: LocalSpec = LocalSpec()
    cost: CostSpec = CostSpec()
    resources: ResourcesSpec = ResourcesSpec()
    slurm: SlurmSpec = SlurmSpec()
    pbs: PbsSpec = PbsSpec()
    gadi: GadiSpec = GadiSpec()
    search: SearchSpec | None = None

    @property
    def source(self) -> str:
        """The grid file it was loaded from (what an error about its fields names)."""
        return self._source

    @property
    def paired(self) -> bool:
        """A grid of a separate source and target, not one data set split in two."""
        return self.target is not None

    @model_validator(mode="after")
    def _data_or_pair(self) -> Grid:
        if self.data is not None and (self.transfer_source is not None or self.target is not None):
            raise ValueError("give either 'data' (one data set split into source and target classes) or "
                             "'source' and 'target', not both")
        if self.data is None:
            if self.transfer_source is None or self.target is None:
                raise ValueError("give 'data' (one data set split in two), or 'source' and 'target'")
            object.__setattr__(self, "data", self.target)  # what fine-tuning reads, for every consumer
        return self

    @model_validator(mode="after")
    def _epochs_given(self) -> Grid:
        blocks = self.experiments or [Experiment()]
        if self.finetune.epochs is None and any(b.epochs is None for b in blocks):
            raise ValueError(
                "finetune: 'epochs' is required (the paper does not state it; say what you assume)"
            )
        return self
