"""Which stored changesets rebuild a hospital's current state: the newest baseline and the unbroken run of
changesets after it.

The center (or its mirror) keeps every changeset of a hospital's stream in one folder.  Restore needs only
the newest baseline and what followed: a baseline holds the whole state, so anything older is history.  A
missing or foreign link after the baseline ends the run there; what lies beyond it cannot be applied
safely and is reported, not guessed at.  Only headers are read here; the replay verifies every file in
full before it trusts a byte of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hakobune.errors import InputError
from hakobune.naming import Stream
from hakobune.sealed import Incomplete, SealedFile, read_header


@dataclass(frozen=True)
class ChainPlan:
    store: Path
    hospital: str
    stream: Stream
    #: Baseline first, then each following changeset in sequence order.
    files: list[SealedFile]
    #: Stored changesets older than the baseline (not needed).
    older: int = 0
    #: Where the run stopped early: ``(last good sequence, reason)``.
    stopped: tuple[int, str] | None = None
    #: Files in the folder that could not be read as changesets, with the reason.
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def sequence(self) -> int:
        return self.files[-1].header.sequence

    @property
    def head(self) -> str:
        return self.files[-1].hash

    @property
    def newest_created_at(self) -> str:
        """When the agent sealed the newest changeset: how fresh the restored data is (the RPO)."""
        return self.files[-1].header.created_at


def plan_chain(store: Path, hospital: str, stream: Stream = "clinical") -> ChainPlan:
    """The changesets in ``store`` (one hospital's stream folder) that rebuild its newest state."""
    pattern = re.compile(rf"{stream}-(\d{{12}})\.hkcs")
    try:
        names = sorted(p.name for p in store.iterdir() if pattern.fullmatch(p.name))
    except OSError as e:
        raise InputError(str(store), f"cannot list the hospital's store ({e.strerror})") from None
    headers: list[SealedFile] = []
    unreadable: list[tuple[str, str]] = []
    for name in names:
        try:
            sealed = read_header(store / name)
        except (Incomplete, InputError) as e:
            unreadable.append((name, e.reason))
            continue
        h = sealed.header
        if h.hospital != hospital or h.stream != stream:
            unreadable.append((name, f"belongs to {h.hospital}/{h.stream}"))
            continue
        headers.append(sealed)
    baselines = [i for i, s in enumerate(headers) if s.header.kind == "baseline"]
    if not baselines:
        raise InputError(str(store), f"no readable baseline changeset of hospital {hospital} to restore from")
    start = baselines[-1]
    run = [headers[start]]
    stopped: tuple[int, str] | None = None
    for sealed in headers[start + 1 :]:
        last = run[-1].header
        if sealed.header.sequence != last.sequence + 1:
            stopped = (last.sequence, f"sequence {last.sequence + 1} is missing")
            break
        if sealed.header.prev != run[-1].hash:
            stopped = (last.sequence, f"{sealed.path.name} does not chain to sequence {last.sequence}")
            break
        run.append(sealed)
    return ChainPlan(store, hospital, stream, run, older=start, stopped=stopped, unreadable=unreadable)
