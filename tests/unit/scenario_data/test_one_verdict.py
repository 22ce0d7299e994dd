"""One verdict per request: a request's verdict and reason are a function of its own bytes.

The corpus is every request of ../shared/realdata (266 valid, 20 invalid), generated requests, and
mutants built to sit on the boundary between the fast path (Arrow's reader plus vectorised screens)
and the reference validator: truncated and fragment `native.request` strings, Native 1.0 wrappers,
video and audio without `mimes`, sites without an id, and lines Arrow refuses (not JSON, a wrong
type, not UTF-8) that push their chunk onto the reference path. Properties:

- the fast path never accepts what the reference validator (`refusal_reason`) refuses;
- shuffling the lines, splitting them into files (JSONL, gzip, Parquet), changing the chunk size and
  putting a bad line next to a request never change its verdict, its reason or its feature rows.
"""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scenario_data.generator import dumps, generate_requests
from scenario_data.chunks import Chunk
from scenario_data.ingest import ingest_paths, parse_chunk
from scenario_data.openrtb import parse_json, refusal_reason

NATIVE = json.dumps({"ver": "1.2", "assets": [{"id": 1, "required": 1, "title": {"len": 90}}]}, separators=(",", ":"))
# Native request strings on both sides of the rule; the first group was accepted or refused by
# whichever path its chunk took (issue 16).
NATIVE_REQUESTS = [NATIVE[:n] for n in range(len(NATIVE))] + [
    '"assets":[{"id":1}]', '"assets":[{', "assets", '[{"assets":[{}]}]', '{"assets":[{}],"assets":5}',
    '{"assets":5,"assets":[{}]}', '{"x":"\\"assets\\":[{"}', '{"foo":{"assets":[{}]}}', '{"assets":[1]}',
    '{"assets":[{}]} trailing', '{"assets":[{}]}}', ' {"assets":[{}]} ', '{"native":{"assets":[{"id":1}]}}',
    '{"native":{"assets":[]}}', '{"assets":[{}],"native":{"assets":[]}}', '{"native":{"ver":"1.0"}}',
    '{"assets":[{"id":1}]}', '{"assets":[]}', '{}', "null", "5", '"{\\"assets\\":[{}]}"', "{'assets':[{}]}",
    NATIVE + "\n", NATIVE.replace(":", " : "),
]
BAD_NEIGHBOURS = [
    b"malformed bid request",
    b'{"id": "bad", "tmax": "soon", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}]}',
    b'{"id": "bad-utf8", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "x": "\xff\xfe"}',
    b"null",
    b"[]",
    b'{"id": "nan", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}], "x": NaN}',
    b'{"id": "cut", "imp": [{"id": "1", "banner": {"w": 1,',
]


def _one_line(raw: bytes) -> bytes:
    """A body as one JSONL line: compact JSON when it parses, else its own bytes with line breaks as spaces."""
    try:
        return json.dumps(parse_json(raw), separators=(",", ":"), ensure_ascii=False).encode()
    except ValueError:
        return raw.replace(b"\r", b"").replace(b"\n", b" ")


def _mutants() -> list[bytes]:
    def req(i: int, imp: dict, **top) -> bytes:
        return json.dumps({"id": f"mutant-{i}", "imp": [imp], "site": {"page": "https://example.com/"}, **top},
                          separators=(",", ":")).encode()

    out: list[bytes] = []
    for text in NATIVE_REQUESTS:
        out.append(req(len(out), {"id": "1", "native": {"ver": "1.2", "request": text}}))
        # The same native impression beside a valid banner impression.
        out.append(json.dumps({"id": f"mutant-{len(out)}", "imp": [
            {"id": "1", "banner": {"w": 300, "h": 250}}, {"id": "2", "native": {"request": text}}]}).encode())
    for native in ({}, {"request": None}, {"request": ""}, {"request": json.loads(NATIVE)},
                   {"request": [json.loads(NATIVE)]}, {"request": {"native": json.loads(NATIVE)}}):
        out.append(req(len(out), {"id": "1", "native": native}))
    for media in ("video", "audio"):
        for obj in ({}, {"mimes": None}, {"mimes": []}, {"mimes": ["video/mp4"]}, {"w": 640, "h": 480}):
            out.append(req(len(out), {"id": "1", media: obj}))
    imp = {"id": "1", "banner": {"w": 300, "h": 250}}
    for site in ({}, {"publisher": {"id": "p"}}, {"domain": "example.com"}, {"id": ""}, {"page": ""}):
        out.append(json.dumps({"id": f"mutant-{len(out)}", "imp": [imp], "site": site}).encode())
    out.append(req(len(out), {**imp, "metric": [{"type": "viewability", "value": 0.8}]}))
    out.append(req(len(out), {**imp, "metric": [{}]}))
    return out


@pytest.fixture(scope="module")
def corpus(realdata: Path) -> list[bytes]:
    """Every real request, generated ones, mutants and bad lines: one JSONL line each."""
    real = [_one_line(p.read_bytes()) for p in sorted((realdata / "openrtb").glob("*.json"))]
    invalid = [_one_line(p.read_bytes()) for p in sorted((realdata / "openrtb_invalid").glob("*.json"))
               if p.name != "EXPECTED.json"]
    assert (len(real), len(invalid)) == (266, 20)
    generated = [dumps(r).encode() for r in generate_requests(200, 16)]
    rng = random.Random(16)
    cut = [b[: rng.randrange(1, len(b))] for b in rng.sample(real + generated, 20)]  # truncated lines
    return real + invalid + generated + _mutants() + BAD_NEIGHBOURS + cut


