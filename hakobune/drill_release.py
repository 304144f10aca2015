"""The drill's key-custody and disaster stages: ceremony, release order, unlock, search, export, audit.

The drill plays every role on one machine, so it keeps what real custodians would keep apart: the share
files and their passphrases (``OUT/ceremony``, ``OUT/keys/passphrases``), the custodians' signing keys and
the receiving hospital's key.  The release private key itself is never written: it exists as shares and,
during ``unlock``, in memory.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hakobune.errors import HakobuneError

if TYPE_CHECKING:
    from hakobune.drill import DrillWorld
    from restore.search.index import Query

CEREMONY_DIR = "ceremony"
AUDIT_DIR = "audit"
RESTORE_DIR = "restore"
FHIR_DIR = "fhir"
NDJSON_FILE = "fhir.ndjson"
PASSPHRASES_FILE = "passphrases"
RECIPIENT_KEY = "recipient.key"
ACTOR = "drill"
#: The drill's custody: the director alone, or any 2 of the 3 other custodians.
GROUPS = (
    "director:1/1:director=院長",
    "custodians:2/3:deputy=副院長,prefecture=県災害対策本部,center-mo=センター医務官",
)
#: Who approves and unlocks in the drill: the 2-of-3 path (tests cover the director-alone path too).
APPROVERS = ("deputy", "prefecture")
#: Queries the search stage runs (sampled patients with typical disaster-desk mistakes).
SEARCH_QUERIES = 200


def ceremony_dir(world: DrillWorld) -> Path:
    return world.config.out / CEREMONY_DIR


def audit_dir(world: DrillWorld) -> Path:
    return world.config.out / AUDIT_DIR


def release_public_key_path(world: DrillWorld) -> Path:
    return ceremony_dir(world) / "release.pub"


def stage_ceremony(world: DrillWorld) -> dict[str, Any]:
    """Create the hospital's release key as SLIP-39 shares (once; a later run reuses the ceremony)."""
    from hakobune.custody import ceremony, load_policy, parse_group_spec
    from hakobune.drill import DRILL_HOSPITAL
    from hakobune.keys import write_key_bytes

    out = ceremony_dir(world)
    if (out / "custody.json").exists():
        policy = load_policy(out / "custody.json")
        return {"new": False, "release_key": policy.release_fingerprint, "rule": policy.rule_text()}
    groups = [parse_group_spec(g) for g in GROUPS]
    passphrases = {m.id: secrets.token_urlsafe(12) for g in groups for m in g.members}
    keys = world.config.out / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{k}={v}\n" for k, v in passphrases.items())
    write_key_bytes(keys / PASSPHRASES_FILE, text.encode(), 0o600)
    result = ceremony(DRILL_HOSPITAL, out, groups, passphrases, group_threshold=1)
    _audit(
        world,
        "ceremony",
        {
            "release_key": result.policy.release_fingerprint,
            "policy_sha256": result.policy.sha256,
            "custodians": len(result.custodians),
        },
    )
    return {
        "new": True,
        "release_key": result.policy.release_fingerprint,
        "suite": result.policy.suite,
        "custodians": len(result.custodians),
        "rule": result.policy.rule_text(),
        "self_test_combinations": result.self_test_combinations,
    }


def _audit(world: DrillWorld, action: str, details: dict[str, object]) -> None:
    from hakobune.audit import record
    from hakobune.drill import DRILL_HOSPITAL

    record(audit_dir(world), action, actor=ACTOR, hospital=DRILL_HOSPITAL, details=details)


