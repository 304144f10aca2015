"""Types of the compiled mappers (agent/ssmix2/_fastmap.c); see :mod:`agent.ssmix2.mapping`."""

from collections.abc import Callable

from hakobune.records import Coding, Record

def register(
    key_type: type,
    key_fields: tuple[str, ...],
    lab_type: type,
    lab_fields: tuple[str, ...],
    rx_type: type,
    rx_fields: tuple[str, ...],
    condition_type: type,
    condition_fields: tuple[str, ...],
    /,
) -> None: ...
def map_lab(
    segments: list[list[str]],
    key_head: tuple[str, str, str, str],
    comp: str,
    codings: dict[str, Coding | None],
    coding: Callable[[str], Coding | None],
    to_iso: Callable[[str], str],
    unescape: Callable[[str], str],
    warnings: list[str],
    /,
) -> list[Record] | None: ...
def map_rx_order(
    segments: list[list[str]],
    key_head: tuple[str, str, str, str],
    comp: str,
    sub: str,
    codings: dict[str, Coding | None],
    sub_codings: dict[str, Coding | None],
    coding: Callable[[str, str | None], Coding | None],
    to_iso: Callable[[str], str],
    warnings: list[str],
    /,
) -> list[Record] | None: ...
def map_rx_given(
    segments: list[list[str]],
    key_head: tuple[str, str, str, str],
    codings: dict[str, Coding | None],
    coding: Callable[[str], Coding | None],
    to_iso: Callable[[str], str],
    warnings: list[str],
    /,
) -> list[Record] | None: ...

# (the same arguments as map_lab)
map_condition = map_lab
