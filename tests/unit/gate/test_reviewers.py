"""Decisions bound to reviewers' keys: the gate takes only a listed reviewer's signature of this exact decision."""

import base64
import json

import pytest
import yaml
from click.testing import CliRunner

from modelsmith import audit
from modelsmith_cli.cli import main
from modelsmith.gate import Decision, GateError, decide
from modelsmith.champion import read_champion
from modelsmith.reviewers import ReviewerError, load_reviewers
from tests.unit.gate.test_gate import _bundle, gate  # noqa: F401  (fixture)


def _keygen(key_dir, name: str, may: str) -> str:
    out = CliRunner().invoke(main, ["gate", "keygen", str(key_dir), "--name", name, "--may", may])
    assert out.exit_code == 0, out.output
    return out.output


def _sign(key_dir, reviewer: str, digest: str = "", decision: str = "approve", rollback_to: str = "") -> str:
    args = ["gate", "sign", digest, "--key-dir", str(key_dir), "--reviewer", reviewer, "--decision", decision]
    out = CliRunner().invoke(main, args + (["--rollback-to", rollback_to] if rollback_to else []))
    assert out.exit_code == 0, out.output
    return out.output.strip()


@pytest.fixture
def reviewed(gate, tmp_path):  # noqa: F811
    home, base, adapter, signer = gate
    ana, bo, eve = tmp_path / "ana", tmp_path / "bo", tmp_path / "eve"
    listed = [_keygen(ana, "ana", "approve,reject,rollback"), _keygen(bo, "bo", "reject")]
    _keygen(eve, "eve", "approve")  # a key, but not in the reviewers file
    entries = [e for text in listed for e in yaml.safe_load(text)["reviewers"]]
    (home / "reviewers.yaml").write_text(yaml.safe_dump({"reviewers": entries}))
    assert (ana / "ed25519.key").stat().st_mode & 0o077 == 0
    return home, base, adapter, signer, ana, bo, eve


def test_a_listed_reviewers_signed_approval_moves_the_champion_and_is_recorded(reviewed):
    home, base, adapter, signer, ana, bo, eve = reviewed
    digest = _bundle(home, signer, "c1", adapter.digest, base.digest, offered=True)
    token = _sign(ana, "ana", digest)
    record = decide(home, Decision("", "approve", digest, "fixes Gaming", signature=token), signer, "run-1")
    assert read_champion(home).model_version == adapter.digest
    assert record["approver"] == "ana" and record["reviewer_verified"] is True and record["reviewer_key_id"]
    entry = audit.entries(home)[-1]
    assert entry["action"] == "approve" and entry["approver"] == "ana"
    assert entry["reviewer_key_id"] == record["reviewer_key_id"] and len(entry["approval_sha256"]) == 64
    assert audit.verify(home).ok


def test_the_gate_refuses_what_a_reviewer_did_not_sign(reviewed):
    home, base, adapter, signer, ana, bo, eve = reviewed
    digest = _bundle(home, signer, "c2", adapter.digest, base.digest, offered=True)
    other = _bundle(home, signer, "c3", adapter.digest, base.digest, offered=True)

    def refused(decision: Decision, match: str) -> None:
        with pytest.raises(GateError, match=match):
            decide(home, decision, signer)

    refused(Decision("ana", "approve", digest), "this home lists reviewers: sign the decision")  # a typed name
    refused(Decision("eve", "approve", digest, signature=_sign(eve, "eve", digest)), "does not list")  # unknown key
    token = _sign(ana, "ana", digest)
    envelope = json.loads(base64.b64decode(token))
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][:-4] + "0000"
    forged = base64.b64encode(json.dumps(envelope).encode()).decode()
    refused(Decision("ana", "approve", digest, signature=forged), "does not verify with ana's key")
    refused(Decision("ana", "approve", other, signature=token), "signed bundle_digest")  # another bundle
    refused(Decision("ana", "reject", digest, signature=token), "signed decision 'approve', not 'reject'")
    refused(Decision("bo", "approve", digest, signature=token), "approver: 'bo', but the signature is ana's")
    refused(Decision("bo", "approve", digest, signature=_sign(bo, "bo", digest)), "bo may \\['reject'\\], not approve")
    refused(Decision("ana", "approve", digest, signature="not base64!"), "not a signed approval")
    assert read_champion(home).model_version == base.digest  # nothing moved
    refusals = [e for e in audit.entries(home) if e["action"] == "refused"]
    assert len(refusals) == 8 and all(e["reason"].startswith(("signature", "approver")) for e in refusals)

    decide(home, Decision("ana", "approve", digest, signature=token), signer)  # the real one still works
    assert read_champion(home).model_version == adapter.digest
    # a replay: the same signed approval, used a second time
    refused(Decision("ana", "approve", digest, signature=token), "already used")


def test_a_rollback_is_signed_for_its_version(reviewed):
    home, base, adapter, signer, ana, bo, eve = reviewed
    digest = _bundle(home, signer, "c4", adapter.digest, base.digest, offered=True)
    decide(home, Decision("ana", "approve", digest, signature=_sign(ana, "ana", digest)), signer)
    with pytest.raises(GateError, match="signed rollback_to"):
        decide(home, Decision("ana", "rollback", rollback_to=base.key,
                              signature=_sign(ana, "ana", decision="rollback", rollback_to="f" * 16)), signer)
    decide(home, Decision("ana", "rollback", rollback_to=base.key,
                          signature=_sign(ana, "ana", decision="rollback", rollback_to=base.key)), signer)
    assert read_champion(home).model_version == base.digest and audit.verify(home).ok


def test_a_malformed_reviewers_file_is_named(tmp_path):
    path = tmp_path / "reviewers.yaml"
    path.write_text("reviewers:\n  - {name: ana, public_key: 'not a key', may: [approve]}\n")
    with pytest.raises(ReviewerError, match=r"reviewers.yaml: reviewers\[0\].public_key: must be an Ed25519"):
        load_reviewers(path)
    path.write_text("reviewers:\n  - {name: ana, public_key: x, may: [promote]}\n")
    with pytest.raises(ReviewerError, match=r"reviewers\[0\].may"):
        load_reviewers(path)
    out = CliRunner().invoke(main, ["gate", "sign", "a" * 64, "--key-dir", str(tmp_path / "none"), "--reviewer", "x"])
    assert out.exit_code == 2 and "no ed25519.key" in out.output
