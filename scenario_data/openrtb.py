"""OpenRTB 2.5/2.6 BidRequest: the fields Modelsmith reads, and the checks a real exchange makes.

`REQUEST_SPEC` is declared once and serves twice: as the polars schema the fast JSONL path parses
with (unknown fields, including every unknown `ext`, are dropped by the parser), and as the type
walk of the reference validator `validate_request`, which names the failing field path in the
style of an exchange's 400 message (`imp[1].banner.w: must be >= 0`).
"""

import functools
import io
import json
import math
import re
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.json as pajson

# Leaf types: "str", "int", "float". Containers: a dict is an object, a one-element list a list.
_MODELSMITH_EXT = {"ad_density": "float", "paid_traffic": "float", "templated": "int", "refresh_s": "int"}
_CONTENT = {"title": "str", "keywords": "str", "cat": ["str"], "cattax": "int"}
_PUBLISHER_SIDE = {
    "id": "str", "domain": "str", "page": "str", "bundle": "str", "cat": ["str"], "sectioncat": ["str"],
    "pagecat": ["str"], "cattax": "int", "keywords": "str", "ref": "str", "content": _CONTENT,
    "ext": {"modelsmith": _MODELSMITH_EXT},
}
_FORMAT = {"w": "int", "h": "int", "wmin": "int", "wratio": "int", "hratio": "int"}
_IMP = {
    "id": "str",
    "banner": {"w": "int", "h": "int", "format": [_FORMAT], "pos": "int"},
    "video": {"mimes": ["str"], "w": "int", "h": "int", "pos": "int", "placement": "int", "plcmt": "int"},
    "audio": {"mimes": ["str"]},
    "native": {"request": "json", "ver": "str"},
    "instl": "int",
    "rwdd": "int",
    "bidfloor": "float",
    "refresh": {"count": "int", "refsettings": [{"reftype": "int", "minint": "int"}]},
    "pmp": {"deals": [{"id": "str"}]},
    "ext": {"is_rewarded_inventory": "int", "prebid": {"is_rewarded_inventory": "int", "storedrequest": {"id": "str"}}},
}
_SCHAIN = {"nodes": [{"asi": "str"}]}
REQUEST_SPEC: dict[str, Any] = {
    "id": "str",
    "imp": [_IMP],
    "site": _PUBLISHER_SIDE,
    "app": _PUBLISHER_SIDE,
    "dooh": {"id": "str", "domain": "str", "cat": ["str"], "cattax": "int"},
    "device": {"devicetype": "int", "w": "int", "h": "int"},
    "regs": {"gdpr": "int", "ext": {"gdpr": "int"}},
    "tmax": "int",
    "source": {"schain": _SCHAIN, "ext": {"schain": _SCHAIN}},
}

def arrow_type(spec: Any) -> pa.DataType:
    """Arrow type of a spec node; "json" is a string holding JSON (native.request)."""
    if isinstance(spec, str):
        return {"str": pa.string(), "json": pa.string(), "int": pa.int64(), "float": pa.float64()}[spec]
    if isinstance(spec, list):
        return pa.list_(arrow_type(spec[0]))
    return pa.struct([(k, arrow_type(v)) for k, v in spec.items()])


REQUEST_ARROW_SCHEMA = pa.schema([(k, arrow_type(v)) for k, v in REQUEST_SPEC.items()])
REQUEST_SCHEMA = pl.from_arrow(REQUEST_ARROW_SCHEMA.empty_table()).schema  # the same types, as polars sees them


def read_request_lines(joined: bytes) -> pa.Table:
    """Requests, one JSON object a line, read by Arrow's JSON reader against `REQUEST_ARROW_SCHEMA`:
    strict about types (a wrong type raises rather than being coerced), unknown fields ignored.
    Raises `pa.ArrowInvalid` (or another `pa.ArrowException`) for what it cannot read."""
    options = pajson.ParseOptions(explicit_schema=REQUEST_ARROW_SCHEMA, unexpected_field_behavior="ignore")
    return pajson.read_json(io.BytesIO(joined), parse_options=options)


_REFUSED_ROW = re.compile(r"\bin row (\d+)\b")


def first_refused_line(bodies: list[bytes]) -> int | None:
    """The first line (0-based) `read_request_lines` refuses, from Arrow's own error, read as one block
    without threads so that its row number counts from the first line; None when it takes them all
    or does not say. A hint, not a verdict: the line named still goes to the reference validator."""
    joined = b"\n".join(bodies)
    if len(joined) >= 2**31 - 1:
        return None  # more than one block can hold
    options = pajson.ParseOptions(explicit_schema=REQUEST_ARROW_SCHEMA, unexpected_field_behavior="ignore")
    one_block = pajson.ReadOptions(use_threads=False, block_size=max(len(joined) + 1, 1 << 20))
    try:
        pajson.read_json(io.BytesIO(joined), read_options=one_block, parse_options=options)
    except pa.ArrowException as e:
        found = _REFUSED_ROW.search(str(e))
        row = int(found.group(1)) if found else None
        return row if row is not None and row < len(bodies) else None
    return None


