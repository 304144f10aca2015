"""The compiled lab section of the export (restore/fhir/_fastlabs.c) gives the bytes the Python builder
gives, and steps aside (None: the Python path) for anything that is not the plain case.

Both paths run on generated records meant to find where they could part: observation times that are
dates, date-times with seconds and fractions, partial dates and near misses (30 February, hour 24, a
year alone, full-width digits); care dates that are not dates; item numbers compared as numbers (``1.10``
after ``1.9``, ``01`` equal to ``1``, parts that are not numbers, numbers past 2**30); one code written
with two displays, codes without a code; ties on day and time; specimens with and without a type; values
with quotes and backslashes (escaped in the encoding: not plain) and template markers (no template)."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakobune.records import Coding, LabResult, Patient, Record, RecordKey, encode
from media.viewer_summary import parse_bundle, stored_summary
from restore.fhir import ExportWindow
from restore.fhir import bundle as bundle_module
from restore.fhir.bundle import LabEntry, _cuts, _id_bases, make_id, readable_bundle, serialized_bundle

PID = "0000000042"
HOSPITAL = "1310000001"
GENERATED = datetime(2025, 5, 1, 0, 0, tzinfo=UTC)
AS_OF = date(2025, 4, 30)
PATIENT = Patient(RecordKey(PID, "-", "ADT-00", "999999999999999", "PID"), "山田", "花子", "ヤマダ", "ハナコ")
ARGS: dict[str, Any] = {
    "hospital": HOSPITAL,
    "as_of": AS_OF,
    "window": ExportWindow(),
    "generated_at": GENERATED,
}
MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

needs_fast = pytest.mark.skipif(bundle_module.fast_results is None, reason="compiled lab section not built")


def test_the_compiled_lab_section_is_built_where_ci_runs() -> None:
    if bundle_module.fast_results is None:
        if os.environ.get("CI"):
            pytest.fail("restore.fhir._fastlabs is not built (make setup compiles it with gcc)")
        pytest.skip("compiled lab section not built here")


def _fast(encoded: list[bytes], window: ExportWindow = ExportWindow(), hospital: str = HOSPITAL) -> Any:
    """The compiled section's own answer (None: it stepped aside)."""
    fast = bundle_module.fast_results
    assert fast is not None
    day = AS_OF.isoformat()
    bases = _id_bases(hospital)
    assert bases is not None
    patient_url = "urn:uuid:" + make_id(f"{hospital}|Patient|{PID}")
    return fast(
        encoded,
        PID,
        day,
        _cuts(day, window)[2],
        window.max_labs_per_code,
        hospital + "/",
        patient_url,
        *bases,
    )


def _both(
    records: list[Record], window: ExportWindow, monkeypatch: pytest.MonkeyPatch, hospital: str = HOSPITAL
) -> tuple[bytes, bytes]:
    """(the export's bytes with the compiled section, without it)."""
    encoded = sorted(encode(r) for r in records)  # as a restore database holds them
    args: dict[str, Any] = {"hospital": hospital, "as_of": AS_OF, "window": window, "generated_at": GENERATED}
    fast, _ = serialized_bundle(PATIENT, encoded, **args)
    with monkeypatch.context() as m:
        m.setattr(bundle_module, "fast_results", None)
        slow, _ = serialized_bundle(PATIENT, encoded, **args)
    return fast, slow


