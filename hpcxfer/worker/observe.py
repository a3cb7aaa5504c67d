"""What a running task shows: TensorBoard scalars, an optional profiler trace, start-up time.

TensorBoard and the profiler are imported only when asked for: importing them costs about
a second, which a study of thousands of small tasks pays thousands of times.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: Profiler schedule: skip the first steps (allocator and cuDNN warm-up), record a few.
PROFILE_WAIT, PROFILE_WARMUP, PROFILE_ACTIVE = 2, 2, 6


def process_age() -> float:
    """Seconds since this process started (from the kernel, so it includes interpreter start
    and imports); 0.0 where /proc is missing."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5), counted after "pid (comm)"
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


#: A metrics record's first word that names its TensorBoard group; other fields go to `run/`.
GROUPS = ("train", "val", "lr")


def tag(key: str) -> str:
    """A metrics field's TensorBoard tag, without repeating the group: val_acc -> val/acc,
    lr_high -> lr/high, images_per_s -> run/images_per_s."""
    group, _, rest = key.partition("_")
    return f"{group}/{rest}" if group in GROUPS and rest else f"run/{key}"


class Scalars:
    """TensorBoard scalars of one task; a resumed task purges what follows its checkpoint."""

    def __init__(self, folder: Path, enabled: bool, resume_epoch: int):
        self.folder, self.enabled, self.resume_epoch = folder, enabled, resume_epoch
        self._writer = None

    def record(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self.resume_epoch + 1)
        writer = self._writer
        epoch = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(tag(key), value, epoch)
        writer.flush()

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """The finished task's settings and final metrics for TensorBoard's HParams dashboard,
        written into the task's own run folder (SummaryWriter.add_hparams would make a new
        sub-run on each call) by a writer of its own (no purge: the scalars stay). The metrics
        are named by their scalar tags, so the dashboard links the run to its curves."""
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as summary

        plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        with SummaryWriter(str(self.folder)) as writer:
            for event in summary(plain, {tag(k): v for k, v in metrics.items()}):
                writer.file_writer.add_summary(event)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def profiler(folder: Path, enabled: bool, cuda: bool) -> contextlib.AbstractContextManager:
    """A torch.profiler over a few training steps, written to `folder` as Chrome trace-event
    JSON (what Perfetto, Holistic Trace Analysis and torch-tb-profiler read); call `.step()`
    after every step."""
    if not enabled:
        return _NoProfiler()
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    return profile(activities=activities, record_shapes=True,
                   schedule=schedule(wait=PROFILE_WAIT, warmup=PROFILE_WARMUP, active=PROFILE_ACTIVE, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(folder)))


class _NoProfiler(contextlib.AbstractContextManager):
    def __exit__(self, *exc: object) -> None:
        return None

    def step(self) -> None:
        pass

