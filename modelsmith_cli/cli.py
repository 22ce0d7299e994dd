"""The `modelsmith` command line (click, like Dagster's own CLI)."""

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from modelsmith.store import Home, read_json
from scenario_data.policy import POLICIES_DIR, PolicyError, load_policy


class ModelDirUnusable(click.ClickException):
    """A model directory that cannot be loaded: one line naming the file and the fix, exit status 2."""

    exit_code = 2


def _checked(load):
    """Run `load()`; a model directory it cannot use becomes one line and exit status 2."""
    from modelsmith.model_dir import ModelDirError

    try:
        return load()
    except ModelDirError as e:
        raise ModelDirUnusable(str(e)) from None


@contextlib.contextmanager
def _progress(what: str, unit: str, total: int | None = None, quiet: bool = False
              ) -> Iterator[Callable[[int], None] | None]:
    """A bar on stderr with counts and rates (tqdm), for a person at a terminal: none under --json or when
    stderr is not a terminal (a pipe, a log file, a test runner), where it would only be noise in the output.
    Yields the callback the plain modules take (`progress(k)`: k more done), or None."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=what, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar.update


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
    with _progress("generate", " requests", total=n) as progress:
        write_pack(output, n, seed, policy, progress=progress)
    click.echo(f"wrote {n} requests to {output} (seed {seed}, policy {policy.digest[:12]})")


@scenarios.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--domain-list", "domain_lists", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Brand-safety domain list file or directory (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON")
def ingest(paths: tuple[Path, ...], output: Path, domain_lists: tuple[Path, ...], as_json: bool) -> None:
    """Ingest OpenRTB files or directories into features.parquet and quarantine.parquet (streamed: memory
    holds one chunk of requests, not the input)."""
    from scenario_data.chunks import IngestError
    from scenario_data.ingest import ingest_to_files
    from scenario_data.taxonomy import REFERENCE, load_domain_lists

    try:
        with _progress("ingest", " requests", quiet=as_json) as progress:  # streamed: no total known up front
            s = ingest_to_files(paths, output, load_domain_lists([REFERENCE / "unsafe.txt", *domain_lists]),
                                progress=progress)
    except IngestError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo(f"{s['requests_in']} requests in: {s['accepted']} accepted, {s['quarantined']} quarantined; "
                   f"{s['decisions']} decision rows -> {output}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one summary object")
@click.option("--replay-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Real replay files to ingest with the pack (default: MODELSMITH_HOME/replay)")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="One pass under this policy (activated first) instead of the v1 -> v2 story")
@click.option("--epochs", type=click.IntRange(1, 1_000), default=None,
              help="SFT epochs of a repair adapter (TrainerSettings.epochs, default 10): fewer for a big model on a CPU")
@click.option("--pack-size", type=click.IntRange(100, 100_000_000), default=None,
              help="Requests in the generated scenario pack (ScenarioSettings.pack_size, default 10,000): fewer for a "
                   "quick try of a big model on a CPU, at the price of wider pin intervals")
def loop(as_json: bool, replay_dir: str | None, policy_path: str | None, epochs: int | None,
         pack_size: int | None) -> None:
    """Run the default story headless and stop at the gate: v1 (every pin passes), then v2 (Gaming
    regresses, a repair cycle writes a signed bundle). Same Dagster definitions, one process.
    """
    from modelsmith_cli.headless import LoopError, autonomy_rate, base_model_summary, run_pass
    from modelsmith.home import modelsmith_home
    from modelsmith_assets.definitions import build_definitions
    from scenario_data.policy import POLICIES_DIR

    home = modelsmith_home()
    if os.environ.get("MODELSMITH_BASE_MODEL"):
        from modelsmith.model_dir import check_model_dir

        _checked(lambda: check_model_dir(os.environ["MODELSMITH_BASE_MODEL"]))
    from resources import ScenarioSettings, TrainerSettings

    overrides = ({"trainer": TrainerSettings(epochs=epochs)} if epochs else {}) | (
        {"scenarios": ScenarioSettings(pack_size=pack_size)} if pack_size else {})
    defs = build_definitions("embedded", resources=overrides or None)
    passes = [Path(policy_path)] if policy_path else [POLICIES_DIR / "v1.yaml", POLICIES_DIR / "v2.yaml"]
    results = []
    with _instance(home) as instance:
        for n, path in enumerate(passes, start=1):
            digest = _activate(path, home)
            click.echo(f"[{n}/{len(passes)}] policy {path.name} ({digest[:12]}) is active", err=True)
            try:
                results.append(run_pass(defs, instance, home, replay_dir,
                                        lambda m, n=n: click.echo(f"[{n}/{len(passes)}] {m}", err=True)))
            except LoopError as e:
                raise click.ClickException(str(e)) from None
        rate = autonomy_rate(instance, home)
    last = results[-1]
    summary = {"home": str(home), **read_json(Home(home).replay_summary)}
    summary.pop("files", None)
    summary |= base_model_summary(home) | last | {"autonomy_rate": rate}
    summary.setdefault("verdict", "no regression: every pin holds, nothing to repair")
    summary["passes"] = [{k: r.get(k) for k in ("policy_digest", "regressed", "failed", "cycle", "verdict")}
                         for r in results]
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for key in ("base_model_digest", "champion", "regressed", "cycle", "hypothesis", "adapter_digest", "bundle_path",
                    "bundle_digest", "verdict", "next_step", "time_to_detect_s", "cycle_time_s", "autonomy_rate"):
            if summary.get(key) is not None:
                click.echo(f"{key}: {summary[key]}")


@main.group()
def model() -> None:
    """The base model."""


@model.command("build")
@click.option("--scenarios", "scenario_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Training scenarios (default: a generated pack of --n requests)")
@click.option("--n", type=int, default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--policy", "policy_path", default=None, help="Policy file (default: shipped v1)")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--json", "as_json", is_flag=True)
def model_build(scenario_file: Path | None, n: int, seed: int, policy_path: str | None, output: Path, as_json: bool) -> None:
    """Build the embedded default base model into OUTPUT (a Hugging Face directory).

    It trains on the scenarios (or a generated pack of --n requests, seed --seed + 1) and stops when a
    generated validation pack (seed --seed + 2, never trained on) meets every pin floor.
    """
    from modelsmith.base_model import PretrainConfig, pins_hold_on, pretrain
    from modelsmith.pins import load_pins

    policy = _policy(policy_path)
    labelled = _labelled(scenario_file, policy, n, seed + 1)
    validation = _labelled(None, policy, 10_000, seed + 2)
    summary = pretrain(labelled, output, PretrainConfig(seed=seed), passes=pins_hold_on(validation, load_pins()),
                       log=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(summary) if as_json else f"base model {summary['digest'][:16]} -> {output} "
               f"({summary['parameters']} parameters, {summary['rounds']} rounds, pins pass: {summary['passed']})")


@model.command("verify")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The P-256 public key (PEM) you trust (default: MODELSMITH_HOME/keys/model-signing-p256.pub)")
@click.option("--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The signature (default: MODEL_DIR/model.sig)")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object")
def model_verify(model_dir: Path, public_key: Path | None, signature: Path | None, as_json: bool) -> None:
    """Verify MODEL_DIR's OpenSSF model-signing signature with the model-signing library; exit 1 unless it holds.

    The same check as `model_signing verify key --signature MODEL_DIR/model.sig --public_key KEY MODEL_DIR`.
    """
    from modelsmith.home import modelsmith_home
    from modelsmith.model_signature import PUBLIC_KEY, ModelSignatureError, ModelSigningUnavailable, verify

    key = public_key or Home(modelsmith_home()).keys / PUBLIC_KEY
    try:
        result = verify(model_dir, key, signature)
    except ModelSigningUnavailable as e:
        raise click.ClickException(str(e)) from None
    except ModelSignatureError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "model_dir": str(model_dir), "error": str(e)}))
        else:
            click.echo(f"FAILED: {e}")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"ok": True, "model_dir": str(model_dir), **result.as_json()}))
    else:
        click.echo(f"OK {model_dir}: {result.files} files signed by key {result.key_id} ({result.signature}, "
                   f"{result.format})")


def _labelled(scenario_file: Path | None, policy, n: int = 10_000, seed: int = 0):
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.replay import build_replay_set
    from scenario_data.taxonomy import REFERENCE, load_domain_lists

    if scenario_file is None:
        return label_requests(generate_requests(n, seed), policy)
    replay = build_replay_set([scenario_file], policy, load_domain_lists([REFERENCE / "unsafe.txt"]))
    if replay.ingest.quarantine.height:
        click.echo(f"{replay.ingest.quarantine.height} request(s) quarantined from {scenario_file}", err=True)
    return replay.labelled


@main.group()
def pins() -> None:
    """Pin a model version: per-segment accuracy, latency and regression."""


@pins.command("run")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A LoRA adapter of the model, pinned merged into it as it is served (vllm: attached)")
@click.option("--policy", "policy_path", required=True, help="Policy file (YAML)")
@click.option("--scenarios", "scenario_file", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--pins", "pins_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pin file (default: the shipped vertical x inventory type pins)")
@click.option("--against", "against_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Another model directory: add the paired test against its decisions on the same rows")
@click.option("--engine", default="transformers", show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Decisions per micro-batch; a decision's latency is its micro-batch's time "
                   "(CPU time of the deciding thread on the CPU)")
@click.option("--json", "as_json", is_flag=True)
def pins_run(model_dir: Path, adapter_dir: Path | None, policy_path: str, scenario_file: Path, pins_path: str | None,
             against_dir: Path | None, engine: str, batch_size: int, as_json: bool) -> None:
    """Pin MODEL (with --adapter, a LoRA on it) on SCENARIOS labelled by POLICY, outside Dagster."""
    from modelsmith.evaluate import reference_from_predictions
    from modelsmith.model_dir import directory_digest
    from modelsmith.pin_runs import pin
    from modelsmith.pins import load_pins
    from modelsmith.engines.inference import load_engine, load_with_adapter

    pinset = load_pins(pins_path)
    labelled = _labelled(scenario_file, _policy(policy_path))
    reference, reference_name = None, "none"
    if against_dir is not None:
        other = _checked(lambda: load_engine(against_dir, engine, batch_size=batch_size))
        decided = other.decide(labelled).to_frame().with_columns(labelled["row_id"])
        reference = reference_from_predictions(decided, labelled)
        reference_name = f"{against_dir} ({directory_digest(against_dir)[:16]})"
        del other
    version = directory_digest(model_dir if adapter_dir is None else adapter_dir)
    if adapter_dir is None:
        eng = _checked(lambda: load_engine(model_dir, engine, batch_size=batch_size))
    else:  # as it is served: merged with the transformers engine (InferenceSettings.merge_adapters)
        eng = _checked(lambda: load_with_adapter(model_dir, adapter_dir, version, engine, batch_size=batch_size))
    with _progress("decide", " rows", total=labelled.height, quiet=as_json) as progress:
        run = pin(eng, labelled, pinset, version, _file_digest(scenario_file), reference, reference_name, progress)
    if as_json:
        click.echo(json.dumps(run.as_json()))
    else:
        from modelsmith.evaluate import markdown_table

        click.echo(markdown_table(run.results))
        click.echo(f"model {version[:16]}  policy {run.policy_digest[:16]}  composite {run.composite:.4f}  "
                   f"{'all pins pass' if run.passed else 'FAILED: ' + ', '.join(run.summary()['failed'])}")
    if not run.passed:
        sys.exit(1)


@pins.command("init")
@click.option("--scenarios", "scenario_file", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--policy", "policy_path", default=None)
@click.option("--by", default="vertical,inventory_type", show_default=True, help="Segment columns, comma-separated")
@click.option("--min-support", type=int, default=100, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def pins_init(scenario_file: Path, policy_path: str | None, by: str, min_support: int, output: Path) -> None:
    """Write a pin file with one pin per segment that has at least --min-support rows."""
    from modelsmith.atomic import write_text
    from modelsmith.pins import segment_pins_yaml

    labelled = _labelled(scenario_file, _policy(policy_path))
    text, small = segment_pins_yaml(labelled, tuple(c.strip() for c in by.split(",")), min_support)
    write_text(output, text)
    click.echo(f"pins -> {output}")
    if small:
        click.echo(f"{len(small)} segment(s) too small for this pack to detect their max_drop (inconclusive):")
        for line in small:
            click.echo(f"  {line}")


@main.group("lineage")
def lineage_group() -> None:
    """Signed lineage of synthetic datasets: prove that a row belongs to a signed dataset."""


@lineage_group.command("prove")
@click.argument("row_id")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Modelsmith home whose datasets/ to search (default: MODELSMITH_HOME)")
@click.option("--cycle", default=None, help="Only the dataset of this cycle (default: the first that holds the row)")
@click.option("--json", "as_json", is_flag=True, help="Print the proof as one JSON object")
def lineage_prove(row_id: str, home: Path | None, cycle: str | None, as_json: bool) -> None:
    """Print ROW_ID's Merkle inclusion proof and check it against the dataset's signed root; exit 1 unless verified."""
    from modelsmith.home import modelsmith_home
    from modelsmith.lineage import prove

    try:
        result = prove(home or modelsmith_home(), row_id, cycle)
    except (LookupError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"row:      {result['row_id']}\ndataset:  {result['dataset']} (cycle {result['cycle']})\n"
                   f"index:    {result['index']} of {result['size']}\nleaf:     {result['leaf_digest']}")
        for i, step in enumerate(result["proof"]):
            click.echo(f"step {i}:   {step}")
        click.echo(f"root:     {result['root']}\nkey id:   {result['key_id']}\n"
                   f"verified: {'yes' if result['verified'] else 'no'}")
    if not result["verified"]:
        sys.exit(1)


@main.group()
def policy() -> None:
    """The active ground-truth policy."""


def _activate(path: Path, home: Path) -> str:
    from modelsmith.atomic import write_bytes

    active = _policy(str(path))  # refuses a malformed policy before it becomes active
    write_bytes(Home(home).active_policy, path.read_bytes())
    return active.digest


@policy.command("activate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_activate(path: Path) -> None:
    """Make PATH the active policy (copied to MODELSMITH_HOME/policy.yaml); the scenario sensor re-pins the champion."""
    from modelsmith.home import modelsmith_home

    home = modelsmith_home()
    digest = _activate(path, home)
    click.echo(f"active policy: {path} ({digest[:16]}) -> {Home(home).active_policy}")


@main.group()
def audit() -> None:
    """The hash-chained log of every champion change."""


@audit.command("verify")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Modelsmith home (default: $MODELSMITH_HOME or ~/.modelsmith)")
def audit_verify(home: Path | None) -> None:
    """Check the audit log's chain and that the champion record matches its last move; exit 1 otherwise."""
    from modelsmith import audit as audit_log
    from modelsmith.home import modelsmith_home

    report = audit_log.verify(home or modelsmith_home())
    for error in report.errors:
        click.echo(error, err=True)
    click.echo(f"{'OK' if report.ok else 'FAILED'}: {report.entries} audit entries")
    if not report.ok:
        sys.exit(1)


