"""Types of the compiled lab section of a bundle (restore/fhir/_fastlabs.c); see restore.fhir.bundle."""

from collections.abc import Callable, Sequence
from typing import Any

def register(
    lab_prefix: bytes,
    lab_parts: Callable[..., tuple[tuple[bytes, ...], str, Any] | None],
    number_parts: Callable[..., tuple[tuple[bytes, ...], bytes, bytes, Any] | None],
    number_json: Callable[[str], bytes | None],
    specimen: Callable[[str, str, str | None, str], dict[str, Any]],
    fragment: type,
    /,
) -> None: ...
def results(
    encoded: Sequence[bytes],
    patient_id: str,
    as_of: str,
    cut: str,
    keep_n: int,
    instance_prefix: str,
    patient_url: str,
    observation_hash: Any,
    specimen_hash: Any,
    /,
) -> (
    tuple[
        list[bytes],
        tuple[Any, list[Any], str, list[tuple[Any, bytes | None, str]]] | None,
        list[tuple[str, dict[str, Any]]],
    ]
    | None
): ...
