"""The offline viewer in real headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright; no
browser is ever downloaded): open ``viewer.html`` from a written disk over ``file://``, unlock it, search,
read a summary, print it.  Every request that is not ``file://`` is recorded and refused, and each test
asserts there was none.

Without ``/usr/bin/chromium`` the tests skip locally and fail in CI (``CI`` set: scripts/system-deps
installs it).  A screenshot of the summary and its A4 print rendering are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from hakobune.cli import app
from hakobune.records import Patient, Record
from hakobune.synth.model import make_profile
from media import viewer as V
from restore.database import RestoreDB
from restore.search import Query, from_record, index_patients, search_database
from restore.search.normalize import (
    fold_kanji,
    is_kana,
    kana_key,
    kana_loose,
    kanji_variants,
    name_as_written,
    normalize_sex,
    parse_date,
)
from tests.media.conftest import Released
from tests.media.test_viewer import DISK_ID, PASSPHRASE, PID, full_records, lab, patient, write_disk
from tests.restore.search_queries import make_queries

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail("/usr/bin/chromium is missing (scripts/system-deps installs it)", pytrace=False)
    pytest.skip("/usr/bin/chromium is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, Request, Route, sync_playwright  # noqa: E402

WATANABE = "HK-000802"  # 渡邉 太郎: searched for as 渡辺 / 渡邊
NO_ALLERGY = "HK-000950"  # nothing recorded at all


def _fillers(n: int) -> list[tuple[Patient, list[Record]]]:
    """Synthetic patients (the generator behind ``hakobune synth``): namesakes and common names around the
    ones the tests look for."""
    out: list[tuple[Patient, list[Record]]] = []
    for i in range(n):
        d = make_profile(11, i).demo
        birth = f"{d.birth[:4]}-{d.birth[4:6]}-{d.birth[6:]}"
        out.append(
            (patient(f"SY-{i:05d}", (d.family, d.given, d.family_kana, d.given_kana), birth, d.sex), [])
        )
    return out


@dataclass
class Disk:
    root: Path
    key: bytes
    patients: list[Patient]

    @property
    def url(self) -> str:
        return (self.root / "viewer.html").as_uri()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    root = tmp_path_factory.mktemp("disk")
    patients = [
        *_fillers(40),
        (patient(), full_records()),
        (
            patient(
                WATANABE,
                ("渡邉", "太郎", "ワタナベ", "タロウ"),
                "1948-04-05",
                "M",
                "静岡県浜松市中区元城町103-2",
            ),
            [],
        ),
        (patient(NO_ALLERGY, ("佐々木", "次郎", "ササキ", "ジロウ"), "1990-12-31", "M", "静岡県沼津市"), []),
        *_fillers(200)[40:],
    ]
    key, _, _ = write_disk(root, patients, summary_patients=16, index_part=50)
    return Disk(root, key, [p for p, _ in patients])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


class Session:
    """A fresh page that records (and refuses) every non-file request and every script error."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000}, locale="ja-JP")
        self.page: Page = self.context.new_page()
        self.network: list[str] = []  # every non-file request the page attempted (even one CSP refused)
        self.routed: list[str] = []  # ... and those that got as far as the network stack (refused here)
        self.refused_by_csp: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("request", self._request)
        self.page.on("requestfailed", self._failed)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _route(self, route: Route) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.routed.append(route.request.url)
            route.abort()

    def _request(self, request: Request) -> None:
        if not request.url.startswith("file://"):
            self.network.append(request.url)

    def _failed(self, request: Request) -> None:
        if request.failure == "csp":
            self.refused_by_csp.append(request.url)

    def open(self, url: str) -> Page:
        self.page.goto(url)
        return self.page

    def unlock(self, url: str, passphrase: str = PASSPHRASE) -> Page:
        page = self.open(url)
        page.keyboard.type(passphrase)  # the passphrase field has the focus
        page.keyboard.press("Enter")
        page.wait_for_selector("#screen-search:not([hidden])", timeout=20_000)
        return page

    def search(self, name: str = "", birth: str = "") -> list[str]:
        """Type a query and return the patient IDs of the results, best first."""
        page = self.page
        page.fill("#q-name", name)
        page.fill("#q-birth", birth)
        page.press("#q-name", "Enter")
        return [t.removeprefix("ID ").strip() for t in page.locator("#results .r-id").all_inner_texts()]


@pytest.fixture
def session(browser: Browser) -> Iterator[Session]:
    s = Session(browser)
    yield s
    assert s.network == s.routed == [], "the viewer made network requests"
    assert s.errors == [], "the viewer threw"
    s.context.close()


