"""Bad-input drill: every OpenRTB reader and format, fuzzed from real requests.

Readers: `scenario_data.ingest` (JSON, JSONL, JSONL.gz, Parquet; the fast Arrow path and the reference
validator of `scenario_data.openrtb`), `scenario_data.replay.build_replay_set`, and the streamed
`ingest_to_files` that `modelsmith scenarios ingest` runs. Seeds are the real requests of
../shared/realdata/openrtb (and its invalid bodies). Mutations are raw: bytes inserted, bodies cut,
values replaced by raw JSON text (10,000 nested arrays, NaN/Infinity, 5,000-digit integers, 2 MB
strings, lone surrogates, invalid UTF-8), duplicate keys, a BOM; and whole files damaged (cut, bytes
flipped, garbage appended, empty).

What must hold: no crash (the only exception is `IngestError`, naming the file, for a file that
cannot be read at all), no hang (pytest-timeout), every body accounted for (requests_in = accepted +
quarantined, each quarantined body with its reason and its raw bytes), and every body's verdict and
reason are the reference validator's. The bugs these drills found carry an `@example` each.
"""

import gzip
import json
import random
import zlib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scenario_data.chunks import IngestError
from scenario_data.ingest import ingest_paths, ingest_to_files, write_result
from scenario_data.openrtb import parse_json, refusal_reason
from scenario_data.policy import DECISIONS, shipped_policy
from scenario_data.replay import build_replay_set
from tests.drills.input_support import (
    DEEP,
    assert_accounted,
    compact,
    fresh_id_lines,
    quarantine_at,
    real_invalid_bodies,
    real_requests,
    run_python,
    write_big_jsonl,
    write_jsonl,
    write_jsonl_gz,
    write_parquet,
)
from tests.unit.scenario_data.test_ingest_formats import _paths  # every path into a JSON document

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
UTF8_BOM = b"\xef\xbb\xbf"

# Raw JSON texts a value can be replaced with: oversized, deep, non-finite, not UTF-8, not characters.
NASTY_VALUES = [
    b"[" * DEEP + b"]" * DEEP,  # json recursion: ten times the interpreter's limit
    b'{"a":' * 900 + b"1" + b"}" * 900,  # deep, but under the limit: parses, then must survive every re-dump
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1.5E+0400", b"1e-400", b"-0",
    b"9" * 5_000,  # past Python's 4,300-digit int limit
    b"1" + b"0" * 400, b"9223372036854775808", b"-9223372036854775809",
    b'"' + b"x" * 2_000_000 + b'"',  # a 2 MB string
    b'"\\ud800"', b'"\\udc00x\\ud83d"', b'"\\ud83d\\ude00"',  # lone surrogates, and a valid pair
    b'"\xff\xfe"', b'"\xc0\xaf"', b'"\xed\xa0\x80"',  # invalid UTF-8 inside a string
    b'"a\\u0000b"', b'"a\x00b"', b'"\x1f"',
    b"null", b"true", b"{}", b"[]", b'""', b"[null]", b'[{"id":null}]', b'{"":1}',
]
VALUES = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.integers(-(2**80), 2**80).map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: json.dumps(f).encode()),
    st.text(max_size=12).map(lambda t: json.dumps(t, ensure_ascii=False).encode()),
)
MUTATIONS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), VALUES),  # a value at a path, as raw JSON text
    st.tuples(st.just("dup"), st.integers(0, 10**6), VALUES),  # a second copy of an existing key
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),  # raw bytes anywhere
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("prefix"), st.just(0), st.sampled_from([UTF8_BOM, b" ", b"\t", b"\x0c", b"\xff"])),
    st.tuples(st.just("body"), st.just(0), st.sampled_from(NASTY_VALUES)),  # the whole body
)
FORMATS = st.sampled_from(["jsonl", "gz", "parquet", "json"])


