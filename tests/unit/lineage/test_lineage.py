"""Lineage: canonical row digests, the RFC 6962 Merkle tree, the signed statement, `modelsmith lineage prove`."""

import hashlib
import json
import math
from dataclasses import replace
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from modelsmith_cli.cli import main
from modelsmith.lineage import (Lineage, build_lineage, canonical_row, inclusion_proof, merkle_root, prove,
                                read_lineage, row_digest, verify_inclusion, verify_lineage, write_lineage)
from modelsmith.engines.signer import Ed25519Signer
from scenario_data.generator import generate_requests, label_requests
from scenario_data.policy import shipped_policy

# RFC 6962 test vectors (certificate-transparency reference tests): leaves, roots of the first n, inclusion paths.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (0-based index, size, path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def _naive_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 written as literally as possible, slicing the list (the reference)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _naive_mth(leaves[:k]) + _naive_mth(leaves[k:])).digest()


def _naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return _naive_path(m, leaves[:k]) + [_naive_mth(leaves[k:])]
    return _naive_path(m - k, leaves[k:]) + [_naive_mth(leaves[:k])]


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# --- canonical rows ---

def test_canonical_row() -> None:
    row = {"b": 1.85, "a": None, "c": True, "d": "Café ü", "e": [1, 2.5e-07], "f": 3}
    assert canonical_row(row) == '{"a":null,"b":1.85,"c":true,"d":"Café ü","e":[1,2.5e-07],"f":3}'.encode()
    assert canonical_row({"x": 0.1 + 0.2}) == b'{"x":0.30000000000000004}'  # repr, not rounded
    assert row_digest(row) == hashlib.sha256(canonical_row(row)).hexdigest()
    assert row_digest(row) == row_digest(dict(reversed(row.items())))  # key order does not matter
    with pytest.raises(ValueError):
        canonical_row({"x": math.nan})
    with pytest.raises(ValueError):
        canonical_row({"x": math.inf})
    with pytest.raises(TypeError):
        canonical_row({"x": date(2025, 1, 1)})


def test_generated_rows_are_canonical_json() -> None:
    rows = _rows()
    assert len({row_digest(r) for r in rows}) == len(rows)
    assert all(json.loads(canonical_row(r)) == r for r in rows)  # nothing lost or converted


# --- the Merkle tree ---