def _pdf_pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?!s)", pdf))


# ----------------------------------------------------------------------------------------------- tests
def test_wrong_passphrase_shows_an_error(disk: Disk, session: Session) -> None:
    page = session.open(disk.url)
    assert page.inner_text("#disk-label").count(DISK_ID) == 1  # which disk this is, before any key
    page.keyboard.press("Enter")
    assert page.inner_text("#unlock-message") == "パスフレーズを入力してください"
    page.fill("#passphrase", "K7QX-3MZP-TW4N-8RHD-PQ2C-YB6B")  # one symbol off
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#unlock-message:not(:empty)")
    assert page.inner_text("#unlock-message") == "パスフレーズが違います"
    assert page.is_visible("#screen-unlock") and page.is_hidden("#screen-search")
    assert page.evaluate("window.hakobuneViewer.timing()") is None
    # and it recovers: the right one still opens the disk
    page.fill("#passphrase", PASSPHRASE)
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#screen-search:not([hidden])")


def test_kana_search_opens_the_summary_with_allergies_and_medications(disk: Disk, session: Session) -> None:
    # typed as a Japanese IME would: full-width, lower case, spaces instead of hyphens
    page = session.unlock(disk.url, "ｋ７ｑｘ　３ｍｚｐ tw4n 8rhd pq2c yb6a")
    assert "収録患者 203 人" in page.inner_text("#bar-status")
    assert page.evaluate("document.activeElement.id") == "q-name"
    # hiragana of her katakana name, keyboard only: type, ↓ to the results, Enter to open
    page.keyboard.type("さいとう　はなこ")
    page.wait_for_selector("#results .result")
    ids = [t.removeprefix("ID ") for t in page.locator("#results .r-id").all_inner_texts()]
    assert ids[0] == PID
    first = page.locator("#results .result").first
    assert "齋藤\u3000花子" in first.inner_text() and "サイトウ\u3000ハナコ" in first.inner_text()
    assert "カナ氏名一致" in first.inner_text()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector("#screen-summary:not([hidden])")
    assert page.evaluate("document.activeElement.id") == "summary-title"

    allergy = page.locator(".allergy")
    assert allergy.is_visible()
    assert "アレルギー（2件）" in allergy.inner_text()
    assert "ペニシリン" in allergy.inner_text() and "アナフィラキシー（重度）" in allergy.inner_text()
    assert "ソバ" in allergy.inner_text()
    assert allergy.locator("li.critical").inner_text().startswith("薬剤")
    color = allergy.evaluate("e => getComputedStyle(e).borderTopColor")
    assert color == "rgb(176, 0, 32)"  # red
    # allergies come first on the page, right under the header
    order = page.evaluate("Array.from(document.querySelectorAll('#summary > *')).map(e => e.className)")
    assert order[:2] == ["sum-head", "allergy has"]

    text = page.inner_text("#summary")
    for expected in (
        "HK-000731",
        "1975-03-04（昭和50年3月4日）",
        "女性",
        "静岡県静岡市葵区追手町9-6",
        "箱舟総合病院",
        "2型糖尿病",
        "E119",
        "メトグルコ錠２５０ｍｇ",
        "内服・経口・１日２回朝夕食後",
        "28日",
        "処方中",
        "ワーファリン錠１ｍｇ",
        "ソリタ−Ｔ３号輸液５００ｍＬ 1本",
        "100mL/h",
    ):
        assert expected in text, expected
    assert page.locator("#summary .flag.high").first.inner_text() == "7.80 ↑H"
    assert page.locator("#summary .flag.low").first.inner_text() == "3.1 ↓L"
    assert page.locator("#summary .flag.high.crit").first.inner_text() == "6.70 ↑↑HH"

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#summary").screenshot(path=str(ARTIFACTS / "viewer-summary.png"))
    pdf = page.pdf(format="A4", prefer_css_page_size=True, print_background=True)
    (ARTIFACTS / "viewer-summary.pdf").write_bytes(pdf)
    assert _pdf_pages(pdf) == 1

    page.keyboard.press("Escape")  # back to the results, focus on the one opened
    page.wait_for_selector("#screen-search:not([hidden])")
    assert page.evaluate("document.activeElement.dataset.n") == "0"