class Seeds(list):
    """The real request bodies (a short repr: hypothesis prints fixtures with a falsifying example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} real requests>"


@pytest.fixture(scope="module")
def seeds(realdata: Path) -> Seeds:
    bodies = Seeds(b for _, b in real_requests(realdata))
    assert len(bodies) >= 200
    return bodies




def _objects(obj, prefix=()):
    if isinstance(obj, dict):
        yield prefix
        for k, v in obj.items():
            yield from _objects(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _objects(v, (*prefix, i))


def mutate(body: bytes, mutation: tuple) -> bytes:
    kind, where, value = mutation
    marker = "\u2063modelsmith-fuzz-marker\u2063"
    if kind == "body":
        return value
    if kind == "prefix":
        return value + body
    if kind == "truncate":
        return body[: int(len(body) * where)]
    if kind == "insert":
        at = int(len(body) * where)
        return body[:at] + value + body[at:]
    doc = json.loads(body)
    if kind == "set":
        paths = list(_paths(doc))
        path = paths[where % len(paths)]
        if not path:
            return value
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = marker
        return compact(doc).replace(json.dumps(marker, ensure_ascii=False).encode(), value, 1)
    objects = [p for p in _objects(doc) if _at(doc, p)]  # "dup": objects with at least one key
    path = objects[where % len(objects)]
    target = _at(doc, path)
    existing = sorted(target)[where % len(target)]
    target[marker] = 0  # appended last: the duplicate comes after the original, so the original wins
    text = compact(doc)
    return text.replace(json.dumps(marker, ensure_ascii=False).encode() + b":0",
                        json.dumps(existing, ensure_ascii=False).encode() + b":" + value, 1)


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def _write(tmp: Path, fmt: str, bodies: list[bytes]) -> Path:
    if fmt == "jsonl":
        return write_jsonl(tmp / "fuzz.jsonl", bodies)
    if fmt == "gz":
        return write_jsonl_gz(tmp / "fuzz.jsonl.gz", bodies)
    if fmt == "parquet":
        return write_parquet(tmp / "fuzz.parquet", bodies)
    (tmp / "fuzz.json").write_bytes(bodies[0])
    return tmp / "fuzz.json"


def _expected(fmt: str, bodies: list[bytes]) -> list[tuple[str, bytes]]:
    """(location, body) of every request the reader must count, as the file format defines them."""
    if fmt in ("jsonl", "gz"):
        content = b"".join(b + b"\n" for b in bodies)
        lines = content.split(b"\n")[:-1]
        out = []
        for n, line in enumerate(lines, start=1):
            if n == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM):]
            if line.strip():
                out.append((f"line {n}", line.rstrip(b"\r")))
        return out
    if fmt == "parquet":
        return [(f"row {i}", b) for i, b in enumerate(bodies)]
    raw = bodies[0][len(UTF8_BOM):] if bodies[0].startswith(UTF8_BOM) else bodies[0]
    if refusal_reason(raw) is not None:
        try:
            doc = parse_json(raw)
        except Exception:  # noqa: BLE001 - the reference refuses it: one body, quarantined whole
            return [("byte 0", raw)]
        if isinstance(doc, list):
            return [(f"element {i}", json.dumps(e).encode()) for i, e in enumerate(doc)]
    return [("byte 0", raw)]


def _check_verdicts(result, expected: list[tuple[str, bytes]]) -> None:
    """Each body: accepted with one feature row per impression, or quarantined with the reference's reason."""
    assert_accounted(result, len(expected))
    for location, body in expected:
        reason = refusal_reason(body)
        row = quarantine_at(result, location)
        if reason is None:
            assert row is None, (location, row and row["reason"])
            line = int(location.rsplit(" ", 1)[-1])
            imps = len(parse_json(body)["imp"])
            assert result.features.filter(pl.col("source_line") == line).height == imps, location
        else:
            assert row is not None, (location, reason)
            assert row["reason"] == reason
            assert row["raw"] == body  # nothing lost: the exact bytes are kept