# -- generated lab histories ------------------------------------------------------------------------------
_DAYS = st.sampled_from(
    [
        "2025-04-30",
        "2025-04-29",
        "2025-04-01",
        "2025-03-15",
        "2024-12-31",
        "2024-10-30",
        "2024-10-31",
        "2025-05-01",
    ]
)
_TIMES = st.sampled_from(
    ["T10:00", "T09:59", "T10:00:30", "T10:00:30.5", "T23:59:59.123456789", "", "T24:00"]
)
_ODD_OBSERVED = st.sampled_from(
    [
        "",
        "2025",
        "2025-04",
        "2025-13",
        "2025-02-30",
        "2024-02-29T08:00",
        "2023-02-29",
        "0000-01-01",
        "2025-04-0",
        "2025-04-30T10",
        "2025-04-30T10:00:60",
        "2025-04-30T10:00:00.",
        "2025-04-30T10:00:00.1234567890",
        "2025-04-30 10:00",
        "20250430",
        "0000",
        "9999-12-31T23:59",
    ]
)
_OBSERVED = st.one_of(st.builds(lambda d, t: d + t, _DAYS, _TIMES), _ODD_OBSERVED)
_CARE = st.one_of(
    _DAYS.map(lambda d: d.replace("-", "")), st.sampled_from(["-", "2025043", "20251399", "x2025043"])
)
_ITEMS = st.sampled_from(
    [
        "1.1",
        "1.2",
        "1.10",
        "1.9",
        "01.1",
        "2.1",
        "1",
        "1.1.1",
        "a.1",
        "1.a",
        "",
        ".",
        "1..2",
        "9999999999.1",
        "1073741824.1",
        "1073741823.1",
        "1073741825.1",
        "x",
    ]
)
_CODES = st.sampled_from(
    [
        Coding("3D010000001926101", "グルコース", "JC10"),
        Coding("3D010000001926101", "血糖", "JC10"),
        Coding("3A016000002327101", "アルブミン", "JC10"),
        Coding("", "自由記載の検査", "JC10"),
        Coding("3A016000002327101", "", "99XYZ"),
        Coding("3A999000002327101", "A&G<比>", "99XYZ"),
        Coding("", "", ""),
    ]
)
_SPECIMENS = st.sampled_from(
    [None, Coding("023", "血清", "JC10"), Coding("019", "", "JC10"), Coding("", "", "")]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "7.0",
            "6.70",
            "<0.5",
            "陰性",
            "",
            "1e3",
            "+1",
            "07.5",
            "-0.0",
            "0.0000001",
            "123456789012345678.5",
            " 7.0 ",
            "１２",
            "1E3",
            ".5",
            "12345678901234567",
            "999999999999999",
            "-12",
            "0.1",
            "1e-7",
            "NaN",
            "inf",
        ]
    ),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@st.composite
def _labs(draw: st.DrawFn) -> LabResult:
    care = draw(_CARE)
    return LabResult(
        RecordKey(
            PID, care, "OML-11", draw(st.sampled_from(["000000000000001", "000000000002"])), draw(_ITEMS)
        ),
        draw(_CODES),
        draw(st.sampled_from(["NM", "ST", ""])),
        draw(_VALUES),
        draw(st.sampled_from(["mg/dl", "", "%", "10^3/uL"])),
        draw(st.sampled_from(["73-109", "", "<5"])),
        draw(st.sampled_from(["H", "", "L", "?"])),
        draw(st.sampled_from(["F", "C", ""])),
        draw(_OBSERVED),
        draw(_SPECIMENS),
        draw(st.sampled_from([None, Coding("E002", "生化学的検査", "99O03")])),
    )


_WINDOWS = st.builds(
    ExportWindow,
    months_labs=st.sampled_from([0, 1, 6, 120]),
    max_labs_per_code=st.sampled_from([0, 1, 2, 3]),
)


@needs_fast
@MANY
@given(st.lists(_labs(), max_size=25), _WINDOWS)
def test_generated_lab_histories_give_the_same_bytes(labs: list[LabResult], window: ExportWindow) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, slow = _both(list(labs), window, monkeypatch)
    assert fast == slow
    # these are all plain: the compiled section answered for them
    assert _fast(sorted(encode(r) for r in labs), window) is not None
    # and a reader of the bundle (the offline viewer's summary) finds in what it made what it finds in
    # the bytes (of results with distinct keys, as a restore database holds them: two results of one key
    # share an id, and a reader of the bytes finds one of them under it)
    assert _readable(list(labs), window)[0] == fast
    data, _, bundle, read = _readable(list({lab.key: lab for lab in labs}.values()), window)
    assert read is not None
    assert stored_summary(bundle, read) == stored_summary(parse_bundle(data))


def _readable(
    records: list[Record], window: ExportWindow = ExportWindow()
) -> tuple[bytes, int, dict[str, Any], list[LabEntry] | None]:
    encoded = sorted(encode(r) for r in records)
    return readable_bundle(
        PATIENT, encoded, hospital=HOSPITAL, as_of=AS_OF, window=window, generated_at=GENERATED
    )


def _glucose(
    day: str, time: str = "10:00", item: str = "1.1", order: str = "000000000000001", **kw: Any
) -> LabResult:
    fields: dict[str, Any] = {
        "key": RecordKey(PID, day.replace("-", ""), "OML-11", order, item),
        "code": Coding("3D010000001926101", "グルコース", "JC10"),
        "value_type": "NM",
        "value": "7.0",
        "unit": "mg/dl",
        "reference_range": "73-109",
        "flag": "H",
        "status": "F",
        "observed_at": f"{day}T{time}",
        "specimen": Coding("023", "血清", "JC10"),
    }
    fields.update(kw)
    return LabResult(**fields)