def test_search_by_birth_date_in_every_form(disk: Disk, session: Session) -> None:
    session.unlock(disk.url)
    for typed in (
        "1975-03-04",
        "19750304",
        "1975/3/4",
        "S50.3.4",
        "s50/03/04",
        "昭和50年3月4日",
        "昭和五十年三月四日",
    ):
        assert session.search(birth=typed)[:1] == [PID], typed
    # day and month swapped, as a desk mishears it: still found, with the reason
    assert session.search(birth="1975-04-03") == [PID]
    assert "月日入れ替え" in session.page.inner_text("#results")
    # sex ranks, as in restore search (a registration may be wrong): a mismatch costs points, is said
    session.page.select_option("#q-sex", "F")
    assert session.search(birth="1975-03-04") == [PID]
    assert "40点 生年月日一致 / 性別一致" in session.page.inner_text("#results")
    session.page.select_option("#q-sex", "M")
    assert session.search(birth="1975-03-04") == [PID]
    assert "25点 生年月日一致 / 性別不一致" in session.page.inner_text("#results")
    assert session.search(birth="1975-13-45") == []  # reads as a date, matches no one
    assert "見つかりません" in session.page.inner_text("#search-message")
    assert session.search(birth="昭和のころ") == []
    assert "生年月日を読み取れません" in session.page.inner_text("#search-message")


def test_search_by_kanji_variant_and_other_spellings(disk: Disk, session: Session) -> None:
    session.unlock(disk.url)
    assert session.search("斎藤 花子")[:1] == [PID]  # the disk has 齋藤
    assert "漢字異体字一致" in session.page.locator("#results .result").first.inner_text()
    assert session.search("齊藤花子")[:1] == [PID]
    assert session.search("渡辺 太郎")[:1] == [WATANABE]  # the disk has 渡邉
    assert WATANABE in session.search("渡邊")  # family name alone: every 渡辺 ranks alike
    assert session.search("ｻｲﾄｳ ﾊﾅｺ")[:1] == [PID]  # half-width katakana
    assert session.search("サイトー ハナコ")[:1] == [PID]  # a long vowel written as ー
    assert session.search("佐佐木", "1990-12-31")[:1] == [NO_ALLERGY]  # 々 spelled out
    assert PID in session.search("さい")  # the first kana only
    assert session.search("ぬぬぬぬ") == []
    assert "見つかりません" in session.page.inner_text("#search-message")


def test_a_patient_without_allergy_records_says_so(disk: Disk, session: Session) -> None:
    page = session.unlock(disk.url)
    assert session.search("ささき じろう")[:1] == [NO_ALLERGY]
    page.locator("#results .result").first.click()
    page.wait_for_selector("#screen-summary:not([hidden])")
    allergy = page.locator(".allergy")
    assert allergy.locator(".none-main").inner_text() == "アレルギー情報なし"
    assert "アレルギーが無いことの確認ではありません" in allergy.inner_text()
    assert "記録なし" in page.inner_text("#summary")
    page.click("#back")
    page.wait_for_selector("#screen-search:not([hidden])")


def test_lock_forgets_everything(disk: Disk, session: Session) -> None:
    page = session.unlock(disk.url)
    session.search("さいとう")
    page.click("#lock")
    assert page.is_visible("#screen-unlock")
    assert page.locator("#results li").count() == 0
    assert page.inner_text("#summary") == ""
    assert page.evaluate("window.hakobuneViewer.timing()") is None
    assert page.input_value("#q-name") == ""


def test_the_page_cannot_reach_the_network_or_write_html(disk: Disk, session: Session) -> None:
    page = session.unlock(disk.url)
    blocked = page.evaluate(
        """async () => {
        const out = {};
        try { await fetch('http://127.0.0.1:9/x'); out.fetch = 'allowed'; }
        catch (e) { out.fetch = 'blocked'; }
        const img = new Image(); img.src = 'http://127.0.0.1:9/i.png';
        try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); out.html = 'allowed'; }
        catch (e) { out.html = 'blocked'; }
        const s = document.createElement('script');
        try { s.src = 'http://127.0.0.1:9/s.js'; out.script = 'allowed'; }
        catch (e) { out.script = 'blocked'; }
        try { window.trustedTypes.createPolicy('other', {}); out.policy = 'allowed'; }
        catch (e) { out.policy = 'blocked'; }
        await new Promise(r => setTimeout(r, 200));
        return out;
    }"""
    )
    assert blocked == {"fetch": "blocked", "html": "blocked", "script": "blocked", "policy": "blocked"}
    # the image was refused by the CSP inside the page: it never reached the network stack
    assert session.network == session.refused_by_csp == ["http://127.0.0.1:9/i.png"]
    assert session.routed == []
    session.network.clear()


