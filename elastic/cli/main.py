"""`elastic`: the command line. Thin: parse, call the engine, print."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from elastic import __version__
from elastic.errors import ConfigError, ElasticError, PermanentError
from elastic.cli import render

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

output_option = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="How to print data: tables for people, JSON for programs.")

lab_option = click.option("--lab", is_flag=True,
                          help="Run on the hosts of `elastic lab up` (the spec names none).")

spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))


class Ctx:
    def __init__(self, state_dir: Path | None, api: str | None = None,
                 api_token_file: Path | None = None) -> None:
        self._state_dir = state_dir
        self.api = api
        self.api_token_file = api_token_file
        # piped output keeps whole lines (a program or a file is reading it)
        width = None if sys.stdout.isatty() else 200
        self.out = Console(highlight=False, width=width, soft_wrap=width is not None)
        self.err = Console(stderr=True, highlight=False)

    def remote(self):
        """The running `elastic serve` to send changes to (--api), or None: act here."""
        if not self.api:
            return None
        from elastic.cli.remote import Remote
        path = self.api_token_file
        if path is None:
            from elastic.cli.remote import API_TOKEN_FILE
            path = self.state_dir / API_TOKEN_FILE
        try:
            token = path.read_text().strip()
        except OSError:
            raise ConfigError(f"no API token at {path} (give --api-token-file: the daemon's "
                              "api-token)", key="--api-token-file") from None
        return Remote(self.api, token)

    @property
    def state_dir(self) -> Path:
        if self._state_dir is not None:
            return self._state_dir
        from elastic.state import default_state_dir
        return default_state_dir(os.environ)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input: the located problems on stderr and exit 2. Other known failures: exit 1.
    Never a traceback for either."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            for problem in e.problems:
                click.echo(f"error: {problem}", err=True)
            if len(e.problems) > 1:
                click.echo(f"{len(e.problems)} problems; nothing was changed.", err=True)
            else:
                click.echo("nothing was changed.", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except ElasticError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_FAILED)
        except Exception as e:
            if type(e).__name__ != "libvirtError":
                raise
            click.echo(f"error: libvirt: {e}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="elastic")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ELASTIC_STATE_DIR", show_envvar=True,
              help="Where the state database lives (default: the user's data dir).")
@click.option("-v", "--verbose", count=True,
              help="Log more on stderr: -v what is done (INFO), -vv how (DEBUG).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              envvar="ELASTIC_LOG_FORMAT", show_envvar=True,
              help="json: one JSON object per log line (for a supervisor's journal).")
@click.option("--api", default=None, metavar="URL", envvar="ELASTIC_API", show_envvar=True,
              help="Send add-workers, remove-workers, rebalance and scale to this running "
                   "`elastic serve` instead of acting here.")
@click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, envvar="ELASTIC_API_TOKEN_FILE", show_envvar=True,
              help="The daemon's token (default: <state dir>/api-token).")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None, verbose: int, log_format: str,
        api: str | None, api_token_file: Path | None) -> None:
    """elastic: declarative virtual clusters on libvirt hosts, grown and shrunk with the
    batch queue, bursting to EC2 when the private hosts are full."""
    from elastic.cli import logs
    logs.setup(verbose, log_format)
    ctx.obj = Ctx(state_dir, api, api_token_file)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL; e.g. in ~/.bashrc:
    eval "$(elastic completion bash)"."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "elastic", "_ELASTIC_COMPLETE").source())


@cli.command()
@spec_argument
@output_option
@lab_option
@click.pass_obj
@handles_errors
def validate(obj: Ctx, spec: Path, output: str, lab: bool) -> None:
    """Check a spec file (YAML or MLN) and say what it describes."""
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, obj.state_dir if lab else None, lab=lab)
    summary = {"valid": True, "project": project.name, "nodes": len(project.nodes),
               "networks": len(project.networks), "hosts": len(project.hosts),
               "chunks": len(project.chunks), "classes": len(project.classes)}
    if output == "json":
        render.print_json(summary)
    else:
        obj.out.print(f"{spec}: valid: project {project.name}, {len(project.nodes)} nodes, "
                      f"{len(project.networks)} networks, {len(project.chunks)} chunks, "
                      f"{len(project.hosts)} hosts")


@cli.command()
@spec_argument
@output_option
@lab_option
@click.pass_obj
@handles_errors
def plan(obj: Ctx, spec: Path, output: str, lab: bool) -> None:
    """Show the resolved project: every node with its class chain, host, chunk, memory,
    vcpus and interfaces (address and MAC), and the chunks with their total memory.

    Addresses leased in an earlier run (in the state database) are kept. Changes nothing."""
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, obj.state_dir, lab=lab)
    if output == "json":
        render.print_json(render.project_dict(project))
    else:
        render.print_plan(project, obj.out)


@cli.command("import-mln")
@click.argument("mln_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--check/--no-check", default=True, show_default=True,
              help="Also resolve the result, so a problem is reported now rather than later.")
@handles_errors
def import_mln(mln_file: Path, check: bool) -> None:
    """Print the cluster.yaml equivalent of an MLN project file."""
    from elastic.spec.export import document_yaml
    from elastic.spec.loader import display_path, load_document
    from elastic.spec.resolve import resolve
    doc = load_document(mln_file)
    text = document_yaml(doc, source=display_path(mln_file))
    if check:
        resolve(load_document(mln_file), display_path(mln_file))
    click.echo(text, nl=False)


# ----------------------------------------------------------------------- lifecycle

@contextlib.contextmanager
def _cluster(obj: Ctx, *, progress: bool = True, boot_timeout: float | None = None):
    """The engine for one command, with progress bars on stderr; connections closed after."""
    from elastic.cli.progress import RichReporter
    from elastic.engine.cluster import BOOT_TIMEOUT, Cluster
    reporter = RichReporter(obj.err) if progress else None
    cluster = Cluster(obj.state_dir, reporter=reporter, boot_timeout=boot_timeout or BOOT_TIMEOUT)
    try:
        with reporter or contextlib.nullcontext():
            yield cluster
    finally:
        cluster.close()


def _print_outcome(obj: Ctx, verb: str, outcome, output: str) -> None:
    data = {"running": sorted(outcome.running), "failed": outcome.failed,
            "removed": sorted(outcome.removed), "seconds": round(outcome.seconds, 2)}
    if output == "json":
        render.print_json(data)
        return
    obj.out.print(f"{verb}: {len(outcome.running)} running, {len(outcome.failed)} failed, "
                  f"{len(outcome.removed)} removed in {outcome.seconds:.1f} s")
    for node, why in sorted(outcome.failed.items()):
        obj.out.print(f"  [red]FAILED[/red] {node}: {why}")


@cli.command()
@spec_argument
@output_option
@lab_option
@click.option("--boot-timeout", type=float, default=None, help="Seconds a node may take to boot.")
@click.pass_obj
@handles_errors
def up(obj: Ctx, spec: Path, output: str, lab: bool, boot_timeout: float | None) -> None:
    """Build and start the project: networks, disks, context, VMs; wait until every node is
    ready. Running it again converges (does nothing if all is up)."""
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, obj.state_dir, lab=lab, make_key=True)
    with _cluster(obj, boot_timeout=boot_timeout) as cluster:
        outcome = cluster.up(spec, project, lab=lab)
        balancers = {t.tier: t.sync(wait=True)
                     for t in _tiers(obj, project, cluster, spec, lab)}
    _print_outcome(obj, f"up {project.name}", outcome, output)
    if output != "json":
        for tier, serving in balancers.items():
            b = project.frontends[tier].balancer
            obj.out.print(f"tier {tier}: balancer on {b.listen}:{b.port}, serving "
                          f"{', '.join(serving) or 'nothing yet'}", markup=False)
    if outcome.failed:
        sys.exit(EXIT_FAILED)


@cli.command()
@spec_argument
@output_option
@lab_option
@click.option("--dry-run", is_flag=True, help="Print the changes and their reasons; change nothing.")
@click.pass_obj
@handles_errors
def upgrade(obj: Ctx, spec: Path, output: str, lab: bool, dry_run: bool) -> None:
    """Apply a changed spec to a running project: add and remove nodes, resize (memory,
    vcpus), and live-migrate whole chunks whose host changed (bridges first)."""
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, obj.state_dir, lab=lab)
    with _cluster(obj, progress=not dry_run) as cluster:
        changes, outcome = cluster.upgrade(spec, project, dry_run=dry_run, lab=lab)
    if output == "json":
        render.print_json({"changes": [c.__dict__ for c in changes], "dry_run": dry_run,
                           "migrations": {k: round(v, 2) for k, v in outcome.migrations.items()},
                           "running": sorted(outcome.running), "failed": outcome.failed})
    else:
        if not changes:
            obj.out.print(f"{project.name}: nothing to change")
        for c in changes:
            obj.out.print(str(c), markup=False)
        for chunk, secs in outcome.migrations.items():
            obj.out.print(f"chunk {chunk} migrated in {secs:.1f} s")
        if not dry_run:
            _print_outcome(obj, f"upgrade {project.name}", outcome, "text")
    if outcome.failed:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("target", metavar="SPEC|PROJECT")
@output_option
@lab_option
@click.option("--dry-run", is_flag=True,
              help="Measure and print the plan (each migration and its reason); move nothing.")
@click.option("--interval", type=click.FloatRange(min=0.1, max=600), default=2.0,
              show_default=True, metavar="SECONDS",
              help="Seconds between the two samples taken of every host now.")
@click.option("--window", type=click.FloatRange(min=0.1, max=86400), default=None,
              metavar="SECONDS",
              help="Average the load over the stored samples of this many seconds "
                   "[default: rebalance.window of the spec, 60].")
@click.pass_obj
@handles_errors
def rebalance(obj: Ctx, target: str, output: str, lab: bool, dry_run: bool, interval: float,
              window: float | None) -> None:
    """Live-migrate chunks off overloaded hosts (XenGuard): measure every host's CPU and
    memory, plan (rebalance: cpu_high, cpu_low, memory_floor, policy, max_migrations in the
    spec), then move each chunk whole. Chunks that fit nowhere are reported, never split."""
    from elastic.engine.projects import resolve_with_state
    from elastic.engine.rebalance import Rebalancer
    if _remotely(obj, target, "/api/v1/projects/{project}/rebalance", {"dry_run": dry_run},
                 output):
        return
    spec, lab = _target(obj, target, lab)
    project = resolve_with_state(spec, obj.state_dir, lab=lab)
    say = (lambda m: obj.err.print(m, markup=False)) if output != "json" else None
    with _cluster(obj, progress=not dry_run and output != "json") as cluster:
        outcome = Rebalancer(cluster, obj.state_dir).run(
            spec, project, dry_run=dry_run, interval=interval, window=window, say=say)
    plan = outcome.plan
    if output == "json":
        render.print_json({
            "dry_run": dry_run,
            "loads": {h: (None if got is None else {
                "cpu": round(got.cpu, 4), "cpu_own": round(got.cpu_own, 4),
                "memory_free": got.memory_free_mib, "ncpus": got.ncpus})
                for h, got in sorted(outcome.loads.items())},
            "overloaded": dict(plan.overloaded),
            "migrations": [m.__dict__ for m in plan.migrations],
            "unplaced": {u: dict(w) for u, w in plan.unplaced.items()},
            "notes": outcome.notes,
            "migrated": {u: round(t, 2) for u, t in outcome.migrated.items()},
            "failed": outcome.failed})
    else:
        render.print_rebalance(outcome, dry_run, obj.out)
    if outcome.failed:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.argument("project")
@output_option
@click.pass_obj
@handles_errors
def down(obj: Ctx, project: str, output: str) -> None:
    """Stop and remove everything PROJECT made: domains, disks, bridges, leases."""
    with _cluster(obj) as cluster:
        outcome = cluster.down(project)
    _print_outcome(obj, f"down {project}", outcome, output)


@cli.command()
@click.argument("project")
@output_option
@click.pass_obj
@handles_errors
def stop(obj: Ctx, project: str, output: str) -> None:
    """Shut PROJECT's nodes down (ACPI, then force after a timeout); disks are kept."""
    with _cluster(obj) as cluster:
        outcome = cluster.stop(project)
    _print_outcome(obj, f"stop {project}", outcome, output)


