"""One test per row of the README's validation table (section "Scenario data", "Validation rules").

Each row has an example request and the verdict the table promises: refused with a reason that starts
with the field path (and the words) given here, or accepted with every impression a feature row. The
verdict is checked three ways: by the reference validator, by ingestion of the request alone (the fast
path), and by ingestion of it between valid requests and a line Arrow refuses (the reference path).
"""

import json
import re
from pathlib import Path

import pytest

from scenario_data.generator import dumps, generate_requests
from scenario_data.ingest import ingest_paths
from scenario_data.openrtb import refusal_reason

README = Path(__file__).resolve().parents[3] / "README.md"
BANNER = {"id": "1", "banner": {"w": 300, "h": 250}}
SITE = {"page": "https://example.com/a"}


def req(*imps: dict, **top) -> dict:
    return {"id": "r", "imp": list(imps) or [BANNER], "site": SITE, **top}


def native(request) -> dict:
    return {"id": "1", "native": {"ver": "1.2", "request": request}}


NATIVE = json.dumps({"ver": "1.2", "assets": [{"id": 1, "title": {"len": 90}}]})
# Rule (as the README's table names it) -> (request: a dict, or raw bytes; the reason's start, None: accepted).
CASES: dict[str, tuple[dict | bytes, str | None]] = {
    "body is JSON (RFC 8259) in UTF-8": (b'{"id":"r","imp":[{"id":"1","banner":{"w":1,"h":1}}],"x":NaN}',
                                         "body is not valid JSON"),
    "body is a JSON object": (b'[{"id":"r"}]', "request must be a JSON object"),
    "the fields read have their specified JSON types": (req(tmax="soon"), "tmax: must be an integer"),
    "`id` present and not empty": (req(id=""), 'id: request missing required field "id"'),
    "`imp` has at least one element": (req(imp=[]), "imp: must contain at least one element"),
    "`imp[].id` present and not empty": (req({"banner": {"w": 1, "h": 1}}), 'imp[0].id: missing required field "id"'),
    "`imp[].id` unique within the request": (req(BANNER, BANNER), "imp[1].id: duplicates imp[0].id"),
    "an imp offers `banner`, `video`, `audio` or `native`": (req({"id": "1"}), "imp[0]: must contain at least one of"),
    "an imp naming a stored request may omit its media": (
        req({"id": "1", "ext": {"prebid": {"storedrequest": {"id": "s1"}}}}), None),
    "at most one of `site`, `app`, `dooh`": (req(app={"bundle": "com.a"}), "site, app: at most one of"),
    "no `site`, `app` or `dooh`": ({"id": "r", "imp": [BANNER]}, None),
    "`site` without `id`, `page` or `domain`": (req(site={"publisher": {"id": "p"}}), None),
    "`site` with only `domain`": (req(site={"domain": "example.com"}), None),
    "`app` without `id` or `bundle`": ({"id": "r", "imp": [BANNER], "app": {}}, None),
    "`video.mimes` present": (req({"id": "1", "video": {"w": 640, "h": 480}}),
                              'imp[0].video.mimes: missing required field "mimes"'),
    "`video.mimes` not empty": (req({"id": "1", "video": {"mimes": []}}),
                                "imp[0].video.mimes: must contain at least one MIME type"),
    "`audio.mimes` present and not empty": (req({"id": "1", "audio": {"mimes": None}}),
                                            'imp[0].audio.mimes: missing required field "mimes"'),
    "a banner has a size": (req({"id": "1", "banner": {"pos": 1}}), "imp[0].banner: has no sizes"),
    "an interstitial banner may omit its size": (req({"id": "1", "instl": 1, "banner": {}}), None),
    "`format` entries define `{w, h}` or `{wmin, wratio, hratio}`": (
        req({"id": "1", "banner": {"format": [{}]}}), "imp[0].banner.format[0]: must define either"),
    "sizes, `tmax` and `bidfloor` not negative": (req({"id": "1", "banner": {"w": -1, "h": 250}}),
                                                  "imp[0].banner.w: must be >= 0"),
    "`regs.gdpr` and `regs.ext.gdpr` are 0 or 1": (req(regs={"gdpr": 2}), "regs.gdpr: must be either 0 or 1"),
    "`native.request` present": (req({"id": "1", "native": {"ver": "1.2"}}),
                                 'imp[0].native.request: missing required field "request"'),
    "`native.request` is a JSON-encoded native request": (req(native('{"assets":[{')),
                                                          "imp[0].native.request: must be a JSON-encoded"),
    "the native request has at least one asset": (req(native('{"ver":"1.2","assets":[]}')),
                                                  "imp[0].native.request.assets: must be an array"),
    "a Native 1.0 request wrapped in `{\"native\": ...}`": (req(native(json.dumps({"native": json.loads(NATIVE)}))),
                                                          None),
    "`native.request` as an object, not a string": (req(native(json.loads(NATIVE))),
                                                    "imp[0].native.request: must be a JSON-encoded string, got dict"),
    "a deal has an `id`": (req({**BANNER, "pmp": {"deals": [{"bidfloor": 1.0}]}}),
                           'imp[0].pmp.deals[0].id: missing required field "id"'),
    "an `ext` that Modelsmith reads is an object": (req(site={**SITE, "ext": "x"}), "site.ext: must be an object"),
    "unknown fields and unknown `ext`s": (req({**BANNER, "ext": {"bidder": {"x": [1]}}}, user={"ext": "x"}), None),
    "`imp.metric`": (req({**BANNER, "metric": [{"type": "viewability", "value": 0.7, "vendor": "EXCHANGE"}]}), None),
    "required fields of objects Modelsmith does not read": (
        req({**BANNER, "metric": [{}]}, source={"schain": {"nodes": [{"asi": "ssp.com"}]}}), None),
    "duplicate keys": (b'{"id":"r","imp":[{"id":"1","banner":{"w":1,"h":1}}],"tmax":100,"tmax":-1}', None),
}


def _body(case: dict | bytes) -> bytes:
    return case if isinstance(case, bytes) else json.dumps(case).encode()


def _readme_rules() -> list[str]:
    """The first column of the README's validation table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- validation-rules -->")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| rule")]
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows]


def test_the_readme_table_and_these_cases_name_the_same_rules():
    assert _readme_rules() == list(CASES)


@pytest.mark.parametrize("rule", list(CASES))
def test_rule(rule: str, tmp_path: Path):
    case, reason = CASES[rule]
    body = _body(case)
    got = refusal_reason(body)
    assert (got is None) if reason is None else (got or "").startswith(reason), (rule, got)
    valid = [dumps(r).encode() for r in generate_requests(20, 16)]
    imps = 0 if reason else len(json.loads(body)["imp"])
    for lines in ([body], [*valid, body, b"malformed bid request", *valid]):
        path = tmp_path / "case.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        result = ingest_paths([path])
        line = lines.index(body) + 1
        q = result.quarantine.filter(result.quarantine["location"] == f"line {line}")
        assert q["reason"].to_list() == ([] if reason is None else [got]), (rule, lines is not None)
        assert (result.features["source_line"] == line).sum() == imps, rule
        assert result.requests_in == len(lines) == result.accepted + result.quarantined