def test_missing_and_tampered_data_files_are_reported(disk: Disk, session: Session, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(disk.root, broken)
    (broken / "viewer" / "d" / "i001.js").unlink()
    page = session.open((broken / "viewer.html").as_uri())
    page.fill("#passphrase", PASSPHRASE)
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#unlock-message:not(:empty)")
    assert "データファイルが見つかりません" in page.inner_text("#unlock-message")

    tampered = tmp_path / "tampered"
    shutil.copytree(disk.root, tampered)
    chunk = tampered / "viewer" / "d" / "s00002.js"
    data = bytearray(chunk.read_bytes())
    data[40] = ord("A") if data[40] != ord("A") else ord("B")
    chunk.write_bytes(bytes(data))
    shutil.copy(disk.root / "viewer" / "d" / "s00000.js", tampered / "viewer" / "d" / "s00001.js")
    page = session.unlock((tampered / "viewer.html").as_uri())
    # patients 32-47 live in s00002 (16 per chunk), 16-31 in s00001 (now a copy of s00000)
    for pid in ("SY-00035", "SY-00020"):
        session.search(birth=_birth_of(disk, pid))
        page.locator("#results .result", has_text=pid).first.click()
        page.wait_for_selector("#search-message.error")
        assert "壊れているか、このディスクのものではありません" in page.inner_text("#search-message")
        assert page.is_hidden("#screen-summary")


def _birth_of(disk: Disk, pid: str) -> str:
    for name in V.read_chunk(disk.root, disk.key, DISK_ID, "m")["index"]:
        part = V.read_chunk(disk.root, disk.key, DISK_ID, name)
        ids = part["columns"]["id"]
        if pid in ids:
            birth: str = part["columns"]["b"][ids.index(pid)]
            return birth
    raise AssertionError(pid)


# ---------------------------------------------------------------------- the JS folds as Python does
def _corpus(variants: dict[str, str]) -> list[str]:
    """Names and near-names: synthetic names, every width and script, small kana, long vowels, 々, IVS,
    separators, and random strings over those characters and this disk's kanji variants."""
    names = []
    for i in range(60):
        d = make_profile(11, i).demo
        names += [d.family + d.given, f"{d.family} {d.given}", d.family_kana + "　" + d.given_kana]
    hira = [chr(c) for c in range(0x3041, 0x3097)]
    kata = [chr(c) for c in range(0x30A1, 0x30FB)] + ["ー", "ヽ", "ヾ"]
    half = [chr(c) for c in range(0xFF66, 0xFF9F)]
    kanji = list(variants) + list(variants.values()) + list("山田太郎佐藤高橋伊藤渡辺鈴木")
    other = [*" \u3000・･,、，.'’-‐々ABcdｚ０１ｶﾞ", "\ufe00", "葛\U000e0100"]
    alphabet = hira + kata + half + kanji + other
    rng = random.Random(5)
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(400)]
    fixed = [
        "さとう",
        "サトー",
        "ｻﾄｳ",
        "キョウコ",
        "キヨウコ",
        "きょーこ",
        "モチヅキ",
        "ヂヅヲヰヱヴ",
        "佐々木",
        "々木",
        "齋藤　花子",
    ]
    return names + fixed + randoms


def _dates() -> list[str]:
    return [
        *("1975-03-04", "19750304", "1975/3/4", "1975.03.04", "1975年3月4日", "１９７５－０３－０４"),
        *("S50.3.4", "s50/03/04", "昭和50年3月4日", "昭和五十年三月四日", "H2.1.1", "平成元年1月8日"),
        *("R1", "令和元年5月1日", "M45.7.29", "T1", "昭50.3", "  S 50 . 3 . 4 ", "2001", "200113"),
        *("1975-3-4", "abc", "", "S", "H元", "一九七五年三月四日", "1975年", "昭和", "99999999"),
    ]