# --- requests: raw mutations of real requests, in every format ---

@FUZZ
@given(index=st.integers(0, 10**6), mutation=MUTATIONS, fmt=FORMATS)
# Regressions (each crashed the process or the ingest before the fix):
@example(index=0, mutation=("body", 0, b"null"), fmt="jsonl")  # Arrow's reader: SIGSEGV on a first row `null`
@example(index=0, mutation=("body", 0, b"null"), fmt="parquet")  # a Parquet null value is the body `null`
@example(index=3, mutation=("set", 7, b"9" * 5_000), fmt="jsonl")  # json.loads: bare ValueError past 4,300 digits
@example(index=5, mutation=("set", 9, b'"\\udc00x\\ud83d"'), fmt="jsonl")  # polars: ComputeError on lone surrogates
@example(index=8, mutation=("set", 11, b'"\xc0\xaf"'), fmt="jsonl")
@example(index=2, mutation=("prefix", 0, UTF8_BOM), fmt="json")  # accepted or refused by content: now accepted
@example(index=4, mutation=("set", 3, b"[" * DEEP + b"]" * DEEP), fmt="json")  # deep, in an ignored field
def test_mutated_real_requests_get_the_reference_verdict(tmp_path_factory, seeds, index, mutation, fmt):
    rng = random.Random(index)
    body = seeds[index % len(seeds)]
    mutant = mutate(body, mutation)
    if fmt == "json":
        bodies = [mutant]
    else:  # the mutant first (the first row of a chunk is where Arrow crashed) or between two real requests
        others = [seeds[rng.randrange(len(seeds))], seeds[rng.randrange(len(seeds))]]
        bodies = [mutant, *others] if index % 2 == 0 else [others[0], mutant, others[1]]
    path = _write(tmp_path_factory.mktemp("fuzz"), fmt, bodies)
    result = ingest_paths([path])
    _check_verdicts(result, _expected(fmt, bodies))


@settings(FUZZ, max_examples=25)
@given(index=st.integers(0, 10**6), invalid=st.integers(0, 100), lines=st.integers(1, 400))
def test_real_invalid_bodies_among_many_lines_are_each_quarantined_with_the_reference_reason(
        tmp_path_factory, seeds, realdata, index, invalid, lines):
    """Big chunks take the fast path; a bad line is located in its chunk (the lines around it are parsed
    again); every line still gets its verdict."""
    bad = real_invalid_bodies(realdata)
    rng = random.Random(index)
    bodies = [seeds[rng.randrange(len(seeds))].replace(b'"id":', b'"x-id":', 0) for _ in range(lines)]
    name, raw = bad[invalid % len(bad)]
    bodies.insert(rng.randrange(len(bodies) + 1), raw.replace(b"\n", b" ").replace(b"\r", b" "))
    path = write_jsonl(tmp_path_factory.mktemp("mixed") / "mixed.jsonl", bodies)
    result = ingest_paths([path])
    _check_verdicts(result, _expected("jsonl", bodies))


# --- files: damaged whole ---

def _damage(data: bytes, how: tuple) -> bytes:
    kind, where, extra = how
    if kind == "truncate":
        return data[: int(len(data) * where)]
    if kind == "flip":
        out = bytearray(data)
        rng = random.Random(extra)
        for _ in range(1 + extra % 16):
            i = rng.randrange(len(out))
            out[i] ^= rng.randrange(1, 256)
        return bytes(out)
    if kind == "append":
        return data + random.Random(extra).randbytes(1 + extra % 64)
    return random.Random(extra).randbytes(1 + extra % 64) + data  # "prepend"


DAMAGE = st.tuples(st.sampled_from(["truncate", "flip", "append", "prepend"]), st.floats(0, 1), st.integers(0, 10**6))