@main.group("gate")
def gate_group() -> None:
    """Reviewers' keys and signed decisions for the promotion gate."""


@gate_group.command("keygen")
@click.argument("key_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="The reviewer's name, as the reviewers file will list it")
@click.option("--may", default="approve,reject", show_default=True,
              help="Decisions this reviewer may take (comma-separated: approve, reject, rollback)")
def gate_keygen(key_dir: Path, name: str, may: str) -> None:
    """Create a reviewer's Ed25519 key in KEY_DIR (private key mode 0600) and print their reviewers.yaml entry."""
    import yaml

    from modelsmith.engines.signer import Ed25519Signer

    pem = Ed25519Signer(key_dir).public_key_pem()
    entry = {"name": name, "public_key": pem, "may": [m.strip() for m in may.split(",") if m.strip()]}
    click.echo(yaml.safe_dump({"reviewers": [entry]}, sort_keys=False).rstrip())


@gate_group.command("sign")
@click.argument("bundle_digest", default="")
@click.option("--key-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The reviewer's own key directory (from `modelsmith gate keygen`)")
@click.option("--reviewer", required=True, help="Your name, as the reviewers file lists it")
@click.option("--decision", type=click.Choice(["approve", "reject", "rollback"]), default="approve", show_default=True)
@click.option("--rollback-to", default="", help="For a rollback: the version key or digest")
@click.option("--note", default="")
def gate_sign(bundle_digest: str, key_dir: Path, reviewer: str, decision: str, rollback_to: str, note: str) -> None:
    """Sign a decision on BUNDLE_DIGEST; paste the printed line into the Launchpad's `signature`."""
    from modelsmith.reviewers import ReviewerError, sign_approval

    if not (Path(key_dir) / "ed25519.key").is_file():
        click.echo(f"--key-dir: no ed25519.key in {key_dir}; create one with `modelsmith gate keygen`", err=True)
        sys.exit(2)
    try:
        click.echo(sign_approval(key_dir, reviewer, decision, bundle_digest, rollback_to, note))
    except ReviewerError as e:
        click.echo(str(e), err=True)
        sys.exit(2)


@main.group("bundle")
def bundle_group() -> None:
    """Signed evidence bundles: verify one offline."""


@bundle_group.command("verify")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The Ed25519 public key (PEM) you trust (default: the bundle's own public_key.pem, with a warning)")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object")
def bundle_verify(path: Path, public_key: Path | None, as_json: bool) -> None:
    """Verify the bundle directory or .tar PATH: signatures, digests, no missing or extra files; exit 1 unless OK."""
    from modelsmith.bundle_verify import verify_bundle

    pem = None
    if public_key is not None:
        try:
            pem = public_key.read_text(encoding="ascii")
        except (OSError, UnicodeError) as e:
            raise click.ClickException(f"{public_key}: cannot read the public key ({e})") from None
    report = verify_bundle(path, pem)
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        if report.warning:
            click.echo(f"warning: {report.warning}", err=True)
        if report.ok:
            click.echo(f"OK {report.digest}")
            click.echo(f"{report.checked} files and {report.signatures} signatures checked (key {report.key_id})")
        else:
            for error in report.errors:
                click.echo(error)
            click.echo(f"FAILED: {len(report.errors)} error(s) in {path}")
    if not report.ok:
        sys.exit(1)


@main.group("home")
def home_group() -> None:
    """The Modelsmith home ($MODELSMITH_HOME or ~/.modelsmith)."""


@home_group.command("sweep")
@click.option("--home", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Modelsmith home (default: $MODELSMITH_HOME or ~/.modelsmith)")
@click.option("--older-than", "older_than_h", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="Hours since anything in a leftover was last written")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing")
@click.option("--json", "as_json", is_flag=True, help="Print one summary object")
def home_sweep(home: Path | None, older_than_h: float, dry_run: bool, as_json: bool) -> None:
    """Remove the hidden temp files and work directories that killed writes left behind; exit 1 if one
    could not be removed."""
    from modelsmith.home import modelsmith_home
    from modelsmith.leftovers import sweep

    report = sweep(home or modelsmith_home(), older_than_h * 3600, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "removed": [f.as_json() for f in report.removed],
                               "kept": [{**f.as_json(), "reason": why} for f, why in report.kept],
                               "failed": [{**f.as_json(), "error": err} for f, err in report.failed],
                               "bytes": report.removed_bytes}))
    else:
        for f in report.removed:
            click.echo(f"{'would remove' if dry_run else 'removed'} {f.path} ({f.size_bytes} bytes, a write of "
                       f"{f.target.name}, idle {f.idle_s / 3600:.1f} h)")
        for f, why in report.kept:
            click.echo(f"kept {f.path}: {why}")
        for f, err in report.failed:
            click.echo(f"could not remove {f.path}: {err}", err=True)
        click.echo(f"{len(report.removed)} leftover(s), {report.removed_bytes} bytes"
                   f"{' (dry run: nothing removed)' if dry_run else ' removed'}; {len(report.kept)} kept"
                   f"{f'; {len(report.failed)} failed' if report.failed else ''}")
    if report.failed:
        sys.exit(1)


def _file_digest(path: Path) -> str:
    from modelsmith.model_dir import directory_digest, file_sha256

    return directory_digest(path) if path.is_dir() else file_sha256(path)


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
