"""The baseline: a plain PyTorch loop as most training scripts are written.

Same data (the task's Fashion-MNIST images and classes), same model, same optimizer and
schedule as the hpcxfer task it is compared with, but a DataLoader whose workers build
each image with per-sample torchvision transforms (PIL crop and flip, ToTensor,
Normalize), fp32, and evaluation after every epoch.

    PYTHONPATH=. python -m benchmarks.plain_loop TASK_DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from hpcxfer.data import class_split, first_per_class, open_dataset, remap
from hpcxfer.fileio import read_json
from hpcxfer.grid.task import Task
from hpcxfer.worker import protocol
from hpcxfer.worker.models import build_model
from hpcxfer.worker.observe import process_age


class Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task_dir")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    config = read_json(f"{args.task_dir}/task.json")
    task = Task.from_dict(config)
    torch.manual_seed(task.seed)
    ds = open_dataset(task.dataset, config["data"].get("path"))
    source, target = class_split(ds.num_classes, task.split)
    classes = source if task.stage == "pretrain" else target
    tr = first_per_class(ds.train.labels, classes, task.examples_per_class)
    va = first_per_class(ds.val.labels, classes, "full")
    norm = transforms.Normalize(ds.mean, ds.std)
    pad = max(1, ds.image_size // 14)
    train_tf = transforms.Compose([transforms.RandomCrop(ds.image_size, padding=pad),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    val_tf = transforms.Compose([transforms.ToTensor(), norm])
    squeeze = lambda x: x.numpy()[:, 0]  # noqa: E731 - [N, 1, H, W] -> [N, H, W] for PIL
    train = Images(squeeze(ds.train.load(tr)), remap(ds.train.labels[tr], classes), train_tf)
    val = Images(squeeze(ds.val.load(va)), remap(ds.val.labels[va], classes), val_tf)
    kw = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    train_dl = torch.utils.data.DataLoader(train, batch_size=task.batch_size, shuffle=True, **kw)
    val_dl = torch.utils.data.DataLoader(val, batch_size=1024, **kw)

    model = build_model(task.arch, len(classes), ds.channels)
    groups = protocol.param_groups(model, task.arch, high_lr_layers=task.high_lr_layers,
                                   frozen_layers=task.frozen_layers, lr_high=task.lr_high,
                                   lr_low=task.lr_low, weight_decay=task.weight_decay)
    opt = torch.optim.SGD(groups, lr=task.lr_high, momentum=task.momentum)
    first_step = None
    for epoch in range(task.epochs):
        protocol.set_epoch_lr(opt, protocol.lr_factor(epoch, initial_decay_epochs=task.initial_decay_epochs,
                                                      decay_every=task.decay_every, lr_gamma=task.lr_gamma))
        model.train()
        for x, y in train_dl:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if first_step is None:
                first_step = process_age()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
    print(json.dumps({"val_acc": correct / total, "first_step_s": first_step,
                      "train_images": len(train) * task.epochs}))


if __name__ == "__main__":
    main()