def test_rfc6962_roots_and_paths() -> None:
    for n, root in enumerate(CT_ROOTS):
        assert merkle_root(CT_LEAVES[:n]).hex() == root
    for index, size, path in CT_INCLUSION:
        proof = inclusion_proof(CT_LEAVES[:size], index)
        assert [p.hex() for p in proof] == path
        assert verify_inclusion(CT_LEAVES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize("size", range(1, 18))
def test_every_index_proves_and_tampering_fails(size: int) -> None:
    leaves = [hashlib.sha256(f"row {i}".encode()).digest() for i in range(size)]
    root = merkle_root(leaves)
    assert root == _naive_mth(leaves)
    for i in range(size):
        proof = inclusion_proof(leaves, i)
        assert proof == _naive_path(i, leaves)
        assert verify_inclusion(leaves[i], i, size, proof, root)
        assert not verify_inclusion(_flip(leaves[i]), i, size, proof, root)  # tampered leaf
        for step in range(len(proof)):  # each tampered proof step
            bad = [*proof[:step], _flip(proof[step]), *proof[step + 1:]]
            assert not verify_inclusion(leaves[i], i, size, bad, root)
        for j in {i - 1, i + 1, size}:  # wrong index (neighbours, out of range)
            assert not verify_inclusion(leaves[i], j, size, proof, root)
        assert not verify_inclusion(leaves[i], i, size, proof, _flip(root))  # wrong root
        assert not verify_inclusion(leaves[i], i, size, [*proof, root], root)  # extra step
        if proof:
            assert not verify_inclusion(leaves[i], i, size, proof[:-1], root)  # missing step
    with pytest.raises(IndexError):
        inclusion_proof(leaves, size)


# --- the signed lineage ---

def _rows() -> list[dict]:
    return label_requests(generate_requests(30, 1), shipped_policy(1)).to_dicts()


def _lineage(rows: list[dict], signer: Ed25519Signer) -> Lineage:
    return build_lineage(rows, policy_digest=rows[0]["policy_digest"], generator_seed=1, diagnosis_digest="d" * 64,
                         cycle="c-0001", signer=signer)


def test_lineage_signature_covers_every_signed_field(tmp_path: Path) -> None:
    signer = Ed25519Signer(tmp_path / "keys")
    rows = _rows()
    lineage = _lineage(rows, signer)
    assert lineage.rows == len(rows) and lineage.key_id == signer.key_id()
    assert lineage.root == merkle_root([bytes.fromhex(row_digest(r)) for r in rows]).hex()
    assert verify_lineage(lineage) and verify_lineage(lineage, signer.public_key_pem())
    for changed in ({"root": "0" * 64}, {"policy_digest": "0" * 64}, {"generator_seed": 2}, {"cycle": "c-0002"},
                    {"diagnosis_digest": "e" * 64}, {"rows": 29}, {"created": "2000-01-01T00:00:00+00:00"},
                    {"kind": "other"}, {"signature": "00" * 64}, {"signature": "not hex"}):
        assert not verify_lineage(replace(lineage, **changed)), changed
    other = Ed25519Signer(tmp_path / "other")
    assert not verify_lineage(lineage, other.public_key_pem())  # a key you trust that did not sign it
    assert not verify_lineage(replace(lineage, public_key=other.public_key_pem()))  # key swapped in the file
    resigned = _lineage(rows, other)  # signed by another key that claims this key's id
    assert not verify_lineage(replace(resigned, key_id=signer.key_id()))


def test_write_lineage_files_and_no_private_key(tmp_path: Path) -> None:
    signer = Ed25519Signer(tmp_path / "keys")
    rows = _rows()
    lineage = _lineage(rows, signer)
    dataset = tmp_path / "home" / "datasets" / "c-0001"
    write_lineage(dataset, rows, lineage)
    text = (dataset / "lineage.json").read_text()
    private = (tmp_path / "keys" / "ed25519.key").read_text()
    assert "PRIVATE" not in text and "".join(private.splitlines()[1:-1]) not in text
    assert read_lineage(dataset) == lineage
    digests = pl.read_parquet(dataset / "row_digests.parquet")
    assert digests.columns == ["row_id", "index", "digest"]
    assert digests["row_id"].to_list() == [r["row_id"] for r in rows]
    assert digests["digest"].to_list() == [row_digest(r) for r in rows]
    assert sorted(p.name for p in dataset.iterdir()) == ["lineage.json", "row_digests.parquet"]  # no temp files left
    with pytest.raises(ValueError, match="not the rows"):
        write_lineage(dataset, rows[:-1], lineage)
    with pytest.raises(ValueError, match="duplicate"):
        write_lineage(dataset, [*rows, rows[0]], lineage)


def test_prove(tmp_path: Path) -> None:
    rows = _rows()
    home = tmp_path / "home"
    write_lineage(home / "datasets" / "c-0001", rows, _lineage(rows, Ed25519Signer(tmp_path / "keys")))
    result = prove(home, rows[7]["row_id"])
    assert result["verified"] and result["index"] == 7 and result["size"] == len(rows) and result["cycle"] == "c-0001"
    assert result["leaf_digest"] == row_digest(rows[7])
    proof = [bytes.fromhex(p) for p in result["proof"]]
    assert verify_inclusion(bytes.fromhex(result["leaf_digest"]), 7, len(rows), proof, bytes.fromhex(result["root"]))
    with pytest.raises(LookupError, match="no-such-row"):
        prove(home, "no-such-row")
    with pytest.raises(LookupError, match="c-9999"):
        prove(home, rows[7]["row_id"], cycle="c-9999")


# --- the CLI ---

@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = _rows()
    home = tmp_path / "home"
    write_lineage(home / "datasets" / "c-0001", rows, _lineage(rows, Ed25519Signer(home / "keys")))
    return home, rows


def test_cli_prove_verified(home: tuple[Path, list[dict]]) -> None:
    root, rows = home
    runner = CliRunner()
    out = runner.invoke(main, ["lineage", "prove", rows[3]["row_id"], "--home", str(root)])
    assert out.exit_code == 0, out.output
    assert "verified: yes" in out.output and f"index:    3 of {len(rows)}" in out.output
    assert row_digest(rows[3]) in out.output and "c-0001" in out.output
    out = runner.invoke(main, ["lineage", "prove", rows[3]["row_id"], "--home", str(root), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["verified"] is True


def test_cli_default_home_is_modelsmith_home(home: tuple[Path, list[dict]], monkeypatch) -> None:
    root, rows = home
    monkeypatch.setenv("MODELSMITH_HOME", str(root))
    out = CliRunner().invoke(main, ["lineage", "prove", rows[0]["row_id"]])
    assert out.exit_code == 0 and "verified: yes" in out.output


def test_cli_tampered_digests_not_verified(home: tuple[Path, list[dict]]) -> None:
    root, rows = home
    path = root / "datasets" / "c-0001" / "row_digests.parquet"
    frame = pl.read_parquet(path)
    tampered = frame.with_columns(pl.when(pl.col("index") == 12).then(pl.lit(hashlib.sha256(b"forged").hexdigest()))
                                  .otherwise(pl.col("digest")).alias("digest"))
    tampered.write_parquet(path)
    for row in (rows[12], rows[3]):  # the forged row itself, and another row whose proof passes through it
        out = CliRunner().invoke(main, ["lineage", "prove", row["row_id"], "--home", str(root)])
        assert out.exit_code == 1 and "verified: no" in out.output


def test_cli_tampered_lineage_not_verified(home: tuple[Path, list[dict]]) -> None:
    root, rows = home
    path = root / "datasets" / "c-0001" / "lineage.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"generator_seed": 99}))
    out = CliRunner().invoke(main, ["lineage", "prove", rows[0]["row_id"], "--home", str(root), "--json"])
    assert out.exit_code == 1 and json.loads(out.output)["verified"] is False


def test_cli_unknown_row(home: tuple[Path, list[dict]]) -> None:
    root, _ = home
    out = CliRunner().invoke(main, ["lineage", "prove", "req-nope/1", "--home", str(root)])
    assert out.exit_code == 1
    assert "req-nope/1" in out.output and "datasets" in out.output
