"""Types of the compiled walk of a patient folder (agent/ssmix2/_fastwalk.c); see agent.ssmix2.reader."""

from collections.abc import Set

def read_patient(
    path: str, in_scope: Set[str], max_bytes: int, /
) -> (
    list[tuple[str, str, str, bytes | None, int, int, tuple[str, str, str, str, str, str, str] | None]] | None
): ...
