"""Signed lineage of a dataset of rows: which rows, made from what, signed by whom.

Each row gets a digest of its canonical JSON; the digests, in row order, are the leaves of an
RFC 6962 Merkle tree. The signed statement names the root together with the policy digest,
generator seed, diagnosis digest and cycle, so one row can later be shown to belong to a signed
dataset with a logarithmic inclusion proof (`prove`, `modelsmith lineage prove`), without
re-reading or re-signing the rest.

The Merkle code is written here (about fifty lines) rather than taken from a library: the
maintained Python one with RFC 6962 hashing, pymerkle 7.0.0, agrees with it on roots and audit
paths, but its proofs are its own structure (1-based index, the leaf hash first, direction
bits), and checking a plain RFC 6962 audit path with it needs its private
`_inclusion_path_layout`. The tests check this code against the RFC 6962 test vectors and a
second, naive implementation.
"""

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from modelsmith.atomic import write_text, write_with
from modelsmith.engines.signer import Ed25519Signer, key_id_for, verify
from modelsmith.store import DatasetFiles, Home

KIND = "modelsmith.lineage/v1"


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, floats as Python repr, None as null; NaN/inf and
    non-JSON types (dates, decimals, bytes) are refused rather than guessed at."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def canonical_row(row: dict[str, Any]) -> bytes:
    return canonical_json(row)


def row_digest(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_row(row)).hexdigest()


# --- RFC 6962 Merkle tree (section 2.1; verification as in RFC 9162 section 2.1.3.2) ---

def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(hashes: list[bytes], lo: int, hi: int) -> bytes:
    if hi - lo == 1:
        return hashes[lo]
    k = _split(hi - lo)
    return _node_hash(_subtree(hashes, lo, lo + k), _subtree(hashes, lo + k, hi))


def merkle_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]); the empty tree's root is SHA-256 of the empty string."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _subtree([_leaf_hash(leaf) for leaf in leaves], 0, len(leaves))


