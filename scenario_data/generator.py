"""Seeded generator of realistic OpenRTB 2.6 BidRequests, labelled by the active policy.

Rates (documented so they can be argued with):
- inventory: 60 % site, 40 % app; media: 70 % banner, 20 % video, 10 % native; 1-3 impressions per
  request, except MFA-like pages, which carry 4-8.
- verticals: all IAB Content 3.1 tier-1 verticals, weighted roughly by their share of open-web
  inventory (news, entertainment, sports, gaming and tech dominate; Video Gaming is ~9 %).
- MFA-like inventory ~18 % of site requests (the ANA 2023 study found 21 % of impressions on MFA
  sites), carrying 2-5 of the five MFA signals, so the policy's "at least three" boundary is exercised.
- unsafe inventory ~4 %: IAB sensitive topics (Content 1.0 IAB25/IAB26 or Content 3.x ids) or a
  domain on the shipped synthetic `unsafe` block list.
- Gaming layout signals: rewarded (`imp.rwdd`) slots are common in gaming apps, and positions
  (`banner.pos`/`video.pos`) vary, so policy v2's Gaming rule has rows to act on.

The same seed gives byte-identical output: one `random.Random(seed)` drives every choice, and the
JSON is written with sorted keys and fixed separators.
"""

import functools
import gzip
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from modelsmith.atomic import atomic_path
from scenario_data.features import SplitRequests, flatten
from scenario_data.openrtb import read_request_lines
from scenario_data.policy import Policy
from scenario_data.taxonomy import REFERENCE, SENSITIVE, generator_codes, load_domain_lists

VERTICAL_WEIGHTS = {
    "Politics": 6, "Entertainment": 9, "Sports": 9, "Video Gaming": 9,
    "Technology & Computing": 7, "Business and Finance": 5, "Personal Finance": 4, "Style & Fashion": 4,
    "Food & Drink": 4, "Travel": 4, "Automotive": 4, "Healthy Living": 3, "Medical Health": 3,
    "Home & Garden": 3, "Family and Relationships": 3, "Hobbies & Interests": 3, "Pop Culture": 3,
    "Shopping": 3, "Science": 2, "Education": 2, "Careers": 2, "Real Estate": 2, "Pets": 2,
    "Books and Literature": 1, "Fine Art": 1, "Religion & Spirituality": 1, "Events": 1, "Attractions": 1,
    "Personal Celebrations & Life Events": 1, "Holidays": 1, "Genres": 1, "Law": 1, "Crime": 1,
    "Disasters": 1, "War and Conflicts": 1, "Communication": 1,
}
BANNER_SIZES = [(300, 250), (320, 50), (728, 90), (300, 600), (160, 600), (970, 250), (320, 100)]
VIDEO_SIZES = [(640, 480), (1280, 720), (1920, 1080)]
WORDS = ["daily", "pixel", "arcade", "metro", "tribune", "grove", "summit", "harbor", "quest", "nova",
         "atlas", "orbit", "signal", "crest", "maple", "river", "stone", "lumen", "vista", "echo"]
KEYWORDS = {"Video Gaming": ["rpg", "esports", "console", "walkthrough"], "Sports": ["football", "scores"],
            "Technology & Computing": ["laptops", "ai", "reviews"]}


def _codes() -> dict[str, tuple[list[str], list[str]]]:
    """Per vertical: (Content 1.0 codes, Content 2.x/3.x ids), the reference table's frozen `generator` rows:
    rows added to the table later (IAB12 News, ...) are resolved by ingestion but never drawn, so the
    same seed keeps giving the same bytes."""
    return generator_codes()


@functools.cache
def unsafe_domains() -> tuple[str, ...]:
    return tuple(sorted(load_domain_lists([REFERENCE / "unsafe.txt"])))


def _domain(rng: random.Random, app: bool) -> str:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    n = rng.randrange(1, 400)
    return f"com.{a}{b}.app{n}" if app else f"{a}{b}{n}.com"


