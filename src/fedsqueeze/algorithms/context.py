"""What a client update gets to work with: its data, reusable models, the training recipe and the task
loss (``ClientContext.loss``: ``train.loss``, the one entry point every algorithm trains its task term with)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
import torch
from torch import nn

from fedsqueeze.config import TrainConfig
from fedsqueeze.seeding import derive_seed, torch_generator


class ClientData:
    """A client's training tensors, and its held-out split (gathered only when asked for)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, holdout: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        self.x, self.y = x, y
        self._holdout = holdout
        self.augment = augment  # the dataset's training augmentation (Dataset.augment), if any

    def holdout(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._holdout()

    def __len__(self) -> int:
        return int(self.y.shape[0])


def batch_indices(n: int, batch_size: int, *, epochs: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """Mini-batch index tensors: ``steps`` batches if steps > 0, else ``epochs`` shuffled passes."""
    g = torch_generator(seed, "batches")
    if steps > 0:
        done = 0
        while done < steps:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                if done == steps:
                    return
                yield perm[i:i + batch_size]
                done += 1
        return
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


class ClientContext:
    """Per-client, per-step view the engine hands to ``Algorithm.client_update``."""

    def __init__(self, client: int, rnd: int, step: int, data: ClientData, train: TrainConfig,
                 models: Callable[[str], nn.Module], run_seed: int,
                 initial: Callable[[str], dict[str, torch.Tensor]] | None = None) -> None:
        self.client = client
        self.round = rnd
        self.step = step
        self.data = data
        self.train = train
        self._models = models
        self._initial = initial
        self.seed = derive_seed(run_seed, "client", rnd, client, step)

    def model(self, slot: str = "model") -> nn.Module:
        """The worker's reusable module for a model slot (load weights into it; never keep it)."""
        return self._models(slot)

    def initial_weights(self, slot: str = "model") -> dict[str, torch.Tensor]:
        """The run's seeded initial weights for a slot (identical on every client and the server)."""
        if self._initial is None:
            raise RuntimeError("this context has no initial weights")
        return self._initial(slot)

    def batches(self, *, epochs: int | None = None, steps: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        tr = self.train
        augment = getattr(self.data, "augment", None)  # e.g. CIFAR's crop + flip, on the batch's device
        g = torch_generator(self.seed, "augment") if augment is not None else None
        for idx in batch_indices(len(self.data), tr.batch_size,
                                 epochs=tr.local_epochs if epochs is None else epochs,
                                 steps=tr.local_steps if steps is None else steps, seed=self.seed):
            # indices come from the seeded CPU generator (identical on every device); the data stay put
            idx = idx.to(self.data.x.device)
            xb = self.data.x[idx]
            yield (xb if augment is None else augment(xb, g)), self.data.y[idx]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured task loss (``train.loss``; cross-entropy by default) of a batch: its mean."""
        fn = self.__dict__.get("_loss_fn")
        if fn is None:
            from fedsqueeze.metrics.losses import get_loss
            fn = self._loss_fn = get_loss(getattr(self.train, "loss", "cross_entropy"))
        return fn(outputs, targets)

    def optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        tr = self.train
        lr = tr.lr if lr is None else lr
        if tr.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=tr.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=tr.momentum, weight_decay=tr.weight_decay)


def train_locally(model: nn.Module, ctx: ClientContext,
                  loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                  after_backward: Callable[[], None] | None = None) -> tuple[float, int]:
    """Plain local SGD over the client's batches; returns (mean loss, steps). ``loss_fn`` and
    ``after_backward`` (e.g. a gradient correction) let algorithms customise the step."""
    torch.manual_seed(ctx.seed)  # any stochastic layer is reproducible too
    model.train()
    opt = ctx.optimizer(model.parameters())
    total, steps = 0.0, 0
    for xb, yb in ctx.batches():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, xb, yb) if loss_fn else ctx.loss(model(xb), yb)
        loss.backward()
        if after_backward is not None:
            after_backward()
        opt.step()
        total += loss.item()
        steps += 1
    return (total / steps if steps else 0.0), steps
