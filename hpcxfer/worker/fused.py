"""Fused mode of a protocol group: every member's step as one batched computation.

The members' parameters are stacked along a new first dimension, one row a member, and
`torch.func.vmap` of `functional_call` runs every member's forward on the shared batch
as one computation (a convolution over stacked weights becomes one grouped convolution).
`randomness="same"` gives every member the same dropout masks, drawn once from torch's
global generator exactly as one member's own forward draws them, as in looped mode. One
backward of the summed member losses gives each row its member's gradient (a member's
loss depends on its own row only), and `FusedSGD`, a torch.optim.Optimizer over the
stacked rows whose learning rate and weight decay are tensors of one value a row (HFTA's
fused optimizers), updates them as torch.optim.SGD would update each member alone: weight
decay added to the gradient, the momentum buffer set to the first update and then
`momentum * buf + d`, each member and layer at its own rate (h, lr_high, lr_low and the
member's decay d), and a member's frozen layers never touched. `RowScaler` scales each
member's loss on its own, as the member's LossScaler (hpcxfer/worker/precision.py) would.

The members' modules hold views of their rows; `sync` copies the momentum buffers and the
loss scales into each member's own optimizer and scaler, which are then the whole record
of its state: one group checkpoint resumes in either mode. Results agree with
looped mode to float32 rounding, not bit for bit: where rounding tips a max-pooling
near-tie, that window's gradient takes another (equally valid) path, and training
amplifies the difference as it amplifies any one-ulp change (tests/test_group_fused.py
states, measures and checks the tolerance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from hpcxfer.worker.learners import Learner, Trainer
from hpcxfer.worker.precision import LossScaler, Precision
from hpcxfer.worker.train import EVAL_BATCH

#: A model with buffers (batch norm's running statistics) cannot be stepped by vmap in place.
UNSUPPORTED = "fused mode steps models without buffers only"


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value a member, shaped to broadcast over `like`'s rows."""
    return values.to(like.dtype if values.is_floating_point() else values.dtype).view(-1, *[1] * (like.dim() - 1))


def fusable(model: nn.Module) -> bool:
    return next(model.buffers(), None) is None