@cli.command()
@click.argument("project")
@output_option
@click.pass_obj
@handles_errors
def start(obj: Ctx, project: str, output: str) -> None:
    """Start a stopped PROJECT again (from the spec file it was brought up with)."""
    from elastic.engine.projects import recorded_spec
    spec, lab = recorded_spec(obj.state_dir, project)
    ctx = click.get_current_context()
    ctx.invoke(up, spec=spec, output=output, lab=lab, boot_timeout=None)


@cli.command()
@click.argument("project", required=False)
@output_option
@click.option("--hosts", "loads", is_flag=True,
              help="The load of each host and VM instead: CPU (all, the guests', the host's "
                   "own), memory, network and disk rates. Takes two samples --interval apart "
                   "(stored in the state DB) and averages over the stored ones of --window.")
@click.option("--interval", type=click.FloatRange(min=0.1, max=600), default=None,
              metavar="SECONDS", help="With --hosts: seconds between the two samples "
                                      "[default: 2].")
@click.option("--window", type=click.FloatRange(min=0.1, max=86400), default=None,
              metavar="SECONDS", help="With --hosts: seconds of samples the load is averaged "
                                      "over [default: 60].")
@click.pass_obj
@handles_errors
def status(obj: Ctx, project: str | None, output: str, loads: bool, interval: float | None,
           window: float | None) -> None:
    """Per host: projects, VMs, memory used and available, groups. Per node: state, host,
    addresses, uptime. With --hosts: the load of each host and VM."""
    if loads:
        from elastic.engine.status import LOAD_WINDOW, SAMPLE_INTERVAL, host_loads
        report = host_loads(obj.state_dir, project,
                            interval=SAMPLE_INTERVAL if interval is None else interval,
                            window=LOAD_WINDOW if window is None else window)
        if output == "json":
            render.print_json(report)
        else:
            render.print_host_loads(report, obj.out)
        return
    if interval is not None or window is not None:
        raise click.UsageError("--interval and --window go with --hosts")
    from elastic.engine.status import collect
    report = collect(obj.state_dir, project)
    if output == "json":
        render.print_json(report)
    else:
        render.print_status(report, obj.out)


