"""A long-lived fedsqueeze ClientApp process for a SuperNode started with ``--isolation process``.

By default a Flower SuperNode starts a fresh ``flwr-clientapp`` process for every message; each one
re-imports torch and rebuilds the data, partition and model (seconds per message). With ``flower-supernode
--isolation process`` the SuperNode leaves starting ClientApps to an outside process that polls its
Runtime API (``--port``) for tasks. ``serve`` is that process, for fedsqueeze apps: it asks the SuperNode for
ClientApp tasks (``AcquireTask``) and runs each one *in this process* with the same Runtime API calls
``flwr-clientapp`` makes (pull the message and context, run the ClientApp, push the reply and the context),
so imports stay loaded and ``client_app`` keeps the data, partition and model between messages (cached per
process, keyed by the experiment config, rebuilt when it changes). The client's state still lives in the
SuperNode's ``Context.state``, as with per-message processes.

Start it next to each SuperNode (``fedsqueeze flower local`` does this itself)::

    flower-supernode --isolation process --port 9094 --superlink HOST:PORT --node-config '...' ...
    python -m fedsqueeze.flower.clientapp_worker --runtime-api-address 127.0.0.1:9094 --insecure

Only fedsqueeze apps (FAB publisher ``fedsqueeze``) are run; another app's task is answered with an error.
With ``--parent-pid`` the worker exits when that process (the SuperNode) does; while the SuperNode's Runtime
API cannot be reached (it is starting, or restarting) the worker retries, as Flower's own SuperExec does.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

PUBLISHER = "fedsqueeze/"


def _client(address: str, insecure: bool, root_certificates: bytes | None, component: str, token: str = ""):
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=insecure,
                                                 root_certificates=root_certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


PULL_BACKOFF_S = (0.02, 0.2)  # first wait and cap between tries for a message part not yet at the SuperNode


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's ``pull_task_input`` (message, context, run, FAB) with a short retry backoff: the message is
    announced before its parts have reached the SuperNode, and Flower's default first wait is 1 s
    (doubling), which on loopback costs seconds per message; here it starts at 20 ms, capped at 0.2 s."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=no-name-in-module
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("no message from the SuperNode's Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF_S[0], backoff_cap=PULL_BACKOFF_S[1])
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp: not in the deflated message
    return message, context, run, fab


def run_task(address: str, token: str, *, insecure: bool, root_certificates: bytes | None = None) -> str:
    """One ClientApp task (what ``flwr-clientapp --token`` does, without exiting); returns its sub-status."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    from fedsqueeze.flower.client_app import app

    client = _client(address, insecure, root_certificates, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    t0 = time.perf_counter()
    times: list[float] = []
    try:
        message, context, run, _fab = pull_task_input(client)
        times.append(time.perf_counter())
        if not str(run.fab_id).startswith(PUBLISHER):
            raise RuntimeError(f"this long-lived ClientApp runs fedsqueeze apps only, not {run.fab_id!r}; start the "
                               "SuperNode without --isolation process for other apps")
        reply = app(message=message, context=context)
        times.append(time.perf_counter())
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - reported to the ServerApp as an error reply, as flwr-clientapp does
        details = f"{type(ex)}:<'{ex}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
            if len(times) == 2:
                print(f"[fedsqueeze] {message.metadata.message_type} task: pull {times[0] - t0:.3f} s, run "
                      f"{times[1] - times[0]:.3f} s, push {time.perf_counter() - times[1]:.3f} s", flush=True)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return status


def serve(address: str, *, insecure: bool, root_certificates: bytes | None = None, poll_s: float = 0.05,
          max_tasks: int | None = None) -> int:
    """Poll the SuperNode's Runtime API for ClientApp tasks and run them here; returns the tasks run."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType

    import fedsqueeze.flower.client_app  # noqa: F401  (torch, the engine: imported once, before any task)

    client = _client(address, insecure, root_certificates, "SuperExec")
    done = 0
    try:
        while max_tasks is None or done < max_tasks:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)]))
            if res.HasField("task") and res.token:
                run_task(address, res.token, insecure=insecure, root_certificates=root_certificates)
                done += 1
            else:
                time.sleep(poll_s)
    finally:
        client.close()
    return done


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedsqueeze.flower.clientapp_worker",
                                description="A long-lived fedsqueeze ClientApp for a SuperNode started with "
                                            "--isolation process.")
    p.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                   help="the SuperNode's Runtime API (its --host:--port; default 127.0.0.1:9094)")
    p.add_argument("--insecure", action="store_true", help="plain HTTP to the Runtime API (loopback)")
    p.add_argument("--root-certificates", help="CA certificate of the Runtime API's TLS certificate")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between polls for a task (default 0.05)")
    args = p.parse_args(argv)
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor
        start_parent_process_monitor(args.parent_pid)
    certs = open(args.root_certificates, "rb").read() if args.root_certificates else None
    serve(args.runtime_api_address, insecure=args.insecure, root_certificates=certs, poll_s=args.poll)


if __name__ == "__main__":
    main()
