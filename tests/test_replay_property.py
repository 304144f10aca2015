"""Property: for any sequence of SS-MIX2 adds, updates (``_1`` → ``_2`` plus a new ``_1``), deletions
(``_1`` → ``_0``), opt-outs, late opt-outs and withdrawals, with syncs in between, decrypting and replaying
every stored changeset reproduces exactly the current SS-MIX2 state minus opted-out patients."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands.sync import run_once
from agent.consent import ConsentRegistry
from agent.home import open_state_db
from hakobune.hl7 import encode_message
from tests.conftest import make_message, ssmix_relpath
from tests.pipeline import decoded, expected_state, make_pipeline

PATIENTS = ("0000001", "0000002", "0100003")
DATES = ("20250401", "20250402")
TYPES = ("OML-11", "PPR-01")


def _body(data_type: str, variant: int) -> list[str]:
    if data_type == "OML-11":
        return [
            "SPM|1|1||023^血清^JC10",
            "OBR|1|1|1|E001^血液学的検査^99O03|||20240401",
            f"OBX|1|NM|3A010000002327101^総蛋白^JC10||{6 + variant / 10:.1f}|g/dl^g/dl^99XYZ|6.70-8.3||||F",
            f"OBX|2|NM|3D010000001926101^血糖^JC10||{90 + variant}|mg/dl^mg/dl^99XYZ|70-109||||F",
        ][: 3 + variant % 2]
    return [f"PRB|AD|20240401|20054174^胃炎{variant}^MDCDX2|{variant}|||20240331||||||||||20240331|胃炎|1"]


unit_st = st.tuples(
    st.sampled_from(PATIENTS), st.sampled_from(DATES), st.sampled_from(TYPES), st.integers(1, 2)
)
op_st = st.one_of(
    st.tuples(st.just("write"), unit_st, st.integers(0, 5)),
    st.tuples(st.just("delete"), unit_st),
    st.tuples(st.just("optout"), st.sampled_from(PATIENTS)),
    st.tuples(st.just("optin"), st.sampled_from(PATIENTS)),
    st.tuples(st.just("sync")),
)


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = 0
        self.current: dict[tuple[str, str, str, int], Path] = {}

    def _rename(self, path: Path, flag: str) -> None:
        path.rename(path.with_name(path.name[:-1] + flag))

    def write(self, unit: tuple[str, str, str, int], variant: int) -> None:
        pid, date, dtype, order = unit
        if unit in self.current:
            self._rename(self.current[unit], "2")  # superseded
        self.clock += 1
        rel = ssmix_relpath(pid, date, dtype, f"{order:015d}", "1", f"20250401{self.clock:09d}")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_message(make_message(dtype, patient_id=pid, body=_body(dtype, variant))))
        self.current[unit] = path

    def delete(self, unit: tuple[str, str, str, int]) -> None:
        if unit in self.current:
            self._rename(self.current.pop(unit), "0")


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(ops=st.lists(op_st, min_size=1, max_size=14))
def test_replay_equals_the_tree_minus_opted_out_patients(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tree = Tree(root / "ssmix2")
        tree.root.mkdir()
        pipe = make_pipeline(root, tree.root)
        opted_out: set[str] = set()

        def sync() -> None:
            doc = run_once(pipe.agent_home)
            assert not doc["ship"]["errors"]
            assert not pipe.ingest().rejected
            run_once(pipe.agent_home)  # collect receipts

        for op in ops:
            kind = op[0]
            if kind == "write":
                tree.write(op[1], op[2])  # type: ignore[arg-type]
            elif kind == "delete":
                tree.delete(op[1])  # type: ignore[arg-type]
            elif kind in ("optout", "optin"):
                with open_state_db(pipe.agent_home) as db:
                    registry = ConsentRegistry(db)
                    if kind == "optout":
                        registry.set(str(op[1]), "all")
                        opted_out.add(str(op[1]))
                    else:
                        registry.remove(str(op[1]))
                        opted_out.discard(str(op[1]))
            else:
                sync()
        sync()
        state = pipe.replay()
        expected = decoded(expected_state(tree.root, excluded=opted_out))
        assert decoded(state.records) == expected
        if expected or pipe.stored():
            assert decoded(pipe.patient_replay()) == expected
