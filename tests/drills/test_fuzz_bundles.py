"""Bad-input drill: evidence bundles handed to `modelsmith bundle verify`, directory and tar forms, fuzzed.

The seed is a real bundle (`modelsmith.attest.write_bundle`, an Ed25519 key, real failure rows from
../shared/realdata in its trace, an adapter directory, three attestations). Mutations: any file's bytes
flipped, cut, extended or replaced (10,000 nested arrays, NaN, a 5,000-digit integer, non-UTF-8, an
empty file, a 5 MB file), a file removed, replaced by a directory, a FIFO or a symbolic link, an extra
file, and envelopes re-signed with the real key around nasty payloads (so the statement parser, not
just the signature check, meets them). The tar form is damaged whole (cut, flipped, prefixed).

What must hold: `verify_bundle` returns a report and never raises; a changed bundle is not OK and an
error names the changed file (`<path>: ...`); nothing is written outside a temporary directory that is
removed afterwards; `modelsmith bundle verify` exits 1 with the errors (or 0 when OK), never a traceback.
The bugs this drill found carry an `@example` each.
"""

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelsmith.attest import BUNDLE_FILE, PUBLIC_KEY_FILE, write_bundle
from modelsmith.bundle_verify import verify_bundle
from modelsmith.dsse import PAYLOAD_TYPE, pae
from modelsmith_cli.cli import main
from modelsmith.lineage import canonical_json
from modelsmith.engines.signer import Ed25519Signer
from scenario_data.ingest import ingest_paths
from tests.drills.input_support import DEEP

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NASTY_CONTENT = [
    b"", b"[" * DEEP + b"]" * DEEP, b'{"payload":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"payload":"e30=","payloadType":NaN,"signatures":[{"keyid":"a","sig":"b"}]}',
    b'{"payload":' + b"9" * 5_000 + b',"payloadType":"x","signatures":[]}',
    b'{"payload":1e400,"payloadType":"x","signatures":[]}',
    b'{"payload":"e30=","payload":"e30=","payloadType":"x","signatures":[]}', b"\xff\xfe\x00", b"null", b"[]",
    b'{"payload":"!!!","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"k","sig":"!!"}]}',
    b"x" * 5_000_000,
]
NASTY_PAYLOADS = [  # statements a real signature vouches for: only the parser stands between them and a crash
    b"[" * DEEP + b"]" * DEEP,
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"x":NaN},"predicateType":"p","subject":[]}',
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"x":' + b"9" * 5_000 + b'},"predicateType":"p"}',
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"x":1e400},"predicateType":"p","subject":[]}',
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":' + b'{"a":' * 600 + b"1" + b"}" * 600
    + b',"predicateType":"p","subject":[{"digest":{"sha256":"00"},"name":"a"}]}',
    canonical_json({"_type": "https://in-toto.io/Statement/v1", "predicate": {}, "predicateType": "p",
                    "subject": [{"digest": {"sha256": "00"}, "name": "../../../../etc/passwd"},
                                {"digest": {"sha256": "00"}, "name": "/etc/shadow"}, "not a subject"]}),
    b"\xff\xfe", b"",
]
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 10**9)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.floats(0, 0.999)),
    st.tuples(st.just("append"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("replace"), st.integers(0, 10**6), st.sampled_from(NASTY_CONTENT)),
    st.tuples(st.just("signed"), st.integers(0, 10**6), st.sampled_from(NASTY_PAYLOADS)),
    st.tuples(st.sampled_from(["remove", "dir", "fifo", "symlink", "extra"]), st.integers(0, 10**6), st.just(None)),
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Ed25519Signer:
    return Ed25519Signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, keys, realdata: Path):
    base = tmp_path_factory.mktemp("bundle")
    trace = base / "failure_trace.parquet"
    ingest_paths([realdata / "openrtb"]).features.head(50).write_parquet(trace)
    adapter = base / "adapter"
    (adapter / "nested").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}\n')
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (adapter / "nested" / "tokenizer.json").write_text('{"model": "WordLevel"}\n')
    files = {"failure_trace.parquet": trace, "diagnosis.json": b'{"hypothesis": "layout signals in Gaming"}\n',
             "report.html": b"<html><body>cycle</body></html>\n"}
    attestations = [("pins", "https://modelsmith.dev/pins/v1", {"passed": True}),
                    ("diagnosis", "https://modelsmith.dev/diagnosis/v1", {"critic": "statistical"}),
                    ("delta", "https://modelsmith.dev/benchmark-delta/v1", {"repaired": ["Video Gaming/app"]})]
    info = write_bundle(base / "cycle-1", files, adapter, attestations, {"cycle": "1"}, keys)
    assert verify_bundle(info.path, keys.public_key_pem()).ok
    return info


