"""The analysis center's de-identified database (DuckDB): the tables research ingest fills and analyses read.

Rows carry no name, address, postal code, phone number, patient ID, clinician name or free text: the
hospital removed them before sealing (``agent.deidentify``).  ``pid`` is a per-hospital research pseudonym
(a keyed hash the hospital computes; the analysis center cannot reverse it) and ``patients.link`` the
cross-hospital linkage hash (HMAC-SHA256 over normalized kana name + birth date + sex, under a linkage key
the analysis center never holds).  ``source`` (the sending hospital's code) is bookkeeping for ingest and
tombstones only: analyses never group by it, filter on it or print it.

Every clinical table has ``rkey``: the record's key as sent (pseudonym/date/type/order-hash/item), not unique
(an injection record gives one row per component).  A put replaces all rows of its ``rkey``; a del removes
them; a tombstone removes every row of the pseudonym.  ``age`` is the patient's age in whole years on the
event date, computed at the hospital from the full birth date (NULL when unknown).
"""

from __future__ import annotations

#: Bumped when a table changes; stored in ``meta``.
SCHEMA_VERSION = 1

TABLES: dict[str, str] = {
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (
            name VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL
        )""",
    # One row per research changeset applied (per hospital, in sequence order).
    "ingested": """
        CREATE TABLE IF NOT EXISTS ingested (
            source VARCHAR NOT NULL,
            sequence INTEGER NOT NULL,
            hash VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            ingested_at TIMESTAMP NOT NULL,
            puts BIGINT NOT NULL,
            dels BIGINT NOT NULL,
            tombstones INTEGER NOT NULL,
            PRIMARY KEY (source, sequence)
        )""",
    # Sealed-file patient token -> pseudonym, so that a tombstone (which names only the token) can delete.
    "tokens": """
        CREATE TABLE IF NOT EXISTS tokens (
            source VARCHAR NOT NULL,
            token VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            PRIMARY KEY (source, token)
        )""",
    "patients": """
        CREATE TABLE IF NOT EXISTS patients (
            pid VARCHAR PRIMARY KEY,
            link VARCHAR,
            source VARCHAR NOT NULL,
            sex VARCHAR NOT NULL,
            birth_ym VARCHAR
        )""",
    "conditions": """
        CREATE TABLE IF NOT EXISTS conditions (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            date DATE,
            icd10 VARCHAR,
            medis VARCHAR,
            onset DATE,
            resolved DATE,
            outcome VARCHAR,
            main BOOLEAN,
            age SMALLINT
        )""",
    "allergies": """
        CREATE TABLE IF NOT EXISTS allergies (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            date DATE,
            category VARCHAR,
            code VARCHAR,
            system VARCHAR,
            age SMALLINT
        )""",
    # Oral drugs (SS-MIX2 OMP-01 orders, OMP-11 administrations).  code: HOT9 (or YJ when that is all the
    # hospital sent), system says which.
    "prescriptions": """
        CREATE TABLE IF NOT EXISTS prescriptions (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            date DATE,
            event VARCHAR NOT NULL,
            code VARCHAR,
            system VARCHAR,
            amount DOUBLE,
            unit VARCHAR,
            days INTEGER,
            age SMALLINT
        )""",
    # Injections: one row per component (base and additives).
    "injections": """
        CREATE TABLE IF NOT EXISTS injections (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            date DATE,
            event VARCHAR NOT NULL,
            role VARCHAR,
            code VARCHAR,
            system VARCHAR,
            amount DOUBLE,
            unit VARCHAR,
            age SMALLINT
        )""",
    # Lab results: value is the numeric value (NULL when the result is not numeric).
    "labs": """
        CREATE TABLE IF NOT EXISTS labs (
            rkey VARCHAR NOT NULL,
            pid VARCHAR NOT NULL,
            date DATE,
            code VARCHAR NOT NULL,
            value DOUBLE,
            unit VARCHAR,
            flag VARCHAR,
            age SMALLINT
        )""",
}

#: The tables holding patient data, in the order ingest fills them.
CLINICAL_TABLES = ("conditions", "allergies", "prescriptions", "injections", "labs")

#: Data items a study can request, and the table columns each one opens to the study's analyses.
DATA_ITEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "demographics": ("patients", ("pid", "link", "sex", "birth_ym")),
    "conditions": (
        "conditions",
        ("pid", "date", "icd10", "medis", "onset", "resolved", "outcome", "main", "age"),
    ),
    "allergies": ("allergies", ("pid", "date", "category", "code", "system", "age")),
    "prescriptions": (
        "prescriptions",
        ("pid", "date", "event", "code", "system", "amount", "unit", "days", "age"),
    ),
    "injections": ("injections", ("pid", "date", "event", "role", "code", "system", "amount", "unit", "age")),
    "labs": ("labs", ("pid", "date", "code", "value", "unit", "flag", "age")),
}


def create_all(conn: object) -> None:
    """Create every table that does not exist yet (``conn``: a ``duckdb.DuckDBPyConnection``)."""
    for ddl in TABLES.values():
        conn.execute(ddl)  # type: ignore[attr-defined]
    conn.execute(  # type: ignore[attr-defined]
        "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (name) DO NOTHING", [str(SCHEMA_VERSION)]
    )