class FusedSGD(torch.optim.Optimizer):
    """torch.optim.SGD (plain momentum, weight decay added to the gradient) of M models at
    once. Each parameter is the M models' rows stacked and is its own param group, whose
    `lr` and `weight_decay` are tensors of one value a row and whose `trained` marks the
    rows that step (a frozen row is never touched). The state of a parameter is its
    `momentum_buffer` (rows) and `stepped` (the rows that have stepped: torch.optim.SGD
    keeps a buffer for those only)."""

    def __init__(self, rows: Sequence[torch.Tensor], trained: Sequence[torch.Tensor], momentum: float):
        groups = [{"params": [p], "trained": t, "lr": torch.zeros(len(t), device=p.device),
                   "weight_decay": torch.zeros(len(t), device=p.device)} for p, t in zip(rows, trained)]
        super().__init__(groups, {"momentum": momentum})

    def buffers(self, p: torch.Tensor) -> dict:
        """The state of stacked parameter `p`, created (zero buffers) on first use."""
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
            state["stepped"] = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts a floating parameter's state to its dtype
            state["stepped"] = state["stepped"].bool()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, ok: torch.Tensor | None = None) -> float | None:
        """One step of every trained row; `ok` (one bool a row) skips the rows whose
        gradients overflowed, leaving their parameters and buffers as they were."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (rows,) = group["params"]
            if rows.grad is None:
                continue
            state = self.buffers(rows)
            take = group["trained"] & ok if ok is not None else group["trained"]
            where = _rows(take, rows)
            d = rows.grad + _rows(group["weight_decay"], rows) * rows
            buf = state["momentum_buffer"]
            # Buffers start at zero, so a row's first update sets its buffer to d exactly, as
            # torch's clone(d); a row skipped (overflow) keeps its buffer.
            buf.copy_(torch.where(where, group["momentum"] * buf + d, buf))
            rows.sub_(torch.where(where, _rows(group["lr"], rows) * buf, 0.0))
            state["stepped"] |= take
        return loss


class RowScaler:
    """Dynamic loss scaling of M models, one scale a row, each backing off and growing as
    its model's own LossScaler would; its state is `state_dict()`."""

    def __init__(self, scalers: Sequence[LossScaler], device: torch.device):
        first = scalers[0]
        self.enabled = first.enabled
        self.growth_factor, self.backoff_factor = first.growth_factor, first.backoff_factor
        self.growth_interval = first.growth_interval
        self.scale = torch.tensor([s.scale_value for s in scalers], device=device)
        self.tracker = torch.tensor([s.tracker for s in scalers], device=device)

    def unscale(self, grads: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> torch.Tensor:
        """Divide each row's gradients by its scale in place; the rows whose gradients are
        all finite (all rows when disabled)."""
        ok = torch.ones_like(self.scale, dtype=torch.bool)
        if not self.enabled:
            return ok
        inv = self.scale.double().reciprocal().float()
        for name, g in grads.items():
            g.mul_(_rows(inv, g))
            ok &= torch.isfinite(g).flatten(1).all(1) | ~trained[name]
        return ok

    def update(self, ok: torch.Tensor) -> None:
        if not self.enabled:
            return
        grown = self.tracker + 1
        grow = ok & (grown == self.growth_interval)
        self.scale = torch.where(ok, torch.where(grow, self.scale * self.growth_factor, self.scale),
                                 self.scale * self.backoff_factor)
        self.tracker = torch.where(ok & ~grow, grown, torch.zeros_like(grown))

    def state_dict(self) -> dict:
        return {"scale": self.scale.tolist(), "growth_tracker": self.tracker.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.scale = torch.tensor(state["scale"], device=self.scale.device)
        self.tracker = torch.tensor(state["growth_tracker"], device=self.tracker.device)

    def member(self, m: int) -> dict:
        """Row m's state in its model's LossScaler's terms."""
        return {"scale": float(self.scale[m]), "growth_tracker": int(self.tracker[m]),
                "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval}


class Fused(Trainer):
    """Every member's forward, backward and SGD step as one computation on stacked rows."""

    def __init__(self, learners: Sequence[Learner], precision: Precision):
        if not fusable(learners[0].model):
            raise ValueError(UNSUPPORTED)
        super().__init__(learners, precision)
        self.base = learners[0].model  # the architecture; functional_call swaps its parameters
        own = [dict(learner.model.named_parameters()) for learner in learners]
        self.own = own
        # (member, parameter name) -> index of its optimizer group; absent: frozen
        self.group_of = [{name: i for name, p in params.items()
                          for i, g in enumerate(learner.optimizer.param_groups) if any(p is q for q in g["params"])}
                         for learner, params in zip(learners, own)]
        dev = precision.device
        with torch.no_grad():
            self.params = {name: torch.stack([params[name].detach() for params in own]) for name in own[0]}
            self.trained = {name: torch.tensor([name in g for g in self.group_of], device=dev) for name in self.params}
            for name, rows in self.params.items():
                rows.requires_grad_(bool(self.trained[name].any()))
                for m, params in enumerate(own):
                    params[name].data = rows[m]  # the member's module reads its row: no second copy
        self.momentum = learners[0].optimizer.param_groups[0]["momentum"]
        for learner in learners:
            for g in learner.optimizer.param_groups:
                if g["dampening"] or g["nesterov"] or g["maximize"] or g["momentum"] != self.momentum:
                    raise ValueError("fused SGD implements plain momentum SGD, one momentum for the group")
        self.stepped = [name for name, rows in self.params.items() if rows.requires_grad]
        self.optimizer = FusedSGD([self.params[n] for n in self.stepped], [self.trained[n] for n in self.stepped],
                                  self.momentum)
        with torch.no_grad():
            for name in self.stepped:
                state = self.optimizer.buffers(self.params[name])
                for m, (learner, params) in enumerate(zip(learners, own)):
                    held = learner.optimizer.state.get(params[name], {}).get("momentum_buffer")
                    if held is not None:
                        state["momentum_buffer"][m].copy_(held)
                        state["stepped"][m] = True
        self.scaled = precision.needs_scaler
        self.scaler = RowScaler([learner.scaler for learner in learners], dev)

    @property
    def buf(self) -> dict[str, torch.Tensor]:
        """Each stepped parameter's momentum buffers (rows)."""
        return {name: self.optimizer.buffers(self.params[name])["momentum_buffer"] for name in self.stepped}

    def set_epoch(self, epoch: int) -> list[dict[str, float]]:
        lrs = super().set_epoch(epoch)
        for name, group in zip(self.stepped, self.optimizer.param_groups):
            groups = [learner.optimizer.param_groups[g[name]] if name in g else None
                      for learner, g in zip(self.learners, self.group_of)]
            group["lr"] = torch.tensor([g["lr"] if g else 0.0 for g in groups], device=group["lr"].device)
            group["weight_decay"] = torch.tensor([g["weight_decay"] if g else 0.0 for g in groups],
                                                 device=group["lr"].device)
        return lrs

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, params, (x,))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for rows in self.params.values():
            rows.grad = None
        with self.precision.autocast():
            out = vmap(self._forward, in_dims=(0, None), randomness="same")(self.params, x)  # [M, B, classes]
            losses = vmap(lambda o: nn.functional.cross_entropy(o, y))(out.float())  # [M]
        (losses * self.scaler.scale if self.scaled else losses).sum().backward()
        with torch.no_grad():
            self.sgd()
            for m, learner in enumerate(self.learners):
                learner.sums.add(losses[m], out[m], y)

    def sgd(self) -> None:
        """One torch.optim.SGD step of every member whose gradients are finite (all of them
        unless a loss scale overflowed), then the loss scales' update."""
        grads = {name: self.params[name].grad for name in self.stepped}
        ok = self.scaler.unscale(grads, self.trained)
        self.optimizer.step(ok=ok if self.scaled else None)
        self.scaler.update(ok)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output, [M, B, classes], in chunks of the batch that keep the
        members' activations within about one evaluation batch of memory."""
        chunk = max(1, EVAL_BATCH // len(self.learners))
        return torch.cat([vmap(self._forward, in_dims=(0, None))(self.params, part) for part in x.split(chunk)], 1)

    def sync(self) -> None:
        """Each member's optimizer and scaler take its momentum buffers (copies, on the CPU,
        where a checkpoint keeps them) and loss scale: the members' states are then the
        whole record (parameters are views of the rows already)."""
        for m, learner in enumerate(self.learners):
            if self.momentum:  # torch.optim.SGD keeps no buffer without momentum
                for name in self.stepped:
                    state = self.optimizer.buffers(self.params[name])
                    if name in self.group_of[m] and state["stepped"][m]:
                        learner.optimizer.state[self.own[m][name]]["momentum_buffer"] = \
                            state["momentum_buffer"][m].detach().to("cpu", copy=True)
            if self.scaled:
                learner.scaler.load_state_dict(self.scaler.member(m))
