"""``hakobune agent …``: one module per command under :mod:`agent.commands`; this file only lists them.
Each is imported when it runs (:class:`hakobune.cli.LazyGroup`), so a daily ``agent sync`` does not load
the daemon's scheduler, the conformance check or the setup code."""

from __future__ import annotations

import typer

from hakobune.cli import Lazy, lazy_group

#: The agent's commands, in the order help lists them.
COMMANDS: dict[str, Lazy] = {
    "check": Lazy(
        "agent.commands.check",
        "check",
        "Report what a sync would read: files and patients by data type, date range, and every file it "
        "would quarantine, with the reason.",
    ),
    "init": Lazy("agent.commands.init", "init", "Create the agent's keys and configuration."),
    "sync": Lazy(
        "agent.commands.sync",
        "sync",
        "One sync: find the day's changes, seal a changeset into the outbox, upload what is pending and "
        "collect receipts.",
    ),
    "confirm": Lazy(
        "agent.commands.sync",
        "confirm",
        "Confirm the day the attack guard held back: the next sync sends it.",
    ),
    "status": Lazy(
        "agent.commands.status",
        "status",
        "Show the last receipt, the pending outbox, held days, quarantined files and errors.",
    ),
    "run": Lazy(
        "agent.commands.run",
        "run",
        "Run the agent: daily sync (and near-real-time sync when watching), until stopped.",
    ),
    "research-keys": Lazy(
        "agent.commands.research_keys",
        "research_keys",
        "Turn the de-identified research stream on: install both keys into the agent home and add the "
        "research section to agent.toml.",
    ),
    "consent": Lazy(
        "agent.commands.consent", "app", "Patients' opt-outs (consent CSV import, set, remove, list, show)."
    ),
}

app = typer.Typer(
    cls=lazy_group(COMMANDS),
    no_args_is_help=True,
    help="Hospital side: read SS-MIX2, consent, sync (hospital IT).",
)


@app.callback()
def _agent() -> None:
    """Hospital side: read SS-MIX2, consent, sync (hospital IT)."""
