"""The experiment configuration's dataclasses: one per TOML table, with their defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    source: str = "fashion_mnist"
    dir: str = ""                     # where the dataset files are (else the standard search path)
    num_clients: int = 100
    partition: str = "dirichlet"      # iid | dirichlet | shards | natural (the dataset's own clients)
    alpha: float = 0.5                # Dirichlet concentration (smaller = more label skew)
    shards_per_client: int = 2        # classes-per-client style split for 'shards'
    holdout_fraction: float = 0.2     # per-client held-out share for personalised evaluation
    options: dict = field(default_factory=dict)  # extra keyword arguments for the data source


@dataclass
class ModelConfig:
    name: str = "mlp"
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    clients_per_round: int = 10
    client_fraction: float = 0.0      # if > 0, overrides clients_per_round (fraction of all clients)
    local_epochs: int = 1
    local_steps: int = 0              # if > 0, a fixed number of SGD steps instead of epochs
    batch_size: int = 32
    optimizer: str = "sgd"            # sgd | adam
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    loss: str = "cross_entropy"       # cross_entropy | mse | a name from fedsqueeze.register_loss (metrics/losses.py)


@dataclass
class CodecConfig:
    up: Any = "fp32"                  # codec spec for client -> server updates
    down: Any = "fp32"                # codec spec for server -> client broadcasts
    downlink: str = "broadcast"       # 'broadcast': one payload for all; 'delta': each client gets the coded
                                      # difference to the copy it holds (engine/delta.py)


@dataclass
class EvalConfig:
    every: int = 1                    # evaluate the global model every N rounds (and the last round)
    personal_every: int = 10          # evaluate personalised models on every client's held-out split
    batch_size: int = 1000
    metrics: list = field(default_factory=list)  # [] = accuracy + loss (loss alone for float targets); also
                                      # top<k>, mae, or names from fedsqueeze.register_metric (metrics/losses.py)


FAULT_KINDS = ("nan", "raise", "shape", "scale")  # injectable client faults (fedsqueeze.engine.faults)


@dataclass
class EngineConfig:
    workers: int = 0                  # 0 = clients run in this process; N = pool of N worker processes
    checkpoint_every: int = 1         # rounds between checkpoints (0 = never)
    # replies (both engines): a step that ends with fewer than min_replies *valid* replies (see
    # fedsqueeze.engine.validation) is skipped or fails the run per too_few
    min_replies: int = 1              # fewest valid client replies a communication step accepts
    round_timeout: float = 600.0      # seconds a step waits for replies (simulation: for a worker to finish a task)
    retries: int = 1                  # with too few replies: ask the clients that did not reply again, N times
    too_few: str = "skip"             # still too few: 'skip' the round (nothing changes) or 'fail' the run
    max_update_norm: float = 0.0      # reject a message whose L2 norm (all its tensors) exceeds this; 0 = off
    # simulated faults (off by default; deterministic in (seed, round, step, client)): fedsqueeze.engine.faults
    dropout: float = 0.0              # simulation: probability a sampled client does not reply (per attempt)
    straggler: float = 0.0            # simulation: probability a client misses the step's deadline (per attempt)
    vectorize: bool = False           # in process: train a step's clients together (torch.func.vmap); engine.vectorized
    faults: dict = field(default_factory=dict)  # testing: {"nan"|"raise"|"shape"|"scale": probability per step}
    # where clients train and models are evaluated (docs/gpu.md): auto = CUDA when available, else CPU
    device: str = "auto"              # auto | cpu | cuda | cuda:N | mps
    devices: list = field(default_factory=list)  # worker pool: devices its workers use round-robin, e.g. ["cuda:0", "cuda:1"]
    deterministic: bool = True        # CUDA: deterministic kernels (torch.use_deterministic_algorithms, cuDNN, cuBLAS)
    tf32: bool = False                # CUDA: allow TF32 matmuls/convolutions (faster, ~1e-3 relative error)
    # stragglers in time (simulation; engine/deadline.py): compute + simulated transfer time over the deadline
    deadline_s: float = 0.0           # seconds a client has per step; 0 = no deadline
    network: Any = ""                 # deadline_s: a compare network profile (lte, wifi, ... or a table); "" = no transfer time
    seconds_per_sample: float = 0.0   # deadline_s: modelled compute (s per training sample); 0 = measured wall time


@dataclass
class Config:
    name: str = "experiment"
    seed: int = 0
    rounds: int = 20
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: dict = field(default_factory=lambda: {"name": "fedavg"})
    codec: CodecConfig = field(default_factory=CodecConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def algorithm_name(self) -> str:
        return str(self.algorithm.get("name", "fedavg"))

    @property
    def algorithm_params(self) -> dict:
        return {k: v for k, v in self.algorithm.items() if k != "name"}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