@needs_fast
def test_a_plain_history_is_answered_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Newest first; the three latest of the code; one specimen per OBR; the other records passed back."""
    labs = [_glucose(f"2025-04-{d:02d}", item=f"{d}.1") for d in range(1, 8)]
    cond = encode(PATIENT)
    done = _fast([cond, *(encode(r) for r in labs)])
    assert done is not None
    others, section, specimens = done
    assert others == [cond]
    refs, entries, lines, read = section
    resources = [orjson.loads(orjson.dumps(entry)) for entry in entries]
    days = ["2025-04-07", "2025-04-06", "2025-04-05"]
    assert [e["resource"]["effectiveDateTime"][:10] for e in resources] == days
    # for a reader: each Observation's shape (one template: a number's), its number and its time
    shape = read[0][0]
    assert read == [(shape, b"7.0", e["resource"]["effectiveDateTime"]) for e in resources]
    assert isinstance(shape, bundle_module.LabShape) and shape.number
    assert shape.observation["code"] == resources[0]["resource"]["code"]
    assert orjson.loads(orjson.dumps(refs)) == [{"reference": e["fullUrl"]} for e in resources]
    assert [e["fullUrl"] for e in resources] == [f"urn:uuid:{e['resource']['id']}" for e in resources]
    assert [line.split()[0] for line in lines.split("</li><li>")] == days
    assert "&lt;" not in lines and "73-109" in lines
    assert len(specimens) == 3 and all(res["resourceType"] == "Specimen" for _, res in specimens)
    # nothing in the window: no section
    assert _fast([cond, encode(_glucose("2024-01-01"))]) == ([cond], None, [])
    fast, slow = _both(list(labs), ExportWindow(), monkeypatch)
    assert fast == slow


@needs_fast
@pytest.mark.parametrize("keep", [1, 2])
def test_equal_keys_keep_the_order_their_tests_first_appear_in(
    keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two results with one key (which a restore database never holds) tie in the section; then the test
    that comes first among the results the window keeps comes first, an older result of it dropped early
    or not."""
    old = _glucose("2025-04-29", order="000000000000001")
    glucose = _glucose("2025-04-30", "10:00:30", order="000000000002")
    albumin = _glucose(
        "2025-04-30", order="000000000002", code=Coding("3A016000002327101", "アルブミン", "JC10")
    )
    later = [_glucose("2025-04-30", item=f"1.{i}", order="000000000003") for i in range(1, 4)]
    window = ExportWindow(months_labs=1, max_labs_per_code=keep)
    fast, slow = _both([old, albumin, glucose, *later], window, monkeypatch)
    assert fast == slow