@cli.command()
@click.argument("node")
@click.option("--log", "show_log", is_flag=True,
              help="Print what the console said since the node was made, and return.")
@click.pass_obj
@handles_errors
def console(obj: Ctx, node: str, show_log: bool) -> None:
    """Attach to NODE's serial console (NODE or NODE.PROJECT; leave with Ctrl-]."""
    from elastic.engine.status import console_command, console_log
    if show_log:
        click.echo(console_log(obj.state_dir, node), nl=False)
        return
    argv = console_command(obj.state_dir, node)
    os.execvp(argv[0], argv)


# ------------------------------------------------------------------------ operating

@cli.command()
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Where to listen (loopback by default: put a TLS proxy in front to reach "
                   "it from elsewhere).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The token the changing routes want (default: "
                                 "<state dir>/api-token, made at the first start).")
@click.pass_obj
@handles_errors
def serve(obj: Ctx, address: str, port: int, token_file: Path | None) -> None:
    """The HTTP API (/api/v1, OpenAPI at /api/v1/openapi.json), Prometheus metrics
    (/metrics) and the status page (/), from the state database; beside `elastic
    autoscale`, which it does not replace. Changes (POST) need `Authorization: Bearer
    TOKEN`."""
    from elastic.server.app import TOKEN_FILE, create_app, load_or_make_token
    from elastic.server.app import serve as run_server
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ConfigError("the token file is empty", str(token_file))
        where = str(token_file)
    else:
        token = load_or_make_token(obj.state_dir)
        where = str(obj.state_dir / TOKEN_FILE)
    obj.err.print(f"elastic API, metrics and status page on http://{address}:{port}/ "
                  f"(token for changes: {where})", markup=False)
    run_server(create_app(obj.state_dir, token=token), address, port)


