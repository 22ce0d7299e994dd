"""Real OpenRTB requests nobody here wrote: what a real exchange accepts and refuses, we accept and refuse."""

import csv
import re
from pathlib import Path

import polars as pl
import pytest

from scenario_data.ingest import ingest_paths
from scenario_data.taxonomy import load_domain_lists

SITE_AND_APP = {
    "prebid-server__adapters__adgeneration__adgenerationtest__exemplary__single-banner-ios.json",
    "prebid-server__adapters__mediasquare__mediasquaretest__exemplary__multi-format.json",
    "prebid-server__adapters__rubicon__rubicontest__exemplary__25-26-transition-period.json",
    "prebid-server__adapters__rubicon__rubicontest__exemplary__simple-native.json",
}
# Adapter test fixtures whose native payload is a placeholder no exchange accepts. Two of them are
# byte-for-byte the shape of invalid fixtures that must be refused (definemedia's `native: {}` is
# invalid-whole/native-empty; adverxo's `request: "{}"` is invalid-native/empty-object), so no rule
# can accept them and refuse those; we follow the exchange. The field each reason must name:
PLACEHOLDER_NATIVE = {
    "mxmCherry-openrtb__openrtb2__testdata__bid-request__2.5__native-ad.json": "imp[0].native.request",
    "prebid-server__adapters__adkernel__adkerneltest__exemplary__multiformat-impression.json": "imp[0].native.request",
    "prebid-server__adapters__adverxo__adverxotest__exemplary__native.json": "imp[0].native.request.assets",
    "prebid-server__adapters__bliink__bliinktest__exemplary__banner_native_video.json": "imp[1].native.request",
    "prebid-server__adapters__definemedia__definemediatest__exemplary__sample-conative-native.json": "imp[0].native.request",
    "prebid-server__adapters__sspBC__sspbctest__exemplary__native.json": "imp[0].native.request",
    "prebid-server__adapters__taboola__taboolatest__exemplary__multiFormatImpressionsRequest.json": "imp[0].native.request.assets",
}

# An adapter fixture whose video impression has `"mimes": null`: OpenRTB 2.6 §3.2.7 makes `mimes` required
# and Prebid Server's endpoint refuses a video without one; adapter tests never pass the endpoint.
MIMES_MISSING = {"prebid-server__adapters__kargo__kargotest__exemplary__video.json": "imp[0].video.mimes"}
# Invalid for Prebid Server, valid for OpenRTB 2.6, and accepted here (README, "Validation rules"): a site
# needs none of id, page or domain (§3.2.13: "useful ... but not strictly required").
ACCEPTED_AGAINST_PREBID = {"prebid-server__endpoints__openrtb2__sample-requests__invalid-whole__site-empty.json"}


@pytest.fixture(scope="module")
def real(realdata: Path):
    lists = load_domain_lists([realdata / "brand_safety" / "blocklistproject"])
    return ingest_paths([realdata / "openrtb"], lists)


def test_every_real_request_is_counted(real):
    assert real.requests_in == 266
    assert real.accepted + real.quarantined == real.requests_in
    assert real.features["request_id"].n_unique() <= real.accepted


def test_only_site_and_app_placeholder_natives_and_missing_mimes_are_quarantined(real):
    quarantined = {Path(p).name: r for p, r in real.quarantine.select("source_file", "reason").iter_rows()}
    assert set(quarantined) == SITE_AND_APP | set(PLACEHOLDER_NATIVE) | set(MIMES_MISSING)
    for name, field in MIMES_MISSING.items():
        assert quarantined[name] == f'{field}: missing required field "mimes"', quarantined[name]
    for name in SITE_AND_APP:
        assert "site" in quarantined[name] and "app" in quarantined[name], quarantined[name]
    for name, field in PLACEHOLDER_NATIVE.items():
        assert quarantined[name].startswith(field + ":"), quarantined[name]


def test_quarantine_keeps_raw_bytes_and_location(real, realdata: Path):
    for source, location, raw in real.quarantine.select("source_file", "location", "raw").iter_rows():
        assert location == "byte 0"
        assert raw == Path(source).read_bytes()


def _expected_field(message: str) -> str | None:
    if 'request missing required field: "id"' in message:
        return "id"
    m = re.search(r"[Rr]equest[. ](imp\[\d+\][\w\[\]\.]*|[a-z][\w\[\]\.]*)", message)
    return m.group(1).rstrip(".") if m else None


def test_every_invalid_request_but_the_empty_site_is_quarantined_naming_the_exchange_field(realdata: Path):
    rows = list(csv.DictReader((realdata / "openrtb_invalid" / "EXPECTED.csv").open(encoding="utf-8")))
    assert len(rows) == 20
    for row in rows:
        path = realdata / "openrtb_invalid" / row["file"]
        result = ingest_paths([path])
        if row["file"] in ACCEPTED_AGAINST_PREBID:
            assert (result.requests_in, result.accepted, result.quarantined) == (1, 1, 0), row["file"]
            assert result.features.height == 1
            continue
        assert (result.requests_in, result.accepted, result.quarantined) == (1, 0, 1), row["file"]
        reason = result.quarantine["reason"][0]
        message = row["expected_error_message"]
        if "expect { or n" in message:
            assert re.search(r"not valid JSON: .* at line \d+ column \d+", reason), reason
            continue
        field = _expected_field(message)
        assert field, message
        if "request.site or request.app" in message:
            assert "site" in reason and "app" in reason
        else:
            assert field in reason, (row["file"], field, reason)


def test_real_features_are_normalised(real):
    f = real.features
    assert f["domain"].str.contains("://").sum() == 0
    assert f["domain"].str.starts_with("www.").sum() == 0
    assert f.filter(pl.col("domain").str.contains(r":\d+$")).height == 0
    assert set(f["inventory_type"].unique()) <= {"site", "app", "dooh", "unknown"}  # a few omit all three
    assert "dooh" in set(f["inventory_type"])
    # 2.5 `video.placement` and 2.6 `video.plcmt` are both read
    assert f.filter(pl.col("media") == "video")["video_placement"].drop_nulls().len() > 0
