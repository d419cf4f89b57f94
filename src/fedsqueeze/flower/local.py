"""``fedsqueeze flower local``: a whole Flower federation on 127.0.0.1, started, used and stopped.

``LocalFederation`` starts a SuperLink and N SuperNodes (``partition-id=i num-partitions=N``) on free
loopback ports, with TLS (a throw-away CA, see ``tls``) unless ``insecure``, and with ``auth`` SuperNode
authentication (a key pair per node, registered with ``flwr supernode register`` before the node
starts; nodes with other keys are refused, see ``auth``); ``run`` submits an app
with ``flwr run --stream`` and streams its lines. Every process it starts — and everything those
start (Flower's SuperExec, ServerApp and ClientApp processes) — is stopped on exit, on errors and on
Ctrl-C: SIGTERM, then SIGKILL after a grace period. Flower's state lives in a private ``FLWR_HOME``;
``FLWR_DISABLE_UPDATE_CHECK=1`` everywhere.

ClientApps: by default (``long_lived``) every SuperNode runs with ``--isolation process`` and is served by
one long-lived ``clientapp_worker`` process that keeps torch, the data, the partition and the model loaded
between messages; it is started after its SuperNode, restarted if it dies while the SuperNode runs, and
stopped with it. ``long_lived=False`` is Flower's default: a fresh ClientApp process per message, which
costs seconds of start-up per client and round.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fedsqueeze.errors import FedsqueezeError
from fedsqueeze.flower.app_template import CONNECTION, connection_toml
from fedsqueeze.flower.auth import NodeKey, make_supernode_keys
from fedsqueeze.flower.tls import Certificates, make_certificates

HOST = "127.0.0.1"
MAX_RESTARTS = 3  # of a long-lived ClientApp process per SuperNode


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedsqueezeError(f"{what} exited with code {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise FedsqueezeError(f"{what} did not open port {port} within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none): Flower detaches its SuperExec into
    its own session, so killing a process group would miss it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def processes_with(entry: bytes) -> list[int]:
    """Live processes whose environment holds ``entry`` (e.g. ``b"FLWR_HOME=/tmp/x"``): all a local
    federation started, orphans included, since children inherit the environment."""
    if not Path("/proc").is_dir():
        return []
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and environ_has(int(e.name), entry) and not _zombie(int(e.name))]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_tree(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, grace: float = 5.0,
              mark: bytes | None = None) -> None:
    """Signal a process and all its descendants; SIGKILL whatever is left after ``grace`` seconds.
    The tree is frozen first (SIGSTOP until no new child appears), so nothing spawned meanwhile escapes.
    With ``mark`` (an environment entry), only processes still carrying it get the final SIGKILL."""
    pids: list[int] = []
    while True:
        new = [p for p in [proc.pid, *descendants(proc.pid)] if p not in pids]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        pids += new
    for pid in pids:
        _signal(pid, sig)
        _signal(pid, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (proc.poll() is None or any(not _zombie(p) for p in pids[1:])):
        time.sleep(0.1)
    for pid in pids:
        if (pid == proc.pid and proc.poll() is not None) or _zombie(pid):
            continue
        if pid == proc.pid or mark is None or environ_has(pid, mark):
            _signal(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class LocalFederation:
    """A SuperLink and ``nodes`` SuperNodes on 127.0.0.1; a context manager that always cleans up."""

    def __init__(self, workdir: str | Path, nodes: int, *, insecure: bool = False, auth: bool = False,
                 log: Callable[[str], None] = print, startup_timeout: float = 90.0,
                 long_lived: bool = True, node_poll_s: float = 0.0) -> None:
        if auth and insecure:
            raise FedsqueezeError("SuperNode authentication needs TLS (Flower refuses it in plaintext); "
                                  "drop --insecure or --auth")
        self.dir = Path(workdir).resolve()
        self.nodes = nodes
        self.insecure = insecure
        self.auth = auth
        self.keys: list[NodeKey] = []
        self.log = log
        self.startup_timeout = startup_timeout
        self.home = self.dir / "flwr-home"
        self.logs = self.dir / "logs"
        self.certs: Certificates | None = None
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}
        self._procs: list[subprocess.Popen] = []
        self.run_args: list[str] = []  # extra `flwr run` arguments (the simulation's --federation-config)
        # long_lived: SuperNodes run with --isolation process, each served by one clientapp_worker process
        # (restarted by a supervisor thread if it dies while its SuperNode lives); else Flower's fresh
        # flwr-clientapp process per message
        self.long_lived = long_lived
        # node_poll_s > 0: SuperNodes wait at most this long between polls (fast_supernode) instead of
        # Flower's fixed 3 s when idle
        self.node_poll_s = node_poll_s
        self.workers: dict[str, subprocess.Popen] = {}
        self._runtime_port: dict[str, int] = {}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.home)
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        if env.get("PYTHONPATH"):  # Flower's processes run in the work folder: relative entries would miss
            env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) if p else p
                                                for p in env["PYTHONPATH"].split(os.pathsep))
        return env

    def tls_args(self, role: str) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        assert self.certs is not None
        if role == "superlink":
            return ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.cert),
                    "--ssl-keyfile", str(self.certs.key)]
        return ["--root-certificates", str(self.certs.ca)]

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            self.certs = make_certificates(self.dir / "certs", (HOST, "localhost"))
        self.port = free_port()
        (self.home / "config.toml").write_text(connection_toml(
            self.address, insecure=self.insecure, root_certificates=str(self.certs.ca) if self.certs else ""))
        self.superlink = self._spawn("superlink", [
            "flower-superlink", *self.tls_args("superlink"), "--disable-runtime-dependency-installation",
            *(["--enable-supernode-auth"] if self.auth else []), "--host", HOST, "--port", str(self.port)])
        wait_for_port(self.port, self.superlink, self.startup_timeout, "flower-superlink",
                      self.logs / "superlink.log")
        self.log(f"SuperLink on {self.address} ({'plaintext' if self.insecure else 'TLS'}"
                 f"{', SuperNode authentication' if self.auth else ''})")
        if self.auth:
            self.keys = make_supernode_keys(self.dir / "keys", self.nodes)
            for key in self.keys:
                self.register(key)
        for i in range(self.nodes):
            self.start_supernode(i)
        self.log(f"{self.nodes} SuperNode(s) started (partition-id 0..{self.nodes - 1})")

    def register(self, key: NodeKey) -> None:
        """``flwr supernode register``: let the SuperNode holding ``key`` join (retried while the SuperLink's
        Control API is still starting)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                proc = subprocess.run(["flwr", "supernode", "register", str(key.public), CONNECTION],
                                      capture_output=True, text=True, env=self.env(), cwd=self.dir,
                                      stdin=subprocess.DEVNULL, timeout=self.startup_timeout)
                if proc.returncode == 0:
                    return
                output = (proc.stdout + proc.stderr).strip()[-2000:]
            except subprocess.TimeoutExpired:
                output = f"`flwr supernode register` did not finish within {self.startup_timeout:.0f} s"
            if time.monotonic() > deadline:
                raise FedsqueezeError(f"could not register {key.public} with the SuperLink:\n{output}")
            time.sleep(1.0)

    def start_supernode(self, i: int, *, name: str = "", tls_args: list[str] | None = None,
                        extra: list[str] | None = None, key: Path | None = None) -> subprocess.Popen:
        """SuperNode for partition ``i`` (log ``logs/<name>.log``); ``tls_args`` replace the federation's;
        ``key``: its authentication private key (default: node ``i``'s registered key, with ``auth``)."""
        name = name or f"supernode-{i}"
        if key is None and self.auth and i < len(self.keys):
            key = self.keys[i].private
        port = free_port()
        launcher = [sys.executable, "-m", "fedsqueeze.flower.fast_supernode", str(self.node_poll_s)] \
            if self.node_poll_s > 0 else ["flower-supernode"]
        proc = self._spawn(name, [
            *launcher, *(self.tls_args("supernode") if tls_args is None else tls_args),
            "--superlink", self.address, "--port", str(port),
            "--node-config", f"partition-id={i} num-partitions={self.nodes}",
            *(["--isolation", "process"] if self.long_lived else []),
            *(["--auth-supernode-private-key", str(key)] if key is not None else []), *(extra or [])])
        self.supernodes[name] = proc
        if self.long_lived:
            self._runtime_port[name] = port
            self._start_worker(name)
            if self._supervisor is None:
                self._supervisor = threading.Thread(target=self._supervise, daemon=True)
                self._supervisor.start()
        return proc

    def _start_worker(self, name: str) -> None:
        """The long-lived ClientApp of SuperNode ``name`` (log ``logs/<name>-clientapp.log``)."""
        self.workers[name] = self._spawn(f"{name}-clientapp", [
            sys.executable, "-m", "fedsqueeze.flower.clientapp_worker", "--insecure",
            "--runtime-api-address", f"{HOST}:{self._runtime_port[name]}",
            "--parent-pid", str(self.supernodes[name].pid)])

    def _supervise(self) -> None:
        """Restart a long-lived ClientApp that died while its SuperNode runs (at most ``MAX_RESTARTS`` times
        per SuperNode: one that keeps dying is reported and left down)."""
        restarts: dict[str, int] = {}
        while not self._stopping.wait(0.5):
            for name, worker in list(self.workers.items()):
                node = self.supernodes.get(name)
                if worker.poll() is None or node is None or node.poll() is not None or self._stopping.is_set():
                    continue
                if restarts.get(name, 0) >= MAX_RESTARTS:
                    continue
                restarts[name] = restarts.get(name, 0) + 1
                last = restarts[name] == MAX_RESTARTS
                self.log(f"the ClientApp of {name} exited with code {worker.returncode}; "
                         + (f"restarted it (last of {MAX_RESTARTS} restarts)" if last else "restarting it")
                         + f"; log {self.logs / (name + '-clientapp.log')}")
                self._start_worker(name)

    def kill_node(self, i: int) -> None:
        """Crash SuperNode ``i`` (SIGKILL to it and its ClientApp processes, no goodbye to the SuperLink)."""
        stop_tree(self.supernodes[f"supernode-{i}"], sig=signal.SIGKILL, grace=2.0, mark=self.mark)
        if f"supernode-{i}" in self.workers:
            stop_tree(self.workers[f"supernode-{i}"], sig=signal.SIGKILL, grace=2.0, mark=self.mark)

    @property
    def mark(self) -> bytes:
        """The environment entry every process of this federation carries."""
        return f"FLWR_HOME={self.home}".encode()

    def pids(self) -> list[int]:
        """Every live process this federation started, directly or not."""
        return processes_with(self.mark)

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(), cwd=self.dir, start_new_session=True)
        finally:
            out.close()
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        self._stopping.set()  # no ClientApp restarts from here on
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        with _uninterrupted():
            for proc in reversed(self._procs):  # `flwr run`, the SuperNodes, then the SuperLink
                if proc.poll() is None or descendants(proc.pid):
                    stop_tree(proc, mark=self.mark)
            self._procs.clear()
            deadline = time.monotonic() + 10.0
            while (left := processes_with(self.mark)) and time.monotonic() < deadline:
                for pid in left:  # orphans (a ClientApp whose SuperNode was killed), exiting stragglers
                    _signal(pid, signal.SIGKILL)
                time.sleep(0.1)

    # ---- running an app ----------------------------------------------------------------------------
    def run(self, app_dir: str | Path, *, timeout: float | None = None,
            on_line: Callable[[str], None] = print, run_config: list[str] | None = None) -> int:
        """``flwr run APP --stream`` against this federation; returns its exit code. Raises on timeout."""
        cmd = ["flwr", "run", str(Path(app_dir).resolve()), CONNECTION, "--stream", *self.run_args]
        for item in run_config or []:
            cmd += ["--run-config", item]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(), cwd=self.dir, start_new_session=True)
        self._procs.append(proc)
        reader = threading.Thread(target=_pump, args=(proc, on_line), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            raise FedsqueezeError(f"the Flower run did not finish within {timeout:.0f} s; logs in {self.logs}")
        finally:
            reader.join(timeout=5)
        return proc.returncode


@contextlib.contextmanager
def _uninterrupted():
    """A second Ctrl-C must not cut the clean-up short (main thread only: signals live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupt_on_termination():
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so ``with LocalFederation`` cleans up as on Ctrl-C."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _pump(proc: subprocess.Popen, on_line: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        on_line(raw.decode(errors="replace").rstrip())
