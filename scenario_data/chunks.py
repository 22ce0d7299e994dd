"""Raw request bodies read from files, a chunk at a time, each with its file and its place there.

Formats: `.json` (one request, or an array of requests), `.jsonl` / `.ndjson` (optionally `.gz`),
and `.parquet` with one JSON column. A file that cannot be read at all raises `IngestError`; what a
readable file holds is judged later, request by request (`scenario_data.ingest`).
"""

import gzip
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scenario_data.openrtb import RequestError, parse_json

READABLE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".parquet")
CHUNK_LINES = 50_000
JSON_COLUMN_NAMES = ("request", "bid_request", "bidrequest", "json", "body")
UTF8_BOM = b"\xef\xbb\xbf"


class IngestError(ValueError):
    """A file that cannot be read at all (not a request that is refused: those are quarantined)."""


@dataclass
class Chunk:
    """Raw request bodies, each with its file and its location there: `lines` (line numbers, JSONL) or
    `locations` ("element 0", "row 3")."""

    source: str
    bodies: list[bytes]
    locations: list[str] | None = None
    sources: list[str] = field(default_factory=list)
    lines: np.ndarray | None = None

    def source_of(self, i: int) -> str:
        return self.sources[i] if self.sources else self.source

    def source_list(self, indices: list[int]) -> list[str] | str:
        """The source file of each body at `indices`; one string when they all come from one file."""
        return [self.source_of(i) for i in indices] if self.sources else self.source

    def location(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else self.locations[i]  # type: ignore[index]

    def line_numbers(self, indices: list[int]) -> np.ndarray:
        """The number `source_line` records for the bodies at `indices` (ascending, distinct): the line
        (JSONL), element or row (the location's number)."""
        if self.lines is not None:
            return self.lines if len(indices) == len(self.lines) else self.lines[indices]
        return np.array([_line_no(self.locations[i]) for i in indices], dtype=np.int64)  # type: ignore[index]

    def slice(self, start: int, stop: int | None) -> "Chunk":
        return Chunk(self.source, self.bodies[start:stop], self.locations[start:stop] if self.locations else None,
                     self.sources[start:stop], self.lines[start:stop] if self.lines is not None else None)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories contribute their readable files, sorted, recursively.

    A directory's files must lie inside it: a symbolic link there that resolves outside it is refused
    (IngestError naming the link and its target), and linked sub-directories are not followed (rglob).
    Anything that is not a regular file (a FIFO, a device) is not read: it could block forever.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            root = p.resolve()
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(READABLE_SUFFIXES))
            for f in found:
                if f.is_symlink() and not f.resolve().is_relative_to(root):
                    raise IngestError(f"{f}: a symbolic link to {f.resolve()}, outside {p}; files in a replay "
                                      f"directory must lie inside it")
            out += found
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise IngestError(f"{p}: not a regular file or directory")
        else:
            raise IngestError(f"{p}: no such file or directory")
    return out


def read_chunks(path: Path, chunk_lines: int = CHUNK_LINES) -> Iterator[Chunk]:
    name = path.name
    src = str(path)
    if name.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                yield from _jsonl_chunks(f, src, chunk_lines)
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt gzip stream included
            raise IngestError(f"{path}: cannot read ({e})") from e
    elif name.endswith(".parquet"):
        yield from _parquet_chunks(path, chunk_lines)
    elif name.endswith(".json"):
        raw = path.read_bytes()
        raw = raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw  # the file's UTF-8 signature
        try:
            doc = parse_json(raw)
        except RequestError:
            yield Chunk(src, [raw], ["byte 0"])  # quarantined whole, with the parse error
            return
        if isinstance(doc, list):
            yield Chunk(src, [json.dumps(e).encode() for e in doc], [f"element {i}" for i in range(len(doc))])
        else:
            yield Chunk(src, [raw], ["byte 0"])
    else:
        raise IngestError(f"{path}: unsupported file type; expected one of {', '.join(READABLE_SUFFIXES)}")


def _jsonl_chunks(f: BinaryIO, src: str, chunk_lines: int) -> Iterator[Chunk]:
    """`chunk_lines` lines at a time (blank lines skipped, still counted), each with its line number."""
    first = 1
    while lines := list(itertools.islice(f, chunk_lines)):
        if first == 1 and lines[0].startswith(UTF8_BOM):
            lines[0] = lines[0][len(UTF8_BOM):]  # the file's UTF-8 signature, not part of the first request
        bodies = [line.rstrip(b"\r\n") for line in lines]
        numbers = np.arange(first, first + len(lines), dtype=np.int64)
        first += len(lines)
        blank = [i for i, body in enumerate(bodies) if not body or body[:1].isspace() and not body.strip()]
        if blank:
            keep = np.ones(len(bodies), dtype=bool)
            keep[blank] = False
            bodies = [body for body, k in zip(bodies, keep, strict=True) if k]
            numbers = numbers[keep]
        if bodies:
            yield Chunk(src, bodies, lines=numbers)


def _parquet_chunks(path: Path, chunk_lines: int) -> Iterator[Chunk]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise IngestError(f"{path}: not a readable Parquet file ({e})") from e
    names = pf.schema_arrow.names
    candidates = [n for n in names if n.lower() in JSON_COLUMN_NAMES] or (names if len(names) == 1 else [])
    if not candidates:
        raise IngestError(f"{path}: expected one JSON column (named one of {JSON_COLUMN_NAMES}), found {names}")
    column = candidates[0]
    kind = pf.schema_arrow.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                       pa.types.is_large_binary, pa.types.is_string_view, pa.types.is_binary_view)):
        raise IngestError(f"{path}: column {column!r} holds {kind} values; a request column holds JSON text "
                          f"(string or binary)")
    row = 0
    batches = pf.iter_batches(batch_size=chunk_lines, columns=[column])
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as e:  # a corrupt page, found only when it is read
            raise IngestError(f"{path}: cannot read row {row} onwards ({e})") from e
        if batch is None:
            return
        column_values = batch.column(0)
        if pa.types.is_dictionary(column_values.type):
            column_values = column_values.dictionary_decode()
        # As bytes: a string column may still hold invalid UTF-8 (decoding it raised); the validator says so.
        values = column_values.cast(pa.large_binary()).to_pylist()
        bodies = [b"null" if v is None else v for v in values]
        yield Chunk(str(path), bodies, [f"row {row + i}" for i in range(len(bodies))])
        row += len(bodies)


def _line_no(location: str) -> int:
    return int(location.rsplit(" ", 1)[-1])


def batched(chunks: Iterable[Chunk], limit: int = CHUNK_LINES) -> Iterator[Chunk]:
    """Merge many small chunks (one request per .json file) into one, so per-chunk costs are paid once."""
    pending: list[Chunk] = []
    size = 0
    for chunk in chunks:
        if len(chunk.bodies) >= 1000:
            yield chunk
            continue
        pending.append(chunk)
        size += len(chunk.bodies)
        if size >= limit:
            yield _merge(pending)
            pending, size = [], 0
    if pending:
        yield _merge(pending)


def _merge(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return Chunk(
        source=chunks[0].source,
        bodies=[b for c in chunks for b in c.bodies],
        locations=[c.location(i) for c in chunks for i in range(len(c.bodies))],
        sources=[c.source_of(i) for c in chunks for i in range(len(c.bodies))],
    )
