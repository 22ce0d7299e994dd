"""Read OpenRTB files into the feature table and the quarantine table; nothing is dropped silently.

Files are read a chunk at a time by `scenario_data.chunks` (the formats are listed there). Every
request read is counted: requests_in = accepted + quarantined, and each quarantined request keeps
its source file, location, raw bytes and a reason that names the field path.

Requests are parsed in chunks by Arrow's JSON reader against the request schema (fast path), the
next chunk parsed while this one is flattened. In a chunk the parser refuses (a malformed line, a
wrong type) the bad lines are located and re-read one by one with the reference validator, which
also has the last word on every request the fast path's screens flag; the lines between them go
back to the fast path.
`ingest_to_files` streams the same rows to Parquet chunk by chunk, in memory bounded by one chunk
(benchmarks/ingest_1gb); `ingest_paths` returns them as one table in memory.
"""

import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from modelsmith.atomic import atomic_path, write_with
from scenario_data.chunks import CHUNK_LINES, Chunk, batched, expand_paths, read_chunks
from scenario_data.features import FEATURE_SCHEMA, SplitRequests, flatten, suspect_requests
from scenario_data.openrtb import (MAX_DEPTH, MAX_INT_DIGITS, REQUEST_SCHEMA, RequestError, parse_json,
                                   first_refused_line, read_request_lines, refusal_reason,
                                   validate_request)

QUARANTINE_SCHEMA = pl.Schema(
    {"source_file": pl.String, "location": pl.String, "request_id": pl.String, "reason": pl.String, "raw": pl.Binary}
)
MIN_SPLIT = 256


@dataclass
class IngestResult:
    features: pl.DataFrame
    quarantine: pl.DataFrame
    requests_in: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.requests_in - self.quarantined

    @property
    def quarantined(self) -> int:
        return self.quarantine.height

    @property
    def decisions(self) -> int:
        return self.features.height

    def summary(self) -> dict[str, int]:
        return {
            "requests_in": self.requests_in,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "decisions": self.decisions,
        }


# What Arrow's reader takes and the reference parser refuses (or must look at): NaN, Infinity, surrogate
# escapes (a lone one is not a character), numbers with an exponent of three digits or more (it may
# overflow) and number literals (a value after ':', ',' or '[') of more digits than Python reads (4,300).
# Matched by polars (Rust's regex) over the whole chunk. A match only sends a body to the reference
# parser, so a pattern may match more than it must: a JSON number ends at `,` `}` `]` or white space,
# which is enough to tell `2e441,` from a hex digest's `2e441f` without a costlier leading context.
NON_JSON_TOKEN = r"NaN|Infinity|\\u[dD][89a-fA-F]"
LONG_EXPONENT = r"[0-9][eE]\+?[0-9]{3,}(?:[,}\]\s]|$)"
TOO_MANY_DIGITS = r"[:,\[]\s*-?[0-9]{4301}"


@dataclass
class Parsed:
    """A chunk parsed by the fast path: the requests (None: the fast parser refused the chunk), which
    of them the reference validator must look at, and (when refused) the bodies it cannot take."""

    frame: SplitRequests | None
    suspects: pl.Series | None = None
    unreadable: list[int] = field(default_factory=list)


def parse_chunk(chunk: Chunk) -> Parsed:
    text = _as_text(chunk.bodies)
    # Only objects, one a line, in UTF-8: Arrow's reader crashes the process (SIGSEGV, pyarrow 26) on a
    # first row that is `null`, skips a leading BOM the reference parser refuses, and takes invalid
    # UTF-8 inside strings, on which polars then panics. Such bodies take the reference path.
    unreadable = (~text.str.starts_with("{") | text.str.contains("\n", literal=True)).fill_null(True)
    if unreadable.any():
        # Leading white space is fine (and rare: only those bodies are stripped).
        at = unreadable.arg_true().to_list()
        bad = [i for i in at if b"\n" in chunk.bodies[i] or not chunk.bodies[i].lstrip(b" \t\r").startswith(b"{")
               or not text[i]]
        if bad:
            return Parsed(None, unreadable=bad)
    frame = _fast_parse(chunk.bodies)
    if frame is None:
        return Parsed(None)
    # Arrow's reader takes NaN, Infinity, overflowing exponents and lone surrogates (even in ignored
    # fields); JSON does not, so such bodies go to the reference validator, which refuses them.
    # Arrow also reads nesting Python's parser refuses: a body that may nest past MAX_DEPTH goes to it too.
    return Parsed(frame, suspect_requests(frame) | _screen(text))


