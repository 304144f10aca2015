"""Release orders, custodian approvals and unlock (restore.orders)."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hakobune.custody import (
    CeremonyResult,
    CustodyError,
    CustodyPolicy,
    ceremony,
    load_policy,
    load_share,
    parse_group_spec,
    read_share_file,
)
from hakobune.errors import ConfigError, InputError
from hakobune.keys import RecipientPrivateKey, SigningKey, SuiteName, load_signing_key, write_key
from restore.commands.release import app as release_app
from restore.orders import (
    Approval,
    OrderFile,
    approval_message,
    approve,
    check_approvals,
    create_order,
    list_orders,
    load_order,
    merge_approvals,
    order_status,
    parse_expires,
    sign_approval,
    unlock,
    write_order,
)

NOW = datetime(2025, 3, 11, 14, 46, tzinfo=UTC)
GROUPS = [
    "director:1/1:director=院長",
    "custodians:2/3:deputy=副院長,pref=県災害対策本部,center=センター医務官",
]
PASS = {m: f"passphrase of {m}" for m in ("director", "deputy", "pref", "center")}
RECIPIENT = RecipientPrivateKey.generate("cryptrec-p256")


def run(out: Path, hospital: str = "H001", suite: SuiteName = "mlkem768-x25519") -> CeremonyResult:
    groups = [parse_group_spec(g) for g in GROUPS]
    return ceremony(hospital, out, groups, PASS, group_threshold=1, suite=suite, scrypt_log_n=4)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> CeremonyResult:
    return run(tmp_path_factory.mktemp("h1") / "ceremony")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> CeremonyResult:
    return run(tmp_path_factory.mktemp("h2") / "ceremony", hospital="H002", suite="cryptrec-p256")


def key_of(made: CeremonyResult, member: str) -> SigningKey:
    return load_signing_key(made.out / "custodians" / f"{member}.key")


def share(made: CeremonyResult, member: str) -> str:
    c = next(c for c in made.custodians if c.custodian.id == member)
    return read_share_file(c.share_file, PASS[member])


def new_order(made: CeremonyResult, folder: Path, *, hours: int = 72) -> Path:
    orders = create_order(
        made.policy,
        scope=["P0001", "P0002", "P0001"],
        purpose="入院患者の転院 (transfer after the earthquake)",
        recipient_id="H777",
        recipient_name="県立中央病院",
        recipient_key=RECIPIENT.public,
        expires_at=NOW + timedelta(hours=hours),
        now=NOW,
        created_by="事務長",
    )
    return write_order(folder, orders)


def approved_by(made: CeremonyResult, path: Path, *members: str) -> Path:
    for m in members:
        approve(path, made.policy, key_of(made, m), custodian=m, now=NOW + timedelta(hours=1))
    return path


def test_order_file(made: CeremonyResult, tmp_path: Path) -> None:
    path = new_order(made, tmp_path)
    doc = json.loads(path.read_text())
    body = doc["order"]
    assert path.name == f"{body['id']}.json"
    assert body["id"].startswith("RO-20250311-") and len(body["id"]) == len("RO-20250311-abcd")
    assert body["hospital"] == "H001"
    assert body["scope"] == ["P0001", "P0002"]
    assert body["recipient"] == {"id": "H777", "name": "県立中央病院"}
    assert body["recipient_key_fingerprint"] == RECIPIENT.public.fingerprint
    assert (body["created_at"], body["expires_at"]) == ("2025-03-11T14:46:00Z", "2025-03-14T14:46:00Z")
    assert body["policy_sha256"] == made.policy.sha256
    assert body["release_key_fingerprint"] == made.policy.release_fingerprint
    assert doc["approvals"] == []
    orders = load_order(path)
    assert orders.order.recipient_key == RECIPIENT.public
    assert order_status(orders, made.policy, NOW)[0] == "pending"


def test_director_alone_approves_and_unlocks(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "director")
    unlocked = unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)
    assert unlocked.key.public == made.policy.release_key
    assert unlocked.approved_by == ("director",)
    assert unlocked.order.recipient_key == RECIPIENT.public
    sealed = made.policy.release_key.seal(b"records", b"i")
    assert unlocked.key.open(sealed, b"i") == b"records"
    assert unlocked.key.raw.hex() not in repr(unlocked)
    assert "RecipientPrivateKey" not in repr(unlocked) and "release_key=" in str(unlocked)


def test_two_custodians_approve_and_unlock_with_share_files(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "pref", "center")
    files = [c.share_file for c in made.custodians if c.custodian.id in ("deputy", "center")]
    shares = [load_share(f, PASS[f.stem.split("-")[-1]], hospital="H001") for f in files]
    unlocked = unlock(path, made.policy_path, shares, hospital="H001", now=NOW + timedelta(hours=71))
    assert unlocked.key.public == made.policy.release_key
    assert set(unlocked.approved_by) == {"pref", "center"}


def test_one_approval_is_not_enough(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "deputy")
    with pytest.raises(InputError) as e:
        unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)
    assert "is not approved: 1 of 1 approvals needed in group director, got 0" in str(e.value)
    assert "2 of 3 approvals needed in group custodians, got 1" in str(e.value)
    assert str(e.value).startswith(f"{path}: ")


def test_duplicate_approvals_count_once(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "deputy")
    with pytest.raises(InputError, match="has already approved"):
        approve(path, made.policy, key_of(made, "deputy"), custodian=None, now=NOW)
    doc = json.loads(path.read_text())
    doc["approvals"].append(dict(doc["approvals"][0]))  # copied by hand
    path.write_text(json.dumps(doc))
    check = check_approvals(load_order(path), made.policy)
    assert check.approved_by == ("deputy",) and not check.satisfied and not check.problems


def test_enough_approvals_but_too_few_shares(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "director")
    with pytest.raises(
        CustodyError, match=r"too few shares: .*2 of 3 custodians needed in group custodians, got 1"
    ):
        unlock(path, made.policy_path, [share(made, "pref")], hospital="H001", now=NOW)


def test_expired_order(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path, hours=2), "director")
    with pytest.raises(InputError) as e:
        unlock(
            path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW + timedelta(hours=2)
        )
    assert "expired at 2025-03-11T16:46:00Z" in str(e.value)
    assert order_status(load_order(path), made.policy, NOW + timedelta(hours=3))[0] == "expired"
    with pytest.raises(InputError, match="expired"):
        approve(path, made.policy, key_of(made, "pref"), custodian="pref", now=NOW + timedelta(hours=3))


def test_foreign_hospital(made: CeremonyResult, foreign: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "director")
    with pytest.raises(InputError, match="is for hospital H001, not H002"):
        unlock(path, made.policy_path, [share(made, "director")], hospital="H002", now=NOW)
    # an H001 order checked against H002's policy
    with pytest.raises(InputError, match="is for hospital H001, not H002"):
        unlock(path, foreign.policy_path, [share(foreign, "director")], hospital="H002", now=NOW)
    # H002's shares for H001's order and policy: different ceremony
    with pytest.raises(CustodyError):
        unlock(path, made.policy_path, [share(foreign, "director")], hospital="H001", now=NOW)


def test_order_made_under_another_policy(made: CeremonyResult, tmp_path: Path) -> None:
    again = run(tmp_path / "again")  # a second ceremony for the same hospital
    path = approved_by(made, new_order(made, tmp_path / "orders"), "director")
    with pytest.raises(InputError, match="made under another custody policy"):
        unlock(path, again.policy_path, [share(again, "director")], hospital="H001", now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("scope", "all"), ("purpose", "something else"), ("expires_at", "2030-01-01T00:00:00Z")],
)
def test_tampered_body(made: CeremonyResult, tmp_path: Path, field: str, value: str) -> None:
    path = approved_by(made, new_order(made, tmp_path), "director")
    doc = json.loads(path.read_text())
    doc["order"][field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)
    assert "approval by director: signature does not verify" in str(e.value)
    assert order_status(load_order(path), made.policy, NOW)[0] == "invalid"


def test_tampered_recipient_key(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "director")
    doc = json.loads(path.read_text())
    other = RecipientPrivateKey.generate("cryptrec-p256").public
    doc["order"]["recipient_key"] = other.text().strip()
    doc["order"]["recipient_key_fingerprint"] = other.fingerprint
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="signature does not verify"):
        unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)


def test_approval_moved_to_another_custodian(made: CeremonyResult, tmp_path: Path) -> None:
    path = approved_by(made, new_order(made, tmp_path), "deputy")
    doc = json.loads(path.read_text())
    doc["approvals"][0]["custodian"] = "director"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="approval by director: signature does not verify"):
        unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)


def test_approval_by_a_non_custodian_key(made: CeremonyResult, tmp_path: Path) -> None:
    path = new_order(made, tmp_path)
    stranger = SigningKey.generate()
    with pytest.raises(InputError, match=f"key {stranger.public.fingerprint} is not a custodian key"):
        approve(path, made.policy, stranger, custodian="director", now=NOW)
    with pytest.raises(InputError, match="belongs to custodian pref, not director"):
        approve(path, made.policy, key_of(made, "pref"), custodian="director", now=NOW)
    # a signature by a stranger added by hand, under a real or an invented custodian id
    orders = load_order(path)
    for who in ("director", "mallory"):
        signed_at = "2025-03-11T15:00:00Z"
        forged = Approval(
            who,
            stranger.public.fingerprint,
            signed_at,
            stranger.sign(approval_message(orders.order, who, signed_at)),
        )
        write = OrderFile(orders.order, (forged,))
        path.write_bytes(write.to_bytes())
        with pytest.raises(InputError) as e:
            unlock(path, made.policy_path, [share(made, "director")], hospital="H001", now=NOW)
        assert (
            ("not a custodian" in str(e.value)) if who == "mallory" else ("does not verify" in str(e.value))
        )


def test_sign_approval_without_custodian_id(made: CeremonyResult, tmp_path: Path) -> None:
    orders = load_order(new_order(made, tmp_path))
    a = sign_approval(orders, made.policy, key_of(made, "center"), custodian=None, now=NOW)
    assert a.custodian == "center" and a.signed_at == "2025-03-11T14:46:00Z"
    with pytest.raises(InputError, match="no custodian 'nobody'"):
        sign_approval(orders, made.policy, key_of(made, "center"), custodian="nobody", now=NOW)


def test_merge_approvals_from_copies(made: CeremonyResult, tmp_path: Path) -> None:
    path = new_order(made, tmp_path / "main")
    copies = []
    for m in ("pref", "center"):
        (tmp_path / m).mkdir()
        copy = tmp_path / m / path.name
        shutil.copy(path, copy)
        approve(copy, made.policy, key_of(made, m), custodian=m, now=NOW)
        copies.append(copy)
    updated, added = merge_approvals(path, copies, made.policy)
    assert added == 2 and check_approvals(updated, made.policy).satisfied
    assert merge_approvals(path, copies, made.policy)[1] == 0
    other = new_order(made, tmp_path / "other")
    with pytest.raises(InputError, match="not the same release order"):
        merge_approvals(path, [other], made.policy)


def test_list_orders(made: CeremonyResult, tmp_path: Path) -> None:
    a = approved_by(made, new_order(made, tmp_path), "director")
    p = new_order(made, tmp_path)
    e = new_order(made, tmp_path, hours=1)
    (tmp_path / "notes.json").write_text("{}")
    broken = tmp_path / "RO-broken.json"
    broken.write_text(json.dumps({"format": "hakobune-release-order", "version": 1, "order": {}}))
    rows = {r.path: r for r in list_orders(tmp_path, made.policy, NOW + timedelta(hours=2))}
    assert set(rows) == {a, p, e, broken}
    assert rows[broken].status == "invalid" and "wrong fields" in rows[broken].reason
    assert (rows[a].status, rows[p].status, rows[e].status) == ("approved", "pending", "expired")
    assert rows[a].approvals == ("director",) and rows[a].scope == "2 patients"


def test_parse_expires() -> None:
    assert parse_expires("72h", NOW) == NOW + timedelta(hours=72)
    assert parse_expires("3d", NOW) == NOW + timedelta(days=3)
    assert parse_expires("2025-03-12T00:00:00Z", NOW) == datetime(2025, 3, 12, tzinfo=UTC)
    for bad in ("0h", "soon", "2020-01-01T00:00:00Z", "400d"):
        with pytest.raises(ConfigError):
            parse_expires(bad, NOW)


def test_bad_order_files(made: CeremonyResult, tmp_path: Path) -> None:
    path = new_order(made, tmp_path)
    doc = json.loads(path.read_text())
    doc["order"]["extra"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="wrong fields"):
        load_order(path)
    path.write_text("not json")
    with pytest.raises(InputError, match="not JSON"):
        load_order(path)
    with pytest.raises(InputError, match="not found"):
        load_order(tmp_path / "missing.json")
    doc["order"].pop("extra")
    doc["approvals"] = [{"custodian": "x", "key_fingerprint": "", "signed_at": "", "signature": "%%"}]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="malformed"):
        load_order(path)


# --- the CLI ---------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    """Run a release command; its JSON, or its text output."""
    result = CliRunner().invoke(release_app, [*args, "--now", NOW.isoformat()])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout) if "--json" in args else result.output


def test_cli_create_approve_show_list(made: CeremonyResult, tmp_path: Path) -> None:
    orders, audit = tmp_path / "orders", tmp_path / "audit"
    rkey = write_key(tmp_path / "recipient.pub", RECIPIENT.public)
    policy = str(made.policy_path)
    created = invoke(
        "create", "--policy", policy, "--scope", "all", "--purpose", "病院避難", "--recipient", "H777",
        "--recipient-key", str(rkey), "--out", str(orders), "--by", "事務長", "--json", "--audit", str(audit),
    )  # fmt: skip
    assert isinstance(created, dict)
    path = Path(str(created["path"]))
    order = load_order(path).order
    assert order.scope == "all" and order.recipient_name == "H777"
    assert order.body["expires_at"] == "2025-03-14T14:46:00Z"

    shown = invoke("show", str(path), "--policy", policy, "--json")
    assert isinstance(shown, dict) and shown["status"] == "pending"

    for m in ("deputy", "center"):
        done = invoke(
            "approve", str(path), "--key", str(made.out / "custodians" / f"{m}.key"), "--custodian", m,
            "--policy", policy, "--yes", "--json", "--audit", str(audit),
        )  # fmt: skip
        assert isinstance(done, dict) and done["custodian"] == m
    assert done["status"] == "approved"

    shown = invoke("show", str(path), "--policy", policy, "--json")
    assert isinstance(shown, dict)
    assert shown["status"] == "approved" and shown["approved_by"] == ["deputy", "center"]
    assert all(a["valid"] for a in shown["approvals"])
    text = invoke("show", str(path), "--policy", policy)
    assert "approved" in text and order.id in text

    listed = invoke("list", str(orders), "--policy", policy, "--json")
    assert isinstance(listed, list) and [r["status"] for r in listed] == ["approved"]
    assert "approved" in str(invoke("list", str(orders), "--policy", policy))

    entries = [json.loads(line) for line in (audit / "audit.log").read_text().splitlines()]
    assert [e["action"] for e in entries] == ["order.create", "order.approve", "order.approve"]
    assert entries[0]["details"]["order"] == order.id and entries[0]["actor"] == "事務長"
    assert entries[2]["actor"] == "center" and entries[2]["details"]["status"] == "approved"

    unlocked = unlock(
        path, made.policy_path, [share(made, "deputy"), share(made, "pref")], hospital="H001", now=NOW
    )
    assert unlocked.key.public == made.policy.release_key


def test_cli_errors(made: CeremonyResult, tmp_path: Path) -> None:
    rkey = RECIPIENT.public.text().strip()
    base = ["create", "--policy", str(made.policy_path), "--purpose", "p", "--recipient", "H777"]
    r = CliRunner().invoke(release_app, [*base, "--recipient-key", rkey, "--out", str(tmp_path)])
    assert isinstance(r.exception, ConfigError) and "either --scope all or patients" in str(r.exception)
    r = CliRunner().invoke(
        release_app,
        [*base, "--recipient-key", rkey, "--scope", "all", "--patient", "P1", "--out", str(tmp_path)],
    )
    assert isinstance(r.exception, ConfigError)
    r = CliRunner().invoke(
        release_app,
        [*base, "--recipient-key", str(made.release_pub.parent / "custody.json"), "--scope", "all"],
    )
    assert isinstance(r.exception, InputError)

    path = new_order(made, tmp_path)
    stranger = write_key(tmp_path / "stranger.key", SigningKey.generate())
    r = CliRunner().invoke(
        release_app,
        ["approve", str(path), "--key", str(stranger), "--policy", str(made.policy_path), "--yes",
         "--now", NOW.isoformat()],
    )  # fmt: skip
    assert isinstance(r.exception, InputError) and "is not a custodian key" in str(r.exception)
    r = CliRunner().invoke(
        release_app,
        ["approve", str(path), "--key", str(made.out / "custodians" / "pref.key"), "--policy",
         str(made.policy_path), "--now", NOW.isoformat()],
        input="n\n",
    )  # fmt: skip
    assert r.exit_code == 1 and "Approve release order" in r.output
    assert load_order(path).approvals == ()


def test_policy_is_what_the_order_names(made: CeremonyResult) -> None:
    policy: CustodyPolicy = load_policy(made.policy_path)
    assert policy.sha256 == made.policy.sha256
    assert len(base64.b64decode(policy.release_key.text().split(":")[2])) == len(policy.release_key.raw)
