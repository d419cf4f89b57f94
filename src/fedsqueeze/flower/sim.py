"""``fedsqueeze flower sim``: the same ServerApp/ClientApp on Flower's Simulation Engine (Ray backend).

``SimFederation`` starts a private SuperLink in simulation mode (``flower-superlink --simulation``, plaintext
on a free 127.0.0.1 port, its own ``FLWR_HOME``) and runs the app with ``flwr run --stream
--federation-config 'num-supernodes=N ...'``. Flower then starts ``flwr-simulation``, which runs the
ServerApp and N virtual SuperNodes whose ClientApps execute in Ray actors; node ``i`` gets
``partition-id=i num-partitions=N`` as node config, exactly what ``flower local`` passes to its SuperNodes,
so the ServerApp and ClientApp are unchanged and the ledger holds the embedded engine's bytes.

Resources (Flower's ``client-resources``): ``num_cpus``/``num_gpus`` per ClientApp (Ray runs as many
ClientApps at once as the resources allow). ``ray_address`` joins an existing Ray cluster (``ray start
--head`` on one machine, ``ray start --address=HEAD:6379`` on the others): it is handed to Ray as
``RAY_ADDRESS``, which ``ray.init()`` reads; without it Ray starts a private single-machine cluster that
is stopped with the run (``RAY_ADDRESS=local``, so a stale ``/tmp/ray/ray_current_cluster`` left by an
uncleanly stopped ``ray start`` is never joined). Every process started (SuperLink, ``flwr-simulation``, Ray's local cluster) is
stopped on exit, on errors and on Ctrl-C, as in ``local``.
"""
from __future__ import annotations

from pathlib import Path

from fedsqueeze.errors import FedsqueezeError, MissingExtraError
from fedsqueeze.flower.local import LocalFederation, wait_for_port

SIM_RANGE = ">=1.41,<1.42"  # the sim extra: flwr[simulation] in this range


def require_ray() -> None:
    """Fail with an actionable one-line message when Flower's Ray backend is missing."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("Flower's Simulation Engine needs Ray; install the extra: "
                                f"pip install 'fedsqueeze[sim]' (flwr[simulation]{SIM_RANGE})") from e


def federation_config(supernodes: int, *, num_cpus: int | None = None, num_gpus: float | None = None,
                      ray_address: str = "") -> list[str]:
    """``flwr run --federation-config`` items for ``supernodes`` virtual SuperNodes."""
    if supernodes < 1:
        raise FedsqueezeError(f"--supernodes must be >= 1, got {supernodes}")
    items = [f"num-supernodes={supernodes}", 'backend="ray"']
    if num_cpus is not None:
        if num_cpus < 1:
            raise FedsqueezeError(f"--num-cpus must be a whole number >= 1 (CPUs per ClientApp), got {num_cpus}")
        items.append(f"client-resources-num-cpus={int(num_cpus)}")
    if num_gpus is not None:
        if not num_gpus >= 0:
            raise FedsqueezeError(f"--num-gpus must be >= 0 (GPUs per ClientApp), got {num_gpus}")
        items.append(f"client-resources-num-gpus={float(num_gpus)}")
    if not ray_address:  # a private Ray cluster: quiet; a joined cluster keeps its own settings
        items.append('init-args-logging-level="error"')
    return items


class SimFederation(LocalFederation):
    """A SuperLink in simulation mode on 127.0.0.1 (no SuperNode processes: Flower simulates them)."""

    def __init__(self, workdir: str | Path, supernodes: int, *, num_cpus: int | None = None,
                 num_gpus: float | None = None, ray_address: str = "", **kw) -> None:
        super().__init__(workdir, supernodes, insecure=True, **kw)
        self.ray_address = ray_address
        self.run_args = [a for item in federation_config(supernodes, num_cpus=num_cpus, num_gpus=num_gpus,
                                                         ray_address=ray_address)
                         for a in ("--federation-config", item)]

    def env(self) -> dict[str, str]:
        env = super().env()
        # Without an address ray.init() joins the cluster named in /tmp/ray/ray_current_cluster, a file
        # that outlives a `ray start` cluster stopped uncleanly: it then waits forever for a dead GCS.
        # "local" makes it start the private cluster this command promises.
        env["RAY_ADDRESS"] = self.ray_address or "local"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        return env

    def start(self) -> None:
        from fedsqueeze.flower.app_template import connection_toml
        from fedsqueeze.flower.local import free_port

        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(connection_toml(self.address, insecure=True))
        self.superlink = self._spawn("superlink", [
            "flower-superlink", "--insecure", "--simulation", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port)])
        wait_for_port(self.port, self.superlink, self.startup_timeout, "flower-superlink",
                      self.logs / "superlink.log")
        where = f"Ray cluster at {self.ray_address}" if self.ray_address else "a private Ray cluster"
        self.log(f"SuperLink (simulation) on {self.address}; {self.nodes} virtual SuperNode(s) on {where}")


def run_sim(cfg, supernodes: int, out: Path, *, num_cpus: int | None = None, num_gpus: float | None = None,
            ray_address: str = "", timeout: float | None = None, workdir: Path | None = None,
            log=print, on_line=print) -> list[dict]:
    """Write the app, start a simulation-mode SuperLink, run on ``supernodes`` virtual SuperNodes, stop;
    the round history."""
    from fedsqueeze.flower import require_flwr
    from fedsqueeze.flower.commands import finish_run

    require_flwr()
    require_ray()
    if cfg.data.num_clients != supernodes:
        raise FedsqueezeError(f"--supernodes {supernodes} but data.num_clients = {cfg.data.num_clients}: one "
                              f"virtual SuperNode per client; pass --set data.num_clients={supernodes} or "
                              f"--supernodes {cfg.data.num_clients}")
    federation_config(supernodes, num_cpus=num_cpus, num_gpus=num_gpus, ray_address=ray_address)  # checks
    return finish_run(cfg, out, workdir, lambda work: SimFederation(
        work, supernodes, num_cpus=num_cpus, num_gpus=num_gpus, ray_address=ray_address, log=log),
        insecure=True, timeout=timeout, on_line=on_line)