@cli.command()
@click.argument("project", required=False)
@click.option("--since", default="2h", show_default=True,
              help="The window: 90s, 30m, 2h, 1d.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the queue against the workers over the window as a PNG.")
@output_option
@click.pass_obj
@handles_errors
def report(obj: Ctx, project: str | None, since: str, plot: Path | None, output: str) -> None:
    """What PROJECT (every project if left out) did over the window: jobs run and their
    waits, node-hours private and cloud, the estimated cloud cost, the peaks; --plot draws
    the timeline."""
    import time as _time

    from elastic.engine.report import parse_since, summary, summary_lines, timeline
    try:
        window = parse_since(since)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    now = _time.time()
    data = summary(obj.state_dir, project, now - window, now)
    if plot is not None:
        from elastic.adapters.plot import timeline_png
        timeline_png(timeline(obj.state_dir, project, now - window), plot, now=now,
                     title=f"{project or 'all projects'}: queue and workers, last {since}")
    if output == "json":
        render.print_json({**data, "plot": str(plot) if plot else None})
        return
    for line in summary_lines(data):
        obj.out.print(line, markup=False)
    if plot is not None:
        obj.out.print(f"timeline: {plot}", markup=False)


# ------------------------------------------------------------------------ autoscaling

LOCK_WAIT = 600.0   # seconds the autoscaler and add/remove-workers wait for each other

batch_netns_option = click.option(
    "--batch-netns", default=None, metavar="NS",
    help="The network namespace the batch commands run in (via: local) or SSH connects "
         "from (via: ssh); overrides scaling.batch.netns.")


@contextlib.contextmanager
def _autoscaler(obj: Ctx, spec: Path, lab: bool, batch_netns: str | None, progress: bool = True):
    from elastic.engine.controllers import autoscaler
    with _cluster(obj, progress=progress) as cluster:
        # the autoscaler and add/remove-workers take turns on the project's VMs
        cluster.lock_wait = LOCK_WAIT
        with autoscaler(obj.state_dir, spec, cluster, lab=lab,
                        batch_netns=batch_netns) as scaler:
            yield scaler