def stage_release(world: DrillWorld) -> dict[str, Any]:
    """Disaster declared: a release order for every patient to the drill's disaster-base hospital,
    approved by two custodians."""
    from hakobune.custody import load_policy
    from hakobune.keys import RecipientPrivateKey, load_recipient_private, load_signing_key, write_key
    from restore.orders import approve, check_approvals, create_order, load_order, write_order

    world.facts["declared"] = time.perf_counter()
    world.facts["declared_at"] = now = datetime.now(UTC)
    policy = load_policy(ceremony_dir(world) / "custody.json")
    keys = world.config.out / "keys"
    recipient_path = keys / RECIPIENT_KEY
    if not recipient_path.exists():
        write_key(recipient_path, RecipientPrivateKey.generate())
    recipient = load_recipient_private(recipient_path).public
    order = create_order(
        policy,
        scope="all",
        purpose="drill: evacuation of all inpatients to the disaster-base hospital",
        recipient_id="9990000099",
        recipient_name="災害拠点病院 (drill)",
        recipient_key=recipient,
        expires_at=now + timedelta(hours=72),
        now=now,
        created_by=ACTOR,
    )
    orders = world.config.out / "orders"
    path = write_order(orders, order)
    _audit(world, "order.create", {"order": order.order.id, "scope": "all"})
    for custodian in APPROVERS:
        key = load_signing_key(ceremony_dir(world) / "custodians" / f"{custodian}.key")
        approve(path, policy, key, custodian=custodian, now=now)
        _audit(world, "order.approve", {"order": order.order.id, "custodian": custodian})
    approved = check_approvals(load_order(path), policy)
    if not approved.satisfied:
        raise HakobuneError(f"release order {order.order.id} is not approved")
    world.facts["order"] = path
    return {"order": order.order.id, "approved_by": list(approved.approved_by), "expires_in_hours": 72}


def _as_of(world: DrillWorld) -> date | None:
    """The end of the export window: the newest care date in the hospital's data (a synthetic hospital
    lives in its own calendar; a real one's newest data is yesterday's)."""
    end = world.facts.get("date_range_end")
    return date.fromisoformat(end) if end else None


def stage_unlock(world: DrillWorld) -> dict[str, Any]:
    """Unlock with two custodians' share files, replay into OUT/restore and write each bundle to OUT/fhir
    as soon as its patient is rebuilt."""
    from hakobune.drill import DRILL_HOSPITAL
    from restore.commands.restore import gather_shares, read_passphrases, run_unlock

    out = world.config.out
    shares_dir = ceremony_dir(world) / "shares"
    shares = [next(shares_dir.glob(f"custodians-*-{c}.share")) for c in APPROVERS]
    loaded = gather_shares(
        shares, read_passphrases(out / "keys" / PASSPHRASES_FILE), DRILL_HOSPITAL, interactive=False
    )
    partial = out / (FHIR_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    doc = run_unlock(
        order=world.facts["order"],
        policy=ceremony_dir(world) / "custody.json",
        shares=loaded,
        hospital=DRILL_HOSPITAL,
        out=out / RESTORE_DIR,
        audit=audit_dir(world),
        actor=ACTOR,
        center=world.center_home,
        export=partial,
        as_of=_as_of(world),
        show_progress=False,
        workers=world.config.workers,
    )
    final = out / FHIR_DIR
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    declared = world.facts["declared"]
    declared_at: datetime = world.facts["declared_at"]
    r, e = doc["replay"], doc["export"]
    # The exporter's clock started with the unlock; the disaster was declared earlier (release stage).
    since_declared = doc["started"] - declared
    newest = datetime.fromisoformat(r["newest_data"].replace("Z", "+00:00"))
    world.facts["recovery"] = {
        "rpo_hours": round((declared_at - newest).total_seconds() / 3600, 2),
        "newest_data": r["newest_data"],
        "rto_first_bundle_seconds": round(since_declared + (e["first_bundle_seconds"] or 0), 2),
        "rto_last_bundle_seconds": round(since_declared + (e["last_bundle_seconds"] or 0), 2),
    }
    return {
        "order": doc["order"],
        "patients": r["patients"],
        "records": r["records"],
        "erased": r["erased"],
        "changesets": r["changesets"],
        "sequence": r["sequence"],
        "bundles": e["bundles"],
        "bundles_per_second": e["bundles_per_second"],
        "unlock_seconds": doc["unlock_seconds"],
        **world.facts["recovery"],
    }


def stage_search(world: DrillWorld) -> dict[str, Any]:
    """Search the restored patients the way a disaster desk would: kana only, variant kanji, a swapped
    day and month; the right patient should rank first."""
    from restore.database import RestoreDB
    from restore.search.index import PatientIndex

    folder = world.config.out / RESTORE_DIR
    ranks: list[int | None] = []
    latencies: list[float] = []
    with RestoreDB.open(folder) as db, PatientIndex.open(db.path) as index:
        queries = desk_queries(list(db.demographics()), SEARCH_QUERIES, seed=world.config.seed)
        for expected, query in queries:
            t0 = time.perf_counter()
            found = index.search(query, limit=5)
            latencies.append(time.perf_counter() - t0)
            ids = [c.patient_id for c in found]
            ranks.append(ids.index(expected) + 1 if expected in ids else None)
    _audit(world, "search", {"queries": len(ranks), "purpose": "drill search-quality check"})
    if not ranks:
        return {"queries": 0}
    top1 = sum(r == 1 for r in ranks) / len(ranks)
    top5 = sum(r is not None for r in ranks) / len(ranks)
    latencies.sort()
    return {
        "queries": len(ranks),
        "top1": round(top1, 3),
        "top5": round(top5, 3),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 2),
    }


