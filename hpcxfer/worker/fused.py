"""Fused mode of a protocol group: every member's step as one batched computation.

The members' parameters are stacked along a new first dimension, one row a member, and
`torch.func.vmap` of `functional_call` runs every member's forward on the shared batch
as one computation (a convolution over stacked weights becomes one grouped convolution).
`randomness="same"` gives every member the same dropout masks, drawn once from torch's
global generator exactly as one member's own forward draws them, as in looped mode. One
backward of the summed member losses gives each row its member's gradient (a member's
loss depends on its own row only), and `sgd` updates the rows as torch.optim.SGD would
update each member alone: weight decay added to the gradient, the momentum buffer set to
the first update and then `momentum * buf + d`, each member and layer at its own rate
(h, lr_high, lr_low and the member's decay d), and a member's frozen layers never touched.

The members' own modules, optimizers and scalers stay the record of their state: their
parameters and momentum buffers are views of the stacked rows, and `sync` writes the
loss scales back, so one group checkpoint resumes in either mode. Results agree with
looped mode to float32 rounding, not bit for bit: where rounding tips a max-pooling
near-tie, that window's gradient takes another (equally valid) path, and training
amplifies the difference as it amplifies any one-ulp change (tests/test_group_fused.py
states, measures and checks the tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from hpcxfer.worker.learners import Learner, Trainer
from hpcxfer.worker.precision import Precision
from hpcxfer.worker.train import EVAL_BATCH

#: A model with buffers (batch norm's running statistics) cannot be stepped by vmap in place.
UNSUPPORTED = "fused mode steps models without buffers only"


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value a member, shaped to broadcast over `like`'s rows."""
    return values.to(like.dtype if values.is_floating_point() else values.dtype).view(-1, *[1] * (like.dim() - 1))


def fusable(model: nn.Module) -> bool:
    return next(model.buffers(), None) is None


class Fused(Trainer):
    """Every member's forward, backward and SGD step as one computation on stacked rows."""

    def __init__(self, learners: Sequence[Learner], precision: Precision):
        if not fusable(learners[0].model):
            raise ValueError(UNSUPPORTED)
        super().__init__(learners, precision)
        self.base = learners[0].model  # the architecture; functional_call swaps its parameters
        own = [dict(learner.model.named_parameters()) for learner in learners]
        self._own = own
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
                    params[name].data = rows[m]  # the member's module now reads and saves its row
        self.momentum = learners[0].optimizer.param_groups[0]["momentum"]
        for learner in learners:
            for g in learner.optimizer.param_groups:
                if g["dampening"] or g["nesterov"] or g["maximize"] or g["momentum"] != self.momentum:
                    raise ValueError("fused SGD implements plain momentum SGD, one momentum for the group")
        self.buf = {name: torch.zeros_like(rows) for name, rows in self.params.items() if rows.requires_grad}
        # whether a member has stepped: from then on its optimizer's state shows its buffers
        self.started = torch.zeros(len(learners), dtype=torch.bool, device=dev)
        for m, (learner, params) in enumerate(zip(learners, own)):
            for name, buf in self.buf.items():
                held = learner.optimizer.state.get(params[name], {}).get("momentum_buffer")
                if held is not None:
                    buf[m].copy_(held)
                    self.started[m] = True
            if self.started[m]:
                self._publish(m)
        self.all_started = bool(self.started.all())
        scales = [learner.scaler.state_dict() for learner in learners]
        self.scaled = precision.needs_scaler
        self.scale = torch.tensor([s.get("scale", 1.0) for s in scales], device=dev)
        self.tracker = torch.tensor([s.get("_growth_tracker", 0) for s in scales], device=dev)
        self.lr: dict[str, torch.Tensor] = {}
        self.wd: dict[str, torch.Tensor] = {}

    def _publish(self, m: int) -> None:
        """Member m's momentum buffers, as views, where its own optimizer keeps them."""
        if self.momentum == 0:
            return  # torch.optim.SGD keeps no buffer without momentum
        state = self.learners[m].optimizer.state
        for name, buf in self.buf.items():
            if name in self.group_of[m]:
                state[self._own[m][name]]["momentum_buffer"] = buf[m]

    def set_epoch(self, epoch: int) -> list[dict[str, float]]:
        lrs = super().set_epoch(epoch)
        for name, rows in self.buf.items():
            groups = [learner.optimizer.param_groups[g[name]] if name in g else None
                      for learner, g in zip(self.learners, self.group_of)]
            self.lr[name] = _rows(torch.tensor([g["lr"] if g else 0.0 for g in groups], device=rows.device), rows)
            self.wd[name] = _rows(torch.tensor([g["weight_decay"] if g else 0.0 for g in groups],
                                               device=rows.device), rows)
        return lrs

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, params, (x,))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for rows in self.params.values():
            rows.grad = None
        with self.precision.autocast():
            out = vmap(self._forward, in_dims=(0, None), randomness="same")(self.params, x)  # [M, B, classes]
            losses = vmap(lambda o: nn.functional.cross_entropy(o, y))(out.float())  # [M]
        (losses * self.scale if self.scaled else losses).sum().backward()
        with torch.no_grad():
            self.sgd()
            for m, learner in enumerate(self.learners):
                learner.sums.add(losses[m], out[m], y)

    def sgd(self) -> None:
        """One torch.optim.SGD step of every member whose gradients are finite (all of them
        unless a loss scale overflowed), then the loss scales' update (torch.amp.GradScaler's)."""
        grads = {name: self.params[name].grad for name in self.buf}
        ok = torch.ones_like(self.started)
        if self.scaled:
            inv = self.scale.double().reciprocal().float()
            grads = {name: g * _rows(inv, g) for name, g in grads.items()}
            for name, g in grads.items():
                ok &= torch.isfinite(g).flatten(1).all(1) | ~self.trained[name]
        for name, g in grads.items():
            rows, buf = self.params[name], self.buf[name]
            take = _rows(ok & self.trained[name], rows)
            d = g + self.wd[name] * rows
            # Buffers start at zero, so a member's first update sets its buffer to d exactly,
            # as torch's clone(d); a member skipped (overflow) keeps its buffer.
            buf.copy_(torch.where(take, self.momentum * buf + d, buf))
            rows.sub_(torch.where(take, self.lr[name] * buf, 0.0))
        if not self.all_started:  # the first steps only: nonzero() waits for the device
            for m in (ok & ~self.started).nonzero().flatten().tolist():
                self.started[m] = True
                self._publish(m)
            self.all_started = bool(self.started.all())
        if self.scaled:
            first = self.learners[0].scaler
            grown = self.tracker + 1
            grow = ok & (grown == first.get_growth_interval())
            self.scale = torch.where(ok, torch.where(grow, self.scale * first.get_growth_factor(), self.scale),
                                     self.scale * first.get_backoff_factor())
            self.tracker = torch.where(ok & ~grow, grown, torch.zeros_like(grown))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's output, [M, B, classes], in chunks of the batch that keep the
        members' activations within about one evaluation batch of memory."""
        chunk = max(1, EVAL_BATCH // len(self.learners))
        return torch.cat([vmap(self._forward, in_dims=(0, None))(self.params, part) for part in x.split(chunk)], 1)

    def sync(self) -> None:
        """The members' scalers take their loss scales back (parameters and momentum
        buffers are views already): the members' states are then the whole record."""
        if not self.scaled:
            return
        for m, learner in enumerate(self.learners):
            learner.scaler.load_state_dict({**learner.scaler.state_dict(), "scale": float(self.scale[m]),
                                            "_growth_tracker": int(self.tracker[m])})
