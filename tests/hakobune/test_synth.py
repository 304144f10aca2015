"""The synthetic SS-MIX2 hospital: determinism, layout, message shape, updates, advance, consent."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

import pytest
from typer.testing import CliRunner

from hakobune import hl7
from hakobune.cli import app
from hakobune.errors import InputError
from hakobune.synth import advance, generate, read_meta
from hakobune.synth import clinical as C
from hakobune.synth import names as N
from hakobune.synth.messages import MESSAGE_TYPES, pid_segment, render, segments
from hakobune.synth.model import Demo, make_profile, simulate

PATIENT_LEVEL = {"ADT-00", "ADT-61", "PPR-01"}
NAME_RE = re.compile(r"^(\d{10})_(-|\d{8})_([A-Z]{3}-\d{2})_(\d{15})_(\d{17})_(\d{2}|-)_([012])$")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "h"
    generate(out, patients=120, days=20, seed=7, workers=2)
    return out


@pytest.fixture(scope="module")
def files(hospital: Path) -> dict[str, bytes]:
    return tree(hospital / "ssmix2")


def parse(raw: bytes) -> list[list[str]]:
    return [hl7.fields_of(s) for s in hl7.split_segments(hl7.decode(raw))]


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_for_any_worker_count(
    tmp_path: Path, hospital: Path, files: dict[str, bytes]
) -> None:
    other = tmp_path / "one-worker"
    generate(other, patients=120, days=20, seed=7, workers=1)
    assert tree(other / "ssmix2") == files
    for name in ("synth.json", "consent.csv"):
        assert (other / name).read_bytes() == (hospital / name).read_bytes()


def test_different_seed_different_hospital(tmp_path: Path, files: dict[str, bytes]) -> None:
    generate(tmp_path / "s8", patients=120, days=20, seed=8, workers=1)
    assert tree(tmp_path / "s8" / "ssmix2") != files


def test_refuses_to_overwrite_a_tree(hospital: Path) -> None:
    with pytest.raises(InputError):
        generate(hospital, patients=5, days=1, seed=1, workers=1)


# ----------------------------------------------------------------------------------------------- layout
def test_layout_and_file_names(files: dict[str, bytes]) -> None:
    pids: set[str] = set()
    for rel in files:
        top, mid, pid, care_date, dtype, name = rel.split("/")
        m = NAME_RE.match(name)
        assert m is not None, name
        assert m.group(1) == pid and top == pid[0:3] and mid == pid[3:6]
        assert m.group(2) == care_date and m.group(3) == dtype
        assert (care_date == "-") == (dtype in PATIENT_LEVEL)
        pids.add(pid)
    assert len(pids) == 120
    types = {rel.split("/")[4] for rel in files}
    assert {"ADT-00", "ADT-61", "PPR-01", "OMP-01", "OMP-11", "OMP-02", "OMP-12", "OML-11"} <= types
    assert types & {"ADT-22", "OMG-01"}  # other types are sprinkled in for readers to count and skip
    assert 8 <= len(files) / len(pids) <= 20
    per_patient = defaultdict(set)
    for rel in files:
        per_patient[rel.split("/")[2]].add(rel.split("/")[4])
    assert all({"ADT-00", "PPR-01"} <= t for t in per_patient.values())


def test_every_message_decodes_and_has_the_sample_header(files: dict[str, bytes]) -> None:
    for rel, raw in files.items():
        assert raw.endswith(b"\r\x1c")
        assert max(raw) < 0x80  # 7-bit ISO-2022-JP
        segs = parse(raw)
        msh, pid = segs[0], segs[1] if segs[1][0] == "PID" else next(s for s in segs if s[0] == "PID")
        dtype = rel.split("/")[4]
        assert msh[0] == "MSH" and msh[9] == MESSAGE_TYPES[dtype]
        assert msh[18] == "~ISO IR87" and msh[20] == "ISO2022-1994" and msh[21].startswith("SS-MIX2_1.20^")
        assert pid[3] == f"{rel.split('/')[2]}^^^^PI"
        names = pid[5].split("~")
        assert names[0].endswith("^^^^^L^I") and names[1].endswith("^^^^^L^P")
        assert re.fullmatch(r"[ァ-ヶー]+", names[1].split("^")[0])
        assert re.fullmatch(r"\d{8}", pid[7]) and "19250401" <= pid[7] <= "20250331"
        assert pid[8] in ("M", "F")
        addr = pid[11].split("^")
        assert re.fullmatch(r"\d{3}-\d{4}", addr[4]) and addr[5] == "JPN" and addr[7]


def test_fields_in_sample_positions(files: dict[str, bytes]) -> None:
    seen: set[str] = set()
    for rel, raw in files.items():
        dtype = rel.split("/")[4]
        segs = parse(raw)
        by = defaultdict(list)
        for s in segs:
            by[s[0]].append(s)
        if dtype == "ADT-00":
            for al1 in by["AL1"]:
                assert al1[2].endswith("^HL70127") and al1[4].endswith("^HL70128")
        elif dtype == "ADT-61":
            for iam in by["IAM"]:
                assert iam[2].split("^")[2] == "HL70127" and iam[6] == "A^追加^HL70323"
                assert re.fullmatch(r"\d{6}(\d{2})?", iam[11])
        elif dtype == "PPR-01":
            assert by["PRB"]
            assert sum(1 for p in by["PRB"] if len(p) > 18 and p[18] == "1^主診断^JHSD0007") == 1
            for prb in by["PRB"]:
                assert prb[1] == "AD" and prb[3].endswith("^MDCDX2") and len(prb[3].split("^")[0]) == 8
                assert prb[10].split("^")[2] == "I10" and prb[14].endswith("^HL70241")
                assert (prb[9] != "") == prb[14].startswith("R^")
                assert re.fullmatch(r"\d{8}", prb[16]) and prb[17]
        elif dtype == "OMP-01":
            assert len(by["ORC"]) == len(by["RXE"]) == len(by["TQ1"]) == len(by["RXR"]) >= 1
            for rxe, tq1 in zip(by["RXE"], by["TQ1"], strict=True):
                code, name, system = rxe[2].split("^")
                assert system == "HOT9" and re.fullmatch(r"\d{9}", code) and name
                assert float(rxe[3]) > 0 and rxe[5].endswith("^MR9P") and float(rxe[10]) > 0
                assert rxe[19].split("^")[1].endswith("&MR9P")
                assert tq1[3].endswith("&JAMISDP01") and tq1[6].endswith("^d") and len(tq1[7]) == 12
        elif dtype in ("OMP-11", "OMP-12"):
            assert by["RXA"] and by["RXR"]
            for rxa in by["RXA"]:
                assert rxa[5].endswith("^HOT9") and rxa[20] == "CP" and rxa[3] <= rxa[4]
        elif dtype == "OMP-02":
            for rxe in by["RXE"]:
                assert rxe[2] == "00^一般^99I02" and rxe[5] == "ML^ミリリットル^MR9P" and float(rxe[23]) > 0
            assert all(r[1] in ("A", "B") and r[2].endswith("^HOT9") for r in by["RXC"])
            assert all(t[7] < t[8] for t in by["TQ1"])
        elif dtype == "OML-11":
            assert by["SPM"] and by["OBR"] and by["OBX"]
            assert all(s[4].endswith("^JC10") for s in by["SPM"])
            for obx in by["OBX"]:
                code, name, system = obx[3].split("^")
                assert system == "JC10" and len(code) == 17 and name
                assert obx[2] == "NM" and float(obx[5]) >= 0 and obx[8] in ("", "H", "L") and obx[11] in "FC"
                assert len(obx[14]) == 12
        seen.add(dtype)
    assert {"ADT-00", "ADT-61", "PPR-01", "OMP-01", "OMP-11", "OMP-02", "OMP-12", "OML-11"} <= seen


def test_escaped_units_round_trip(files: dict[str, bytes]) -> None:
    units = {
        hl7.unescape(obx[6].split("^")[0])
        for rel, raw in files.items()
        if "/OML-11/" in rel
        for obx in parse(raw)
        if obx[0] == "OBX"
    }
    assert "10^3/μl" in units and "g/dl" in units


# ------------------------------------------------------------------------------------------ names
@pytest.mark.parametrize(
    ("family", "given", "kana_f", "kana_g"),
    [
        ("髙橋", "京子", "タカハシ", "キョウコ"),
        ("齋藤", "髙志", "サイトウ", "タカシ"),
        ("渡邉", "眞理子", "ワタナベ", "マリコ"),
        ("山﨑", "京介", "ヤマザキ", "キョウスケ"),
        ("齊藤", "廣子", "サイトウ", "ヒロコ"),
    ],
)
def test_variant_kanji_round_trip(family: str, given: str, kana_f: str, kana_g: str) -> None:
    demo = Demo(
        family,
        given,
        kana_f,
        kana_g,
        "19500101",
        "F",
        "606-8317",
        "京都府京都市左京区吉田本町1-2-3",
        "075-123-4567",
    )
    seg = pid_segment("0000100001", demo)
    decoded = hl7.fields_of(hl7.split_segments(hl7.decode(hl7.encode_message([seg])))[0])
    fam, giv = decoded[5].split("~")[0].split("^")[:2]
    assert (fam, giv) == (family, given)
    assert decoded[11].split("^")[7] == "京都府京都市左京区吉田本町1-2-3"


def test_tables_hold_the_hard_names_and_encode() -> None:
    surnames = {n.kanji for n in N.SURNAMES}
    assert {
        "齋藤",
        "斎藤",
        "斉藤",
        "齊藤",
        "渡邊",
        "渡辺",
        "渡邉",
        "髙橋",
        "高橋",
        "山﨑",
        "山崎",
    } <= surnames
    given = {n.kanji for t in (N.MALE_NAMES, N.FEMALE_NAMES) for v in t.values() for n in v}
    assert "京子" in given and sum("京" in g for g in given) >= 5
    assert len(surnames) >= 200 and len({n.kanji for v in N.MALE_NAMES.values() for n in v}) >= 200
    assert len({n.kanji for v in N.FEMALE_NAMES.values() for n in v}) >= 200
    texts = [n.kanji + n.kana for n in N.SURNAMES]
    texts += [n.kanji + n.kana for t in (N.MALE_NAMES, N.FEMALE_NAMES) for v in t.values() for n in v]
    texts += [c.prefecture + c.city + t for c in N.CITIES for t, _ in c.towns]
    for text in texts:
        assert hl7.decode(hl7.encode_message([text])) == text + "\r\x1c"
    assert all(re.fullmatch(r"[ァ-ヶー]+", n.kana) for n in N.SURNAMES)


def test_tree_has_kyo_and_variant_names(tmp_path: Path) -> None:
    out = tmp_path / "big"
    generate(out, patients=700, days=0, seed=11, workers=2)
    pids = [
        hl7.fields_of(hl7.split_segments(hl7.decode(p.read_bytes()))[2])
        for p in (out / "ssmix2").rglob("*_ADT-00_*_1")
    ]
    text = "\n".join(p[5] + p[11] for p in pids)
    assert "京" in text
    assert any(ch in text for ch in "髙齋齊邉邊﨑")


def test_namesakes_exist() -> None:
    seen: dict[tuple[str, str, str], int] = {}
    twins = 0
    for i in range(3000):
        d = make_profile(5, i).demo
        key = (d.family + d.given, d.birth, d.sex)
        twins += key in seen
        seen[key] = i
    assert twins >= 3


# -------------------------------------------------------------------------------------- clinical tables
def test_clinical_tables_are_rich_and_well_formed() -> None:
    assert len(C.DIAGNOSES) >= 40 and len(C.ORAL_DRUGS) >= 40 and len(C.INJECTION_DRUGS) >= 15
    assert len(C.LAB_ITEMS) >= 30
    assert all(
        re.fullmatch(r"\d{8}", d.medis) and re.fullmatch(r"[A-Z]\d{2,4}", d.icd10)
        for d in C.DIAGNOSES.values()
    )
    assert len({d.medis for d in C.DIAGNOSES.values()}) == len(C.DIAGNOSES)
    assert all(re.fullmatch(r"\d{9}", d.hot9) for d in [*C.ORAL_DRUGS.values(), *C.INJECTION_DRUGS.values()])
    assert all(len(i.jlac10) == 17 for i in C.LAB_ITEMS.values())
    assert all(d.usage in C.USAGES for d in C.ORAL_DRUGS.values())
    assert {"warfarin", "apixaban", "metformin"} <= set(C.ORAL_DRUGS)
    icd = {d.name: d.icd10 for d in C.DIAGNOSES.values()}
    assert icd["糖尿病"] == "E14" and icd["本態性高血圧症"] == "I10" and icd["心房細動"] == "I489"


def test_lab_values_follow_conditions(files: dict[str, bytes]) -> None:
    diabetic: set[str] = set()
    hba1c: dict[str, list[float]] = defaultdict(list)
    for rel, raw in files.items():
        pid = rel.split("/")[2]
        if "/PPR-01/" in rel and rel.endswith("_1"):
            if any(s[0] == "PRB" and s[10].split("^")[0] in ("E10", "E11", "E14") for s in parse(raw)):
                diabetic.add(pid)
        elif "/OML-11/" in rel:
            for s in parse(raw):
                if s[0] == "OBX" and s[3].startswith("3D045000002327101^"):
                    hba1c[pid].append(float(s[5]))
    dm = [v for p, vs in hba1c.items() if p in diabetic for v in vs]
    other = [v for p, vs in hba1c.items() if p not in diabetic for v in vs]
    assert dm and other
    assert mean(dm) > mean(other) + 1.0


# ---------------------------------------------------------------------------------------- updates
def check_keys(files: dict[str, bytes] | list[str]) -> tuple[int, int]:
    """Exactly one current file per logical key unless deleted; superseded files are older than current."""
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
    for rel in files:
        f = rel.rsplit("/", 1)[-1].split("_")
        groups[(f[0], f[1], f[2], f[3])].append((f[4], f[6]))
    superseded = deleted = 0
    for key, versions in groups.items():
        flags = [flag for _, flag in versions]
        assert flags.count("1") + flags.count("0") == 1, key
        assert len({ts for ts, _ in versions}) == len(versions), key
        last = max(versions)
        assert last[1] in "10", key  # the newest version is current or deleted, never superseded
        superseded += flags.count("2")
        deleted += flags.count("0")
    return superseded, deleted


def test_updates_leave_one_current_file_per_key(files: dict[str, bytes]) -> None:
    superseded, deleted = check_keys(files)
    assert superseded > 0 and deleted > 0
    adt = [r for r in files if "/ADT-00/" in r]
    ppr = [r for r in files if "/PPR-01/" in r]
    assert any(r.endswith("_2") for r in adt) and any(r.endswith("_2") for r in ppr)


def test_superseded_adt00_differs_from_current(files: dict[str, bytes]) -> None:
    by_pid: dict[str, dict[str, bytes]] = defaultdict(dict)
    for rel, raw in files.items():
        if "/ADT-00/" in rel:
            by_pid[rel.split("/")[2]][rel[-1]] = raw
    changed = [v for v in by_pid.values() if "2" in v]
    assert changed
    for v in changed:
        old = next(s for s in parse(v["2"]) if s[0] == "PID")
        new = next(s for s in parse(v["1"]) if s[0] == "PID")
        assert (old[5], old[11], old[13]) != (new[5], new[11], new[13])


# ---------------------------------------------------------------------------------------- advance
def test_advance_renames_in_place_and_equals_a_longer_run(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, patients=150, days=6, seed=3, workers=2)
    before = tree(a / "ssmix2")
    stats = advance(a, 4, workers=1)
    after = tree(a / "ssmix2")
    assert stats.days_done == 10 and stats.files_written > 0 and stats.files_renamed > 0
    assert stats.renames_missing == 0
    # renames only change the flag of files already there; contents of old files are untouched
    stem = {rel[:-1]: raw for rel, raw in after.items()}
    for rel, raw in before.items():
        assert stem[rel[:-1]] == raw
    assert len(after) == len(before) + stats.files_written
    check_keys(after)
    generate(b, patients=150, days=10, seed=3, workers=1)
    assert tree(b / "ssmix2") == after
    meta_a, meta_b = read_meta(a), read_meta(b)
    assert meta_a["days_done"] == meta_b["days_done"] == 10
    assert meta_a["files"] == meta_b["files"] == len(after) and meta_a["bytes"] == meta_b["bytes"]


def test_advance_with_another_change_rate(tmp_path: Path) -> None:
    out = tmp_path / "r"
    generate(out, patients=100, days=3, seed=2, workers=1)
    quiet = advance(out, 2, workers=1, change_rate=0.0)
    assert quiet.files_written == 0 and quiet.files_renamed == 0
    busy = advance(out, 2, workers=1, change_rate=0.05)
    assert busy.files_written > 0
    meta = read_meta(out)
    assert meta["change_rates"] == [[0, 0.01], [3, 0.0], [5, 0.05]] and meta["days_done"] == 7
    check_keys(tree(out / "ssmix2"))


def test_advance_needs_a_synth_tree_of_this_generator(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        advance(tmp_path, 1)
    generate(tmp_path / "v", patients=3, days=1, seed=1, workers=1)
    meta = json.loads((tmp_path / "v" / "synth.json").read_text(encoding="utf-8"))
    meta["model_version"] = "0" * 16
    (tmp_path / "v" / "synth.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(InputError, match="another version"):
        advance(tmp_path / "v", 1)


# -------------------------------------------------------------------------------------- consent, meta
def test_consent_csv(hospital: Path, files: dict[str, bytes]) -> None:
    raw = (hospital / "consent.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(raw.splitlines()))
    assert rows[0] == ["patient_id", "scope"]
    pids = {rel.split("/")[2] for rel in files}
    for pid, scope in rows[1:]:
        assert pid in pids and scope in ("all", "research")
    scopes = [make_profile(9, i).consent for i in range(4000)]
    share = sum(1 for s in scopes if s) / len(scopes)
    assert 0.01 < share < 0.03
    assert 0.15 < scopes.count("all") / max(1, sum(1 for s in scopes if s)) < 0.55


def test_synth_json(hospital: Path, files: dict[str, bytes]) -> None:
    meta = json.loads((hospital / "synth.json").read_text(encoding="utf-8"))
    assert (meta["patients"], meta["days"], meta["seed"], meta["days_done"]) == (120, 20, 7, 20)
    assert meta["files"] == len(files) == sum(meta["files_by_type"].values())
    assert meta["bytes"] == sum(len(b) for b in files.values())
    assert "seconds" not in meta and "workers" not in meta


def test_render_equals_encoding_the_whole_message() -> None:
    h = simulate(4, 17, [1.0] * 20)
    for v in h.versions:
        assert render(4, h.profile.pid, v) == hl7.encode_message(segments(4, h.profile.pid, v))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_generate_and_advance_json(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(
        app, ["synth", "--patients", "15", "--days", "2", "--out", str(out), "--workers", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    assert j["patients"] == 15 and j["files"] > 15
    r = runner.invoke(app, ["synth", "--out", str(out), "--advance", "3", "--json", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["days_done"] == 5
    r = runner.invoke(app, ["synth", "--patients", "15", "--days", "2", "--out", str(out)])
    assert r.exit_code != 0