def _hiragana(kana: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in kana)


def desk_queries(rows: list[tuple[str, ...]], count: int, *, seed: int) -> list[tuple[str, Query]]:
    """``count`` (expected patient ID, query) pairs over restored demographics rows, each with a typical
    disaster-desk mistake: hiragana for katakana, day and month swapped, the year off by one, the family
    name only, or the address without its prefecture."""
    import random

    from restore.search.index import Query

    rng = random.Random(seed)
    usable = [r for r in rows if r[3] and len(r[5]) == 10]
    out: list[tuple[str, Query]] = []
    for i, (pid, fk, gk, fn, gn, birth, sex, address, _postal) in enumerate(
        rng.sample(usable, min(count, len(usable)))
    ):
        y, m, d = birth.split("-")
        kind = i % 5
        if kind == 0:
            q = Query(name=f"{fn} {gn}", birth_date=birth)
        elif kind == 1:
            swapped = f"{y}-{d}-{m}" if int(d) <= 12 else birth
            q = Query(name=_hiragana(fn + gn), birth_date=swapped, sex=sex)
        elif kind == 2:
            q = Query(name=f"{fk}{gk}", birth_date=f"{int(y) + rng.choice((-1, 1))}-{m}-{d}", sex=sex)
        elif kind == 3:
            q = Query(name=fn, birth_date=birth, sex=sex)
        else:
            q = Query(name=f"{fk} {gk}", address=address.split("県", 1)[-1].split("都", 1)[-1])
        out.append((pid, q))
    return out


def stage_export(world: DrillWorld) -> dict[str, Any]:
    """NDJSON of the whole release from the restore database, and a conformance check of bundles."""
    from restore.commands.restore import run_export
    from restore.fhir.conformance import PackagesNotFound, check_bundle, load_packages

    out = world.config.out
    report = run_export(
        out / RESTORE_DIR,
        out=None,
        ndjson=out / NDJSON_FILE,
        patients=None,
        audit=audit_dir(world),
        actor=ACTOR,
        as_of=_as_of(world),
        show_progress=False,
        workers=world.config.workers,
    )
    figures: dict[str, Any] = {"ndjson_bundles": report.bundles, "ndjson_bytes": report.bytes}
    try:
        packages = load_packages()
    except PackagesNotFound as e:
        figures["conformance"] = f"not checked: {e}"
        return figures
    files = sorted((out / FHIR_DIR).glob("*.json"))
    step = max(1, len(files) // 100)
    checked, problems = 0, 0
    for path in files[::step]:
        found = check_bundle(orjson.loads(path.read_bytes()), packages)
        checked += 1
        problems += bool(found)
        if found and "first_problem" not in figures:
            figures["first_problem"] = f"{path.name}: {found[0]}"
    figures.update(conformance_checked=checked, nonconformant=problems)
    if problems:
        raise HakobuneError(
            f"{problems} of {checked} checked bundles are not conformant: {figures['first_problem']}"
        )
    return figures


def stage_audit(world: DrillWorld) -> dict[str, Any]:
    """Sign the audit log's head and verify the whole log."""
    from hakobune.audit import AuditLog, verify_log

    with AuditLog.open(audit_dir(world)) as log:
        log.sign_head()
    report = verify_log(audit_dir(world))
    if not report.ok:
        raise HakobuneError("audit log does not verify: " + "; ".join(report.problems[:3]))
    return {"entries": report.entries, "heads": report.heads, "ok": report.ok}