def generate_request(rng: random.Random, index: int) -> dict:
    """One OpenRTB 2.6 BidRequest; MFA and layout signals go where 2.6 has a field, else in `ext.modelsmith`."""
    app = rng.random() < 0.4
    verticals = [v for v, w in VERTICAL_WEIGHTS.items() if w > 0 and v in _codes()]
    vertical = rng.choices(verticals, weights=[VERTICAL_WEIGHTS[v] for v in verticals])[0]
    legacy, modern = _codes()[vertical]
    side: dict = {"id": f"pub-{rng.randrange(10_000)}"}
    if legacy and rng.random() < 0.5:
        side["cat"] = [rng.choice(legacy)]
    else:
        side["cat"], side["cattax"] = [rng.choice(modern)], 7
    unsafe = rng.random()
    domain = _domain(rng, app)
    if unsafe < 0.02:
        s_legacy, s_modern = _codes()[SENSITIVE]
        side["cat"] = [rng.choice(s_legacy)] if "cattax" not in side else [rng.choice(s_modern)]
        side["cat"] += [rng.choice(legacy if "cattax" not in side else modern)]
    elif unsafe < 0.04:
        domain = rng.choice(unsafe_domains())
    if app:
        side["bundle"] = domain
    else:
        side["domain"] = domain
        side["page"] = f"https://{'www.' if rng.random() < 0.5 else ''}{domain}/{rng.choice(WORDS)}/{rng.randrange(10**6)}"
    words = KEYWORDS.get(vertical, [rng.choice(WORDS)])
    side["keywords"] = ",".join(rng.sample(words, k=min(2, len(words))))
    side["content"] = {"title": f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} {vertical.lower()}"}

    mfa_like = not app and rng.random() < 0.18
    signals = {"ad_density": round(rng.uniform(0.05, 0.28), 2), "paid_traffic": round(rng.uniform(0.0, 0.45), 2),
               "templated": 0}
    refresh_s = rng.choice([None, None, None, 60, 90, 120])
    n_imps = rng.choice([1, 1, 1, 2, 2, 3])
    if mfa_like:
        k = rng.choice([2, 3, 3, 4, 5])
        chosen = rng.sample(["ad_density", "refresh", "paid_traffic", "templated", "slots"], k=k)
        if "ad_density" in chosen:
            signals["ad_density"] = round(rng.uniform(0.3, 0.7), 2)
        if "paid_traffic" in chosen:
            signals["paid_traffic"] = round(rng.uniform(0.5, 0.95), 2)
        if "templated" in chosen:
            signals["templated"] = 1
        if "refresh" in chosen:
            refresh_s = rng.choice([10, 15, 20, 30])
        n_imps = rng.randint(5, 8) if "slots" in chosen else rng.randint(1, 4)
    if rng.random() < 0.3 or mfa_like:
        side["ext"] = {"modelsmith": signals}
    gaming_app = vertical == "Video Gaming" and app
    imps = []
    for j in range(n_imps):
        imps.append(_imp(rng, j, gaming_app, refresh_s, vertical))
    request: dict = {
        "id": f"req-{index:08d}-{rng.getrandbits(32):08x}",
        "imp": imps,
        "app" if app else "site": side,
        "device": {"devicetype": rng.choice([1, 2, 4, 4, 5]) if not app else rng.choice([1, 4, 4, 5]),
                   "w": rng.choice([375, 390, 414, 1280, 1920]), "h": rng.choice([667, 844, 896, 720, 1080])},
        "regs": {"gdpr": rng.choice([0, 0, 1])},
        "tmax": rng.choice([120, 200, 300, 500]),
        "cur": ["USD"],
        "at": 1,
    }
    hops = rng.choice([0, 0, 1, 1, 2, 3])
    if hops:
        request["source"] = {"schain": {"complete": 1, "ver": "1.0",
                                        "nodes": [{"asi": f"ssp{h}.com", "sid": str(rng.randrange(1000)), "hp": 1}
                                                  for h in range(hops)]}}
    return request


