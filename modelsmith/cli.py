"""The `modelsmith` command line (click, like Dagster's own CLI)."""

import json
import sys
from pathlib import Path

import click

from scenario_data.policy import POLICIES_DIR, PolicyError, load_policy


@click.group()
@click.version_option(package_name="modelsmith")
def main() -> None:
    """Modelsmith: pin, diagnose, repair and gate a private open-weights model."""


@main.group()
def scenarios() -> None:
    """Generate and ingest OpenRTB scenario data."""


def _policy(path: str | None):
    try:
        return load_policy(path or POLICIES_DIR / "v1.yaml")
    except PolicyError as e:
        raise click.ClickException(str(e)) from None


@scenarios.command("generate")
@click.option("--n", "n", type=click.IntRange(min=1), default=10_000, show_default=True, help="Requests to generate")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="FILE.jsonl[.gz]")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Policy that labels the requests (default: the shipped policy v1)")
def generate(n: int, seed: int, output: Path, policy_path: str | None) -> None:
    """Write N realistic, labelled OpenRTB 2.6 requests; the same seed gives byte-identical output."""
    from scenario_data.generator import write_pack

    policy = _policy(policy_path)
    write_pack(output, n, seed, policy)
    click.echo(f"wrote {n} requests to {output} (seed {seed}, policy {policy.digest[:12]})")


@scenarios.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--domain-list", "domain_lists", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Brand-safety domain list file or directory (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON")
def ingest(paths: tuple[Path, ...], output: Path, domain_lists: tuple[Path, ...], as_json: bool) -> None:
    """Ingest OpenRTB files or directories into features.parquet and quarantine.parquet."""
    from scenario_data.ingest import IngestError, ingest_paths, write_result
    from scenario_data.taxonomy import REFERENCE, load_domain_lists

    try:
        result = ingest_paths(paths, load_domain_lists([REFERENCE / "unsafe.txt", *domain_lists]))
    except IngestError as e:
        raise click.ClickException(str(e)) from None
    write_result(result, output)
    s = result.summary()
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo(f"{s['requests_in']} requests in: {s['accepted']} accepted, {s['quarantined']} quarantined; "
                   f"{s['decisions']} decision rows -> {output}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one summary object")
@click.option("--replay-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Real replay files to ingest with the pack (default: MODELSMITH_HOME/replay)")
def loop(as_json: bool, replay_dir: str | None) -> None:
    """Run the main job on the embedded defaults, in one process, with the same Dagster definitions."""
    from modelsmith.home import modelsmith_home
    from modelsmith_assets.definitions import build_definitions

    defs = build_definitions("embedded")
    job = defs.resolve_job_def("materialize_scenarios_job")
    home = modelsmith_home()
    with _instance(home) as instance:
        run_config = {"resources": {"scenarios": {"config": {"replay_dir": str(Path(replay_dir).resolve())}}}} if replay_dir else {}
        result = job.execute_in_process(instance=instance, run_config=run_config)
    if not result.success:
        raise click.ClickException("the scenario job failed; see the log above")
    summary = {"home": str(home), **json.loads((home / "replayed_auctions" / "summary.json").read_text())}
    summary.pop("files", None)
    click.echo(json.dumps(summary) if as_json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


def _instance(home: Path):
    """The embedded Dagster instance: SQLite under DAGSTER_HOME inside the Modelsmith home."""
    import os

    import dagster as dg

    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").touch(exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


if __name__ == "__main__":
    sys.exit(main())