def test_javascript_normalization_agrees_with_python(disk: Disk, session: Session) -> None:
    page = session.unlock(disk.url)
    variants = V.read_chunk(disk.root, disk.key, DISK_ID, "m")["variants"]
    corpus = _corpus(variants)
    js = page.evaluate(
        """(c) => { const n = window.hakobuneViewer.normalize;
        return c.map(s => [n.kanaKey(s), n.kanaLoose(s), n.foldKanji(s), n.nameAsWritten(s),
                           n.isKana(s)]); }""",
        corpus,
    )
    # the disk ships only the variants its names need: where a string holds no other variant, the folding
    # must be exactly Python's (elsewhere it cannot match a name on this disk either way)
    table, on_disk = kanji_variants(), set(variants.values())
    compared = 0
    for s, (k, loose, folded, written, kana) in zip(corpus, js, strict=True):
        assert (k, loose, written, kana) == (kana_key(s), kana_loose(s), name_as_written(s), is_kana(s)), s
        if all(c not in table or table[c] in on_disk for c in name_as_written(s)):
            assert folded == fold_kanji(s), s
            compared += 1
    assert compared > 0.9 * len(corpus)

    dates = _dates()
    parsed = page.evaluate("(c) => c.map(s => window.hakobuneViewer.normalize.parseDate(s))", dates)
    for s, got in zip(dates, parsed, strict=True):
        want = parse_date(s)
        assert (None if got is None else (got["year"], got["month"], got["day"])) == (
            None if want is None else (want.year, want.month, want.day)
        ), s


def test_summary_of_a_long_record_still_prints_on_one_page(tmp_path: Path, session: Session) -> None:
    records: list[Any] = list(full_records())
    for n in range(60):  # 60 tests x 3 results: a busy inpatient
        flag = "H" if n % 3 == 0 else ""
        for day in ("03", "10", "17"):
            at, name, code = f"2025-04-{day}T10:00", f"検査項目{n}", f"3X{n:03d}000002327101"
            records.append(
                lab(PID, f"202504{day}", f"1.{n}", code, name, str(n + 0.5), "U/l", "1-10", flag, at)
            )
    write_disk(tmp_path, [(patient(), records)])
    page = session.unlock((tmp_path / "viewer.html").as_uri())
    session.search("サイトウ")
    page.locator("#results .result").first.click()
    page.wait_for_selector("#screen-summary:not([hidden])")
    fit = page.evaluate("getComputedStyle(document.getElementById('summary')).getPropertyValue('--fit')")
    assert 0.4 <= float(fit) < 1
    pdf = page.pdf(format="A4", prefer_css_page_size=True, print_background=True)
    assert _pdf_pages(pdf) == 1


# --------------------------------------------------------------------- through `hakobune media write`
@pytest.mark.integration
def test_viewer_on_a_disk_written_by_media_write(
    released: Released, session: Session, tmp_path: Path
) -> None:
    """The whole path: a released hospital → ``hakobune media write`` → ``media verify`` (the viewer's files
    are in the signed manifest) → viewer.html in the browser with the disk's passphrase (600k iterations)."""
    with RestoreDB.open(released.restore) as db:
        rows = [r for r in db.patients() if r.patient.family_kana and r.patient.birth_date]
    # the synthetic hospital's records end some time ago: summarise as of its last day
    last = max(m.group(1) for r in rows for e in r.encoded if (m := re.search(rb'"care_date":"(\d{8})"', e)))
    as_of = f"{last[:4].decode()}-{last[4:6].decode()}-{last[6:].decode()}"
    disk = tmp_path / "disk"
    args = ["media", "write", "-r", str(released.restore), "--order", str(released.order), "--out", str(disk)]
    args += ["--center", str(released.center), "--audit", str(released.audit), "--workers", "1", "--json"]
    args += ["--as-of", as_of]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    written = orjson.loads(res.stdout)
    res = CliRunner().invoke(app, ["media", "verify", str(disk), "--center-key", str(released.center_pub)])
    assert res.exit_code == 0, res.output

    since = (date.fromisoformat(as_of) - timedelta(days=150)).strftime("%Y%m%d").encode()

    def recent(r: Any, kind: bytes) -> int:
        found = (re.search(rb'"care_date":"(\d{8})"', e) for e in r.encoded if e.startswith(kind))
        return sum(m is not None and m.group(1) >= since for m in found)

    # a patient with allergies, recent labs and recent prescriptions (the fixture's seed is fixed)
    target = max(
        rows,
        key=lambda r: (
            min(recent(r, b'{"kind":"lab"'), recent(r, b'{"kind":"prescription"'), 1),
            sum(e.startswith(b'{"kind":"allergy"') for e in r.encoded),
        ),
    )
    p = target.patient

    page = session.unlock((disk / "viewer.html").as_uri(), written["passphrase"].lower())
    assert f"収録患者 {written['patients']} 人" in page.inner_text("#bar-status")
    kana = "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in p.family_kana + " " + p.given_kana)
    ids = session.search(kana, p.birth_date)
    assert ids[0] == target.patient_id
    page.locator("#results .result").first.click()
    page.wait_for_selector("#screen-summary:not([hidden])")
    text = page.inner_text("#summary")
    assert target.patient_id in text and p.family_kanji in text
    assert page.locator(".allergy").is_visible()
    assert "⚠ アレルギー" in page.locator(".allergy h3").inner_text()
    assert page.locator("#summary table.labs tbody tr").count() > 0  # recent labs of a synthetic patient
    assert page.locator("#h-meds + table tbody tr").count() > 0


