"""kill -9 drills: each stage's real work in a child process, SIGKILLed in the middle, then run again.

For ingestion, pinning, dataset synthesis, training, bundle writing and promotion: no half-written
artifact is visible at a final path (what is there is whole, and byte-identical to what an unkilled
run writes), leftovers have hidden temp names that the readers skip, the champion record and the
audit log stay intact, and running the same work again gives the digests of an unkilled run.
The `job_*` functions are the work; a child runs one (`Child`), the parent kills it at a trap or at
a moment it watched for on disk (see `fault_support`). Figures are in tests/README.md.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.drills.fault_support import Child, hidden, visible

pytestmark = pytest.mark.slow  # minutes each: `pytest -m 'not slow'` for a quick run

V1_LENIENT_PINS = ("defaults: {accuracy_floor: 0.0, latency_p99_ms: 100000}\npins:\n  - {name: all}\n"
                   "  - {name: games, where: {vertical: Video Gaming}}\n")
GAMING = {"vertical": {"eq": "Video Gaming"}}
IMPLICATED = {"rewarded": ("1",), "position": ("atf",)}
CREATED = "2026-01-01T00:00:00+00:00"


def _child(name: str, workdir: Path, trap: list[dict] | None = None, **kwargs) -> Child:
    """A child that runs `job_<name>(**kwargs)` from this module."""
    code = (f"import json, sys\nfrom tests.drills.test_kill_drills import job_{name}\n"
            f"job_{name}(**json.loads(sys.argv[1]))\n")
    return Child(code, workdir, trap=trap, args=(json.dumps({k: str(v) for k, v in kwargs.items()}),))


def _swept(root: Path) -> list[str]:
    """`modelsmith home sweep` removes exactly the killed writers' leftovers, and nothing a reader sees;
    while they are fresh (a writer could still be at work) the default age keeps them. Returns what went."""
    from modelsmith.leftovers import find_leftovers, sweep

    left, seen = hidden(root), visible(root)
    assert left, "the kill left nothing to sweep"
    assert find_leftovers(root) == []  # younger than a day
    report = sweep(root, older_than_s=0)  # the killed writers' locks died with them: none is kept
    assert report.kept == [] and report.failed == []
    assert sorted(f.path.relative_to(root).as_posix() for f in report.removed) == left
    assert hidden(root) == [] and visible(root) == seen
    return left


# --- the work, as a child runs it ---

def job_pin(home: str, model_dir: str) -> Path:
    from modelsmith.pin_runs import pin, store
    from modelsmith.pins import parse_pins
    from modelsmith.engines.inference import TransformersEngine
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    labelled = label_requests(generate_requests(60, seed=9), shipped_policy(1))
    run = pin(TransformersEngine(model_dir, batch_size=32), labelled, parse_pins(V1_LENIENT_PINS), "d" * 64, "s" * 64)
    return store(Path(home), run)


def job_synthesise(home: str, key_dir: str, cycle: str = "c1") -> Path:
    """What the `synthetic_dataset` asset does: synthesise, write the rows, sign and write the lineage."""
    from modelsmith.atomic import write_with
    from modelsmith.diagnosis import SynthesisSpec
    from modelsmith.lineage import build_lineage, write_lineage
    from modelsmith.synthesis import synthesise
    from modelsmith.engines.signer import Ed25519Signer
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    policy = shipped_policy(2)
    pins = label_requests(generate_requests(100, seed=424242), policy)
    spec = SynthesisSpec(GAMING, rows=60, replay_ratio=1.0, contrast_share=0.3)
    rows = synthesise(spec, policy, 7, pins, IMPLICATED, batch_requests=500).rows
    out = Path(home) / "datasets" / cycle
    write_with(out / "rows.parquet", lambda tmp: rows.write_parquet(tmp))
    lineage = build_lineage(rows.to_dicts(), policy_digest=policy.digest, generator_seed=7, diagnosis_digest="d" * 64,
                            cycle=cycle, signer=Ed25519Signer(Path(key_dir)), created=CREATED)
    write_lineage(out, rows.to_dicts(), lineage)
    return out


def job_train(model_dir: str, rows: str, out: str) -> dict:
    import polars as pl

    from modelsmith.adapter_training import AdapterRecipe, SftSettings, train_adapter

    recipe = AdapterRecipe(stages=("sft",), sft=SftSettings(epochs=2, batch_size=16, heldout_fraction=0.2))
    return train_adapter(Path(model_dir), pl.read_parquet(rows), Path(out), recipe, log=lambda m: print(m, flush=True))


def job_bundle(home: str, key_dir: str, adapter: str, name: str = "c1"):
    from modelsmith.attest import write_bundle
    from modelsmith.engines.signer import Ed25519Signer

    files = {"report.html": b"<html><body>candidate repairs Gaming</body></html>",
             "diagnosis.json": json.dumps({"hypothesis": "rewarded atf in Gaming"}).encode(),
             "integrity.json": json.dumps({"finished": CREATED}).encode()}
    return write_bundle(Path(home) / "bundles" / name, files, Path(adapter), [("pins", "https://in-toto.io/attestation/"
                        "test-result/v0.1", {"result": "PASSED"})], _summary(home), Ed25519Signer(Path(key_dir)))


def job_decide(home: str) -> dict:
    from modelsmith.gate import Decision, decide, pending
    from modelsmith.engines.signer import Ed25519Signer

    return decide(Path(home), Decision("ana", "approve", pending(Path(home)), "fixes Gaming"),
                  Ed25519Signer(Path(home) / "keys"), "run-1")


def _summary(home: str) -> dict:
    record = json.loads((Path(home) / "gate.json").read_text()) if (Path(home) / "gate.json").exists() else {}
    return {"cycle": "c1", "candidate": record.get("candidate", "a" * 64), "champion": record.get("champion", "b" * 64),
            "policy_digest": "p" * 64, "targets": ["Video Gaming/app"], "repaired": ["Video Gaming/app"], "flagged": [],
            "offer_for_promotion": True, "candidate_passed_every_pin": True, "created": CREATED}


# --- fixtures ---

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained Llama directory (as tests/unit/model/test_inference.py builds one)."""
    from modelsmith.base_model import TinyLlamaConfig, build_model
    from modelsmith.prompt import prompts, train_tokenizer
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    out = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(prompts(label_requests(generate_requests(40, seed=3), shipped_policy(1))))
    tiny = TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    build_model(tok, tiny, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _record(stage: str, **figures) -> None:
    """Figures of a drill, printed (pytest -s) for tests/README.md."""
    print(f"\n[drill] {stage}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# --- the drills ---

def test_ingest_killed_before_each_publish_and_at_random(tmp_path):
    from click.testing import CliRunner

    from modelsmith_cli.cli import main
    from scenario_data.generator import write_pack
    from scenario_data.policy import shipped_policy

    pack = write_pack(tmp_path / "pack.jsonl", 2000, 11, shipped_policy(1))
    with pack.open("a") as f:
        f.write('{"id": "broken", "imp": []}\n')  # one request for the quarantine table
    args = ("scenarios", "ingest", str(pack), "--json")
    ref = tmp_path / "ref"
    result = CliRunner().invoke(main, [*args, "--output", str(ref)])
    assert result.exit_code == 0, result.output
    expected = visible(ref)
    assert set(expected) == {"features.parquet", "quarantine.parquet"}

    cli = "from modelsmith_cli.cli import main\nmain()\n"
    out = tmp_path / "out"
    # 1: killed with the features table fsync'd under its temp name, not yet renamed: nothing visible.
    killed = Child(cli, tmp_path / "k1", trap=[{"kind": "rename", "name": "features.parquet"}],
                   args=(*args, "--output", str(out))).kill_at_trap()
    assert "features.parquet" in killed.where
    assert visible(out) == {} and [Path(h).suffix for h in hidden(out)] == [".tmp"]
    # 2: killed between the two tables: the features table is whole, byte for byte the unkilled one.
    Child(cli, tmp_path / "k2", trap=[{"kind": "rename", "name": "quarantine.parquet"}],
          args=(*args, "--output", str(out))).kill_at_trap()
    assert visible(out) == {"features.parquet": expected["features.parquet"]}
    # 3: killed at a moment measured from the start (60 % of the way to the first trap), wherever it
    # falls: whatever is visible is whole.
    child = Child(cli, tmp_path / "k3", args=(*args, "--output", str(tmp_path / "out3")))
    child.kill_when(lambda: True, delay=0.6 * killed.after_s)
    assert all(expected[name] == digest for name, digest in visible(tmp_path / "out3").items())

    leftovers = hidden(out)
    assert all(h.startswith(".") and h.endswith(".tmp") for h in leftovers)
    _swept(out)
    again = CliRunner().invoke(main, [*args, "--output", str(out)])
    assert again.exit_code == 0, again.output
    assert visible(out) == expected  # the same digests as the unkilled run
    assert json.loads(again.stdout) == json.loads(result.stdout)
    _record("ingest", leftovers=len(leftovers), kill_at_s=round(killed.after_s, 1))


def test_pin_run_killed_before_its_summary_is_not_history(tmp_path, model_dir):
    import polars as pl

    from modelsmith.pin_runs import history, runs

    def stable(run_dir: Path) -> pl.DataFrame:  # latency is measured, not computed: left out
        return pl.read_parquet(run_dir / "predictions.parquet").drop("latency_ms", "latency_wall_ms")

    reference = job_pin(str(tmp_path / "ref"), str(model_dir))
    home = tmp_path / "home"
    killed = _child("pin", tmp_path / "k", trap=[{"kind": "rename", "name": "summary.json"}], home=home,
                    model_dir=model_dir).kill_at_trap()
    (partial,) = list((home / "pins").glob("*/*"))
    assert sorted(visible(partial)) == ["decisions.parquet", "metrics.parquet", "predictions.parquet"]
    assert stable(partial).equals(stable(reference))  # each published file is whole
    assert runs(home, "d" * 64) == [] and history(home).height == 0  # an incomplete run is not a run

    run_dir = job_pin(str(home), str(model_dir))
    assert [r[0] for r in runs(home, "d" * 64)] == [run_dir]
    assert stable(run_dir).equals(stable(reference))
    assert history(home).height == history(tmp_path / "ref").height == 2
    _record("pins", leftovers=len(hidden(home)), kill_at_s=round(killed.after_s, 1))


def test_synthesis_killed_before_the_row_digests_leaves_no_provable_dataset(tmp_path):
    import polars as pl

    from modelsmith.lineage import prove

    keys = tmp_path / "keys"
    ref = job_synthesise(str(tmp_path / "ref"), str(keys))
    expected = visible(ref)
    assert set(expected) == {"rows.parquet", "lineage.json", "row_digests.parquet"}
    row_id = pl.read_parquet(ref / "rows.parquet")["row_id"][0]
    assert prove(tmp_path / "ref", row_id)["verified"]

    home = tmp_path / "home"
    killed = _child("synthesise", tmp_path / "k", trap=[{"kind": "rename", "name": "row_digests.parquet"}], home=home,
                    key_dir=keys).kill_at_trap()
    dataset = home / "datasets" / "c1"
    assert visible(dataset) == {k: expected[k] for k in ("rows.parquet", "lineage.json")}
    with pytest.raises(LookupError, match="in no dataset"):
        prove(home, row_id)  # the dataset is found only once its digests are there

    job_synthesise(str(home), str(keys))
    assert visible(dataset) == expected
    assert prove(home, row_id)["verified"]
    _record("synthesis", leftovers=len(hidden(home)), kill_at_s=round(killed.after_s, 1))


def test_training_killed_mid_run_and_while_replacing_an_older_one(tmp_path, model_dir):
    import polars as pl

    from modelsmith.model_dir import directory_digest
    from scenario_data.generator import generate_requests, label_requests
    from scenario_data.policy import shipped_policy

    rows = label_requests(generate_requests(100, seed=77), shipped_policy(2)).with_columns(
        pl.when(pl.col("vertical") == "Video Gaming").then(pl.lit("target")).otherwise(pl.lit("replay"))
        .alias("source"))
    rows_path = tmp_path / "rows.parquet"
    rows.write_parquet(rows_path)
    reference = job_train(str(model_dir), str(rows_path), str(tmp_path / "ref" / "adapter"))

    # 1: killed while training: its work directory is there and its log says the first epoch is done.
    out = tmp_path / "a" / "adapter"
    out.parent.mkdir()
    child = _child("train", tmp_path / "k1", model_dir=model_dir, rows=rows_path, out=out)
    killed = child.kill_when(lambda: any(p.name.startswith(".adapter.") for p in out.parent.iterdir())
                             and "sft epoch 1:" in child.out.read_text())
    assert not out.exists()
    leftovers = hidden(out.parent)
    assert leftovers and all(h.split("/")[0].startswith(".adapter.") for h in leftovers)
    _swept(out.parent)
    again = job_train(str(model_dir), str(rows_path), str(out))
    assert again["digest"] == directory_digest(out) == reference["digest"]

    # 2: an older adapter at the path; killed at the first file removed while replacing it.
    old = tmp_path / "b" / "adapter"
    shutil.copytree(out, old)
    (old / "README.md").write_text("an older adapter\n")
    old_digest = directory_digest(old)
    # (the old code removed the old directory in place, then renamed: a kill there left half of it)
    _child("train", tmp_path / "k2", trap=[{"kind": "unlink", "under": ["adapter", ".adapter.*.old"]}],
           model_dir=model_dir, rows=rows_path, out=old).kill_at_trap()
    assert old.is_dir() and directory_digest(old) in (old_digest, reference["digest"])  # one whole adapter, never half
    assert directory_digest(old) == reference["digest"]  # the new one was in place before the old one was removed
    _record("training", leftovers=len(leftovers), kill_at_s=round(killed.after_s, 1))


@pytest.fixture
def adapter_files(tmp_path) -> Path:
    d = tmp_path / "adapter_src"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return d


def test_bundle_killed_before_the_directory_and_before_the_tar(tmp_path, adapter_files):
    from modelsmith.bundle_verify import verify_bundle
    from modelsmith.gate import bundles, pending
    from modelsmith.model_dir import file_sha256

    keys = tmp_path / "keys"
    ref = job_bundle(str(tmp_path / "ref"), str(keys), str(adapter_files))
    ref_tar = file_sha256(ref.tar)

    # 1: killed with the whole bundle signed in its temp directory, not yet renamed into place.
    home = tmp_path / "h1"
    killed = _child("bundle", tmp_path / "k1", trap=[{"kind": "rename", "name": "c1"}], home=home, key_dir=keys,
                    adapter=adapter_files).kill_at_trap()
    (tmp_dir,) = hidden(home / "bundles")
    assert tmp_dir.startswith(".c1.") and (home / "bundles" / tmp_dir / "bundle.dsse.json").is_file()
    assert visible(home / "bundles") == {} and bundles(home) == [] and pending(home) == ""  # readers skip it
    leftovers = _swept(home)
    info = job_bundle(str(home), str(keys), str(adapter_files))
    assert info.digest == ref.digest and file_sha256(info.tar) == ref_tar

    # 2: killed after the directory is in place, before its tar: the directory is whole and offered.
    home = tmp_path / "h2"
    _child("bundle", tmp_path / "k2", trap=[{"kind": "rename", "name": "c1.tar"}], home=home, key_dir=keys,
           adapter=adapter_files).kill_at_trap()
    assert not (home / "bundles" / "c1.tar").exists()
    report = verify_bundle(home / "bundles" / "c1", keys.joinpath("ed25519.pub").read_text())
    assert report.ok and report.digest == ref.digest and pending(home) == ref.digest
    with pytest.raises(FileExistsError, match="immutable"):  # written again: the tar is completed, nothing else
        job_bundle(str(home), str(keys), str(adapter_files))
    assert file_sha256(home / "bundles" / "c1.tar") == ref_tar and verify_bundle(home / "bundles" / "c1.tar").ok
    _record("bundle", leftovers=len(leftovers), kill_at_s=round(killed.after_s, 1))


def _gate_home(home: Path, adapter_files: Path) -> tuple[str, str, str]:
    """A home with a base champion, an adapter and a signed bundle offering it: (base, adapter, bundle digest)."""
    from modelsmith.model_dir import Registry
    from modelsmith.audit import bootstrap_champion

    base_dir = home / "models" / "base"
    base_dir.mkdir(parents=True)
    (base_dir / "config.json").write_text('{"name": "base"}')
    base = Registry(home).register(base_dir, "base")
    copy = shutil.copytree(adapter_files, home / "adapters" / "a")
    adapter = Registry(home).register(copy, "adapter", base=base.digest)
    bootstrap_champion(home, base.digest)
    (home / "gate.json").write_text(json.dumps({"candidate": adapter.digest, "champion": base.digest}))
    return base.digest, adapter.digest, job_bundle(str(home), str(home / "keys"), str(adapter_files)).digest


def _audit_lines_intact(home: Path) -> list[str]:
    """Every line of the audit log is a whole canonical entry chained to the one before (no torn write)."""
    from modelsmith import audit

    lines = (home / "audit.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert all(b["prev"] == a["digest"] for a, b in zip(entries, entries[1:], strict=False))
    return [e["action"] for e in audit.entries(home)]


def test_promotion_killed_before_and_after_its_audit_entry(tmp_path, adapter_files):
    from modelsmith import audit
    from modelsmith.gate import GateError, pending
    from modelsmith.champion import champion_path, read_champion

    ref = tmp_path / "ref"
    _, ref_adapter, _ = _gate_home(ref, adapter_files)
    job_decide(str(ref))
    assert read_champion(ref).model_version == ref_adapter and audit.verify(ref).ok

    # 1: killed after the decision record, before its audit entry: nothing is decided.
    home = tmp_path / "h1"
    base, adapter, digest = _gate_home(home, adapter_files)
    killed = _child("decide", tmp_path / "k1", trap=[{"kind": "before", "target": "modelsmith.audit:append"}],
                    home=home).kill_at_trap()
    assert (home / "decisions" / f"{digest}.json").is_file()  # the uncommitted record a reader must not trust
    assert audit.verify(home).ok and _audit_lines_intact(home) == ["bootstrap"]
    assert read_champion(home).model_version == base and pending(home) == digest
    job_decide(str(home))  # the same decision again: taken once
    assert read_champion(home).model_version == adapter and audit.verify(home).ok
    assert _audit_lines_intact(home) == _audit_lines_intact(ref) == ["bootstrap", "approve"]

    # 2: killed after the audit entry, before the champion record moved.
    home = tmp_path / "h2"
    base, adapter, digest = _gate_home(home, adapter_files)
    champion_bytes = champion_path(home).read_bytes()
    _child("decide", tmp_path / "k2", trap=[{"kind": "after", "target": "modelsmith.audit:append"}],
           home=home).kill_at_trap()
    assert champion_path(home).read_bytes() == champion_bytes  # whole, and still the old champion
    assert _audit_lines_intact(home) == ["bootstrap", "approve"]
    lag = audit.verify(home)
    assert not lag.ok and len(lag.errors) == 1 and "champion.json" in lag.errors[0] and "interrupted" in lag.errors[0]
    assert pending(home) == ""  # committed: no longer offered
    with pytest.raises(GateError, match="already decided: approve by ana"):
        _decide_again(home, digest)
    assert read_champion(home).model_version == adapter and audit.verify(home).ok  # completed by the gate
    assert _audit_lines_intact(home) == ["bootstrap", "approve", "refused"]  # the approval once; the retry refused
    assert hidden(home / "decisions") == []
    _record("promotion", kill_at_s=round(killed.after_s, 1))


def _decide_again(home: Path, digest: str) -> dict:
    from modelsmith.gate import Decision, decide
    from modelsmith.engines.signer import Ed25519Signer

    return decide(home, Decision("ana", "approve", digest, "fixes Gaming"), Ed25519Signer(home / "keys"), "run-2")