# -- not plain: the Python path, the same bytes or the same error -----------------------------------------
def _outcomes(encoded: list[bytes], monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What the export makes of ``encoded`` with the compiled section and without it: the bundle, or the
    error it raises (and a reader of the bundle finds in it what it finds in the bytes)."""
    outcomes: list[object] = []
    for fast in (bundle_module.fast_results, None):
        monkeypatch.setattr(bundle_module, "fast_results", fast)
        try:
            outcomes.append(serialized_bundle(PATIENT, encoded, **ARGS))
            data, entries, bundle, labs = readable_bundle(PATIENT, encoded, **ARGS)
            assert (data, entries) == outcomes[-1] and labs is None
            assert stored_summary(bundle, labs) == stored_summary(parse_bundle(data))
        except (ValueError, KeyError) as e:
            outcomes.append(f"{type(e).__name__}: {e}")
    return outcomes


def _not_plain_cases() -> dict[str, list[bytes]]:
    plain = encode(_glucose("2025-04-01"))
    other_patient = encode(_glucose("2025-04-02")).replace(PID.encode(), b"0000000099")
    return {
        "a quote in a value (escaped)": [plain, encode(_glucose("2025-04-02", value='7"0'))],
        "a backslash in the unit (escaped)": [encode(_glucose("2025-04-02", unit="10\\3/uL"))],
        "an item that is not ASCII": [encode(_glucose("2025-04-02", item="１.1"))],
        "a full-width observation time": [encode(_glucose("2025-04-02", observed_at="２０２５-04-02"))],
        "fields in another order": [
            orjson.dumps({"v": 1, "kind": "lab", "r": orjson.loads(plain)["r"]}),
            plain,
        ],
        "a key field missing": [plain.replace(b',"order_no":"000000000000001"', b"")],
        "a template marker in a value": [encode(_glucose("2025-04-02", value=bundle_module._HOLES[2]))],
        "another patient's result": [plain, other_patient],
    }


@needs_fast
@pytest.mark.parametrize("case", sorted(_not_plain_cases()))
def test_what_is_not_plain_goes_the_python_way(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = _not_plain_cases()[case]
    if case == "fields in another order":
        # the section does not see it as a lab result; the bundle finds one among the others and rebuilds
        assert _fast(encoded) is not None
    else:
        assert _fast(encoded) is None
    outcomes = _outcomes(encoded, monkeypatch)
    assert outcomes[0] == outcomes[1]
    if case == "another patient's result":
        assert outcomes[0] == "ValueError: a record of another patient was passed to patient_bundle"


@needs_fast
@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e[:-1],  # truncated
        lambda e: e.replace("血清".encode(), b"\xe8\xa1"),  # invalid UTF-8 in the specimen
        lambda e: e.replace("生化学".encode(), b"\xed\xa0\x80"),  # a surrogate in the battery
        lambda e: e.replace(b'"flag":"H"', b'"flag":"H\x01"'),  # a raw control character
        lambda e: e + b" ",
    ],
    ids=["truncated", "utf8", "surrogate", "control", "trailing"],
)
def test_damaged_encodings_step_aside_and_fail_as_before(
    damage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = _glucose("2025-04-02", battery=Coding("E002", "生化学的検査", "99O03"))
    encoded = [damage(encode(lab))]
    assert _fast(encoded) is None
    outcomes = _outcomes(encoded, monkeypatch)
    assert outcomes[0] == outcomes[1]


@needs_fast
def test_a_hospital_code_that_json_escapes_goes_the_python_way(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _id_bases('13"1') is None
    fast, slow = _both([_glucose("2025-04-02")], ExportWindow(), monkeypatch, hospital='13"1')
    assert fast == slow


@needs_fast
def test_the_parts_table_refills_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """More distinct values than the compiled table holds (it starts again): still the same bytes."""
    labs = [
        LabResult(
            RecordKey(PID, "20250401", "OML-11", "000000000000001", f"1.{i}"),
            Coding(f"3D{i:015d}", "検査", "JC10"),
            "NM",
            f"{i}.5",
            "mg/dl",
            observed_at="2025-04-01T10:00",
        )
        for i in range(9000)
    ]
    fast, slow = _both(list(labs), ExportWindow(), monkeypatch)
    assert fast == slow


def test_pure_python_mode_has_no_compiled_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAKOBUNE_PURE_PYTHON", "1")
    assert bundle_module._load_fast_results() is None


@needs_fast
def test_callbacks_answering_the_wrong_shape_are_errors_not_bundles() -> None:
    import restore.fhir._fastlabs as fastlabs

    prefix = b'{"kind":"lab","v":1,"r":{"key":{"patient_id":'
    good = (
        bundle_module._fast_lab_parts,
        bundle_module._fast_lab_number_parts,
        bundle_module._number_json,
        bundle_module._specimen_resource,
        orjson.Fragment,
    )
    wrong = [
        (2, lambda text: "7.0", "a number's JSON as bytes"),
        (1, lambda *key: ((b"",) * 6, b"", b"", None), "lab number parts"),
        (1, lambda *key: ((b"",) * 7, b"", b""), "lab number parts"),  # (no shape)
        (0, lambda *key: ((b"",) * 5, "tail", None), "lab parts"),
        (0, lambda *key: ((b"",) * 6, "tail"), "lab parts"),  # (no shape)
    ]
    lab = encode(_glucose("2025-04-02", value="7.0"))
    text = encode(_glucose("2025-04-02", value="陰性"))
    try:
        for at, maker, message in wrong:
            callbacks = list(good)
            callbacks[at] = maker
            fastlabs.register(prefix, *callbacks)
            with pytest.raises(TypeError, match=message):
                _fast([text if at == 0 else lab])
        with pytest.raises(TypeError, match="register"):
            fastlabs.register(prefix, *good[:4])  # type: ignore[call-arg]
    finally:
        assert bundle_module._load_fast_results() is not None
    assert _fast([lab]) is not None