@cli.command()
@spec_argument
@lab_option
@batch_netns_option
@click.option("--once", is_flag=True, help="One tick, then stop.")
@click.option("--dry-run", is_flag=True, help="Print the plan and its reasons; change nothing.")
@output_option
@click.pass_obj
@handles_errors
def autoscale(obj: Ctx, spec: Path, lab: bool, batch_netns: str | None, once: bool,
              dry_run: bool, output: str) -> None:
    """Follow the batch queue (scaling:) and the web tiers' traffic (frontends:): add workers
    when jobs wait, drain and remove idle ones; grow and shrink each tier by its rules.
    Every decision goes to the event log with its reason. SIGTERM stops it between ticks."""
    import signal
    import time as _time

    from elastic.engine.autoscale import Stopper
    from elastic.engine.projects import resolve_with_state
    from elastic.state import Store
    first = resolve_with_state(spec, obj.state_dir, lab=lab)
    if first.scaling is None and not first.frontends:
        raise ConfigError("no scaling: or frontends: section, nothing to autoscale",
                          first.source)
    stopper = Stopper()
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGINT, stopper)
    with contextlib.ExitStack() as stack:
        scaler = None
        if first.scaling is not None:
            scaler = stack.enter_context(_autoscaler(obj, spec, lab, batch_netns, progress=False))
            cluster = scaler.fleet.cluster
        else:
            cluster = stack.enter_context(_cluster(obj, progress=False))
            cluster.lock_wait = LOCK_WAIT
        tiers = _tiers(obj, first, cluster, spec, lab)
        rebalance = first.rebalance
        due = None
        if rebalance is not None and rebalance.enabled and not (once or dry_run):
            from elastic.engine.rebalance import Due, Rebalancer
            due = Due(rebalance.window, _time.monotonic())
            rebalancer = Rebalancer(cluster, obj.state_dir)
        text = output != "json"
        next_at = {name: 0.0 for name in ["", *(t.tier for t in tiers)]}   # "": the queue
        with Store.open(obj.state_dir) as store, store.lock(f"{first.name}.autoscale"):
            while True:
                if scaler is not None and _time.monotonic() >= next_at[""]:
                    # in text, the decision is printed before it is carried out (making VMs
                    # takes a while), then what failed
                    result = scaler.tick(dry_run=dry_run, on_plan=(
                        (lambda r: _print_plan(obj, r)) if text and not dry_run else None))
                    if not text:
                        _print_tick(obj, result, output)
                    else:
                        if dry_run:
                            _print_plan(obj, result)
                        _print_errors(obj, result)
                    next_at[""] = _time.monotonic() + first.scaling.tick
                for tier in tiers:
                    if _time.monotonic() < next_at[tier.tier]:
                        continue
                    try:
                        tick = tier.tick(dry_run=dry_run, on_plan=(
                            (lambda r: _print_tier_plan(obj, r)) if text and not dry_run
                            else None))
                    except ElasticError as e:
                        obj.out.print(f"{tier.tier}: error: {e}", markup=False)
                    else:
                        _print_tier_tick(obj, tick, output, dry_run)
                    next_at[tier.tier] = _time.monotonic() + first.frontends[tier.tier].tick
                if due is not None and due(_time.monotonic()):
                    _rebalance_round(obj, rebalancer, spec, resolve_with_state(
                        spec, obj.state_dir, lab=lab))
                if once or dry_run:
                    break
                wait = min(next_at[k] for k in next_at if k or scaler is not None)
                if stopper.event.wait(max(0.05, wait - _time.monotonic())):
                    break


def _tiers(obj: Ctx, project, cluster, spec: Path, lab: bool) -> list:
    """A controller per web tier of ``project``."""
    from elastic.engine.web import WebTier
    return [WebTier.build(project, name, cluster, spec, obj.state_dir, lab=lab,
                          say=lambda msg: obj.out.print(f"  {msg}", markup=False))
            for name in project.frontends]


def _print_tier_plan(obj: Ctx, tick) -> None:
    d = tick.decision
    head = f"{tick.tier}: {tick.size} front-ends ({len(tick.serving)} serving), " \
           f"{tick.requests} requests read"
    if d.target == tick.size:
        obj.out.print(f"{head}; stay: {d.reason}", markup=False)
    else:
        verb = "grow" if d.target > tick.size else "shrink"
        obj.out.print(f"{head}\n  {verb} {tick.size} -> {d.target}: {d.reason}", markup=False)


