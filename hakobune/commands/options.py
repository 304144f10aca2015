"""Command-line options that several roles' commands share (restore, media): the audit log and the actor
recorded in it."""

from __future__ import annotations

import getpass
from typing import Any

import typer

AUDIT_ENVVAR = "HAKOBUNE_AUDIT"


def audit_option() -> Any:
    return typer.Option(..., "--audit", envvar=AUDIT_ENVVAR, help=f"Audit log folder. Env: {AUDIT_ENVVAR}.")


def actor_option() -> Any:
    return typer.Option(getpass.getuser(), "--actor", help="Who runs this (recorded in the audit log).")