def _expected(body: bytes) -> tuple[str | None, int]:
    """The reference verdict: (reason or None, feature rows when accepted)."""
    reason = refusal_reason(body)
    return reason, 0 if reason else len(parse_json(body)["imp"])


def test_the_fast_path_never_accepts_what_the_reference_refuses(corpus):
    """Each body alone and all of them in one chunk: a body the screens let through is one the
    reference validator accepts (the fast path's only way to a verdict of its own)."""
    fast_accepted = 0
    readable = []
    for body in corpus:
        parsed = parse_chunk(Chunk("t", [body], lines=np.array([1])))
        if parsed.frame is None:
            continue
        readable.append(body)
        if not parsed.suspects[0]:
            fast_accepted += 1
            assert refusal_reason(body) is None, body[:300]
    parsed = parse_chunk(Chunk("t", readable, lines=np.arange(1, len(readable) + 1)))
    assert parsed.frame is not None
    for body, suspect in zip(readable, parsed.suspects.to_list(), strict=True):
        assert suspect or refusal_reason(body) is None, body[:300]
    assert fast_accepted > 400  # the fast path does take the valid requests: the property is not vacuous


def test_truncated_and_fragment_native_requests_are_refused_whatever_the_chunk(tmp_path):
    """The case of issue 16: alone, beside valid lines, or beside a line Arrow refuses, the same reason."""
    valid = [dumps(r).encode() for r in generate_requests(300, 3)]
    for text in ('{"assets":[{', '"assets":[{"id":1}]', '{"assets":[{}],"assets":5}'):
        body = json.dumps({"id": "n", "imp": [{"id": "1", "native": {"request": text}}]}).encode()
        expected = refusal_reason(body)
        assert expected is not None and expected.startswith("imp[0].native.request"), text
        for lines in ([body], valid + [body], valid + [body, BAD_NEIGHBOURS[0]], [BAD_NEIGHBOURS[1], body]):
            path = tmp_path / "f.jsonl"
            path.write_bytes(b"\n".join(lines) + b"\n")
            q = ingest_paths([path]).quarantine
            assert q.filter(q["request_id"] == "n")["reason"].to_list() == [expected], (text, len(lines))


def _write(path: Path, fmt: str, bodies: list[bytes]) -> tuple[Path, list[int]]:
    """Write `bodies` in `fmt`; returns the file and each body's location number (line or row)."""
    if fmt == "parquet":
        pq.write_table(pa.table({"request": pa.array(bodies, pa.binary())}), path.with_suffix(".parquet"))
        return path.with_suffix(".parquet"), list(range(len(bodies)))
    data = b"".join(b + b"\n" for b in bodies)
    if fmt == "jsonl.gz":
        path = path.with_suffix(".jsonl.gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path = path.with_suffix(".jsonl")
        path.write_bytes(data)
    return path, list(range(1, len(bodies) + 1))


ARRANGE = settings(max_examples=6, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@ARRANGE
@given(seed=st.integers(0, 2**32 - 1), files=st.integers(1, 4),
       chunk_lines=st.sampled_from([1, 7, 256, 257, 1000, 50_000]), neighbours=st.integers(0, 40),
       formats=st.lists(st.sampled_from(["jsonl", "jsonl.gz", "parquet"]), min_size=4, max_size=4))
@example(seed=0, files=1, chunk_lines=50_000, neighbours=0, formats=["jsonl"] * 4)
@example(seed=1, files=1, chunk_lines=50_000, neighbours=40, formats=["jsonl"] * 4)
@example(seed=2, files=3, chunk_lines=1, neighbours=10, formats=["jsonl", "parquet", "jsonl.gz", "jsonl"])
def test_shuffling_splitting_chunking_and_bad_neighbours_never_change_a_verdict(
        tmp_path_factory, corpus, seed, files, chunk_lines, neighbours, formats):
    rng = random.Random(seed)
    order = list(range(len(corpus)))
    rng.shuffle(order)
    lines: list[int] = []  # corpus indices, in file order; bad neighbours are corpus entries too
    for i in order:
        lines.append(i)
        if neighbours and rng.random() < neighbours / 100:
            lines.append(len(corpus) - len(BAD_NEIGHBOURS) - 20 + rng.randrange(len(BAD_NEIGHBOURS)))
    cuts = sorted(rng.sample(range(1, len(lines)), files - 1))
    tmp = tmp_path_factory.mktemp("arranged")
    where: dict[tuple[str, int], int] = {}
    paths = []
    for k, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(lines)], strict=True)):
        path, numbers = _write(tmp / f"part{k}", formats[k], [corpus[i] for i in lines[lo:hi]])
        paths.append(path)
        where.update({(str(path), n): i for n, i in zip(numbers, lines[lo:hi], strict=True)})

    result = ingest_paths(paths, chunk_lines=chunk_lines)
    assert result.requests_in == len(lines) == result.accepted + result.quarantined
    got_reason: dict[tuple[str, int], str] = {}
    for source, location, reason in result.quarantine.select("source_file", "location", "reason").iter_rows():
        got_reason[(source, int(location.rsplit(" ", 1)[1]))] = reason
    rows = result.features.group_by("source_file", "source_line").len()
    got_rows = {(s, n): c for s, n, c in rows.iter_rows()}
    expected = {i: _expected(corpus[i]) for i in set(lines)}
    for key, i in where.items():
        reason, n_rows = expected[i]
        assert got_reason.get(key) == reason, (key, corpus[i][:300])
        assert got_rows.get(key, 0) == n_rows, (key, corpus[i][:300])