def _print_tier_tick(obj: Ctx, tick, output: str, dry_run: bool) -> None:
    if output == "json":
        render.print_json({"tier": tick.tier, "size": tick.size, "serving": tick.serving,
                           "requests": tick.requests, "target": tick.decision.target,
                           "reason": tick.decision.reason,
                           "values": list(tick.decision.values), "applied": tick.applied,
                           "errors": tick.errors})
        return
    if dry_run:
        _print_tier_plan(obj, tick)
    for a in tick.applied:
        obj.out.print(f"  {tick.tier}: {a}", markup=False)
    for e in tick.errors:
        obj.out.print(f"  {tick.tier}: error: {e}", markup=False)


@cli.command()
@click.argument("tier")
@click.argument("size", type=click.IntRange(0, 1000))
@click.argument("target", metavar="[SPEC|PROJECT]", required=False)
@lab_option
@output_option
@click.pass_obj
@handles_errors
def scale(obj: Ctx, tier: str, size: int, target: str | None, lab: bool, output: str) -> None:
    """Set web tier TIER to SIZE front-ends now (within its min and max). New front-ends join
    the balancer once they answer; leaving ones are drained first. The project may be left
    out when only one project that is up has a tier of that name."""
    from elastic.engine.projects import resolve_with_state
    from elastic.engine.web import WebTier
    if obj.api and target is None:
        raise ConfigError("with --api, name the project: elastic scale TIER SIZE PROJECT")
    if target is not None and _remotely(obj, target, "/api/v1/projects/{project}/tiers/"
                                        f"{tier}/scale", {"size": size}, output):
        return
    if target is None:
        target = _project_with_tier(obj, tier)
    spec, lab = _target(obj, target, lab)
    project = resolve_with_state(spec, obj.state_dir, lab=lab)
    with _cluster(obj) as cluster:
        cluster.lock_wait = LOCK_WAIT
        web = WebTier.build(project, tier, cluster, spec, obj.state_dir, lab=lab,
                            say=lambda msg: obj.err.print(msg, markup=False))
        done = web.scale(size)
        serving = web.record().get("serving", [])
    if output == "json":
        render.print_json({"tier": tier, "size": size, "serving": serving, "done": done})
    else:
        for line in done:
            obj.out.print(f"{tier}: {line}", markup=False)
        obj.out.print(f"{tier}: {size} front-ends, serving: {', '.join(serving) or 'none'}",
                      markup=False)


def _project_with_tier(obj: Ctx, tier: str) -> str:
    from elastic.engine.projects import recorded_spec
    from elastic.state import Store
    if not Store.exists(obj.state_dir):
        raise PermanentError(f"no project is up in {obj.state_dir}")
    with Store.open(obj.state_dir, readonly=True) as store:
        names = [p.name for p in store.list_projects()]
    having = []
    for name in names:
        try:
            spec, lab = recorded_spec(obj.state_dir, name)
            from elastic.engine.projects import resolve_with_state
            if tier in resolve_with_state(spec, obj.state_dir, lab=lab).frontends:
                having.append(name)
        except ElasticError:
            continue
    if len(having) != 1:
        raise PermanentError(f"tier '{tier}' is in {len(having)} projects that are up"
                             + (f" ({', '.join(having)})" if having else "")
                             + ": name the project (elastic scale TIER SIZE PROJECT)")
    return having[0]


def _rebalance_round(obj: Ctx, rebalancer, spec: Path, project) -> None:
    """One rebalance inside the autoscaler's daemon (rebalance: {enabled: true}): its moves
    and errors are printed and recorded; an error does not stop the daemon."""
    from elastic.errors import ElasticError
    try:
        outcome = rebalancer.run(spec, project)
    except ElasticError as e:
        obj.out.print(f"  rebalance error: {e}", markup=False)
        return
    for m in outcome.plan.migrations:
        got = outcome.migrated.get(m.unit)
        done = f"migrated in {got:.1f} s" if got is not None else \
            f"FAILED: {outcome.failed.get(m.unit, '?')}"
        obj.out.print(f"  rebalance {m.unit} {m.src} -> {m.dst} ({done}): {m.reason}",
                      markup=False)
    for unit in outcome.plan.unplaced:
        obj.out.print(f"  rebalance: {unit} fits no target, it stays", markup=False)


def _print_tick(obj: Ctx, result, output: str) -> None:
    snap = result.snapshot
    if output == "json":
        render.print_json({
            "queue": {"known": snap.known, "pending_jobs": len(snap.pending),
                      "pending_slots": snap.pending_slots, "held": snap.held,
                      "errored": snap.errored, "error": snap.error},
            "workers": [{"name": w.name, "state": str(w.state), "joined": w.joined,
                         "running_jobs": w.running_jobs} for w in result.workers],
            "actions": [{"kind": a.kind, "node": a.node, "count": a.count, "site": a.site,
                         "reason": a.reason} for a in result.plan.actions],
            "notes": list(result.plan.notes), "applied": result.applied,
            "errors": result.errors})
        return
    _print_plan(obj, result)
    _print_errors(obj, result)


