"""``hakobune agent init``: create the agent home: keys, configuration, state database."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from agent.home import home_option
from agent.research import install_research_keys
from agent.setup import init_agent
from hakobune.console import console, print_json
from hakobune.errors import ConfigError
from hakobune.keys import check_suite, load_recipient_public, load_verify_key


def init(
    hospital: str = typer.Option(..., "--hospital", help="The hospital's ID at the center."),
    ssmix2: Path = typer.Option(..., "--ssmix2", help="Root of the SS-MIX2 standardized storage."),
    center: str = typer.Option(
        ..., "--center", help="Where the center's inbox is: sftp://ACCOUNT@HOST:PORT or file:///DIR."
    ),
    release_key: Path | None = typer.Option(
        None, "--release-key", help="The hospital's release public key (from 'hakobune keys ceremony')."
    ),
    center_key: Path | None = typer.Option(None, "--center-key", help="The center's receipt public key."),
    known_hosts: Path | None = typer.Option(
        None, "--known-hosts", help="known_hosts line(s) pinning the center's sshd host key."
    ),
    journal: Path | None = typer.Option(
        None, "--journal", help="Folder of the TR_*.DAT transaction journal."
    ),
    analysis_key: Path | None = typer.Option(
        None, "--analysis-key", help="The analysis center's public key: turns the research stream on."
    ),
    linkage_key: Path | None = typer.Option(
        None, "--linkage-key", help="The network's linkage key (0600, from the network operator)."
    ),
    suite: str = typer.Option(
        "mlkem768-x25519", "--suite", help="mlkem768-x25519 (default) or cryptrec-p256."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print what to send to the center as JSON."),
    home: Path = home_option(),
) -> None:
    """Create the agent's keys and configuration.  Prints the agent's public signing key and SSH key:
    send both to the center operators for 'hakobune center enroll'.  With --analysis-key and
    --linkage-key the de-identified research stream is on from the first sync."""
    if (analysis_key is None) != (linkage_key is None):
        raise ConfigError("--analysis-key and --linkage-key go together (the research stream needs both)")
    cfg, created = init_agent(
        home, hospital=hospital, ssmix2=ssmix2, center_url=center, journal=journal, suite=check_suite(suite)
    )
    for given, target, check in (
        (release_key, cfg.release_key, load_recipient_public),
        (center_key, cfg.center_key, load_verify_key),
    ):
        if given is not None and target is not None:
            check(given)
            shutil.copyfile(given, target)
    if known_hosts is not None and cfg.known_hosts is not None:
        shutil.copyfile(known_hosts, cfg.known_hosts)
    research = None
    if analysis_key is not None and linkage_key is not None:
        research = install_research_keys(home, analysis_key=analysis_key, linkage_key=linkage_key)
    doc = {
        "home": str(home),
        "hospital": cfg.hospital,
        "agent_key": created.signing_public,
        "ssh_key": created.ssh_public,
        "research": research.analysis_fingerprint if research else None,
    }
    if json_out:
        print_json(doc)
        return
    console.print(f"agent home [bold]{home}[/] set up for hospital [bold]{cfg.hospital}[/]")
    console.print("send these to the center operators ('hakobune center enroll'):")
    console.print(f"  agent key: {created.signing_public}", soft_wrap=True)
    console.print(f"  ssh key:   {created.ssh_public}", soft_wrap=True)
    if research is not None:
        console.print(f"research stream on: sealed to analysis key {research.analysis_fingerprint}")