class RequestError(ValueError):
    """One reason a request is refused, with the field path it concerns."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys: keep the first, as the fast (polars) path does, so both paths agree.
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


class _NonFinite(ValueError):
    """NaN, Infinity, a number beyond float range (or an integer past Python's digit limit), or a lone
    surrogate: Python's json accepts them (or fails with a bare ValueError), JSON (RFC 8259) does not."""


def _not_json(name: str) -> float:
    raise _NonFinite(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"number {text[:30]} is out of range")
    return value


MAX_INT_DIGITS = 4_300  # Python's own limit on int <-> str conversion (sys.get_int_max_str_digits)


def _bounded_int(text: str) -> int:
    # Without this hook json.loads raises a bare ValueError past Python's digit limit.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NonFinite(f"integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


# A \uD800-\uDFFF escape: either half of a surrogate pair, or a lone one (which is not a character).
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(obj: Any) -> None:
    """Raise when a string in `obj` holds a lone UTF-16 surrogate: not a character, and polars and Arrow
    (which hold text as UTF-8) cannot represent it."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _NonFinite("a string holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF), "
                         "which is not a Unicode character") from None


MAX_DEPTH = 512  # nesting levels of arrays and objects; OpenRTB needs about ten


def _too_deep(obj: Any, text: str) -> bool:
    """More than MAX_DEPTH nested arrays/objects. Past ~1,000 json.loads itself fails (RecursionError), at a
    depth that depends on the caller's stack; this fixed limit makes the verdict the same everywhere."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack += [(c, depth + 1) for c in children if isinstance(c, dict | list)]
    return False


def parse_json(raw: bytes) -> Any:
    """Parse one request body; refuse non-UTF-8 and non-JSON with where parsing stopped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError("", f"body is not UTF-8 (invalid byte at offset {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_first_wins, parse_constant=_not_json, parse_float=_finite_float,
                         parse_int=_bounded_int)
        if SURROGATE_ESCAPE.search(text):
            _refuse_lone_surrogates(obj)
        if isinstance(obj, dict | list) and _too_deep(obj, text):
            raise RecursionError
    except json.JSONDecodeError as e:
        raise RequestError("", f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _NonFinite as e:
        raise RequestError("", f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError("", f"body is not valid JSON: nested too deeply (over {MAX_DEPTH} levels)") from None
    return obj


def _type_walk(value: Any, spec: Any, path: str) -> None:
    if value is None:
        return
    if isinstance(spec, str):
        if spec == "json":
            ok = isinstance(value, str)  # 2.6 §3.2.9: a string; Prebid Server cannot decode an object there either
            want = "a JSON-encoded string"
        elif spec == "str":
            # Any JSON scalar is read as its text (the reference path re-reads it with polars, which does the same).
            ok = isinstance(value, (str, int, float))
            want = "a string"
        elif spec == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
            want = "an integer"
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a number"
        if not ok:
            raise RequestError(path, f"must be {want}, got {type(value).__name__} {_preview(value)}")
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise RequestError(path, f"must be an array, got {type(value).__name__}")
        for i, item in enumerate(value):
            _type_walk(item, spec[0], f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        raise RequestError(path, f"must be an object, got {type(value).__name__}")
    for key, sub in spec.items():
        _type_walk(value.get(key), sub, f"{path}.{key}" if path else key)


def _preview(value: Any) -> str:
    text = json.dumps(value)[:40]
    return text


def validate_request(obj: Any) -> None:
    """Raise `RequestError` for the first problem an exchange would refuse the request for."""
    if not isinstance(obj, dict):
        if obj is None:
            raise RequestError("id", 'request missing required field "id" (the body is null)')
        raise RequestError("", f"request must be a JSON object, got {type(obj).__name__}")
    _type_walk(obj, REQUEST_SPEC, "")
    if obj.get("id") in (None, ""):
        raise RequestError("id", 'request missing required field "id"')
    if (obj.get("tmax") or 0) < 0:
        raise RequestError("tmax", f"must be >= 0, got {obj['tmax']}")
    present = [k for k in ("site", "app", "dooh") if obj.get(k) is not None]
    if len(present) > 1:
        raise RequestError(", ".join(present), f"at most one of site, app or dooh may be present, got {' and '.join(present)}")
    regs = obj.get("regs") or {}
    for path, value in (("regs.gdpr", regs.get("gdpr")), ("regs.ext.gdpr", (regs.get("ext") or {}).get("gdpr"))):
        if value not in (None, 0, 1):
            raise RequestError(path, f"must be either 0 or 1, got {value}")
    device = obj.get("device") or {}
    for key in ("w", "h"):
        if (device.get(key) or 0) < 0:
            raise RequestError(f"device.{key}", f"must be >= 0, got {device[key]}")
    imps = obj.get("imp")
    if not imps:
        raise RequestError("imp", "must contain at least one element")
    seen: dict[str, int] = {}
    for i, imp in enumerate(imps):
        _validate_imp(imp, i, seen)


def refusal_reason(body: bytes) -> str | None:
    """What the reference parser and validator say of one body: None (accepted) or why it is refused."""
    try:
        validate_request(parse_json(body))
    except RequestError as e:
        return str(e)
    return None


def _validate_imp(imp: Any, i: int, seen: dict[str, int]) -> None:
    p = f"imp[{i}]"
    if imp is None:
        raise RequestError(p, "must be an object, got null")
    if imp.get("id") in (None, ""):
        raise RequestError(f"{p}.id", 'missing required field "id"')
    if imp["id"] in seen:
        raise RequestError(f"{p}.id", f"duplicates imp[{seen[imp['id']]}].id ({imp['id']!r}); imp ids must be unique")
    seen[imp["id"]] = i
    stored = ((imp.get("ext") or {}).get("prebid") or {}).get("storedrequest") or {}
    if all(imp.get(m) is None for m in ("banner", "video", "audio", "native")) and stored.get("id") in (None, ""):
        # An imp that names a stored request gets its media object from the exchange's store.
        raise RequestError(p, 'must contain at least one of "banner", "video", "audio" or "native"')
    if (imp.get("bidfloor") or 0) < 0:
        raise RequestError(f"{p}.bidfloor", f"must be >= 0, got {imp['bidfloor']}")
    banner = imp.get("banner")
    if banner is not None:
        for key in ("w", "h"):
            if (banner.get(key) or 0) < 0:
                raise RequestError(f"{p}.banner.{key}", f"must be >= 0, got {banner[key]}")
        formats = banner.get("format") or []
        for j, fmt in enumerate(formats):
            fp = f"{p}.banner.format[{j}]"
            if fmt is None:
                raise RequestError(fp, "must be an object, got null")
            for key in ("w", "h", "wmin", "wratio", "hratio"):
                if (fmt.get(key) or 0) < 0:
                    raise RequestError(f"{fp}.{key}", f"must be >= 0, got {fmt[key]}")
            fixed = (fmt.get("w") or 0) > 0 and (fmt.get("h") or 0) > 0
            flexible = all((fmt.get(k) or 0) > 0 for k in ("wmin", "wratio", "hratio"))
            if not (fixed or flexible):
                raise RequestError(fp, "must define either {w, h} or {wmin, wratio, hratio}, all non-zero")
        has_size = banner.get("w") is not None and banner.get("h") is not None
        if not (has_size or formats or imp.get("instl") == 1):
            raise RequestError(f"{p}.banner", 'has no sizes: define "w" and "h", or a non-empty "format"')
    for media in ("video", "audio"):  # mimes is required (2.6 §3.2.7, §3.2.8): absent, null or empty is refused
        obj = imp.get(media)
        if obj is not None and obj.get("mimes") is None:
            raise RequestError(f"{p}.{media}.mimes", 'missing required field "mimes"')
        if obj is not None and obj.get("mimes") == []:
            raise RequestError(f"{p}.{media}.mimes", "must contain at least one MIME type")
    native = imp.get("native")
    if native is not None:
        _validate_native(native, f"{p}.native")
    deals = (imp.get("pmp") or {}).get("deals") or []
    for j, deal in enumerate(deals):
        if deal is None or deal.get("id") in (None, ""):
            raise RequestError(f"{p}.pmp.deals[{j}].id", 'missing required field "id"')


def _validate_native(native: dict[str, Any], p: str) -> None:
    problem = native_request_problem(native.get("request"))
    if problem is not None:
        suffix, message = problem
        raise RequestError(f"{p}.{suffix}", message)


def native_request_problem(request: Any) -> tuple[str, str] | None:
    """What is wrong with a `native.request` value, as (field under `native`, message); None when it holds a
    native request with at least one asset. One function for both paths: the fast path's screen
    (`native_request_ok`) runs exactly this on the same decoded string, so the two cannot disagree."""
    if request in (None, ""):
        return "request", 'missing required field "request"'
    if isinstance(request, str):
        try:
            payload = json.loads(request)
            if isinstance(payload, dict | list) and _too_deep(payload, request):
                raise RecursionError
        except (ValueError, RecursionError):  # not JSON, a number past the digit limit, nested too deeply
            return "request", "must be a JSON-encoded native request"
    else:
        payload = request
    if isinstance(payload, dict) and isinstance(payload.get("native"), dict):
        payload = payload["native"]  # Native 1.0 wraps the request in a "native" object (2.6 §3.2.9)
    assets = payload.get("assets") if isinstance(payload, dict) else None
    if not isinstance(assets, list) or not assets or not all(isinstance(a, dict) for a in assets):
        return "request.assets", "must be an array containing at least one object"
    return None


@functools.lru_cache(maxsize=4096)
def native_request_ok(request: str) -> bool:
    """`native_request_problem(request) is None`, cached: a feed repeats a few native templates."""
    return native_request_problem(request) is None