def _print_plan(obj: Ctx, result) -> None:
    """The queue, the workers and the tick's decision with its reasons."""
    snap = result.snapshot
    queue = (f"{len(snap.pending)} jobs ({snap.pending_slots} slots) waiting"
             if snap.known else f"queue unknown: {snap.error}")
    obj.out.print(f"{queue}; {len(result.workers)} workers", markup=False)
    for a in result.plan.actions:
        obj.out.print(f"  {a.kind} {a.node or a.count}: {a.reason}", markup=False)
    for n in result.plan.notes:
        obj.out.print(f"  note: {n}", markup=False)


def _print_errors(obj: Ctx, result) -> None:
    for e in result.errors:
        obj.out.print(f"  error: {e}", markup=False)


target_argument = click.argument("target", metavar="SPEC|PROJECT")

REMOTE_TIMEOUT = 3600.0   # seconds the CLI waits for a daemon's operation (it makes VMs)


def _remotely(obj: Ctx, target: str, path: str, body: dict, output: str) -> bool:
    """With --api: the change sent to the daemon, waited for and its result printed (True);
    without: False (act here)."""
    remote = obj.remote()
    if remote is None:
        return False
    name = target
    if Path(target).is_file():
        from elastic.spec.loader import load_document
        name = load_document(Path(target)).get("project") or target
    result = remote.act(path.format(project=name), body, timeout=REMOTE_TIMEOUT,
                        say=lambda msg: obj.err.print(msg, markup=False))
    if output == "json":
        render.print_json(result)
    else:
        obj.out.print(f"done on {remote.url}: {json.dumps(result, sort_keys=True)}",
                      markup=False)
    return True


def _target(obj: Ctx, target: str, lab: bool) -> tuple[Path, bool]:
    """A spec file, or the name of a project that is up (its recorded spec)."""
    if Path(target).is_file():
        return Path(target), lab
    from elastic.engine.projects import recorded_spec
    return recorded_spec(obj.state_dir, target)


@cli.command("add-workers")
@click.argument("count", type=click.IntRange(1, 1000))
@target_argument
@lab_option
@batch_netns_option
@click.option("--class", "cls", default=None, metavar="CLASS",
              help="Make the new workers of this class of the spec instead of the group's "
                   "(the group's own settings still apply on top).")
@output_option
@click.pass_obj
@handles_errors
def add_workers(obj: Ctx, count: int, target: str, lab: bool, batch_netns: str | None,
                cls: str | None,
                output: str) -> None:
    """Add COUNT workers to the scaling group now (the autoscaler's own machinery)."""
    if _remotely(obj, target, "/api/v1/projects/{project}/workers",
                 {"add": count, **({"class": cls} if cls else {})}, output):
        return
    spec, lab = _target(obj, target, lab)
    with _autoscaler(obj, spec, lab, batch_netns) as scaler:
        result = scaler.add_workers(count, cls)
    failed = {n: why for n, why in result.items() if why}
    if output == "json":
        render.print_json({"nodes": sorted(result), "failed": failed})
    else:
        obj.out.print(f"{len(result) - len(failed)} nodes running, {len(failed)} failed")
    if failed:
        sys.exit(EXIT_FAILED)


@cli.command("remove-workers")
@click.argument("count", type=click.IntRange(1, 1000))
@target_argument
@lab_option
@batch_netns_option
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the drained workers run nothing, then remove them.")
@output_option
@click.pass_obj
@handles_errors
def remove_workers(obj: Ctx, count: int, target: str, lab: bool, batch_netns: str | None,
                   wait: bool, output: str) -> None:
    """Drain COUNT workers (cloud first, then the newest) and remove them once they run
    nothing. A running job is never killed."""
    import time as _time
    if _remotely(obj, target, "/api/v1/projects/{project}/workers", {"remove": count},
                 output):
        return
    spec, lab = _target(obj, target, lab)
    with _autoscaler(obj, spec, lab, batch_netns) as scaler:
        drained = scaler.drain_workers(count)
        removed, busy = scaler.remove_drained()
        while wait and busy:
            obj.err.print(f"waiting for {', '.join(busy)} to finish their jobs", markup=False)
            _time.sleep(5)
            more, busy = scaler.remove_drained()
            removed += more
    if output == "json":
        render.print_json({"drained": drained, "removed": removed, "still_running_jobs": busy})
    else:
        obj.out.print(f"drained {', '.join(drained) or 'none'}; removed "
                      f"{', '.join(removed) or 'none'}"
                      + (f"; still running jobs: {', '.join(busy)}" if busy else ""),
                      markup=False)


