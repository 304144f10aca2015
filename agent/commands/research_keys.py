"""``hakobune agent research-keys``: install the analysis center's public key and the network's linkage key,
turning the research stream on; ``--new-linkage-key`` makes a network's linkage key (the network operator,
once per network)."""

from __future__ import annotations

from pathlib import Path

import typer

from agent.home import home_option
from agent.linkage import generate_linkage_key
from agent.research import install_research_keys
from hakobune.console import console, print_json
from hakobune.errors import ConfigError


def research_keys(
    analysis_key: Path | None = typer.Option(
        None,
        "--analysis-key",
        help="The analysis center's public key (research changesets are sealed to it).",
    ),
    linkage_key: Path | None = typer.Option(
        None, "--linkage-key", help="The network's linkage key (0600), from the network operator."
    ),
    new_linkage_key: Path | None = typer.Option(
        None,
        "--new-linkage-key",
        help="Network operator: create a new linkage key file here (once per network) and stop.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    home: Path = home_option(),
) -> None:
    """Turn the de-identified research stream on: install both keys into the agent home and add the
    research section to agent.toml.  The next sync starts the research stream with a baseline."""
    if new_linkage_key is not None:
        generate_linkage_key(new_linkage_key)
        if json_out:
            print_json({"linkage_key": str(new_linkage_key)})
        else:
            console.print(
                f"new linkage key written to [bold]{new_linkage_key}[/] (0600): give it to every hospital "
                "of the network, never to the analysis center"
            )
        return
    if analysis_key is None or linkage_key is None:
        raise ConfigError("give both --analysis-key and --linkage-key (or --new-linkage-key FILE)")
    installed = install_research_keys(home, analysis_key=analysis_key, linkage_key=linkage_key)
    doc = {
        "analysis_key": str(installed.analysis_key),
        "analysis_fingerprint": installed.analysis_fingerprint,
        "linkage_key": str(installed.linkage_key),
        "config_updated": installed.config_updated,
    }
    if json_out:
        print_json(doc)
        return
    console.print(
        f"research stream on: sealed to analysis key [bold]{installed.analysis_fingerprint}[/]; "
        f"linkage key {installed.linkage_key}"
    )
