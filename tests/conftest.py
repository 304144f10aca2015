"""Shared test helpers: the real SS-MIX2 samples and small synthetic SS-MIX2 trees.

The helpers are plain functions (``from tests.conftest import make_message``) so hypothesis tests can use
them without function-scoped fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hakobune.hl7 import encode_message

#: Fixtures for real services (PostgreSQL) available to every test module.
pytest_plugins = ["tests.postgres"]

#: Real guideline sample messages (Apache-2.0), read in place, never copied into the repository.
SAMPLES = Path(
    os.environ.get(
        "HAKOBUNE_SAMPLES",
        str(Path(__file__).resolve().parents[2] / "shared" / "samples" / "ssmix2-nhoHQ" / "sampleData"),
    )
)

_MSH9 = {
    "ADT-00": "ADT^A08^ADT_A01",
    "ADT-61": "ADT^A60^ADT_A60",
    "PPR-01": "PPR^ZD1^PPR_ZD1",
    "OMP-01": "RDE^O11^RDE_O11",
    "OMP-02": "RDE^O11^RDE_O11",
    "OMP-11": "RAS^O17^RAS_O17",
    "OMP-12": "RAS^O17^RAS_O17",
    "OML-11": "OUL^R22^OUL_R22",
}

_ORC = "ORC|NW|000000000000001||1|||||20240401103045"
#: A minimal valid body (segments after MSH and PID) for each in-scope data type.
DEFAULT_BODY: dict[str, list[str]] = {
    "ADT-00": ["AL1|1|DA^薬剤アレルギー^HL70127|1^ペニシリン^99XYZ"],
    "ADT-61": ["IAM|1|FA^食物アレルギー^HL70127|5A1002411023006^ソバ^JC10|MO^中等度^HL70128|湿疹|A"],
    "PPR-01": ["PRB|AD|20240401|20054174^胃炎^MDCDX2|1|||20240331||||||||||20240331|胃炎|1"],
    "OMP-01": [
        _ORC,
        "RXE||108665201^ダーゼン錠（５mg)^HOT9|1||TAB^錠^MR9P|||||15|TAB^錠^MR9P",
        "TQ1|1||1013044400000000&内服・経口・１日３回朝昼夕食後&JAMISDP01|||5^d|20240401",
        "RXR|PO^口^HL70162",
    ],
    "OMP-11": [
        _ORC,
        "RXA|0|1|202404010830|202404010830|108665201^ダーゼン錠（５mg)^HOT9|1|TAB^錠^MR9P",
        "RXR|PO^口^HL70162",
    ],
    "OMP-02": [
        _ORC,
        "RXE||00^一般^99I02|510||ML^ミリリットル^MR9P",
        "TQ1|1||||||202404010800|202404011300",
        "RXR|IV^静脈内^HL70162",
        "RXC|B|620007329^ソリタ−Ｔ３号輸液５００ｍＬ^HOT9|1|HON^本^MR9P",
    ],
    "OMP-12": [
        _ORC,
        "RXA|0|1|20240401080521|20240401130543|620007329^ソリタ−Ｔ３号輸液５００ｍＬ^HOT9|1|HON^本^MR9P",
        "RXR|IV^静脈内^HL70162",
    ],
    "OML-11": [
        "SPM|1|1||023^血清^JC10",
        "OBR|1|1|1|E001^血液学的検査^99O03|||20240401",
        "OBX|1|NM|3A010000002327101^総蛋白^JC10||7.2|g/dl^g/dl^99XYZ|6.70-8.3||||F|||202404011500",
    ],
}


def msh(data_type: str) -> str:
    """An MSH segment whose MSH-9 matches ``data_type``."""
    return (
        f"MSH|^~\\&|HIS|SEND|GW|RCV|20240401120000||{_MSH9.get(data_type, 'ZZZ^Z01')}|1|P|2.5"
        "||||||~ISO IR87||ISO2022-1994"
    )


def make_message(
    data_type: str,
    *,
    patient_id: str = "1234567",
    pid: str | None = None,
    body: list[str] | None = None,
) -> list[str]:
    """Segments of a minimal valid message of ``data_type`` (``pid`` replaces the whole PID segment)."""
    pid_seg = pid if pid is not None else f"PID|0001||{patient_id}^^^^PI||患者^太郎^^^^^L^I||19480405|M"
    return [msh(data_type), pid_seg, *(DEFAULT_BODY[data_type] if body is None else body)]


def ssmix_relpath(
    patient_id: str = "1234567",
    care_date: str = "20240401",
    data_type: str = "OMP-01",
    order_no: str = "000000000000001",
    flag: str = "1",
    timestamp: str = "20240401120000000",
    department: str = "01",
) -> str:
    """Path of a file relative to the storage root, in the folder its name belongs in."""
    name = "_".join((patient_id, care_date, data_type, order_no, timestamp, department, flag))
    p = patient_id
    return f"{p[0:3]}/{p[3:6]}/{p}/{care_date}/{data_type}/{name}"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``{relpath: bytes}`` below ``root`` (folders created) and return ``root``."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_message(root: Path, relpath: str, segments: list[str]) -> str:
    """Encode ``segments`` as SS-MIX2 stores them, write them at ``relpath`` and return ``relpath``."""
    write_tree(root, {relpath: encode_message(segments)})
    return relpath


@pytest.fixture(scope="session")
def samples() -> Path:
    """Root of the real SS-MIX2 samples; the test is skipped where they are not checked out."""
    if not SAMPLES.is_dir():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a skip there would hide a failure
            pytest.fail(f"SS-MIX2 samples not found at {SAMPLES}")
        pytest.skip(f"SS-MIX2 samples not found at {SAMPLES}")
    return SAMPLES
