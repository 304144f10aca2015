"""``hakobune keys …``: the release-key ceremony (hospital director and custodians, with center staff)."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer
from rich.table import Table

from hakobune.audit import record as audit_record
from hakobune.console import console, print_json
from hakobune.custody import (
    DEFAULT_SCRYPT_LOG_N,
    MIN_PASSPHRASE,
    GroupSpec,
    check_groups,
    load_policy,
    parse_group_spec,
    read_passphrase_file,
)
from hakobune.custody import ceremony as run_ceremony
from hakobune.errors import ConfigError
from hakobune.keys import DEFAULT_SUITE, check_suite

app = typer.Typer(no_args_is_help=True, help="Release-key ceremony (hospital director, custodians).")


@app.callback()
def _keys() -> None:
    """Release-key ceremony (hospital director, custodians)."""


def _prompt_passphrases(groups: list[GroupSpec]) -> dict[str, str]:
    out: dict[str, str] = {}
    console.print(
        f"Each custodian now types a passphrase for their share file (at least {MIN_PASSPHRASE} "
        "characters; nobody else should watch)."
    )
    for g in groups:
        for m in g.members:
            out[m.id] = typer.prompt(
                f"Passphrase for {m.name} ({g.name})", hide_input=True, confirmation_prompt=True
            )
    return out


@app.command()
def ceremony(
    hospital: str = typer.Option(..., "--hospital", help="Hospital ID."),
    out: Path = typer.Option(..., "--out", help="Folder to create (must not exist or be empty)."),
    group: list[str] = typer.Option(
        ...,
        "--group",
        help="NAME:T/N[:member,member,...] (a member may be id=name); repeat per group.",
    ),
    group_threshold: int = typer.Option(1, "--group-threshold", help="How many groups must be complete."),
    suite: str = typer.Option(DEFAULT_SUITE, "--suite", help="mlkem768-x25519 or cryptrec-p256."),
    passphrase_file: Path | None = typer.Option(
        None, "--passphrase-file", help="Lines member=passphrase (mode 0600); else each is prompted."
    ),
    scrypt_log_n: int = typer.Option(DEFAULT_SCRYPT_LOG_N, "--scrypt-log-n", hidden=True),
    audit: Path | None = typer.Option(None, "--audit", help="Audit log folder to record the ceremony in."),
    by: str = typer.Option("", "--by", help="Who runs the ceremony (for the audit log; default: $USER)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create the hospital's release key and split it among custodians.

    Writes release.pub (for the agent), custody.json (the public policy), per custodian a word sheet and a
    passphrase-protected share file (shares/) and an order-signing key (custodians/).  The release private
    key is never written.  Example: --group director:1/1:院長 --group
    custodians:2/3:副院長,県災害対策本部,センター医務官 --group-threshold 1 (the director alone, or any 2 of
    the 3 others)."""
    groups = [parse_group_spec(g) for g in group]
    check_groups(groups, group_threshold)
    if not 1 <= scrypt_log_n <= 20:
        raise ConfigError("--scrypt-log-n must be between 1 and 20")
    if passphrase_file is not None:
        passphrases = read_passphrase_file(passphrase_file, groups)
    else:
        passphrases = _prompt_passphrases(groups)
    result = run_ceremony(
        hospital,
        out,
        groups,
        passphrases,
        group_threshold=group_threshold,
        suite=check_suite(suite),
        scrypt_log_n=scrypt_log_n,
    )
    policy = result.policy
    audit_record(
        audit,
        "ceremony",
        actor=by or getpass.getuser(),
        hospital=policy.hospital,
        details={
            "suite": policy.suite,
            "release_key_fingerprint": policy.release_fingerprint,
            "policy_sha256": policy.sha256,
            "share_set": policy.share_set,
            "group_threshold": policy.group_threshold,
            "groups": [
                {"group": g.name, "threshold": g.threshold, "members": len(g.members)} for g in policy.groups
            ],
            "custodian_keys": [m.verify_key.fingerprint for m in policy.custodians],
        },
    )
    if json_out:
        print_json(result.doc())
        return
    console.print(f"[bold green]ceremony complete[/] for [bold]{policy.hospital}[/] in {result.out}")
    console.print(f"release key ({policy.suite}) fingerprint: [bold]{policy.release_fingerprint}[/]")
    console.print(f"custody policy: {result.policy_path}  sha256 {policy.sha256}", soft_wrap=True)
    console.print(f"rule: {policy.rule_text()}")
    t = Table()
    for column in ("custodian", "group", "share", "word sheet / share file", "signing key"):
        t.add_column(column, overflow="fold")
    for c in result.custodians:
        t.add_row(
            f"{c.custodian.name} ({c.custodian.id})",
            c.custodian.group,
            f"{c.custodian.n}",
            f"{c.word_sheet.name}\n{c.share_file.name}",
            c.signing_key.name,
        )
    console.print(t)
    console.print(f"self-test: {result.self_test_combinations} share combinations rebuilt the key ✔")
    console.print(
        "next: print each word sheet, give every custodian their sheet, .share file and .key; "
        f"give {result.release_pub} to the agent; keep custody.json at the hospital and the center; "
        "then erase shares/ and custodians/*.key from this machine (docs/runbooks/release.md).",
        soft_wrap=True,
    )


@app.command()
def policy(
    path: Path = typer.Argument(..., help="custody.json"),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Show a custody policy: hospital, release key fingerprint, SHA-256 (compare with the word sheets),
    rule and custodians."""
    p = load_policy(path)
    if json_out:
        print_json(
            {
                "hospital": p.hospital,
                "suite": p.suite,
                "release_key_fingerprint": p.release_fingerprint,
                "policy_sha256": p.sha256,
                "rule": p.rule_text(),
                "share_set": p.share_set,
                "created_at": p.created_at,
                "custodians": [
                    {"id": c.id, "group": c.group, "n": c.n, "fingerprint": c.verify_key.fingerprint}
                    for c in p.custodians
                ],
            }
        )
        return
    console.print(f"hospital [bold]{p.hospital}[/], created {p.created_at}")
    console.print(f"release key ({p.suite}) fingerprint: {p.release_fingerprint}")
    console.print(f"policy sha256: [bold]{p.sha256}[/]", soft_wrap=True)
    console.print(f"rule: {p.rule_text()}")
    for c in p.custodians:
        console.print(f"  {c.group} {c.n}: {c.name} ({c.id}) key {c.verify_key.fingerprint}")
