"""The key ceremony, shares, share files and key reconstruction (hakobune.custody)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakobune.commands.keys import app as keys_app
from hakobune.custody import (
    _P256_ORDER,
    CeremonyResult,
    CustodyError,
    CustodyPolicy,
    GroupSpec,
    ShareInput,
    ceremony,
    derive_release_key,
    load_policy,
    load_share,
    parse_group_spec,
    parse_mnemonic,
    read_passphrase_file,
    read_share_file,
    read_word_sheet,
    recover_release_key,
)
from hakobune.errors import ConfigError, InputError
from hakobune.keys import SUITES, SuiteName, load_recipient_public, load_signing_key

LOG_N = 4  # tiny scrypt cost: tests must stay fast
GROUPS = ["director:1/1:院長", "custodians:2/3:deputy=副院長,pref=県災害対策本部,center=センター医務官"]
INFO = b"test release"


def specs() -> list[GroupSpec]:
    return [parse_group_spec(g) for g in GROUPS]


def passphrases() -> dict[str, str]:
    return {m.id: f"correct horse {m.id}" for g in specs() for m in g.members}


def run(out: Path, suite: SuiteName = "mlkem768-x25519", hospital: str = "H001") -> CeremonyResult:
    return ceremony(hospital, out, specs(), passphrases(), group_threshold=1, suite=suite, scrypt_log_n=LOG_N)


@pytest.fixture(scope="module", params=SUITES)
def made(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CeremonyResult:
    suite: SuiteName = request.param
    return run(tmp_path_factory.mktemp(suite) / "ceremony", suite)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> CeremonyResult:
    """A second ceremony of the same hospital (another share set)."""
    return run(tmp_path_factory.mktemp("other") / "ceremony")


def mnemonic(result: CeremonyResult, member: str) -> str:
    files = next(c for c in result.custodians if c.custodian.id == member)
    return read_share_file(files.share_file, passphrases()[member])


def test_ceremony_writes_policy_and_files(made: CeremonyResult) -> None:
    out = made.out
    policy = load_policy(out / "custody.json")
    assert policy == made.policy
    assert load_recipient_public(out / "release.pub") == policy.release_key
    assert [(g.name, g.threshold, [m.id for m in g.members]) for g in policy.groups] == [
        ("director", 1, ["院長"]),
        ("custodians", 2, ["deputy", "pref", "center"]),
    ]
    assert [m.name for m in policy.groups[1].members] == ["副院長", "県災害対策本部", "センター医務官"]
    assert (out / "shares" / "custodians-2-pref.share").is_file()
    assert (out / "shares" / "director-1-院長.txt").is_file()
    for c in made.custodians:
        assert load_signing_key(c.signing_key).public == c.custodian.verify_key
    assert made.self_test_combinations == 4  # director; 3 pairs of custodians
    # the private key is written nowhere: no file in the folder holds a private recipient key
    for path in out.rglob("*"):
        if path.is_file():
            assert f"{policy.suite}:private" not in path.read_text(encoding="utf-8")
    assert not list(out.parent.glob(".*partial*"))


def test_secret_files_are_private(made: CeremonyResult) -> None:
    for c in made.custodians:
        for path in (c.share_file, c.word_sheet, c.signing_key):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(c.verify_key.stat().st_mode) == 0o644


def test_word_sheet(made: CeremonyResult) -> None:
    c = next(c for c in made.custodians if c.custodian.id == "pref")
    text = c.word_sheet.read_text(encoding="utf-8")
    for expected in ("H001", "県災害対策本部", "custodians", "2 of 3", made.policy.release_fingerprint):
        assert expected in text
    assert made.policy.sha256 in text
    assert read_word_sheet(c.word_sheet) == mnemonic(made, "pref")
    assert load_share(c.word_sheet).mnemonic == mnemonic(made, "pref")


def test_director_alone_unlocks(made: CeremonyResult) -> None:
    key = recover_release_key(made.policy, [mnemonic(made, "院長")])
    assert key.public == made.policy.release_key
    sealed = load_recipient_public(made.release_pub).seal(b"patient records", INFO)
    assert key.open(sealed, INFO) == b"patient records"


@pytest.mark.parametrize("pair", list(itertools.combinations(["deputy", "pref", "center"], 2)))
def test_any_two_of_three_unlock(made: CeremonyResult, pair: tuple[str, str]) -> None:
    key = recover_release_key(made.policy, [mnemonic(made, m) for m in pair])
    sealed = made.policy.release_key.seal(b"x" * 100, INFO)
    assert key.open(sealed, INFO) == b"x" * 100


def test_extra_and_repeated_shares_are_fine(made: CeremonyResult) -> None:
    everyone = [mnemonic(made, m) for m in ("deputy", "pref", "center", "院長", "pref")]
    assert recover_release_key(made.policy, everyone).public == made.policy.release_key


@pytest.mark.parametrize("member", ["deputy", "pref", "center"])
def test_one_of_three_is_not_enough(made: CeremonyResult, member: str) -> None:
    with pytest.raises(CustodyError) as e:
        recover_release_key(made.policy, [mnemonic(made, member)])
    assert "2 of 3 custodians needed in group custodians, got 1" in str(e.value)
    assert "complete groups: none" in str(e.value)


def test_the_same_share_twice_is_one(made: CeremonyResult) -> None:
    with pytest.raises(CustodyError, match="got 1"):
        recover_release_key(made.policy, [mnemonic(made, "pref"), "  " + mnemonic(made, "pref").upper()])


def test_no_shares(made: CeremonyResult) -> None:
    with pytest.raises(CustodyError, match="too few shares"):
        recover_release_key(made.policy, [])


def test_unknown_word_is_named_by_position(made: CeremonyResult) -> None:
    words = mnemonic(made, "院長").split()
    words[6] = "xylophonez"
    with pytest.raises(CustodyError) as e:
        recover_release_key(made.policy, [" ".join(words)])
    assert str(e.value) == "share #1: word 7 is not a SLIP-39 word; check it against the sheet"


def test_wrong_word_fails_the_checksum(made: CeremonyResult) -> None:
    words = mnemonic(made, "院長").split()
    words[10] = "academic" if words[10] != "academic" else "acid"
    with pytest.raises(CustodyError) as e:
        recover_release_key(made.policy, [mnemonic(made, "pref"), " ".join(words)])
    message = str(e.value)
    assert message.startswith("share #2: checksum does not match")
    assert not any(w in message.split() for w in words)  # never echo the words


def test_missing_word_fails(made: CeremonyResult) -> None:
    words = mnemonic(made, "院長").split()
    with pytest.raises(CustodyError, match="checksum does not match"):
        recover_release_key(made.policy, [" ".join(words[:-1])])


def test_four_letter_prefixes_and_numbering(made: CeremonyResult) -> None:
    words = mnemonic(made, "院長").split()
    typed = "\n".join(f"{i}. {w[:4].upper()}" for i, w in enumerate(words, start=1))
    assert parse_mnemonic(typed) == " ".join(words)
    assert recover_release_key(made.policy, [typed]).public == made.policy.release_key


def test_shares_of_another_ceremony_fail(made: CeremonyResult, other: CeremonyResult) -> None:
    if made.policy.share_set == other.policy.share_set:
        pytest.skip("15-bit share-set identifiers collided")
    with pytest.raises(CustodyError, match="different key ceremony"):
        recover_release_key(made.policy, [mnemonic(other, "院長")])
    with pytest.raises(CustodyError, match="different key ceremony"):
        recover_release_key(made.policy, [mnemonic(made, "pref"), mnemonic(other, "center")])


def test_key_not_matching_the_policy_fails(made: CeremonyResult, other: CeremonyResult) -> None:
    # a policy whose share set matches the other ceremony's shares, but with this release key
    forged = dataclasses.replace(made.policy, share_set=other.policy.share_set, suite=other.policy.suite)
    forged = dataclasses.replace(forged, release_key=made.policy.release_key)
    with pytest.raises(CustodyError) as e:
        recover_release_key(forged, [mnemonic(other, "院長")])
    assert f"different key than the release key {made.policy.release_fingerprint}" in str(e.value)


def test_share_of_another_hospital_fails(tmp_path: Path, made: CeremonyResult) -> None:
    foreign = run(tmp_path / "h2", hospital="H002")
    f = next(c for c in foreign.custodians if c.custodian.id == "院長").share_file
    with pytest.raises(InputError, match="share file is for hospital H002, not H001"):
        read_share_file(f, passphrases()["院長"], hospital="H001")
    share = load_share(f, passphrases()["院長"])
    with pytest.raises(CustodyError, match="share is for hospital H002, not H001"):
        recover_release_key(made.policy, [share])


def test_wrong_share_file_passphrase_names_the_file(made: CeremonyResult) -> None:
    f = made.custodians[1].share_file
    with pytest.raises(InputError) as e:
        read_share_file(f, "not the passphrase")
    assert str(e.value) == f"{f}: wrong passphrase for this share file (or the file was altered)"


def test_share_file_passphrase_is_nfkc(made: CeremonyResult) -> None:
    f = next(c for c in made.custodians if c.custodian.id == "deputy").share_file
    full_width = "ｃｏｒｒｅｃｔ　ｈｏｒｓｅ　ｄｅｐｕｔｙ"
    assert read_share_file(f, full_width) == mnemonic(made, "deputy")


def test_altered_share_file_header_fails(tmp_path: Path, made: CeremonyResult) -> None:
    src = made.custodians[0].share_file
    doc = json.loads(src.read_text())
    assert doc["kdf"]["name"] == "scrypt" and doc["cipher"]["name"] == "aes-256-gcm"
    assert (doc["kdf"]["n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (2**LOG_N, 8, 1)
    assert doc["hospital"] == "H001" and doc["member"] == "院長"
    doc["member"] = "deputy"
    altered = tmp_path / "altered.share"
    altered.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="wrong passphrase for this share file"):
        read_share_file(altered, passphrases()["院長"])
    altered.write_text("{}")
    with pytest.raises(InputError, match="not a Hakobune share file"):
        read_share_file(altered, "whatever!")


def test_share_file_needs_a_passphrase(made: CeremonyResult) -> None:
    with pytest.raises(InputError, match="needs its passphrase"):
        load_share(made.custodians[0].share_file)


def test_reprs_hold_no_secrets(made: CeremonyResult) -> None:
    key = recover_release_key(made.policy, [mnemonic(made, "院長")])
    share = ShareInput(mnemonic(made, "院長"), "here")
    assert key.raw.hex() not in repr(key)
    assert mnemonic(made, "院長").split()[5] not in repr(share).split()


def test_derivation() -> None:
    master = bytes(range(32))
    a = derive_release_key(master, "mlkem768-x25519", "H001")
    assert a == derive_release_key(master, "mlkem768-x25519", "H001")
    assert len(a.raw) == 96
    assert derive_release_key(master, "mlkem768-x25519", "H002") != a
    p = derive_release_key(master, "cryptrec-p256", "H001")
    assert 1 <= int.from_bytes(p.raw, "big") < _P256_ORDER
    assert p.public.suite == "cryptrec-p256"
    with pytest.raises(CustodyError):
        derive_release_key(b"short", "cryptrec-p256", "H001")


def test_group_specs() -> None:
    g = parse_group_spec("custodians:2/3:副院長,県災害対策本部,センター医務官")
    assert (g.name, g.threshold) == ("custodians", 2)
    assert (g.members[0].id, g.members[0].name) == ("副院長", "副院長")
    assert [m.id for m in parse_group_spec("ops:2/2").members] == ["ops-1", "ops-2"]
    for bad in ("x:3/2", "x:0/1", "x:1/3", "x:2/3:a,b", "x2/3", "x:2/17"):
        with pytest.raises(ConfigError):
            parse_group_spec(bad)


@pytest.mark.parametrize(
    ("groups", "threshold", "message"),
    [
        (["a:1/1:x", "b:1/1:x"], 1, "two custodians have the id x"),
        (["a:1/1", "a:2/2"], 1, "two groups have the same name"),
        (["a:1/1"], 2, "--group-threshold 2"),
    ],
)
def test_bad_ceremony_plans(tmp_path: Path, groups: list[str], threshold: int, message: str) -> None:
    gs = [parse_group_spec(g) for g in groups]
    pw = {m.id: "long enough passphrase" for g in gs for m in g.members}
    with pytest.raises(ConfigError, match=message):
        ceremony("H001", tmp_path / "c", gs, pw, group_threshold=threshold, scrypt_log_n=LOG_N)
    assert not (tmp_path / "c").exists()


def test_ceremony_refuses_short_passphrases_and_existing_output(tmp_path: Path) -> None:
    pw = passphrases() | {"pref": "short"}
    with pytest.raises(ConfigError, match="passphrase for pref is too short"):
        ceremony("H001", tmp_path / "c", specs(), pw, scrypt_log_n=LOG_N)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "something").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run(tmp_path / "c")


def test_two_groups_both_needed(tmp_path: Path) -> None:
    gs = [parse_group_spec("hospital:2/2:a,b"), parse_group_spec("prefecture:1/1:c")]
    pw = {m.id: "long enough passphrase" for g in gs for m in g.members}
    r = ceremony("H001", tmp_path / "c", gs, pw, group_threshold=2, suite="cryptrec-p256", scrypt_log_n=LOG_N)
    share = {c.custodian.id: read_share_file(c.share_file, pw[c.custodian.id]) for c in r.custodians}
    assert recover_release_key(r.policy, list(share.values())).public == r.policy.release_key
    with pytest.raises(CustodyError) as e:
        recover_release_key(r.policy, [share["a"], share["b"]])
    assert "1 of 1 custodians needed in group prefecture, got 0" in str(e.value)
    assert "complete groups: hospital (2 of 2 groups needed)" in str(e.value)


def test_passphrase_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(
        "# ceremony\n院長 = first passphrase\n副院長=second one!\npref=third one!\ncenter=fourth one\n"
    )
    os.chmod(f, 0o600)
    got = read_passphrase_file(f, specs())
    assert got == {
        "院長": "first passphrase",
        "deputy": "second one!",
        "pref": "third one!",
        "center": "fourth one",
    }
    os.chmod(f, 0o644)
    with pytest.raises(InputError, match="readable by others"):
        read_passphrase_file(f, specs())
    f.write_text("院長=first passphrase\n")
    os.chmod(f, 0o600)
    with pytest.raises(InputError, match="no passphrase for deputy, pref, center"):
        read_passphrase_file(f, specs())


def test_cli_ceremony(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("".join(f"{k}={v}\n" for k, v in passphrases().items()))
    os.chmod(pw, 0o600)
    args = ["ceremony", "--hospital", "H001", "--out", str(tmp_path / "c"), "--suite", "cryptrec-p256"]
    for g in GROUPS:
        args += ["--group", g]
    args += ["--group-threshold", "1", "--passphrase-file", str(pw), "--scrypt-log-n", str(LOG_N)]
    result = CliRunner().invoke(keys_app, [*args, "--json", "--audit", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    policy: CustodyPolicy = load_policy(tmp_path / "c" / "custody.json")
    assert doc["policy_sha256"] == policy.sha256
    assert doc["release_key_fingerprint"] == policy.release_fingerprint
    assert doc["self_test"] == {"ok": True, "combinations": 4}
    assert len(doc["custodians"]) == 4
    for secret in passphrases().values():
        assert secret not in result.output
    entries = [json.loads(line) for line in (tmp_path / "audit" / "audit.log").read_text().splitlines()]
    assert [e["action"] for e in entries] == ["ceremony"]
    assert entries[0]["hospital"] == "H001"
    assert entries[0]["details"]["release_key_fingerprint"] == policy.release_fingerprint

    again = CliRunner().invoke(keys_app, args)
    assert isinstance(again.exception, ConfigError)
    assert "not empty" in str(again.exception)


def test_cli_ceremony_prompts(tmp_path: Path) -> None:
    typed = "".join(f"{p}\n{p}\n" for p in passphrases().values())
    args = ["ceremony", "--hospital", "H001", "--out", str(tmp_path / "c"), "--scrypt-log-n", str(LOG_N)]
    for g in GROUPS:
        args += ["--group", g]
    result = CliRunner().invoke(keys_app, args, input=typed)
    assert result.exit_code == 0, result.output
    assert "ceremony complete" in result.output
    assert "correct horse" not in result.output


def test_cli_policy(made: CeremonyResult) -> None:
    result = CliRunner().invoke(keys_app, ["policy", str(made.policy_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["policy_sha256"] == made.policy.sha256
    assert [c["id"] for c in doc["custodians"]] == ["院長", "deputy", "pref", "center"]
    text = CliRunner().invoke(keys_app, ["policy", str(made.policy_path)])
    assert made.policy.sha256 in text.output and "2 of 3" in text.output