# ------------------------------------------------------------------ the same ranking as restore search
def test_ranking_agrees_with_restore_search(disk: Disk, session: Session, tmp_path: Path) -> None:
    """The desk's query set (tests/restore/search_queries.py: kana, hiragana, half-width, variant kanji,
    swapped and mistyped dates, era forms, long vowels, a kana typo …) against the disk's patients: the
    candidate restore search ranks first is in the viewer's list with the same score and reasons, and
    nothing ranks above it.  (Addresses are left out: the viewer has none to search.)"""
    people = [from_record(p) for p in disk.patients]
    index_patients(tmp_path / "search.db", people)
    page = session.unlock(disk.url)
    compared = 0
    for lq in make_queries(people, 45, seed=4):
        q = Query(lq.query.name, lq.query.birth_date, normalize_sex(lq.query.sex))
        if not (q.name.strip() or q.birth_date.strip()):
            continue
        expected = search_database(tmp_path / "search.db", q, limit=100)
        page.select_option("#q-sex", q.sex if q.sex in ("M", "F") else "")
        session.search(q.name, q.birth_date)
        shown = page.evaluate(
            """() => Array.from(document.querySelectorAll('#results .result')).map(
                b => [b.querySelector('.r-id').textContent, b.querySelector('.r-why').textContent])"""
        )
        got = {pid.removeprefix("ID "): why for pid, why in shown}
        if not expected:
            continue
        top = expected[0]
        assert top.patient_id in got, (lq.kind, q)
        score, _, reasons = got[top.patient_id].partition("点 ")
        assert abs(float(score) - top.score) < 0.11, (lq.kind, q)
        assert reasons.split(" / ") == list(top.reasons), (lq.kind, q)
        assert float(shown[0][1].partition("点")[0]) <= top.score + 0.11, (lq.kind, q)
        compared += 1
    assert compared >= 35


def test_idle_pc_locks_itself(disk: Disk, session: Session) -> None:
    session.page.clock.install()
    page = session.unlock(disk.url)
    session.search("さいとう")
    page.clock.fast_forward("29:00")
    assert page.is_visible("#screen-search")
    page.keyboard.press("Shift")  # any input restarts the 30 minutes
    page.clock.fast_forward("29:00")
    assert page.is_visible("#screen-search")
    page.clock.fast_forward("02:00")
    page.wait_for_selector("#screen-unlock:not([hidden])")
    assert "一定時間操作がなかったためロックしました" in page.inner_text("#unlock-message")
    assert page.locator("#results li").count() == 0


def test_a_browser_without_what_the_viewer_needs_says_so(disk: Disk, session: Session) -> None:
    session.page.add_init_script("delete window.DecompressionStream;")
    page = session.open(disk.url)
    page.fill("#passphrase", PASSPHRASE)
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#unlock-message:not(:empty)")
    assert "このブラウザでは開けません" in page.inner_text("#unlock-message")


def test_a_damaged_key_wrap_is_reported(disk: Disk, session: Session, tmp_path: Path) -> None:
    shutil.copytree(disk.root, tmp_path / "d")
    html = tmp_path / "d" / "viewer.html"
    text = html.read_text(encoding="utf-8")
    html.write_text(re.sub(r'"iterations":\d+', '"iterations":5', text), encoding="utf-8")
    page = session.open(html.as_uri())
    page.fill("#passphrase", PASSPHRASE)
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#unlock-message:not(:empty)")
    assert "このディスクの鍵情報を読めません" in page.inner_text("#unlock-message")
    # a wrap that is well formed but altered is just a passphrase that does not open it
    text = re.sub(r'"wrapped":"(.)', lambda m: '"wrapped":"' + ("B" if m.group(1) != "B" else "C"), text)
    html.write_text(text, encoding="utf-8")
    page = session.open(html.as_uri())
    page.fill("#passphrase", PASSPHRASE)
    page.press("#passphrase", "Enter")
    page.wait_for_selector("#unlock-message:not(:empty)")
    assert page.inner_text("#unlock-message") == "パスフレーズが違います"