def _imp(rng: random.Random, j: int, gaming_app: bool, refresh_s: int | None, vertical: str) -> dict:
    imp: dict = {"id": str(j + 1), "tagid": f"slot-{j + 1}"}
    media = rng.choices(["banner", "video", "native"], weights=[70, 20, 10])[0]
    pos = rng.choice([1, 1, 3, 3, 0, 4, 5, 6, 7])
    if media == "banner":
        w, h = rng.choice(BANNER_SIZES)
        imp["banner"] = {"w": w, "h": h, "pos": pos} if rng.random() < 0.5 else {
            "format": [{"w": w, "h": h}] + [{"w": a, "h": b} for a, b in rng.sample(BANNER_SIZES, k=rng.randint(0, 2))],
            "pos": pos}
    elif media == "video":
        w, h = rng.choice(VIDEO_SIZES)
        placement = {"plcmt": rng.choice([1, 2, 3, 4])} if rng.random() < 0.5 else {"placement": rng.choice([1, 2, 3, 5])}
        imp["video"] = {"mimes": ["video/mp4"], "w": w, "h": h, "pos": pos, "minduration": 5, "maxduration": 30,
                        **placement}
    else:
        imp["native"] = {"ver": "1.2", "request": json.dumps(
            {"ver": "1.2", "assets": [{"id": 1, "required": 1, "title": {"len": 90}}]}, separators=(",", ":"))}
    if gaming_app and rng.random() < 0.45:
        imp["rwdd"] = 1
    elif rng.random() < 0.04:
        imp["rwdd"] = 1
    if rng.random() < 0.06:
        imp["instl"] = 1
    floor = round(rng.lognormvariate(-0.2, 0.7), 2)
    imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
    if refresh_s is not None and rng.random() < 0.5:
        imp["refresh"] = {"count": rng.randint(1, 9), "refsettings": [{"reftype": 1, "minint": refresh_s}]}
    elif refresh_s is not None:
        imp.setdefault("ext", {})["modelsmith"] = {"refresh_s": refresh_s}
    return imp


def generate_requests(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [generate_request(rng, i) for i in range(n)]


def dumps(request: dict) -> str:
    return json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def label_requests(requests: list[dict], policy: Policy) -> pl.DataFrame:
    """Flatten and label generated requests with exactly the code ingestion uses."""
    table = read_request_lines("\n".join(dumps(r) for r in requests).encode())
    features = flatten(SplitRequests.from_arrow(table), "<generated>", range(1, len(requests) + 1),
                       load_domain_lists([REFERENCE / "unsafe.txt"]))
    return policy.label(features)


def iter_labelled_lines(n: int, seed: int, policy: Policy, batch: int = 20_000,
                        progress: Callable[[int], None] | None = None) -> Iterator[str]:
    """JSONL lines of `n` requests; each imp carries its label in `imp.ext.modelsmith.label`.

    `progress(k)` is told after each batch's `k` lines are out (a CLI's bar; this module knows no CLI)."""
    rng = random.Random(seed)
    done = 0
    while done < n:
        requests = [generate_request(rng, done + i) for i in range(min(batch, n - done))]
        labels = label_requests(requests, policy)
        by_row = dict(zip(labels["row_id"].to_list(), labels["expected"].to_list(), strict=True))
        for r in requests:
            r["ext"] = {"modelsmith": {"policy": policy.digest, "generator_seed": seed}}
            for imp in r["imp"]:
                imp.setdefault("ext", {}).setdefault("modelsmith", {})["label"] = by_row[f"{r['id']}/{imp['id']}"]
            yield dumps(r)
        done += len(requests)
        if progress is not None:
            progress(len(requests))


def write_pack(path: str | Path, n: int, seed: int, policy: Policy,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write a scenario pack atomically: `n` labelled requests as JSONL (gzip if the name ends .gz);
    `progress(k)` counts requests written."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            # mtime=0 and no file name (it would be the random temporary one) keep the gzip header, and so
            # the bytes, identical for the same seed.
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
                for line in iter_labelled_lines(n, seed, policy, progress=progress):
                    f.write(line.encode() + b"\n")
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for line in iter_labelled_lines(n, seed, policy, progress=progress):
                    f.write(line + "\n")
    return path