def inclusion_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]): the audit path, bottom up."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} out of range for {len(leaves)} leaves")
    hashes = [_leaf_hash(leaf) for leaf in leaves]
    path: list[bytes] = []
    lo, hi = 0, len(hashes)
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_subtree(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subtree(hashes, lo, lo + k))
            lo += k
    return path[::-1]


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """True when `proof` shows `leaf` at `index` in the tree of `size` leaves whose root is `root`."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, _leaf_hash(leaf)
    for p in proof:
        if sn == 0 or len(p) != 32:
            return False
        if fn & 1 or fn == sn:
            r = _node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


# --- the signed lineage ---

@dataclass(frozen=True)
class Lineage:
    rows: int
    root: str  # hex Merkle root of the row digests, in row order
    policy_digest: str
    generator_seed: int
    diagnosis_digest: str
    cycle: str
    created: str  # ISO 8601, UTC
    key_id: str
    public_key: str  # PEM; not signed (it checks the signature)
    signature: str  # hex Ed25519 signature of canonical_json(statement())
    kind: str = KIND  # signed: names the statement type, so this signature means nothing as another payload

    def statement(self) -> dict[str, Any]:
        """What is signed: every field except the signature and the public key."""
        return {k: v for k, v in asdict(self).items() if k not in ("signature", "public_key")}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Lineage":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _leaves(digests: list[str]) -> list[bytes]:
    return [bytes.fromhex(d) for d in digests]


def build_lineage(rows: list[dict[str, Any]], *, policy_digest: str, generator_seed: int, diagnosis_digest: str,
                  cycle: str, signer: Ed25519Signer, created: str | None = None) -> Lineage:
    """Digest every row, take the Merkle root, and sign the statement with `signer`."""
    root = merkle_root(_leaves([row_digest(r) for r in rows])).hex()
    unsigned = Lineage(rows=len(rows), root=root, policy_digest=policy_digest, generator_seed=int(generator_seed),
                       diagnosis_digest=diagnosis_digest, cycle=str(cycle),
                       created=created or datetime.now(UTC).isoformat(timespec="seconds"),
                       key_id=signer.key_id(), public_key=signer.public_key_pem(), signature="")
    signature = signer.sign(canonical_json(unsigned.statement())).hex()
    return replace(unsigned, signature=signature)


def verify_lineage(lineage: Lineage, public_key_pem: str | None = None) -> bool:
    """The signature over the statement verifies, with `public_key_pem` when given (a key you trust),
    else with the key the lineage carries, and the signed key id names that key."""
    pem = public_key_pem or lineage.public_key
    try:
        signature = bytes.fromhex(lineage.signature)
        if key_id_for(pem) != lineage.key_id:
            return False
    except (ValueError, TypeError, UnicodeEncodeError):
        return False
    return verify(pem, canonical_json(lineage.statement()), signature)


def write_lineage(dataset_dir: Path, rows: list[dict[str, Any]], lineage: Lineage) -> None:
    """Write `lineage.json`, then `row_digests.parquet` (row_id, index, digest), each atomically.

    The digests go last: a dataset is found by `prove` only once both are there. Rows need a
    unique `row_id`, so that a proof names one row.
    """
    ids = [r.get("row_id") for r in rows]
    if any(not isinstance(i, str) or not i for i in ids):
        raise ValueError("every row needs a non-empty string row_id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{len(ids) - len(set(ids))} duplicate row_id(s) in the dataset")
    digests = [row_digest(r) for r in rows]
    if len(rows) != lineage.rows or merkle_root(_leaves(digests)).hex() != lineage.root:
        raise ValueError("these rows are not the rows the lineage was built from (row count or Merkle root differs)")
    files = DatasetFiles(Path(dataset_dir))
    write_text(files.lineage, json.dumps(lineage.as_dict(), indent=2, sort_keys=True) + "\n")
    frame = pl.DataFrame({"row_id": ids, "index": list(range(len(rows))), "digest": digests},
                         schema={"row_id": pl.String, "index": pl.Int64, "digest": pl.String})
    write_with(files.row_digests, lambda tmp: frame.write_parquet(tmp))


def read_lineage(dataset_dir: Path) -> Lineage:
    return Lineage.from_dict(json.loads(DatasetFiles(Path(dataset_dir)).lineage.read_text(encoding="utf-8")))


def prove(home: Path, row_id: str, cycle: str | None = None) -> dict[str, Any]:
    """The inclusion proof of `row_id` in the first dataset (by directory name, or the one of `cycle`)
    under `home/datasets/` that holds it, rebuilt from that dataset's digests.

    `verified` is true only when the proof reaches the signed root and the signature verifies with
    the public key in lineage.json. A tampered digest file gives a proof that reaches another root.
    """
    base = Home(home).datasets
    found = [DatasetFiles(d).row_digests for d in sorted(base.glob(cycle if cycle is not None else "*"))]
    files = [f for f in found if f.is_file()]
    for path in files:
        digests = pl.read_parquet(path).sort("index").with_row_index("position")
        hit = digests.filter(pl.col("row_id") == row_id)
        if hit.height:
            break
    else:
        where = f"{base}/{cycle}" if cycle is not None else f"{base}/*"
        raise LookupError(f"row {row_id!r} is in no dataset: searched {len(files)} {DatasetFiles(base).row_digests.name} file(s) "
                          f"under {where}")
    lineage = read_lineage(path.parent)
    index = int(hit["position"][0])
    try:
        leaves = _leaves(digests["digest"].to_list())
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} holds a digest that is not hex: {e}") from None
    proof = inclusion_proof(leaves, index)
    intact = digests["index"].to_list() == list(range(digests.height)) and digests.height == lineage.rows
    verified = (intact and verify_inclusion(leaves[index], index, lineage.rows, proof, bytes.fromhex(lineage.root))
                and verify_lineage(lineage))
    return {"row_id": row_id, "dataset": str(path.parent), "cycle": lineage.cycle, "index": index,
            "size": digests.height, "leaf_digest": leaves[index].hex(), "proof": [p.hex() for p in proof],
            "root": lineage.root, "signature": lineage.signature, "key_id": lineage.key_id, "verified": verified}
