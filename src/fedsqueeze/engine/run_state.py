"""A run's persistent state: starting fresh, resuming from the last checkpoint, loading it read-only
for reports, and writing checkpoints. ``Simulation`` inherits these; the round loop is in
``fedsqueeze.engine.simulation``."""
from __future__ import annotations

import json
from typing import Any

import torch

from fedsqueeze.config import Config, from_dict, to_toml
from fedsqueeze.data.partition import describe
from fedsqueeze.engine import delta, rundir
from fedsqueeze.engine.atomic import atomic_write_bytes, remove_temp_files
from fedsqueeze.engine.checkpoint import restore_checkpoint, save_checkpoint
from fedsqueeze.engine.device import describe as describe_device
from fedsqueeze.engine.state import ClientStateStore
from fedsqueeze.errors import ConfigError, FedsqueezeError
from fedsqueeze.wire.ledger import Ledger


class RunState:
    """Mixed into ``Simulation`` (which provides cfg, run_dir, runtime, algo, partition, dataset, delta,
    writer, rejections, warnings, log and device)."""

    def start(self, *, resume: bool = False) -> None:
        """Initialise (or restore) server state, ledger, history and client store."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("clients", "mirrors"):  # state files are deleted there: they must be the run's own
            path = self.run_dir / sub
            if path.is_symlink() or (path.exists() and not rundir.inside(path, self.run_dir)):
                raise FedsqueezeError(f"{path} is a link out of the run folder; a run deletes old state files "
                                      "there, so it must be a plain folder: remove the link")
        for folder in (self.run_dir, self.run_dir / "clients", self.run_dir / "mirrors"):
            if folder.is_dir():
                remove_temp_files(folder)  # left by a write that a crash interrupted
        if not (resume and self._resume()):
            self._fresh()
        atomic_write_bytes(self.run_dir / "device.json",
                           json.dumps(describe_device(self.device, self.cfg.engine), indent=1).encode())

    def _fresh(self) -> None:
        self.server_state = self.algo.init_server(self._seeded_model())
        self.down_codec_state: dict[str, Any] = {}
        self.ledger = Ledger()
        self.history: list[dict] = []
        self.store = ClientStateStore(self.run_dir / "clients")
        self.store.collect_garbage()
        self.prev_index: dict[int, int] = {}
        self.prev_mirror_index: dict[int, int] = {}
        if self.delta:
            self.mirrors = delta.ServerMirrors(self.run_dir / "mirrors")
            self.mirrors.store.collect_garbage()
        self.start_round = 1
        # atomic: `run --resume` reads config.json, even after a crash before the first checkpoint
        atomic_write_bytes(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=1).encode())
        atomic_write_bytes(self.run_dir / "config.toml", to_toml(self.cfg.to_dict()).encode())
        from fedsqueeze.data.federated import partition_labels
        stats = self.partition.stats(*partition_labels(self.dataset))  # float targets: one class
        (self.run_dir / "partition.json").write_text(json.dumps(stats))
        self.log(describe(stats))
        self.writer.rewrite_rounds([])
        self.rejections.clear()

    def _seeded_model(self) -> torch.nn.Module:
        model = self.runtime.build("model")
        model.load_state_dict(self.runtime.initial_weights("model"), strict=False)
        return model

    def _resume(self) -> bool:
        from fedsqueeze.engine.checkpoint import load_checkpoint

        found, damaged = load_checkpoint(self.run_dir)
        if found is None and damaged:  # not a crash before the first checkpoint: refuse, change nothing
            raise FedsqueezeError(f"{damaged[0].split(';')[0]} and there is no intact previous checkpoint, so "
                                  f"{self.run_dir} cannot continue; start it again with `fedsqueeze run "
                                  f"{self.run_dir / 'config.toml'} --out {self.run_dir} --overwrite`")
        ckpt, warnings = restore_checkpoint(self.run_dir)
        self.warnings += warnings
        if ckpt is None:
            return False
        saved = from_dict(ckpt["config"])
        if _identity(saved) != _identity(self.cfg):
            raise ConfigError(f"{self.run_dir} was started with a different configuration; resume it with its "
                              "own config (only 'rounds' may change) or start a new run directory")
        self._adopt(ckpt)
        # the checkpoint just loaded becomes the previous one at the next save: keep its client files
        self.prev_index = dict(ckpt["client_index"])
        self.prev_mirror_index = dict(ckpt.get("mirror_index", {}))
        if self.delta:
            self.mirrors = delta.ServerMirrors(self.run_dir / "mirrors", ckpt.get("mirror_index", {}))
        self.writer.rewrite_rounds(self.history)
        self.rejections.trim(ckpt["round"])
        return True

    def load_readonly(self) -> None:
        """Restore the last checkpoint for reading (``fedsqueeze personal``): nothing in the run folder
        is created, renamed, rewritten or deleted; a corrupt checkpoint is a one-line error."""
        from fedsqueeze.engine.checkpoint import load_checkpoint

        ckpt, warnings = load_checkpoint(self.run_dir)
        if warnings:
            raise FedsqueezeError(f"{warnings[0].split(';')[0]}; `fedsqueeze run --resume {self.run_dir}` "
                                  "recovers from the previous checkpoint (reports never modify a run)")
        if ckpt is None:
            raise FedsqueezeError(f"{self.run_dir} has no readable checkpoint; personal reports need "
                                  "engine.checkpoint_every > 0")
        if _identity(from_dict(ckpt["config"])) != _identity(self.cfg):
            raise ConfigError(f"{self.run_dir / 'config.json'} does not match the run's checkpoint (edited?); "
                              "restore it from the run's config.toml")
        self._adopt(ckpt, create=False)

    def _adopt(self, ckpt: dict, *, create: bool = True) -> None:
        """Server state, downlink codec state, ledger, history and client store from a checkpoint."""
        self.server_state = ckpt["server_state"]
        self.down_codec_state = ckpt["down_codec_state"]
        self.ledger = Ledger.from_state(ckpt["ledger"])
        self.history = ckpt["history"]
        self.store = ClientStateStore(self.run_dir / "clients", ckpt["client_index"], create=create)
        self.start_round = ckpt["round"] + 1

    def _checkpoint(self, rnd: int) -> None:
        save_checkpoint(self.run_dir, {
            "round": rnd, "config": self.cfg.to_dict(), "server_state": self.server_state,
            "down_codec_state": self.down_codec_state, "ledger": self.ledger.to_state(),
            "history": self.history, "client_index": dict(self.store.index), "prev_index": self.prev_index,
            "mirror_index": dict(self.mirrors.store.index) if self.mirrors else {}})
        self.store.collect_garbage(also_keep=self.prev_index)
        self.prev_index = dict(self.store.index)
        if self.mirrors is not None:
            self.mirrors.store.collect_garbage(also_keep=self.prev_mirror_index)
            self.prev_mirror_index = dict(self.mirrors.store.index)


def _identity(cfg: Config) -> dict:
    """What a resumed run must share with its checkpoint: everything but ``rounds`` and the devices
    (resuming on another device continues the run; only the same device reproduces it bit for bit)."""
    d = cfg.to_dict()
    d["rounds"] = 0
    d["engine"] = {k: v for k, v in d["engine"].items() if k not in ("device", "devices")}
    return d