@cli.command("reset-breaker")
@click.argument("project")
@click.option("--site", default=None, metavar="SITE",
              help="Only this site's breaker (private, or a cloud's name); default: all.")
@output_option
@click.pass_obj
@handles_errors
def reset_breaker_cmd(obj: Ctx, project: str, site: str | None, output: str) -> None:
    """Close the autoscaler's launch breaker of PROJECT after fixing its cause (a broken
    image, refused credentials): launches there start again at the next tick."""
    import time as _time

    from elastic.engine.autoscale import reset_breakers
    from elastic.state import Store
    with Store.open(obj.state_dir) as store:
        closed = reset_breakers(store, project, site, _time.time())
    if output == "json":
        render.print_json({"closed": closed})
    elif closed:
        for s, why in sorted(closed.items()):
            obj.out.print(f"closed the breaker of {s} (it was open {why})", markup=False)
    else:
        obj.out.print("no breaker was open; failures and backoff forgotten", markup=False)


# ----------------------------------------------------------------------------- lab

@cli.group()
def lab() -> None:
    """A lab on this machine: hypervisor hosts as network namespaces, each with its own
    libvirtd, joined by a LAN switch."""


@lab.command("up")
@click.option("--hosts", "count", type=click.IntRange(1, 16), default=None,
              help="How many hosts (default: as many as now, or 2 for a new lab).")
@click.option("--memory", type=str, default=None, help="Memory per host (e.g. 4G).")
@click.option("--cloud/--no-cloud", default=None,
              help="Also run a local EC2 (moto on loopback) whose instances are namespaces "
                   "on the lab's internet (default: as before).")
@output_option
@click.pass_obj
@handles_errors
def lab_up(obj: Ctx, count: int | None, memory: str | None, cloud: bool | None,
           output: str) -> None:
    """Make (or repair) the lab's hosts; prints the hosts file a project can include."""
    from elastic.adapters.lab import Lab
    from elastic.spec.units import parse_size
    memory_mib = None
    if memory is not None:
        try:
            memory_mib = parse_size(memory)
        except ValueError as e:
            raise ConfigError(str(e), key="--memory") from None
    info = Lab(obj.state_dir / "lab").up(count, memory_mib=memory_mib, cloud=cloud,
                                         progress=lambda m: obj.err.print(f"[dim]{m}[/dim]"))
    _print_lab(obj, info, output)


@lab.command("down")
@click.pass_obj
@handles_errors
def lab_down(obj: Ctx) -> None:
    """Remove the lab: its VMs, libvirtds, bridges and namespaces."""
    from elastic.adapters.lab import Lab
    Lab(obj.state_dir / "lab").down()
    obj.out.print("lab removed")


@lab.command("status")
@output_option
@click.pass_obj
@handles_errors
def lab_status(obj: Ctx, output: str) -> None:
    from elastic.adapters.lab import Lab
    _print_lab(obj, Lab(obj.state_dir / "lab").status(), output)


def _print_lab(obj: Ctx, info, output: str) -> None:
    data = {"hosts": [{"name": h.name, "uri": h.uri, "netns": h.netns, "address": h.address,
                       "memory_mib": h.memory_mib, "vcpus": h.vcpus, "alive": h.alive}
                      for h in info.hosts],
            "lan": {"netns": info.lan_netns, "cidr": info.lan_cidr},
            "front": {"netns": info.front_netns, "address": info.front_address},
            "cloud": {"endpoint": info.cloud_endpoint} if info.cloud_endpoint else None,
            "hosts_file": str(info.hosts_file)}
    if output == "json":
        render.print_json(data)
        return
    for h in info.hosts:
        state = "[green]up[/green]" if h.alive else "[red]down[/red]"
        obj.out.print(f"{h.name:<4} {state:<18} {h.address:<12} {h.memory_mib} MiB "
                      f"{h.vcpus} vcpus  {h.uri}")
    if info.hosts:
        obj.out.print(f"front end: {info.front_address} in namespace {info.front_netns} (LAN "
                      f"{info.lan_cidr}; `ip netns exec {info.front_netns} ...`)", markup=False)
    if info.cloud_endpoint:
        obj.out.print(f"local EC2: {info.cloud_endpoint} (clouds.<name>.endpoint_url; any "
                      "credentials, e.g. AWS_ACCESS_KEY_ID=testing)", markup=False)
    obj.out.print(f"hosts file: {info.hosts_file}  (use it with `elastic up --lab FILE`, or "
                  f"include: [{info.hosts_file}] in a spec)", markup=False)


def main() -> None:
    cli(prog_name="elastic")


if __name__ == "__main__":
    main()
