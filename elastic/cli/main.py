"""`elastic`: the command line. Thin: parse, call the engine, print."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from elastic import __version__
from elastic.errors import ConfigError, ElasticError
from elastic.cli import render

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1

output_option = click.option(
    "--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="How to print data: tables for people, JSON for programs.")

spec_argument = click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))


class Ctx:
    def __init__(self, state_dir: Path | None) -> None:
        self._state_dir = state_dir
        # piped output keeps whole lines (a program or a file is reading it)
        width = None if sys.stdout.isatty() else 200
        self.out = Console(highlight=False, width=width, soft_wrap=width is not None)

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

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="elastic")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ELASTIC_STATE_DIR", show_envvar=True,
              help="Where the state database lives (default: the user's data dir).")
@click.pass_context
def cli(ctx: click.Context, state_dir: Path | None) -> None:
    """elastic: declarative virtual clusters on libvirt hosts, grown and shrunk with the
    batch queue, bursting to EC2 when the private hosts are full."""
    ctx.obj = Ctx(state_dir)


@cli.command()
@spec_argument
@output_option
@click.pass_obj
@handles_errors
def validate(obj: Ctx, spec: Path, output: str) -> None:
    """Check a spec file (YAML or MLN) and say what it describes."""
    from elastic.spec import load_project
    project = load_project(spec)
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
@click.pass_obj
@handles_errors
def plan(obj: Ctx, spec: Path, output: str) -> None:
    """Show the resolved project: every node with its class chain, host, chunk, memory,
    vcpus and interfaces (address and MAC), and the chunks with their total memory.

    Addresses leased in an earlier run (in the state database) are kept. Changes nothing."""
    from elastic.engine.projects import resolve_with_state
    project = resolve_with_state(spec, obj.state_dir)
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


def main() -> None:
    cli(prog_name="elastic")


if __name__ == "__main__":
    main()