def ingest_chunk(chunk: Chunk, domain_lists: dict[str, str], parsed: Parsed | None = None,
                 depth: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Features and quarantine rows for one chunk; len(chunk.bodies) = accepted + quarantined."""
    parsed = parsed or parse_chunk(chunk)
    frame = parsed.frame
    if frame is None and len(chunk.bodies) > MIN_SPLIT:
        return _around_bad_lines(chunk, domain_lists, parsed.unreadable, depth)
    if frame is None:
        return _slow_path(chunk, domain_lists)
    quarantine: list[dict] = []
    refused: list[int] = []
    for i in parsed.suspects.arg_true().to_list():  # type: ignore[union-attr]  # set with the frame
        reason = refusal_reason(chunk.bodies[i])
        if reason is not None:
            quarantine.append(_quarantine_row(chunk, i, reason))
            refused.append(i)
    keep = list(range(len(chunk.bodies)))
    if refused:
        keep = sorted(set(keep) - set(refused))
    features = flatten(frame.take(keep), chunk.source_list(keep), chunk.line_numbers(keep), domain_lists)
    return features, _quarantine_frame(quarantine)


MAX_LOCATE_DEPTH = 16


def _around_bad_lines(chunk: Chunk, domain_lists: dict[str, str], bad: list[int],
                      depth: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A chunk the fast parser refused: its bad lines go to the reference path, the runs of lines
    between them back to the fast path: one such line costs its chunk about two more parses.

    The bad lines are the ones no JSON-object reader takes (`Parsed.unreadable`), else the first line
    Arrow's reader refuses (`first_refused_line`: it stops there; the lines after it are parsed
    again, and most often they parse). When neither names one (or MAX_LOCATE_DEPTH levels down, as
    in a file that is bad throughout), the chunk is halved instead. Rows stay in input order.
    """
    if not bad and depth < MAX_LOCATE_DEPTH:
        at = first_refused_line(chunk.bodies)
        bad = [] if at is None else [at]
    if not bad:
        half = len(chunk.bodies) // 2
        parts = [ingest_chunk(chunk.slice(0, half), domain_lists, depth=depth + 1),
                 ingest_chunk(chunk.slice(half, None), domain_lists, depth=depth + 1)]
        return pl.concat([p[0] for p in parts]), pl.concat([p[1] for p in parts])
    # Runs for the reference path: the bad lines, with the good ones between two of them fewer than
    # MIN_SPLIT apart (not worth a fast-path parse of their own).
    slow: list[list[int]] = []
    for i in bad:
        if slow and i - slow[-1][1] < MIN_SPLIT:
            slow[-1][1] = i + 1
        else:
            slow.append([i, i + 1])
    parts, start = [], 0
    for lo, hi in slow:
        if lo > start:
            parts.append(ingest_chunk(chunk.slice(start, lo), domain_lists, depth=depth + 1))
        parts.append(_slow_path(chunk.slice(lo, hi), domain_lists))
        start = hi
    if start < len(chunk.bodies):
        parts.append(ingest_chunk(chunk.slice(start, None), domain_lists, depth=depth + 1))
    return pl.concat([p[0] for p in parts]), pl.concat([p[1] for p in parts])


def _ingest_chunks(chunks: Iterable[Chunk],
                   domain_lists: dict[str, str]) -> Iterator[tuple[Chunk, pl.DataFrame, pl.DataFrame]]:
    """`ingest_chunk` over `chunks`, in order, with the next chunk parsed and screened (Arrow's reader
    and polars, which run without the GIL) while this one is validated and flattened: the two stages
    overlap on a multi-core machine."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse") as pool:
        ahead = iter(chunks)
        chunk = next(ahead, None)
        pending = pool.submit(parse_chunk, chunk) if chunk is not None else None
        while chunk is not None and pending is not None:
            parsed = pending.result()
            following = next(ahead, None)
            pending = pool.submit(parse_chunk, following) if following is not None else None
            yield chunk, *ingest_chunk(chunk, domain_lists, parsed)
            chunk = following


def _screen(text: pl.Series) -> pl.Series:
    """True where a body may hold what Arrow's reader takes and the reference parser refuses (the
    patterns above) or nesting past MAX_DEPTH; the 4,301-digit pattern, the costly one, runs only
    over bodies long enough to hold it."""
    flagged = text.str.contains(NON_JSON_TOKEN) | text.str.contains(LONG_EXPONENT) | (
        text.str.count_matches(r"[\[{]") > MAX_DEPTH)
    long = text.str.len_bytes() > MAX_INT_DIGITS
    if long.any():
        flagged = flagged | (long & text.str.contains(TOO_MANY_DIGITS))
    return flagged


def _as_text(bodies: list[bytes]) -> pl.Series:
    """The bodies as text; a body that is not UTF-8 becomes "" (so it is unreadable: the reference
    parser gives the reason)."""
    try:
        return pl.Series(bodies, dtype=pl.Binary).cast(pl.String)
    except pl.exceptions.ComputeError:  # some body is not UTF-8
        return pl.Series([b if _is_utf8(b) else b"" for b in bodies], dtype=pl.Binary).cast(pl.String)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fast_parse(bodies: list[bytes]) -> SplitRequests | None:
    """Arrow's JSON reader against the request schema (`read_request_lines`), for UTF-8 bodies that
    are each one JSON object on one line; None when it refuses them."""
    try:
        table = read_request_lines(b"\n".join(bodies))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(bodies):
        return None
    return SplitRequests.from_arrow(table)


def _slow_path(chunk: Chunk, domain_lists: dict[str, str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    good_bodies: list[bytes] = []
    good: list[int] = []
    quarantine: list[dict] = []
    for i, body in enumerate(chunk.bodies):
        try:
            obj = parse_json(body)
            validate_request(obj)
        except RequestError as e:
            quarantine.append(_quarantine_row(chunk, i, str(e)))
            continue
        good_bodies.append(json.dumps(obj, separators=(",", ":")).encode())
        good.append(i)
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(good_bodies)), schema=REQUEST_SCHEMA) if good_bodies else None
    features = (flatten(frame, chunk.source_list(good), chunk.line_numbers(good), domain_lists) if frame is not None
                else FEATURE_SCHEMA.to_frame())
    return features, _quarantine_frame(quarantine)


def _request_id(body: bytes) -> str | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return str(rid) if isinstance(rid, (str, int, float)) else None


def _quarantine_row(chunk: Chunk, i: int, reason: str) -> dict:
    body = chunk.bodies[i]
    return {
        "source_file": chunk.source_of(i),
        "location": chunk.location(i),
        "request_id": _request_id(body),
        "reason": reason,
        "raw": body,
    }


def _quarantine_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=QUARANTINE_SCHEMA) if rows else QUARANTINE_SCHEMA.to_frame()


def ingest_paths(paths: Iterable[str | Path], domain_lists: dict[str, str] | None = None,
                 chunk_lines: int = CHUNK_LINES) -> IngestResult:
    """Ingest files and directories into one feature table and one quarantine table (`chunk_lines`
    requests parsed at a time: it changes the speed, never a verdict)."""
    domain_lists = domain_lists or {}
    features: list[pl.DataFrame] = []
    quarantine: list[pl.DataFrame] = []
    requests_in = 0
    files = expand_paths(paths)
    chunks = batched((c for path in files for c in read_chunks(path, chunk_lines)), chunk_lines)
    for chunk, f, q in _ingest_chunks(chunks, domain_lists):
        requests_in += len(chunk.bodies)
        features.append(f)
        quarantine.append(q)
    return IngestResult(
        features=disambiguate_row_ids(pl.concat(features)) if features else FEATURE_SCHEMA.to_frame(),
        quarantine=pl.concat(quarantine) if quarantine else QUARANTINE_SCHEMA.to_frame(),
        requests_in=requests_in,
        files=[str(p) for p in files],
    )


def disambiguate_row_ids(features: pl.DataFrame) -> pl.DataFrame:
    """`row_id` is `request_id/imp_id`; where several files reuse the same ids (test fixtures do),
    every copy after the first gets `#<file>:<line>` appended, so a row id names one decision. When
    that is not enough (the same file read twice, or two files of one name, such as day1/a.jsonl and
    day2/a.jsonl), the copies after the first also get `#r<row number>`."""
    first = _suffix_where(features, ~pl.col("row_id").is_first_distinct())
    return _position_where(first, ~pl.col("row_id").is_first_distinct(), 0)


def _position_where(features: pl.DataFrame, dup: pl.Expr | pl.Series, offset: int) -> pl.DataFrame:
    position = (pl.int_range(pl.len(), dtype=pl.Int64) + offset).cast(pl.String)
    return features.with_columns(
        pl.when(dup).then(pl.col("row_id") + pl.lit("#r") + position).otherwise(pl.col("row_id")).alias("row_id"))


def _seen_before(seen: list[np.ndarray], hashes: np.ndarray) -> pl.Series:
    """Which `hashes` are in one of the sorted runs `seen` (one run a chunk: no re-sorting of all of them)."""
    found = np.zeros(len(hashes), dtype=bool)
    for run in seen:
        at = np.searchsorted(run, hashes).clip(max=run.size - 1)
        found |= run[at] == hashes
    return pl.Series(found)


def ingest_to_files(paths: Iterable[str | Path], output_dir: Path, domain_lists: dict[str, str] | None = None,
                    chunk_lines: int = CHUNK_LINES, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """`ingest_paths` then `write_result`, streamed: each chunk's rows are appended to the two Parquet
    files as soon as they are made, so memory holds one chunk (about `chunk_lines` requests), not the
    input. The rows, their order and the summary are those of `ingest_paths`; as `write_result` does,
    features.parquet is published (atomically) first, then quarantine.parquet (spilled meanwhile to an
    anonymous temporary file, which a killed run cannot leave behind). Row ids are disambiguated as
    `disambiguate_row_ids` does, against 64-bit hashes of the ids met so far (16 bytes a row: the only
    memory that grows with the input); should two different ids share a hash (odds ~1e-7 at 2 million
    rows), the second gets a suffix too, which still leaves every row id unique. `progress(k)` is told
    the `k` requests of each chunk once its rows are written (a CLI's bar; this module knows no CLI).
    """
    domain_lists = domain_lists or {}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = expand_paths(paths)
    counts = {"requests_in": 0, "accepted": 0, "quarantined": 0, "decisions": 0}
    feature_schema = FEATURE_SCHEMA.to_frame().to_arrow().schema
    quarantine_schema = QUARANTINE_SCHEMA.to_frame().to_arrow().schema
    # Sorted hashes of the row ids met so far, as read and after `#file:line` (disambiguate_row_ids' two passes).
    seen_read: list[np.ndarray] = []
    seen_suffixed: list[np.ndarray] = []
    with tempfile.TemporaryFile(dir=output_dir) as spill:
        with atomic_path(output_dir / "features.parquet") as ftmp:
            with pq.ParquetWriter(ftmp, feature_schema) as fw, pq.ParquetWriter(spill, quarantine_schema) as qw:
                chunks = batched((c for path in files for c in read_chunks(path, chunk_lines)), chunk_lines)
                for chunk, features, quarantine in _ingest_chunks(chunks, domain_lists):
                    repeated = ~pl.col("row_id").is_first_distinct()
                    hashes = features["row_id"].hash(seed=0).to_numpy()
                    features = _suffix_where(features, _seen_before(seen_read, hashes) | repeated)
                    seen_read.append(np.unique(hashes))
                    hashes = features["row_id"].hash(seed=0).to_numpy()
                    features = _position_where(features, _seen_before(seen_suffixed, hashes) | repeated,
                                               counts["decisions"])
                    seen_suffixed.append(np.unique(hashes))
                    fw.write_table(features.to_arrow().cast(feature_schema))
                    qw.write_table(quarantine.to_arrow().cast(quarantine_schema))
                    counts["requests_in"] += len(chunk.bodies)
                    counts["quarantined"] += quarantine.height
                    counts["decisions"] += features.height
                    if progress is not None:
                        progress(len(chunk.bodies))
        spill.seek(0)
        write_with(output_dir / "quarantine.parquet", lambda tmp: _copy_to(spill, tmp))
    counts["accepted"] = counts["requests_in"] - counts["quarantined"]
    return counts


def _copy_to(src: BinaryIO, target: Path) -> None:
    with open(target, "wb") as out:
        shutil.copyfileobj(src, out)


def _suffix_where(features: pl.DataFrame, dup: pl.Expr | pl.Series) -> pl.DataFrame:
    suffix = pl.lit("#") + pl.col("source_file").str.split("/").list.last() + pl.lit(":") + pl.col(
        "source_line"
    ).cast(pl.String)
    return features.with_columns(pl.when(dup).then(pl.col("row_id") + suffix).otherwise(pl.col("row_id")).alias("row_id"))


def write_result(result: IngestResult, output_dir: Path) -> tuple[Path, Path]:
    """Write features.parquet and quarantine.parquet atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fpath, qpath = output_dir / "features.parquet", output_dir / "quarantine.parquet"
    write_with(fpath, lambda tmp: result.features.write_parquet(tmp))
    write_with(qpath, lambda tmp: result.quarantine.write_parquet(tmp))
    return fpath, qpath
