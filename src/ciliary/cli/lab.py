"""``ciliary lab up|apply|status|kubeconfig|exec|down|restart-agent|stop-agent|list``: a lab from
the shell.

All the work is in ``ciliary.lab.manager``; this module only parses arguments, checks for root
up front (building netns and loading BPF fail late and confusingly otherwise), shows progress
while a lab comes up, and renders the resulting :class:`LabView` as two tables: nodes, and pods as
``kubectl get pods -A -o wide`` shows them (the API server's Table).
The manager is imported lazily so that ``ciliary status`` and friends do not pay for it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ciliary.cli.output import (
    CLIError,
    Context,
    Subparsers,
    add_output_flag,
    fmt_bool,
    fmt_opt,
    fmt_time,
    new_table,
    print_json,
    print_kv,
    print_table,
    require_root,
    wants_json,
)
from ciliary.lab.state import LabView

if TYPE_CHECKING:
    from ciliary.lab.manager import LabError

_T = TypeVar("_T")


def register(sub: Subparsers) -> None:
    p = sub.add_parser("lab", help="build, inspect and tear down a lab (nodes and pods)")
    lsub = p.add_subparsers(dest="lab_cmd", required=True, metavar="COMMAND")

    up = lsub.add_parser("up", help="create a lab from FILE (default: the built-in scenario)")
    up.add_argument("file", nargs="?", type=Path, metavar="FILE", help="lab YAML file")
    _name_flag(up)
    add_output_flag(up)
    up.set_defaults(func=run_up)

    apply = lsub.add_parser("apply", help="bring a running lab in line with FILE")
    apply.add_argument("file", type=Path, metavar="FILE", help="lab YAML file")
    _name_flag(apply)
    add_output_flag(apply)
    apply.set_defaults(func=run_apply)

    status = lsub.add_parser("status", help="show a lab's nodes and pods")
    _name_flag(status)
    add_output_flag(status)
    status.set_defaults(func=run_status)

    kc = lsub.add_parser(
        "kubeconfig",
        help="print the path of the lab's kubeconfig (kubectl --kubeconfig $(ciliary lab"
        " kubeconfig) get pods -A)",
    )
    _name_flag(kc)
    kc.add_argument(
        "--node",
        help="the node's kubeconfig instead, for inside its netns (ip netns exec <netns> kubectl"
        " --kubeconfig ...): the API on the lab network (https://172.18.0.1:6443 by default),"
        " the node's certificate",
    )
    kc.set_defaults(func=run_kubeconfig)

    ex = lsub.add_parser(
        "exec",
        help="run a command inside a pod's network namespace",
        usage="%(prog)s [--name NAME] POD -- CMD...",
    )
    _name_flag(ex)
    ex.add_argument("pod", metavar="POD", help="[namespace/]name (namespace default: default)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD", help="command to run")
    ex.set_defaults(func=run_exec)

    down = lsub.add_parser("down", help="tear a lab down")
    group = down.add_mutually_exclusive_group()
    group.add_argument("--name", help="lab name (default: the only lab)")
    group.add_argument("--all", action="store_true", dest="all_labs", help="every lab")
    down.set_defaults(func=run_down)

    ra = lsub.add_parser("restart-agent", help="restart the agent of one node")
    ra.add_argument("node", metavar="NODE")
    _name_flag(ra)
    ra.set_defaults(func=run_restart_agent)

    sa = lsub.add_parser(
        "stop-agent", help="stop the agent of one node and keep it down until restart-agent"
    )
    sa.add_argument("node", metavar="NODE")
    _name_flag(sa)
    sa.set_defaults(func=run_stop_agent)

    ls = lsub.add_parser("list", aliases=["ls"], help="list the labs")
    add_output_flag(ls)
    ls.set_defaults(func=run_list)


def _name_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="lab name (default: the only lab, or the file's name)")


def _call(fn: Callable[[], _T]) -> _T:
    """Run a manager call, turning its ``LabError`` into a CLI error."""
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    try:
        return fn()
    except manager.LabError as exc:
        raise _cli_error(exc) from exc


def _call_with_progress(ctx: Context, fn: Callable[[Progress], _T]) -> _T:
    """``_call`` with a progress display; problems are printed once the display is closed."""
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    with _progress(ctx) as progress:
        try:
            return fn(progress)
        except manager.LabError as exc:
            failure = exc
    raise _cli_error(failure) from failure


def _cli_error(exc: LabError) -> CLIError:
    """Every problem of a bad file at once, one ``Error:`` line each: all but the last printed
    here, the last raised (main prints it like any error)."""
    problems: list[str] = getattr(exc, "problems", None) or [str(exc)]
    for problem in problems[:-1]:
        print(f"Error: {problem}", file=sys.stderr, flush=True)
    return CLIError(problems[-1] if len(problems) > 1 else str(exc))


def _progress(ctx: Context) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=ctx.err_console,
        transient=False,
    )


# --------------------------------------------------------------------------- rendering


def render_view(console: Console, view: LabView) -> None:
    print_kv(
        console,
        [
            ("Lab", view.name),
            ("File", fmt_opt(view.file, "(built-in scenario)")),
            ("Created", fmt_time(view.created_at)),
            (
                "Hubble Relay",
                f"{view.relay.address} ({'running' if view.relay.alive else 'NOT running'}; "
                f"`ciliary observe` uses it)"
                if view.relay is not None
                else "(not started)",
            ),
            ("API server", _control_plane_line(view)),
            ("Controllers", _processes_line(view)),
            (
                "Supervisor",
                "(none)"
                if view.supervisor_alive is None
                else "running (restarts agents that exit)"
                if view.supervisor_alive
                else "NOT running (agents that exit stay down; `lab restart-agent` starts one)",
            ),
        ],
    )
    console.print()
    nodes = new_table(
        "NODE", "NETNS", "INTERNAL-IP", "AGENT PID", "ALIVE", "RESTARTS", "LAST EXIT", "SOCKET",
        "IPv4 CIDR", "IPv6 CIDR",
    )  # fmt: skip
    for n in view.nodes:
        last_exit = (
            f"{n.agent_last_exit} ({fmt_time(n.agent_last_exit_at)})"
            if n.agent_last_exit and n.agent_last_exit_at
            else None
        )
        nodes.add_row(
            n.name,
            n.netns,
            fmt_opt(",".join(a for a in (n.node_ipv4, n.node_ipv6) if a) or None),  # lab network
            fmt_opt(n.agent_pid),
            fmt_bool(n.agent_alive),
            str(n.agent_restarts),
            fmt_opt(last_exit),
            n.socket,
            fmt_opt(n.ipv4_cidr),
            fmt_opt(n.ipv6_cidr),
        )
    print_table(console, nodes)
    console.print()
    if view.externals:  # the world outside the cluster, on the lab network
        world = new_table("WORLD HOST", "NETNS", "IPv4", "IPv6", "PID", "ALIVE")
        for e in view.externals:
            world.add_row(e.name, e.netns, e.ipv4, e.ipv6, fmt_opt(e.pid), fmt_bool(e.alive))
        print_table(console, world)
        console.print()
    if view.pod_table is not None:  # as `kubectl get pods -A -o wide` shows them
        if not view.pod_table.rows:
            console.print(Text("No resources found"))
            return
        api_pods = new_table(*view.pod_table.columns)
        for row in view.pod_table.rows:
            api_pods.add_row(*row)
        print_table(console, api_pods)
        return
    if not view.pods:  # the API server does not answer: the lab's record
        console.print(Text("No pods"))
        return
    pods = new_table("POD", "NODE", "IPv4", "IPv6", "ENDPOINT", "RUNNING")
    for p in sorted(view.pods, key=lambda p: (p.namespace, p.name)):
        pods.add_row(
            f"{p.namespace}/{p.name}",
            p.node,
            fmt_opt(p.ipv4),
            fmt_opt(p.ipv6),
            fmt_opt(p.endpoint_id),
            fmt_bool(p.running),
        )
    print_table(console, pods)


def _processes_line(view: LabView) -> str:
    """The cluster processes (controller manager, operator, kubelet role) as the supervisor
    keeps them."""
    if not view.processes:
        return "(none)"
    return "; ".join(
        f"{p.name} {'running' if p.alive else 'NOT running'} (pid {fmt_opt(p.pid)}),"
        f" {p.restarts} restarts" + (f" (last: {p.last_exit})" if p.last_exit else "")
        for p in view.processes
    )


def _control_plane_line(view: LabView) -> str:
    cp = view.control_plane
    if cp is None:
        return "(none)"

    def part(what: str, alive: bool, restarts: int, last_exit: str | None) -> str:
        text = f"{what} {'running' if alive else 'NOT running'}, {restarts} restarts"
        return text + (f" (last: {last_exit})" if last_exit else "")

    apiserver = part("apiserver", cp.apiserver_alive, cp.apiserver_restarts, cp.apiserver_last_exit)
    etcd = part("etcd", cp.etcd_alive, cp.etcd_restarts, cp.etcd_last_exit)
    return f"{cp.url} ({apiserver}; {etcd}; kubeconfig {cp.kubeconfig})"


def _show(args: argparse.Namespace, ctx: Context, view: LabView) -> int:
    if wants_json(args):
        print_json(view)
    else:
        render_view(ctx.console, view)
    return 0


# --------------------------------------------------------------------------- commands


def run_up(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    view = _call_with_progress(
        ctx, lambda progress: manager.up(args.file, name=args.name, progress=progress)
    )
    return _show(args, ctx, view)


def run_apply(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    view = _call_with_progress(
        ctx, lambda progress: manager.apply(args.file, name=args.name, progress=progress)
    )
    return _show(args, ctx, view)


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    return _show(args, ctx, _call(lambda: manager.status(args.name)))


def run_kubeconfig(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    # the bare path on stdout, for $(ciliary lab kubeconfig)
    print(_call(lambda: manager.kubeconfig(args.name, node=args.node)))
    return 0


def normalize_pod(pod: str) -> str:
    """``[ns/]name`` -> ``ns/name`` (namespace ``default`` when omitted)."""
    ns, _, name = pod.rpartition("/")
    if not name or "/" in ns:
        raise CLIError(f"invalid pod {pod!r}: expected [namespace/]name")
    return f"{ns or 'default'}/{name}"


def split_exec_argv(name: str | None, argv: list[str]) -> tuple[str | None, list[str]]:
    """Options given between POD and ``--`` (``lab exec POD --name L -- CMD``) still count.

    argparse has already dropped the ``--`` that directly follows POD, so ``argv`` starting with
    anything but an option is the command itself, ``--`` and all.
    """
    if not argv or not argv[0].startswith("-") or argv[0] == "--":
        return name, argv
    if "--" in argv:
        i = argv.index("--")
        p = argparse.ArgumentParser(prog="ciliary lab exec", add_help=False)
        p.add_argument("--name")
        ns, rest = p.parse_known_args(argv[:i])
        if not rest:
            return ns.name or name, argv[i + 1 :]
    raise CLIError(
        f"unexpected option {argv[0]!r} after POD (usage: ciliary lab exec [--name NAME] POD "
        "-- CMD...)"
    )


def run_exec(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    name, argv = split_exec_argv(args.name, list(args.argv))
    if not argv:
        raise CLIError("no command given (usage: ciliary lab exec POD -- CMD...)")
    pod = normalize_pod(args.pod)
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    return _call(lambda: manager.exec_in_pod(pod, argv, name=name))


def run_down(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    removed = _call(lambda: manager.down(args.name, all_labs=args.all_labs))
    if not removed:
        ctx.console.print("No lab to remove")
    for name in removed:
        ctx.console.print(f"Lab {name} removed")
    return 0


def run_restart_agent(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    _call(lambda: manager.restart_agent(args.node, name=args.name))
    ctx.console.print(f"Agent of node {args.node} restarted")
    return 0


def run_stop_agent(args: argparse.Namespace, ctx: Context) -> int:
    require_root()
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    _call(lambda: manager.stop_agent(args.node, name=args.name))
    ctx.console.print(
        f"Agent of node {args.node} stopped; it stays down until `ciliary lab restart-agent"
        f" {args.node}` (pods keep their traffic)"
    )
    return 0


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.lab import manager  # noqa: PLC0415 (lazy import)

    names = _call(manager.list_labs)
    if wants_json(args):
        print_json(names)
        return 0
    for name in names:
        ctx.console.print(name)
    return 0
