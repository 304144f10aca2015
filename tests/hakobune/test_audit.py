"""The audit log: the worked vector of docs/audit.md, RFC 6962 hashing and proofs, every tamper case,
concurrent appends, key files, the FHIR AuditEvent export and the CLI."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hakobune.audit import (
    ACTIONS,
    EMPTY_ROOT,
    HEAD_FILE,
    HEADS_FILE,
    KEY_FILE,
    LOG_FILE,
    PUB_FILE,
    TOKEN_FILE,
    AuditEntry,
    AuditError,
    AuditLog,
    SignedHead,
    _Frontier,
    consistency_proof,
    export_fhir,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    to_audit_event,
    verify_consistency,
    verify_inclusion,
    verify_log,
)
from hakobune.commands.audit import app
from hakobune.errors import InputError
from hakobune.keys import SigningKey, write_key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
HOSPITAL = "1310000001"
T0 = datetime(2025, 4, 1, tzinfo=UTC)


def ticking(start: datetime = T0) -> Callable[[], datetime]:
    """A clock that advances five minutes per call."""
    state = {"t": start - timedelta(minutes=5)}

    def now() -> datetime:
        state["t"] += timedelta(minutes=5)
        return state["t"]

    return now


def make_log(directory: Path, n: int, *, sign: bool = True) -> list[AuditEntry]:
    with AuditLog.open(directory, clock=ticking()) as log:
        entries = [
            log.append(
                ACTIONS[i % len(ACTIONS)],
                actor=f"user{i % 3}",
                hospital=HOSPITAL,
                details={"patients": i, "order": f"ord-{i:04d}"},
            )
            for i in range(n)
        ]
        if sign:
            log.sign_head()
    return entries


def lines(directory: Path) -> list[bytes]:
    return (directory / LOG_FILE).read_bytes().splitlines()


def write_lines(directory: Path, items: list[bytes]) -> None:
    (directory / LOG_FILE).write_bytes(b"".join(x + b"\n" for x in items))


def edit(line: bytes, **changes: object) -> bytes:
    doc = orjson.loads(line)
    doc.update(changes)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def rechain(items: list[bytes]) -> list[bytes]:
    """What an attacker does after editing: renumber and relink every entry so the chain is intact."""
    out, prev = [], "0" * 64
    for seq, line in enumerate(items):
        fixed = edit(line, seq=seq, prev=prev)
        out.append(fixed)
        prev = hashlib.sha256(b"\x00" + fixed).hexdigest()
    return out


def resign_heads(directory: Path) -> None:
    """An attacker holding audit.key throws the heads away and signs the rewritten log afresh."""
    (directory / HEADS_FILE).write_bytes(b"")
    (directory / HEAD_FILE).unlink()
    with AuditLog.open(directory) as log:
        log.sign_head()


def problems(directory: Path, **kw: object) -> list[str]:
    report = verify_log(directory, **kw)  # type: ignore[arg-type]
    assert report.ok == (not report.problems)
    return report.problems


# --- the worked vector of docs/audit.md -------------------------------------------------------------------

VECTOR_LINES = [
    b'{"action":"ceremony","actor":"director","details":{"custodians":3,"threshold":2},'
    b'"hospital":"1310000001","prev":"0000000000000000000000000000000000000000000000000000000000000000",'
    b'"seq":0,"time":"2025-04-01T00:00:00.000000Z","v":1}',
    b'{"action":"unlock","actor":"deputy","details":{"order":"ord-0001","patients":12},'
    b'"hospital":"1310000001","prev":"09beecdcf034d752d39ea1c97bc74bda4c8995229770eaf88c42bdcc0015e0b7",'
    b'"seq":1,"time":"2025-04-01T00:05:00.000000Z","v":1}',
]
VECTOR_LEAVES = [
    "09beecdcf034d752d39ea1c97bc74bda4c8995229770eaf88c42bdcc0015e0b7",
    "cc27009c7a14f237ce8c5a6dee48670d2126f0dde6241e03a930f07a310b44e9",
]
VECTOR_ROOT = "67c0750432ccc8f651f89b6a66c43f8b9bd5810ea4dd1db7ab3202642aeb68fa"


def test_worked_vector(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log", clock=ticking()) as log:
        log.append("ceremony", actor="director", hospital=HOSPITAL, details={"threshold": 2, "custodians": 3})
        log.append("unlock", actor="deputy", hospital=HOSPITAL, details={"patients": 12, "order": "ord-0001"})
        assert log.root().hex() == VECTOR_ROOT
    assert (tmp_path / "log" / LOG_FILE).read_bytes() == b"".join(x + b"\n" for x in VECTOR_LINES)
    # independently of the module: RFC 6962 with hashlib only
    leaves = [hashlib.sha256(b"\x00" + x).digest() for x in VECTOR_LINES]
    assert [x.hex() for x in leaves] == VECTOR_LEAVES
    assert hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).hexdigest() == VECTOR_ROOT
    # the document shows the same bytes and hashes
    doc = DOCS.read_text(encoding="utf-8")
    for text in [*(x.decode() for x in VECTOR_LINES), *VECTOR_LEAVES, VECTOR_ROOT]:
        assert text in doc


# --- RFC 6962 hashing and proofs ------------------------------------------------------------------------

CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_certificate_transparency_vectors() -> None:
    leaves = [leaf_hash(x) for x in CT_LEAVES]
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    frontier = _Frontier()
    for n in range(1, 9):
        frontier.add(leaves[n - 1])
        assert merkle_root(leaves[:n]).hex() == CT_ROOTS[n - 1]
        assert frontier.root().hex() == CT_ROOTS[n - 1]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n))))
def test_proofs(args: tuple[int, int, int]) -> None:
    n, index, old = args
    leaves = _leaves(n)
    root = merkle_root(leaves)
    path = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], index, n, path, root)
    assert not verify_inclusion(leaf_hash(b"other"), index, n, path, root)
    if n > 1:
        assert not verify_inclusion(leaves[index], (index + 1) % n, n, path, root)
    if path:
        bad = [*path[:-1], hashlib.sha256(path[-1]).digest()]
        assert not verify_inclusion(leaves[index], index, n, bad, root)

    old_root = merkle_root(leaves[:old])
    proof = consistency_proof(leaves, old)
    assert verify_consistency(old, n, old_root, root, proof)
    if 0 < old < n:
        assert not verify_consistency(old, n, hashlib.sha256(old_root).digest(), root, proof)
        assert not verify_consistency(old, n, old_root, hashlib.sha256(root).digest(), proof)
        assert not verify_consistency(old, n, old_root, root, proof[:-1])
        # a rewritten history is not consistent with the old head
        rewritten = [*leaves[: old - 1], leaf_hash(b"rewritten"), *leaves[old:]]
        assert not verify_consistency(
            old, n, old_root, merkle_root(rewritten), consistency_proof(rewritten, old)
        )


def test_log_proofs(tmp_path: Path) -> None:
    entries = make_log(tmp_path / "log", 11)
    with AuditLog.open(tmp_path / "log") as log:
        head = SignedHead.decode((tmp_path / "log" / HEAD_FILE).read_bytes().strip(), "head.json")
        root = bytes.fromhex(head.root)
        for e in entries:
            assert verify_inclusion(e.leaf, e.seq, head.size, log.inclusion_proof(e.seq), root)
        old = log.root(5)
        assert verify_consistency(5, 11, old, root, log.consistency_proof(5))


# --- opening, keys, appending ---------------------------------------------------------------------------


def test_open_creates_private_files(tmp_path: Path) -> None:
    d = tmp_path / "a" / "log"
    with AuditLog.open(d) as log:
        key = log.public_key
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((d / TOKEN_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((d / LOG_FILE).stat().st_mode) == 0o600
    assert (d / PUB_FILE).read_text().startswith("ed25519:public:")
    with AuditLog.open(d) as again:  # reopening keeps the key
        assert again.public_key == key
    os.chmod(d / KEY_FILE, 0o640)
    with pytest.raises(InputError, match="readable by others"):
        AuditLog.open(d)


def test_open_refuses_replaced_pub_and_lost_key(tmp_path: Path) -> None:
    d = tmp_path / "log"
    make_log(d, 2)
    (d / PUB_FILE).unlink()
    write_key(d / PUB_FILE, SigningKey.generate().public)
    with pytest.raises(InputError, match="not the public half"):
        AuditLog.open(d)
    (d / PUB_FILE).unlink()
    (d / KEY_FILE).unlink()
    with pytest.raises(InputError, match="missing, but the log has entries"):
        AuditLog.open(d)


def test_append_and_verify(tmp_path: Path) -> None:
    d = tmp_path / "log"
    entries = make_log(d, 5, sign=False)
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0].prev == "0" * 64
    assert all(b.prev == a.hash for a, b in itertools.pairwise(entries))
    assert lines(d) == [e.encode() for e in entries]
    assert [AuditEntry.decode(x, "t") for x in lines(d)] == entries
    report = verify_log(d)
    assert report.ok, report.problems
    assert (report.entries, report.heads, report.signed) == (5, 0, 0)
    with AuditLog.open(d) as log:
        head = log.sign_head()
        assert head.verify(log.public_key)
        assert head.size == 5 and head.root == merkle_root([e.leaf for e in entries]).hex()
        log.append("search", actor="x")
    report = verify_log(d)
    assert report.ok, report.problems
    assert (report.entries, report.heads, report.signed) == (6, 2, 5)  # heads.log + head.json
    assert SignedHead.decode((d / HEAD_FILE).read_bytes().strip(), "h") == head


def test_empty_log_head(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        head = log.sign_head()
    assert (head.size, head.root) == (0, EMPTY_ROOT.hex())
    assert verify_log(tmp_path / "log").ok


def test_closed_log_refuses(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "log")
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.append("search", actor="x")


@pytest.mark.parametrize(
    ("details", "match"),
    [
        ({"patient_name": "山田 太郎"}, "patient data"),
        ({"query": {"Address": "x"}}, "patient data"),
        ({"hits": [{"patient-id": "123"}]}, "patient data"),
        ({"at": datetime.now(UTC)}, "not a JSON value"),
        ({"ratio": float("nan")}, "finite"),
        ({1: "x"}, "not a string"),
    ],
)
def test_details_refused(tmp_path: Path, details: dict[object, object], match: str) -> None:
    with AuditLog.open(tmp_path / "log") as log, pytest.raises(ValueError, match=match):
        log.append("search", actor="x", details=details)  # type: ignore[arg-type]
    assert lines(tmp_path / "log") == []


@pytest.mark.parametrize("action", ["", "has space", "x" * 65, "line\nbreak"])
def test_bad_action(tmp_path: Path, action: str) -> None:
    with AuditLog.open(tmp_path / "log") as log, pytest.raises(ValueError, match="action"):
        log.append(action, actor="x")


def test_patient_token(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "a") as a, AuditLog.open(tmp_path / "b") as b:
        t = a.patient_token(HOSPITAL, "0000123456")
        assert t == a.patient_token(HOSPITAL, "0000123456")
        assert t.startswith("pt1:") and len(t) == 36
        assert t != a.patient_token("1310000002", "0000123456")
        assert t != b.patient_token(HOSPITAL, "0000123456")  # per-log secret
        assert "0000123456" not in t
        entry = a.append("search", actor="dr", hospital=HOSPITAL, details={"patient_tokens": [t]})
    assert entry.details == {"patient_tokens": [t]}


def test_tuple_details_are_stored_as_written(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log:
        entry = log.append("export", actor="x", details={"ids": ("a", "b"), "n": 2})
    assert entry.details == {"ids": ["a", "b"], "n": 2}
    assert AuditEntry.decode(lines(tmp_path / "log")[0], "t") == entry


# --- tampering --------------------------------------------------------------------------------------------


@pytest.fixture
def log8(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    make_log(d, 8)
    return d


def test_edited_entry(log8: Path) -> None:
    items = lines(log8)
    items[3] = edit(items[3], actor="somebody-else")
    write_lines(log8, items)
    found = problems(log8)
    assert any(f"{LOG_FILE}:5: prev does not match the hash of line 4" in p for p in found)
    assert any("history rewritten" in p for p in found)


def test_edited_last_entry_is_caught_by_the_head(log8: Path) -> None:
    items = lines(log8)
    items[-1] = edit(items[-1], details={"patients": 0})
    write_lines(log8, items)
    assert any("root does not match the log's first 8 entries" in p for p in problems(log8))


def test_edited_and_rechained(log8: Path) -> None:
    items = lines(log8)
    items[2] = edit(items[2], hospital="1310000009")
    write_lines(log8, rechain(items))
    found = problems(log8)
    assert found and all("history rewritten" in p for p in found)


def test_removed_middle_entry(log8: Path) -> None:
    items = lines(log8)
    del items[4]
    write_lines(log8, items)
    found = problems(log8)
    assert any(f"{LOG_FILE}:5: seq is 5, expected 4" in p for p in found)
    assert any(f"{LOG_FILE}:5: prev does not match" in p for p in found)


def test_removed_last_entry(log8: Path) -> None:
    write_lines(log8, lines(log8)[:-1])
    found = problems(log8)
    assert any("head covers 8 entries but the log has 7" in p for p in found)


def test_truncation_resigned_is_caught_by_a_copied_head(log8: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror-head.json"
    shutil.copy(log8 / HEAD_FILE, mirror)
    write_lines(log8, lines(log8)[:-2])
    resign_heads(log8)  # the attacker holds audit.key and re-signs the shorter log
    assert verify_log(log8).ok  # undetectable from the log alone …
    found = problems(log8, heads=[mirror])  # … but not against the mirror's copy
    assert found == [f"{mirror}:1: head covers 8 entries but the log has 6 (entries removed from the end?)"]


def test_rewrite_resigned_is_caught_by_a_copied_head(log8: Path, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror-heads.log"
    shutil.copy(log8 / HEADS_FILE, mirror)
    with AuditLog.open(log8) as log:
        log.append("search", actor="later")
        log.sign_head()
    assert verify_log(log8, heads=[mirror]).ok  # honest growth is consistent with the old heads
    items = lines(log8)
    items[1] = edit(items[1], actor="nobody")
    write_lines(log8, rechain(items))
    resign_heads(log8)
    assert verify_log(log8).ok
    found = problems(log8, heads=[mirror])
    assert found == [f"{mirror}:1: root does not match the log's first 8 entries (history rewritten)"]
    assert verify_log(log8, heads=[mirror]).heads == 3  # the re-signed heads.log + head.json + the copy


def test_replaced_key_is_caught(log8: Path, tmp_path: Path) -> None:
    pinned = tmp_path / "pinned.pub"
    shutil.copy(log8 / PUB_FILE, pinned)
    mirror = tmp_path / "mirror.json"
    shutil.copy(log8 / HEAD_FILE, mirror)
    items = lines(log8)
    items[0] = edit(items[0], actor="nobody")
    write_lines(log8, rechain(items))
    for name in (KEY_FILE, PUB_FILE, HEAD_FILE):
        (log8 / name).unlink()
    (log8 / HEADS_FILE).write_bytes(b"")
    fresh = SigningKey.generate()
    write_key(log8 / KEY_FILE, fresh)
    write_key(log8 / PUB_FILE, fresh.public)
    with AuditLog.open(log8) as log:
        log.sign_head()
    assert verify_log(log8).ok
    from hakobune.keys import load_verify_key

    found = problems(log8, key=load_verify_key(pinned))
    assert any("is not the expected key" in p for p in found)
    assert any("not the log key" in p for p in found)
    assert any(str(mirror) in p and "not the log key" in p for p in problems(log8, heads=[mirror]))


def test_reordered_entries(log8: Path) -> None:
    items = lines(log8)
    items[2], items[5] = items[5], items[2]
    write_lines(log8, items)
    found = problems(log8)
    assert any(f"{LOG_FILE}:3: seq is 5, expected 2" in p for p in found)
    assert any(f"{LOG_FILE}:6: seq is 2, expected 5" in p for p in found)


def test_forged_head(log8: Path) -> None:
    head = orjson.loads((log8 / HEAD_FILE).read_bytes())
    head["head"]["size"] = 3
    (log8 / HEAD_FILE).write_bytes(orjson.dumps(head, option=orjson.OPT_SORT_KEYS) + b"\n")
    found = problems(log8)
    assert found == [
        f"{log8 / HEAD_FILE}:1: head signature does not verify with key {head['head']['key']} (forged?)"
    ]


def test_head_signed_by_another_key(log8: Path, tmp_path: Path) -> None:
    other = SigningKey.generate()
    fake = SignedHead.create(
        other, 8, merkle_root([leaf_hash(x) for x in lines(log8)]), "2025-04-02T00:00:00Z"
    )
    (tmp_path / "fake.json").write_bytes(fake.encode() + b"\n")
    found = problems(log8, heads=[tmp_path / "fake.json"])
    assert len(found) == 1 and "not the log key" in found[0]


def test_broken_chain(log8: Path) -> None:
    items = lines(log8)
    items[6] = edit(items[6], prev="ab" * 32)
    write_lines(log8, items)
    found = problems(log8)
    assert any(f"{LOG_FILE}:7: prev does not match the hash of line 6" in p for p in found)
    assert any(f"{LOG_FILE}:8: prev does not match the hash of line 7" in p for p in found)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty line"),
        (b"[1,2]", "not a JSON object"),
        (b'{"seq":3}', "missing"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_garbled_line(log8: Path, garbage: bytes, reason: str) -> None:
    items = lines(log8)
    items[3] = garbage
    write_lines(log8, items)
    found = problems(log8)
    assert any(p.startswith(f"{log8 / LOG_FILE}:4: ") and reason in p for p in found), found


def test_non_canonical_line(log8: Path) -> None:
    items = lines(log8)
    items[3] = orjson.dumps(orjson.loads(items[3]), option=orjson.OPT_INDENT_2).replace(b"\n", b"")
    write_lines(log8, items)
    assert any(f"{LOG_FILE}:4: entry is not in canonical form" in p for p in problems(log8))


def test_torn_last_line(log8: Path) -> None:
    data = (log8 / LOG_FILE).read_bytes()
    (log8 / LOG_FILE).write_bytes(data[:-20])
    found = problems(log8)
    assert any(f"{LOG_FILE}:8: incomplete line" in p for p in found)
    assert any("head covers 8 entries but the log has 7" in p for p in found)
    with AuditLog.open(log8) as log:
        with pytest.raises(InputError, match="last line is incomplete"):
            log.append("search", actor="x")
        with pytest.raises(AuditError, match="refusing to sign"):
            log.sign_head()


def test_missing_log_and_directory(log8: Path, tmp_path: Path) -> None:
    (log8 / LOG_FILE).unlink()
    found = problems(log8)
    assert any("missing (the whole log was removed?)" in p for p in found)
    assert any("head covers 8 entries but the log has 0" in p for p in found)
    with pytest.raises(InputError, match="not found"):
        verify_log(tmp_path / "nowhere")


def test_garbled_head_file(log8: Path, tmp_path: Path) -> None:
    (tmp_path / "h.json").write_text("hello\n")
    found = problems(log8, heads=[tmp_path / "h.json", tmp_path / "missing.json"])
    assert found[0].startswith(f"{tmp_path / 'h.json'}:1: not a signed audit head")
    assert found[1] == f"{tmp_path / 'missing.json'}: head file not found"


def test_sign_head_refuses_a_tampered_log(log8: Path) -> None:
    items = lines(log8)
    del items[2]
    write_lines(log8, items)
    before = (log8 / HEADS_FILE).read_bytes()
    with AuditLog.open(log8) as log, pytest.raises(AuditError, match="refusing to sign a head"):
        log.sign_head()
    assert (log8 / HEADS_FILE).read_bytes() == before


# --- the property: any single-entry edit, removal or swap is detected ---------------------------------------

N_PROP = 8


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("prop") / "log"
    make_log(d, N_PROP)
    return d


mutations = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, N_PROP - 1), st.sampled_from(["actor", "details", "time"])),
    st.tuples(st.just("remove"), st.integers(0, N_PROP - 1), st.just("")),
    st.tuples(
        st.just("swap"),
        st.tuples(st.integers(0, N_PROP - 1), st.integers(0, N_PROP - 1)).filter(lambda t: t[0] != t[1]),
        st.just(""),
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations, fix_chain=st.booleans(), external=st.booleans())
def test_any_single_change_is_detected(
    base_log: Path, mutation: tuple[str, object, str], fix_chain: bool, external: bool
) -> None:
    kind, where, fieldname = mutation
    items = lines(base_log)
    if kind == "edit":
        assert isinstance(where, int)
        value: object = {"patients": 999} if fieldname == "details" else "2030-01-01T00:00:00.000000Z"
        items[where] = edit(items[where], **{fieldname: "mallory" if fieldname == "actor" else value})
    elif kind == "remove":
        assert isinstance(where, int)
        del items[where]
    else:
        assert isinstance(where, tuple)
        i, j = where
        items[i], items[j] = items[j], items[i]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "log"
        shutil.copytree(base_log, d)
        mirror = Path(tmp) / "mirror.json"
        shutil.copy(d / HEAD_FILE, mirror)
        write_lines(d, rechain(items) if fix_chain or external else items)
        if external:  # the attacker relinks and re-signs; only the mirror's copy is left
            resign_heads(d)
            assert not verify_log(d, heads=[mirror]).ok
        else:
            assert not verify_log(d).ok


# --- concurrency ------------------------------------------------------------------------------------------


def _appender(directory: str, name: str, count: int) -> None:
    with AuditLog.open(Path(directory)) as log:
        for i in range(count):
            log.append("search", actor=name, details={"i": i})


def test_concurrent_appends(tmp_path: Path) -> None:
    d = tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_appender, args=(str(d), f"p{k}", 60)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    report = verify_log(d)
    assert report.ok, report.problems
    assert report.entries == 180
    by_actor: dict[str, list[int]] = {}
    for line in lines(d):
        e = AuditEntry.decode(line, "t")
        by_actor.setdefault(e.actor, []).append(e.details["i"])
    assert by_actor == {f"p{k}": list(range(60)) for k in range(3)}


# --- FHIR -------------------------------------------------------------------------------------------------


def test_audit_events_validate(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with AuditLog.open(d, clock=ticking()) as log:
        entries = [
            log.append(a, actor="dr", hospital=HOSPITAL, details={"patients": 3, "ids": ["x"], "ok": True})
            for a in (*ACTIONS, "custom.action")
        ]
        entries.append(log.append("search", actor="robot"))  # no hospital, no details
    for e in entries:
        event = to_audit_event(e)
        parsed = AuditEvent.model_validate(event).model_dump(mode="json", exclude_none=True)
        assert parsed["id"] == e.hash
        assert parsed["outcome"] == "0"
        assert parsed["recorded"].startswith(e.time[:19])
        assert parsed["agent"][0]["who"]["display"] == e.actor
        assert parsed["source"]["observer"]["display"] == "Hakobune"
        assert parsed["action"] in {"C", "R", "U", "D", "E"}
        assert parsed["subtype"][0]["code"] == e.action
        whats = [x["what"]["identifier"] for x in parsed["entity"]]
        hospitals = [w["value"] for w in whats if w["system"] == "urn:hakobune:hospital"]
        assert hospitals == ([HOSPITAL] if e.hospital else [])
    unlock = to_audit_event(entries[ACTIONS.index("unlock")])
    assert unlock["type"]["code"] == "110113" and unlock["subtype"][1]["code"] == "110127"
    assert to_audit_event(entries[ACTIONS.index("search")])["type"]["code"] == "110112"
    assert to_audit_event(entries[ACTIONS.index("export")])["type"]["code"] == "110106"

    out = tmp_path / "audit.ndjson"
    assert export_fhir(d, out) == len(entries)
    rows = out.read_bytes().splitlines()
    assert len(rows) == len(entries)
    for row, e in zip(rows, entries, strict=True):
        assert AuditEvent.model_validate(orjson.loads(row)).id == e.hash


# --- CLI --------------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli_log(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "log"
    make_log(d, 5, sign=False)
    yield d


def test_cli_head_and_verify(cli_log: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["head", "--log", str(cli_log)])
    assert r.exit_code == 0, r.output
    assert "5 entries" in r.output and HEAD_FILE in r.output
    r = runner.invoke(app, ["head", "--log", str(cli_log), "--json"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout)["head"]["size"] == 5
    copy = tmp_path / "copy.json"
    shutil.copy(cli_log / HEAD_FILE, copy)

    r = runner.invoke(
        app, ["verify", "--log", str(cli_log), "--key", str(cli_log / PUB_FILE), "--head", str(copy)]
    )
    assert r.exit_code == 0, r.output
    assert "audit log OK" in r.output
    r = runner.invoke(app, ["verify", "--log", str(cli_log), "--json"])
    assert r.exit_code == 0
    doc = orjson.loads(r.stdout)
    assert doc["ok"] is True and doc["entries"] == 5 and doc["heads"] == 3

    write_lines(cli_log, lines(cli_log)[:-1])
    r = runner.invoke(app, ["verify", "--log", str(cli_log), "--head", str(copy)])
    assert r.exit_code == 1
    assert "head covers 5 entries but the log has 4" in r.output
    assert "FAILED" in r.output
    r = runner.invoke(app, ["verify", "--log", str(cli_log), "--json"])
    assert r.exit_code == 1 and orjson.loads(r.stdout)["ok"] is False


def test_cli_show_and_export(cli_log: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["show", "--log", str(cli_log), "--json", "--last", "2"])
    assert r.exit_code == 0, r.output
    assert [orjson.loads(x)["seq"] for x in r.stdout.splitlines()] == [3, 4]
    r = runner.invoke(app, ["show", "--log", str(cli_log)])
    assert r.exit_code == 0 and "ceremony" in r.output
    out = tmp_path / "a.ndjson"
    r = runner.invoke(app, ["export-fhir", "--log", str(cli_log), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(out.read_bytes().splitlines()) == 5


def test_details_too_large_for_json(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "log") as log, pytest.raises(ValueError, match="audit details"):
        log.append("search", actor="x", details={"n": 2**70})


def test_unreadable_log_is_a_problem(log8: Path) -> None:
    (log8 / LOG_FILE).unlink()
    (log8 / LOG_FILE).mkdir()  # unreadable as a file, even for root
    assert any("cannot read" in p for p in problems(log8))


def test_cli_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["verify", "--log", str(tmp_path / "nowhere")])
    assert r.exit_code != 0 and isinstance(r.exception, InputError)
    r = runner.invoke(app, ["head", "--log", str(tmp_path / "nowhere")])
    assert isinstance(r.exception, InputError)
    assert not (tmp_path / "nowhere").exists()