@FUZZ
@given(fmt=st.sampled_from(["jsonl", "gz", "parquet", "parquet-plain", "json-array"]), how=DAMAGE)
@example(fmt="gz", how=("flip", 0.5, 3))  # zlib.error (not an OSError) escaped the reader
@example(fmt="gz", how=("truncate", 0.5, 0))
@example(fmt="parquet", how=("flip", 0.5, 5))  # a corrupt page raised OSError from inside the batch loop
def test_damaged_files_are_read_or_refused_naming_the_file(tmp_path_factory, seeds, fmt, how):
    tmp = tmp_path_factory.mktemp("damaged")
    bodies = seeds[:30]
    if fmt == "json-array":
        path = tmp / "a.json"
        path.write_bytes(b"[" + b",".join(bodies) + b"]")
    elif fmt.startswith("parquet"):
        path = write_parquet(tmp / "a.parquet", bodies, compression="none" if fmt == "parquet-plain" else "snappy")
    else:
        path = _write(tmp, fmt, bodies)
    path.write_bytes(_damage(path.read_bytes(), how))
    try:
        result = ingest_paths([path])
    except IngestError as e:
        assert str(path) in str(e)  # the refusal names the file
        return
    assert result.requests_in == result.accepted + result.quarantined
    assert all(result.quarantine["reason"].to_list())
    if fmt == "jsonl":  # line by line, every verdict is the reference's
        _check_verdicts(result, _expected("jsonl", [path.read_bytes()[:-1]] if path.read_bytes().endswith(b"\n")
                                          else [path.read_bytes()]))


# --- edge files, one each ---

def _parquet(path: Path, column: str, values, kind) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: pa.array(values, kind)}), path)
    return path