def _resign(path: Path, payload: bytes, keys: Ed25519Signer) -> None:
    sig = base64.b64encode(keys.sign(pae(PAYLOAD_TYPE, payload))).decode()
    path.write_bytes(canonical_json({"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                                     "signatures": [{"keyid": keys.key_id(), "sig": sig}]}))


def apply(root: Path, files: list[str], mutation: tuple, keys: Ed25519Signer) -> str:
    """Mutate one file of the bundle at `root`; returns its relative path (the name an error must carry)."""
    kind, which, value = mutation
    if kind == "signed":
        envelopes = [f for f in files if f.endswith(".dsse.json")]
        rel = envelopes[which % len(envelopes)]
        _resign(root / rel, value, keys)
        return rel
    rel = files[which % len(files)]
    path = root / rel
    data = path.read_bytes()
    if kind == "flip":
        i = value % len(data)
        path.write_bytes(data[:i] + bytes([data[i] ^ (1 + value % 255)]) + data[i + 1:])
    elif kind == "truncate":
        path.write_bytes(data[: int(len(data) * value)])
    elif kind == "append":
        path.write_bytes(data + value)
    elif kind == "replace":
        path.write_bytes(value if value != data else value + b" ")
    elif kind == "remove":
        path.unlink()
    elif kind == "dir":
        path.unlink()
        path.mkdir()
        (path / "inside").write_bytes(data)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)  # never opened by the verifier: it would block
    elif kind == "symlink":
        outside = root.parent / f"outside-{path.name}"
        outside.write_bytes(data)  # the same bytes: only the link itself is wrong
        path.unlink()
        path.symlink_to(outside)
    elif kind == "extra":
        rel = str(Path(rel).parent / "unexpected.bin") if "/" in rel else "unexpected.bin"
        (root / rel).write_bytes(b"\x00")
    return rel


def _temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("modelsmith-bundle-*")}


@FUZZ
@given(mutation=MUTATIONS)
# Regressions: each raised out of verify_bundle (RecursionError, ValueError) or was not reported.
@example(mutation=("replace", 0, b"[" * DEEP + b"]" * DEEP))  # json recursion in an envelope
@example(mutation=("replace", 0, b'{"payload":' + b"9" * 5_000 + b',"payloadType":"x","signatures":[]}'))
@example(mutation=("signed", 0, NASTY_PAYLOADS[1]))  # NaN in a signed statement: canonical_json raised
@example(mutation=("signed", 1, NASTY_PAYLOADS[4]))  # 600 nested objects: deepcopy's recursion
@example(mutation=("fifo", 2, None))  # a FIFO in the bundle was silently ignored
def test_a_mutated_bundle_directory_fails_naming_the_file(tmp_path_factory, built, keys, mutation):
    root = Path(shutil.copytree(built.path, tmp_path_factory.mktemp("copy") / "b"))
    files = sorted(built.files)
    changed = apply(root, files, mutation, keys)
    report = verify_bundle(root, keys.public_key_pem())  # must return, whatever the bundle holds
    assert not report.ok
    assert report.errors and all(": " in e for e in report.errors)
    assert any(e.startswith(f"{changed}: ") or f" {changed}" in e for e in report.errors), (changed, report.errors)
    assert report.digest in ("", built.digest) or len(report.digest) == 64
    json.dumps(report.as_json())  # what `--json` prints can always be printed


@FUZZ
@given(how=st.tuples(st.sampled_from(["truncate", "flip", "prepend", "append"]), st.integers(0, 10**9),
                     st.integers(1, 64)))
@example(how=("truncate", 700, 1))
def test_a_damaged_bundle_tar_is_refused_or_verified_never_extracted_outside(tmp_path_factory, built, keys, how):
    kind, where, count = how
    data = bytearray(built.tar.read_bytes())
    if kind == "truncate":
        data = data[: where % len(data)]
    elif kind == "flip":
        for k in range(count):
            i = (where + 7919 * k) % len(data)
            data[i] ^= 1 + (where + k) % 255
    elif kind == "prepend":
        data = bytearray(os.urandom(count)) + data
    else:
        data += os.urandom(count)
    tmp = tmp_path_factory.mktemp("tar")
    tar = tmp / "cycle-1.tar"
    tar.write_bytes(bytes(data))
    before = _temp_dirs()
    report = verify_bundle(tar, keys.public_key_pem())
    assert _temp_dirs() == before  # the extraction directory is gone
    assert sorted(p.name for p in tmp.iterdir()) == ["cycle-1.tar"]  # nothing extracted beside the tar
    if report.ok:  # a flip in padding or a header field the verifier does not read: same content
        assert report.digest == built.digest
    else:
        assert report.errors and all(": " in e for e in report.errors)


@settings(FUZZ, max_examples=20)
@given(mutation=MUTATIONS, as_json=st.booleans())
def test_the_cli_exits_1_with_the_errors_never_a_traceback(tmp_path_factory, built, keys, mutation, as_json):
    root = Path(shutil.copytree(built.path, tmp_path_factory.mktemp("cli") / "b"))
    apply(root, sorted(built.files), mutation, keys)
    key_file = root.parent / "trusted.pem"
    key_file.write_text(keys.public_key_pem())
    args = ["bundle", "verify", str(root), "--public-key", str(key_file), *(["--json"] if as_json else [])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, (result.exit_code, result.output[-2000:], result.exception)
    assert "Traceback" not in result.output
    if as_json:
        out = json.loads(result.output)
        assert out["ok"] is False and out["errors"]
    else:
        assert result.output.rstrip().splitlines()[-1].startswith("FAILED: ")


@pytest.mark.parametrize("key", [b"", b"\xff\xfe not ascii", b"[" * DEEP,
                                 b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_a_bad_trusted_key_file_is_a_clear_refusal(tmp_path, built, key):
    key_file = tmp_path / "trusted.pem"
    key_file.write_bytes(key)
    result = CliRunner().invoke(main, ["bundle", "verify", str(built.path), "--public-key", str(key_file)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(key_file) in result.output or "public key: cannot verify" in result.output, result.output


def test_the_intact_bundle_still_verifies_in_both_forms(built, keys):
    for path in (built.path, built.tar):
        report = verify_bundle(path, keys.public_key_pem())
        assert report.ok and report.digest == built.digest, report.errors
    own = verify_bundle(built.path)  # with the bundle's own key: intact, with the warning
    assert own.ok and own.warning and PUBLIC_KEY_FILE in own.warning
    assert (built.path / BUNDLE_FILE).is_file()


def test_the_gate_prefill_reads_any_bundle_envelope_without_crashing(tmp_path):
    """`pending` (the Launchpad's default digest, computed when the code location loads) reads every
    bundle.dsse.json in the home unverified: a broken one must not stop the code location from loading."""
    from modelsmith.gate import pending
    from modelsmith.model_dir import file_sha256

    def envelope(payload: bytes) -> bytes:
        return json.dumps({"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                           "signatures": []}).encode()

    broken = [*NASTY_CONTENT[:11], b"[1]", b'{"payload": 5}', envelope(b'{"predicate": [1]}'),
              envelope(b"[" * DEEP + b"]" * DEEP), envelope(b'{"predicate": "offer_for_promotion"}')]
    for i, content in enumerate(broken):
        (tmp_path / "bundles" / f"broken-{i}").mkdir(parents=True)
        (tmp_path / "bundles" / f"broken-{i}" / BUNDLE_FILE).write_bytes(content)
    assert pending(tmp_path) == ""
    offered = tmp_path / "bundles" / "offered"  # the positive control: an offered bundle among them is found
    offered.mkdir()
    (offered / BUNDLE_FILE).write_bytes(envelope(b'{"predicate": {"offer_for_promotion": true}}'))
    assert pending(tmp_path) == file_sha256(offered / BUNDLE_FILE)