def test_edge_files_are_counted_or_refused(tmp_path, seeds):
    import pyarrow as pa

    good = seeds[0]
    gz = gzip.compress(good + b"\n" + good.replace(b'"id":', b'"id":"x","y":', 1) + b"\n", mtime=0)
    corrupt = gz[:20] + bytes(b ^ 0x5A for b in gz[20:40]) + gz[40:]
    cases = {  # name: (bytes or builder, outcome) - outcome is (requests_in, quarantined) or "IngestError"
        "empty.jsonl": (b"", (0, 0)),
        "blank.jsonl": (b"\n \r\n\t\n", (0, 0)),
        "bom-only.jsonl": (UTF8_BOM + b"\n", (0, 0)),
        "empty.json": (b"", (1, 1)),
        "empty-array.json": (b"[]", (0, 0)),
        "nulls.json": (b"[null, 1, \"x\", [], {}]", (5, 5)),
        "null-first.jsonl": (b"null\n" + good + b"\n", (2, 1)),  # Arrow's reader: SIGSEGV (pyarrow 26)
        # Each of these was accepted by the fast path, which the reference validator refuses:
        "invalid-utf8-domain.jsonl": (_site(good, b'"domain":"\xc0\xaf.com"'), (1, 1)),  # domain became ''
        "invalid-utf8-title.jsonl": (_site(good, b'"content":{"title":"\xed\xa0\x80"}'), (1, 1)),  # polars panicked
        "lone-surrogate-title.jsonl": (_site(good, b'"content":{"title":"\\ud800"}'), (1, 1)),  # title became NUL
        "deep-ignored-field.jsonl": (good[:-1] + b',"x":' + b"[" * DEEP + b"]" * DEEP + b"}\n", (1, 1)),
        "deep.jsonl": (b"[" * 100_000 + b"]" * 100_000 + b"\n" + good + b"\n", (2, 1)),
        "deep.json": (b"[" * DEEP + b"]" * DEEP, (1, 1)),
        "huge-line.jsonl": (good[:-1] + b',"x":"' + b"y" * 20_000_000 + b'"}\n', (1, 0)),
        "many-imps.jsonl": (compact({"id": "many", "site": {"id": "s"}, "imp": [
            {"id": str(i), "banner": {"w": 1, "h": 1}} for i in range(10_000)]}) + b"\n", (1, 0)),
        "empty.jsonl.gz": (b"", (0, 0)),
        "empty-stream.jsonl.gz": (gzip.compress(b""), (0, 0)),
        "truncated.jsonl.gz": (gz[: len(gz) // 2], "IngestError"),
        "corrupt.jsonl.gz": (corrupt, "IngestError"),
        "not-gzip.jsonl.gz": (good + b"\n", "IngestError"),
        "trailing-garbage.jsonl.gz": (gz + b"garbage", "IngestError"),
        "empty.parquet": (b"", "IngestError"),
        "not.parquet": (good, "IngestError"),
    }
    for name, (data, outcome) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _check_edge(path, outcome)
    parquet = {
        "int-column.parquet": (lambda p: _parquet(p, "request", [1, 2], pa.int64()), "IngestError"),
        "struct-column.parquet": (lambda p: _parquet(p, "request", [{"id": "a"}], pa.struct([("id", pa.string())])),
                                  "IngestError"),
        "two-columns.parquet": (lambda p: _parquet(p, "x", [good.decode()], pa.string()), (1, 0)),
        "null-first.parquet": (lambda p: _parquet(p, "body", [None, good.decode()], pa.string()), (2, 1)),
        "binary-not-utf8.parquet": (lambda p: _parquet(p, "json", [b"\xff\xfe", good], pa.binary()), (2, 1)),
        "large-string.parquet": (lambda p: _parquet(p, "request", [good.decode()], pa.large_string()), (1, 0)),
        "no-rows.parquet": (lambda p: _parquet(p, "request", [], pa.string()), (0, 0)),
    }
    for name, (build, outcome) in parquet.items():
        _check_edge(build(tmp_path / name), outcome)


def _site(request: bytes, fields: bytes) -> bytes:
    """`request` with `fields` (raw JSON members) added to a site object of its own, as one JSONL line."""
    doc = json.loads(request)
    doc.pop("app", None)
    doc.pop("dooh", None)
    doc["site"] = {"id": "s"}
    return compact(doc).replace(b'"site":{"id":"s"}', b'"site":{"id":"s",' + fields + b"}") + b"\n"


def _check_edge(path: Path, outcome) -> None:
    if outcome == "IngestError":
        with pytest.raises(IngestError) as e:
            ingest_paths([path])
        assert str(e.value).startswith(str(path)), e.value
        return
    result = ingest_paths([path])
    assert (result.requests_in, result.quarantined) == outcome, (path.name, result.summary(),
                                                                 result.quarantine["reason"].to_list())
    assert_accounted(result, outcome[0])
    result.features.write_parquet(path.with_suffix(".features.parquet"))  # every accepted string is real text


def test_zlib_error_is_what_a_corrupt_gzip_raised(seeds):
    """The reason for catching zlib.error in the reader: it is not an OSError."""
    gz = gzip.compress(b"".join(b + b"\n" for b in seeds[:20]), mtime=0)
    corrupt = gz[:20] + bytes(b ^ 0x5A for b in gz[20:40]) + gz[40:]
    with pytest.raises(zlib.error):
        gzip.decompress(corrupt)
    assert not issubclass(zlib.error, OSError)


# --- the replay set and the streamed ingest ---

def test_replay_set_from_a_directory_of_bad_and_good_files_labels_every_accepted_row(tmp_path, seeds, realdata):
    replay = tmp_path / "replay"
    replay.mkdir()
    write_jsonl(replay / "good.jsonl", seeds[:40])
    bom_inside = seeds[42].replace(b"{", b"\xef\xbb\xbf{", 1)
    write_jsonl(replay / "mixed.jsonl", [seeds[41], b"null", b"{not json", bom_inside])
    write_parquet(replay / "p.parquet", [seeds[43], None, b"[" * DEEP + b"]" * DEEP])
    (replay / "a.json").write_bytes(b"[" + seeds[44] + b",null]")
    (replay / "notes.txt").write_text("ignored: not a replay format")
    for name, raw in real_invalid_bodies(realdata):
        (replay / name).write_bytes(raw)
    result = build_replay_set([replay], shipped_policy(2), {})
    ingest = result.ingest
    assert_accounted(ingest, 40 + 4 + 3 + 2 + len(real_invalid_bodies(realdata)))
    assert result.labelled.height == ingest.features.height
    assert set(result.labelled["expected"].unique().to_list()) <= set(DECISIONS)
    assert (result.labelled["policy_digest"] == shipped_policy(2).digest).all()
    where = ingest.quarantine["location"] + "@" + ingest.quarantine["source_file"].str.split("/").list.last()
    reasons = dict(zip(where, ingest.quarantine["reason"], strict=True))
    assert reasons["line 2@mixed.jsonl"].startswith('id: request missing required field "id"')
    assert "BOM" in reasons["line 4@mixed.jsonl"]  # a BOM inside the file is not the file's signature
    assert "nested too deeply" in reasons["row 2@p.parquet"]
    (replay / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(IngestError, match="broken.jsonl.gz"):
        build_replay_set([replay], shipped_policy(2), {})


def test_streamed_ingest_writes_exactly_what_the_in_memory_ingest_writes(tmp_path, seeds, realdata):
    pack = write_jsonl(tmp_path / "pack.jsonl", list(seeds) + [b"null", b"{"])
    paths = [pack, realdata / "openrtb", realdata / "openrtb_invalid", pack]  # pack twice: row ids disambiguated
    result = ingest_paths(paths)
    write_result(result, tmp_path / "memory")
    summary = ingest_to_files(paths, tmp_path / "stream")
    assert summary == result.summary()
    for name in ("features.parquet", "quarantine.parquet"):
        assert pl.read_parquet(tmp_path / "memory" / name).equals(pl.read_parquet(tmp_path / "stream" / name)), name
    streamed = pl.read_parquet(tmp_path / "stream" / "features.parquet")
    assert streamed["row_id"].n_unique() == streamed.height
    assert streamed.filter(pl.col("row_id").str.contains("#pack.jsonl:")).height > 0
    assert sorted(p.name for p in (tmp_path / "stream").iterdir()) == ["features.parquet", "quarantine.parquet"]


PEAK = """
import json, resource, sys
from pathlib import Path
from scenario_data.ingest import ingest_to_files
summary = ingest_to_files([sys.argv[1]], Path(sys.argv[2]), chunk_lines=int(sys.argv[3]))
print(json.dumps({**summary, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.timeout(300)
def test_ingest_memory_does_not_grow_with_the_file(tmp_path, realdata):
    """A file 4x bigger streams through in the same memory (peak RSS of a fresh process each)."""
    lines = fresh_id_lines(realdata, seed=1, generated=1_000)
    invalid = [raw.replace(b"\n", b" ") for _, raw in real_invalid_bodies(realdata)]
    runs = {}
    for mib in (6, 24):
        path = tmp_path / f"f{mib}.jsonl"
        n = write_big_jsonl(path, mib * 2**20, lines, invalid, invalid_every=2_000)
        proc = run_python(PEAK, str(path), str(tmp_path / f"out{mib}"), "1500")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mib] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert runs[mib]["requests_in"] == n == runs[mib]["accepted"] + runs[mib]["quarantined"]
        assert runs[mib]["quarantined"] >= n // 2_000
    small, big = runs[6]["peak_mib"], runs[24]["peak_mib"]
    print(f"\n[drill] ingest memory: 6 MiB file peak {small:.0f} MiB, 24 MiB file peak {big:.0f} MiB "
          f"({runs[24]['decisions']} rows)")
    # In memory, the 18 MiB more input would hold ~70,000 more feature rows (and their chunks); streamed,
    # the peak is one chunk's, whatever the file size.
    assert big < small + 40, runs
