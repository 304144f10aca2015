"""Clinical code tables for the synthetic hospital: diagnoses (MEDIS disease exchange code + ICD-10), oral
and injection drugs (HOT9), JAMI usage codes, JLAC10 lab items with reference ranges and value
distributions, allergens and departments.

Codes are realistic in shape (HOT9: 9 digits, JLAC10: 17 characters, MEDIS: 8 digits, JAMI usage: 16
digits) and, where widely published, real; the rest are plausible stand-ins.  Values are synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------- departments
DEPARTMENTS: dict[str, str] = {
    "01": "内科",
    "02": "循環器内科",
    "03": "消化器内科",
    "04": "呼吸器内科",
    "05": "糖尿病・内分泌内科",
    "06": "腎臓内科",
    "07": "脳神経内科",
    "08": "外科",
    "09": "整形外科",
    "10": "皮膚科",
    "11": "泌尿器科",
    "12": "眼科",
    "13": "耳鼻咽喉科",
    "14": "精神科",
    "16": "小児科",
    "24": "産婦人科",
}


# -------------------------------------------------------------------------------------------- usage codes
@dataclass(frozen=True, slots=True)
class Usage:
    code: str  # JAMI standard usage code (16 digits)
    text: str
    per_day: int  # administrations per day (for RXE-19 total daily amount)


USAGES: dict[str, Usage] = {
    u.code: u
    for u in (
        Usage("1011000400000000", "内服・経口・１日１回朝食後", 1),
        Usage("1011005400000000", "内服・経口・１日１回夕食後", 1),
        Usage("1011004000000000", "内服・経口・１日１回就寝前", 1),
        Usage("1011010400000000", "内服・経口・週１回起床時", 1),
        Usage("1012040400000000", "内服・経口・１日２回朝夕食後", 2),
        Usage("1013044400000000", "内服・経口・１日３回朝昼夕食後", 3),
        Usage("1013042400000000", "内服・経口・１日３回朝昼夕食直前", 3),
        Usage("1013041400000000", "内服・経口・１日３回朝昼夕食前", 3),
    )
}
U_MORNING, U_EVENING, U_BEDTIME, U_WEEKLY, U_TWICE, U_THRICE, U_THRICE_JUST_BEFORE, U_THRICE_BEFORE = (
    "1011000400000000",
    "1011005400000000",
    "1011004000000000",
    "1011010400000000",
    "1012040400000000",
    "1013044400000000",
    "1013042400000000",
    "1013041400000000",
)


# ------------------------------------------------------------------------------------------- oral drugs
@dataclass(frozen=True, slots=True)
class OralDrug:
    key: str
    hot9: str
    name: str
    unit: str  # MR9P unit code: TAB, CAP, G
    unit_name: str
    form: str  # MR9P dosage form code: TAB, CAP, PWD, GRN
    form_name: str
    dose: str  # amount per administration
    usage: str  # JAMI usage code
    chronic: bool = True


_UNITS = {"TAB": "錠", "CAP": "カプセル", "G": "グラム"}
_FORMS = {"TAB": "錠剤", "CAP": "カプセル剤", "PWD": "散剤", "GRN": "顆粒剤"}


def _o(key: str, hot9: str, name: str, unit: str, dose: str, usage: str, chronic: bool = True) -> OralDrug:
    form = {"TAB": "TAB", "CAP": "CAP"}.get(unit, "PWD" if "散" in name or "酸化" in name else "GRN")
    return OralDrug(key, hot9, name, unit, _UNITS[unit], form, _FORMS[form], dose, usage, chronic)


ORAL_DRUGS: dict[str, OralDrug] = {
    d.key: d
    for d in (
        # anticoagulants / antiplatelets
        _o("warfarin", "105261401", "ワーファリン錠１ｍｇ", "TAB", "2", U_MORNING),
        _o("apixaban", "121489401", "エリキュース錠５ｍｇ", "TAB", "1", U_TWICE),
        _o("rivaroxaban", "120917801", "イグザレルト錠１５ｍｇ", "TAB", "1", U_MORNING),
        _o("edoxaban", "120968501", "リクシアナ錠３０ｍｇ", "TAB", "1", U_MORNING),
        _o("dabigatran", "120572501", "プラザキサカプセル１１０ｍｇ", "CAP", "1", U_TWICE),
        _o("aspirin", "111435801", "バイアスピリン錠１００ｍｇ", "TAB", "1", U_MORNING),
        _o("clopidogrel", "117757101", "プラビックス錠７５ｍｇ", "TAB", "1", U_MORNING),
        # diabetes
        _o("metformin", "119850601", "メトグルコ錠２５０ｍｇ", "TAB", "1", U_TWICE),
        _o("sitagliptin", "118930201", "ジャヌビア錠５０ｍｇ", "TAB", "1", U_MORNING),
        _o("glimepiride", "112036801", "アマリール錠１ｍｇ", "TAB", "1", U_MORNING),
        _o("dapagliflozin", "122863901", "フォシーガ錠１０ｍｇ", "TAB", "1", U_MORNING),
        _o("empagliflozin", "123172601", "ジャディアンス錠１０ｍｇ", "TAB", "1", U_MORNING),
        _o("linagliptin", "121272101", "トラゼンタ錠５ｍｇ", "TAB", "1", U_MORNING),
        _o("voglibose", "107634301", "ベイスンＯＤ錠０．３", "TAB", "1", U_THRICE_JUST_BEFORE),
        _o("vildagliptin", "119367401", "エクア錠５０ｍｇ", "TAB", "1", U_TWICE),
        # hypertension / heart failure
        _o("amlodipine", "121318601", "アムロジピン錠５ｍｇ「サワイ」", "TAB", "1", U_MORNING),
        _o("norvasc", "111853701", "ノルバスク錠５ｍｇ", "TAB", "1", U_MORNING),
        _o("candesartan", "111437201", "ブロプレス錠８", "TAB", "1", U_MORNING),
        _o("olmesartan", "122017701", "オルメテックＯＤ錠２０ｍｇ", "TAB", "1", U_MORNING),
        _o("telmisartan", "116037401", "ミカルディス錠４０ｍｇ", "TAB", "1", U_MORNING),
        _o("azilsartan", "122094501", "アジルバ錠２０ｍｇ", "TAB", "1", U_MORNING),
        _o("carvedilol", "106213601", "アーチスト錠２．５ｍｇ", "TAB", "1", U_TWICE),
        _o("bisoprolol", "108872101", "メインテート錠２．５ｍｇ", "TAB", "1", U_MORNING),
        _o("furosemide", "100794901", "ラシックス錠２０ｍｇ", "TAB", "1", U_MORNING),
        _o("spironolactone", "100845801", "アルダクトンＡ錠２５ｍｇ", "TAB", "1", U_MORNING),
        _o("sacubitril", "128120301", "エンレスト錠１００ｍｇ", "TAB", "1", U_TWICE),
        # lipids / gout
        _o("atorvastatin", "112246301", "リピトール錠１０ｍｇ", "TAB", "1", U_EVENING),
        _o("rosuvastatin", "116626101", "クレストール錠２．５ｍｇ", "TAB", "1", U_EVENING),
        _o("pitavastatin", "115307201", "リバロ錠２ｍｇ", "TAB", "1", U_EVENING),
        _o("ezetimibe", "117730501", "ゼチーア錠１０ｍｇ", "TAB", "1", U_MORNING),
        _o("febuxostat", "121006901", "フェブリク錠２０ｍｇ", "TAB", "1", U_MORNING),
        _o("allopurinol", "102064001", "ザイロリック錠１００", "TAB", "1", U_TWICE),
        # gastrointestinal
        _o("vonoprazan", "122910101", "タケキャブ錠１０ｍｇ", "TAB", "1", U_MORNING),
        _o("esomeprazole", "120820101", "ネキシウムカプセル２０ｍｇ", "CAP", "1", U_MORNING),
        _o("lansoprazole", "118456201", "ランソプラゾールＯＤ錠１５ｍｇ「トーワ」", "TAB", "1", U_MORNING),
        _o("rebamipide", "107585301", "ムコスタ錠１００ｍｇ", "TAB", "1", U_THRICE),
        _o("magmitt", "112155301", "マグミット錠３３０ｍｇ", "TAB", "1", U_THRICE),
        _o("mgo_powder", "100434705", "重質酸化マグネシウム「ヨシダ」", "G", "0.5", U_THRICE),
        _o("famotidine", "104545001", "ガスターＤ錠２０ｍｇ", "TAB", "1", U_TWICE),
        _o("kakkonto", "110612001", "ツムラ葛根湯エキス顆粒（医療用）", "G", "2.5", U_THRICE_BEFORE, False),
        # analgesics
        _o("loxoprofen", "104592901", "ロキソニン錠６０ｍｇ", "TAB", "1", U_THRICE, False),
        _o("acetaminophen", "103931101", "カロナール錠２００", "TAB", "2", U_THRICE, False),
        _o("celecoxib", "118020101", "セレコックス錠１００ｍｇ", "TAB", "1", U_TWICE),
        _o("pregabalin", "123598701", "リリカＯＤ錠７５ｍｇ", "TAB", "1", U_TWICE),
        # respiratory / allergy
        _o("carbocisteine", "100657201", "ムコダイン錠５００ｍｇ", "TAB", "1", U_THRICE, False),
        _o("montelukast", "113937501", "シングレア錠１０ｍｇ", "TAB", "1", U_BEDTIME),
        _o("theophylline", "101547101", "テオドール錠２００ｍｇ", "TAB", "1", U_TWICE),
        _o("fexofenadine", "112768501", "アレグラ錠６０ｍｇ", "TAB", "1", U_TWICE),
        _o("levocetirizine", "120911601", "ザイザル錠５ｍｇ", "TAB", "1", U_BEDTIME),
        # anti-infectives
        _o("clarithromycin", "108684901", "クラリス錠２００", "TAB", "1", U_TWICE, False),
        _o("amoxicillin", "100417401", "サワシリンカプセル２５０", "CAP", "1", U_THRICE, False),
        _o("levofloxacin", "119404501", "クラビット錠５００ｍｇ", "TAB", "1", U_MORNING, False),
        _o("cefcapene", "108718701", "フロモックス錠１００ｍｇ", "TAB", "1", U_THRICE, False),
        _o("oseltamivir", "113467801", "タミフルカプセル７５", "CAP", "1", U_TWICE, False),
        _o("valacyclovir", "112962401", "バルトレックス錠５００", "TAB", "2", U_THRICE, False),
        # endocrine
        _o("levothyroxine", "100880701", "チラーヂンＳ錠５０μｇ", "TAB", "1", U_MORNING),
        _o("thiamazole", "100858201", "メルカゾール錠５ｍｇ", "TAB", "1", U_MORNING),
        _o("prednisolone", "100868101", "プレドニン錠５ｍｇ", "TAB", "1", U_MORNING),
        # CNS
        _o("zolpidem", "111498401", "マイスリー錠５ｍｇ", "TAB", "1", U_BEDTIME),
        _o("etizolam", "106254701", "デパス錠０．５ｍｇ", "TAB", "1", U_THRICE),
        _o("brotizolam", "107960201", "レンドルミンＤ錠０．２５ｍｇ", "TAB", "1", U_BEDTIME),
        _o("suvorexant", "123548201", "ベルソムラ錠１５ｍｇ", "TAB", "1", U_BEDTIME),
        _o("donepezil", "112997301", "アリセプトＤ錠５ｍｇ", "TAB", "1", U_MORNING),
        _o("levodopa", "100838601", "メネシット配合錠１００", "TAB", "1", U_THRICE),
        _o("valproate", "101839901", "デパケンＲ錠２００", "TAB", "1", U_TWICE),
        _o("escitalopram", "121362501", "レクサプロ錠１０ｍｇ", "TAB", "1", U_EVENING),
        # urology / bone / blood
        _o("tamsulosin", "111911201", "ハルナールＤ錠０．２ｍｇ", "TAB", "1", U_MORNING),
        _o("solifenacin", "116993401", "ベシケアＯＤ錠５ｍｇ", "TAB", "1", U_MORNING),
        _o("alendronate", "111933501", "ボナロン錠３５ｍｇ", "TAB", "1", U_WEEKLY),
        _o("eldecalcitol", "120823201", "エディロールカプセル０．７５μｇ", "CAP", "1", U_MORNING),
        _o("ferrous", "104866501", "フェロミア錠５０ｍｇ", "TAB", "2", U_MORNING),
    )
}


# -------------------------------------------------------------------------------------- injection drugs
@dataclass(frozen=True, slots=True)
class InjectionDrug:
    key: str
    hot9: str
    name: str
    unit: str  # MR9P: HON 本, AMP アンプル, VIA バイアル, KIT キット, BAG 袋
    unit_name: str
    volume_ml: int  # volume a base fluid contributes (0 for additives)


INJECTION_DRUGS: dict[str, InjectionDrug] = {
    d.key: d
    for d in (
        InjectionDrug("solita_t3", "620007329", "ソリタ−Ｔ３号輸液５００ｍＬ", "HON", "本", 500),
        InjectionDrug("adona", "620002559", "アドナ注（静脈用）５０ｍｇ", "AMP", "アンプル", 0),
        InjectionDrug("saline100", "620008807", "生理食塩液「ヒカリ」１００ｍＬ", "HON", "本", 100),
        InjectionDrug("saline500", "620007430", "大塚生食注５００ｍＬ", "HON", "本", 500),
        InjectionDrug("glucose5", "620006621", "５％ブドウ糖注射液５００ｍＬ「フソー」", "HON", "本", 500),
        InjectionDrug("lactec", "620007601", "ラクテック注５００ｍＬ", "BAG", "袋", 500),
        InjectionDrug("veen_f", "620006934", "ヴィーンＦ輸液５００ｍＬ", "BAG", "袋", 500),
        InjectionDrug(
            "cefazolin", "620004865", "セファゾリンナトリウム注射用１ｇ「ＮＰ」", "VIA", "バイアル", 0
        ),
        InjectionDrug(
            "ceftriaxone", "620004978", "セフトリアキソンナトリウム静注用１ｇ「日医工」", "VIA", "バイアル", 0
        ),
        InjectionDrug("meropenem", "620003546", "メロペン点滴用バイアル０．５ｇ", "VIA", "バイアル", 0),
        InjectionDrug("unasyn", "620007103", "ユナシン−Ｓ静注用１．５ｇ", "VIA", "バイアル", 0),
        InjectionDrug(
            "vancomycin", "620003815", "塩酸バンコマイシン点滴静注用０．５ｇ", "VIA", "バイアル", 0
        ),
        InjectionDrug(
            "heparin", "620006210", "ヘパリンＮａ注５千単位／５ｍＬ「モチダ」", "VIA", "バイアル", 0
        ),
        InjectionDrug("humulin_r", "620007912", "ヒューマリンＲ注１００単位／ｍＬ", "VIA", "バイアル", 0),
        InjectionDrug("furosemide_inj", "620002807", "ラシックス注２０ｍｇ", "AMP", "アンプル", 0),
        InjectionDrug("methylpred", "620005413", "ソル・メドロール静注用１２５ｍｇ", "VIA", "バイアル", 0),
        InjectionDrug("dexart", "620004120", "デキサート注射液６．６ｍｇ", "AMP", "アンプル", 0),
        InjectionDrug("famotidine_inj", "620004501", "ガスター注射液２０ｍｇ", "AMP", "アンプル", 0),
        InjectionDrug("metoclopramide", "620003312", "プリンペラン注射液１０ｍｇ", "AMP", "アンプル", 0),
        InjectionDrug("acelio", "620009514", "アセリオ静注液１０００ｍｇバッグ", "BAG", "袋", 100),
        InjectionDrug("vitamedin", "620003903", "ビタメジン静注用", "VIA", "バイアル", 0),
        InjectionDrug("kcl", "620008203", "ＫＣＬ補正液１ｍＥｑ／ｍＬ", "AMP", "アンプル", 0),
    )
}


@dataclass(frozen=True, slots=True)
class InjectionRecipe:
    base: str
    additives: tuple[str, ...]
    hours: float
    instruction: str


INJECTION_RECIPES: tuple[InjectionRecipe, ...] = (
    InjectionRecipe("solita_t3", ("adona",), 5, "５時間一定速度で"),
    InjectionRecipe("solita_t3", (), 5, "５時間一定速度で"),
    InjectionRecipe("saline100", ("ceftriaxone",), 0.5, "３０分で"),
    InjectionRecipe("saline100", ("cefazolin",), 0.5, "３０分で"),
    InjectionRecipe("saline100", ("meropenem",), 0.5, "３０分で"),
    InjectionRecipe("saline100", ("unasyn",), 1, "１時間で"),
    InjectionRecipe("saline100", ("vancomycin",), 1, "１時間以上かけて"),
    InjectionRecipe("saline100", ("methylpred",), 1, "１時間で"),
    InjectionRecipe("saline100", ("famotidine_inj",), 0.5, "３０分で"),
    InjectionRecipe("saline100", ("metoclopramide",), 0.5, "３０分で"),
    InjectionRecipe("lactec", (), 4, "４時間で"),
    InjectionRecipe("veen_f", ("vitamedin",), 4, "４時間で"),
    InjectionRecipe("glucose5", ("humulin_r", "kcl"), 6, "６時間一定速度で"),
    InjectionRecipe("saline500", ("heparin",), 24, "２４時間持続"),
    InjectionRecipe("saline100", ("furosemide_inj",), 0.5, "３０分で"),
    InjectionRecipe("acelio", (), 0.25, "１５分で"),
    InjectionRecipe("saline100", ("dexart",), 0.5, "３０分で"),
)


# --------------------------------------------------------------------------------------------- lab items
@dataclass(frozen=True, slots=True)
class LabItem:
    key: str
    jlac10: str
    name: str
    unit: str  # "" when unitless
    low_m: float | None
    high_m: float | None
    low_f: float | None
    high_f: float | None
    mean: float
    sd: float
    decimals: int
    log: bool = False  # draw from a log-normal (skewed analytes: CRP, BNP, TG …)


def _lab(
    key: str,
    code: str,
    name: str,
    unit: str,
    rng_m: tuple[float | None, float | None],
    mean: float,
    sd: float,
    dec: int,
    rng_f: tuple[float | None, float | None] | None = None,
    log: bool = False,
) -> LabItem:
    f = rng_f or rng_m
    return LabItem(key, code, name, unit, rng_m[0], rng_m[1], f[0], f[1], mean, sd, dec, log)


LAB_ITEMS: dict[str, LabItem] = {
    i.key: i
    for i in (
        _lab("tp", "3A010000002327101", "総蛋白", "g/dl", (6.7, 8.3), 7.2, 0.45, 1),
        _lab("alb", "3A015000002327101", "アルブミン", "g/dl", (3.8, 5.2), 4.3, 0.35, 1),
        _lab("ag", "3A016000002327102", "A/G比", "", (1.2, 2.0), 1.5, 0.2, 1),
        _lab("tbil", "3J010000002327101", "総ビリルビン", "mg/dl", (0.4, 1.5), 0.8, 0.3, 1),
        _lab("ast", "3B035000002327201", "AST(GOT)", "U/l", (13, 30), 22, 6, 0),
        _lab("alt", "3B045000002327201", "ALT(GPT)", "U/l", (10, 42), 20, 8, 0, (7, 23)),
        _lab("ldh", "3B050000002327201", "LDH", "U/l", (124, 222), 185, 30, 0),
        _lab("alp", "3B070000002327201", "ALP", "U/l", (38, 113), 75, 20, 0),
        _lab("ggt", "3B090000002327101", "γ−GTP", "U/l", (13, 64), 30, 0.5, 0, (9, 32), log=True),
        _lab("ck", "3B010000002327101", "CK", "U/l", (59, 248), 120, 45, 0, (41, 153)),
        _lab("amy", "3B160000002327101", "アミラーゼ", "U/l", (44, 132), 80, 22, 0),
        _lab("bun", "3C025000002327101", "尿素窒素", "mg/dl", (8, 20), 14, 3.5, 1),
        _lab("cre", "3C015000002327101", "クレアチニン", "mg/dl", (0.65, 1.07), 0.85, 0.13, 2, (0.46, 0.79)),
        _lab("ua", "3C020000002327101", "尿酸", "mg/dl", (3.7, 7.8), 5.6, 1.2, 1, (2.6, 5.5)),
        _lab("egfr", "8A065000002391901", "eGFR", "ml/min/1.73m2", (60, None), 75, 14, 1),
        _lab("na", "3H010000002326101", "ナトリウム", "mmol/l", (138, 145), 141, 1.8, 0),
        _lab("k", "3H015000002326101", "カリウム", "mmol/l", (3.6, 4.8), 4.2, 0.3, 1),
        _lab("cl", "3H020000002326101", "クロール", "mmol/l", (101, 108), 104, 2, 0),
        _lab("ca", "3H030000002326101", "カルシウム", "mg/dl", (8.8, 10.1), 9.4, 0.35, 1),
        _lab("tc", "3F050000002327101", "総コレステロール", "mg/dl", (142, 248), 195, 30, 0),
        _lab("tg", "3F015000002327101", "中性脂肪", "mg/dl", (40, 234), 110, 0.45, 0, (30, 117), log=True),
        _lab("hdl", "3F070000002327101", "HDL−コレステロール", "mg/dl", (38, 90), 58, 13, 0, (48, 103)),
        _lab("ldl", "3F077000002327101", "LDL−コレステロール", "mg/dl", (65, 163), 115, 28, 0),
        _lab("glu", "3D010000001926101", "グルコース", "mg/dl", (73, 109), 95, 10, 0),
        _lab("hba1c", "3D045000002327101", "HbA1c(NGSP)", "%", (4.9, 6.0), 5.5, 0.3, 1),
        _lab("crp", "5C070000002306001", "CRP", "mg/dl", (0.0, 0.14), 0.08, 0.9, 2, log=True),
        _lab("wbc", "2A990000001930952", "白血球数", "10^3/μl", (3.3, 8.6), 5.8, 1.4, 1),
        _lab("rbc", "2A020000001930101", "赤血球数", "10^6/μl", (4.35, 5.55), 4.8, 0.35, 2, (3.86, 4.92)),
        _lab("hb", "2A030000001930101", "ヘモグロビン", "g/dl", (13.7, 16.8), 14.8, 1.0, 1, (11.6, 14.8)),
        _lab("ht", "2A040000001930102", "ヘマトクリット", "%", (40.7, 50.1), 44.0, 3.0, 1, (35.1, 44.4)),
        _lab("plt", "2A050000001930101", "血小板数", "10^3/μl", (158, 348), 240, 50, 0),
        _lab("ptinr", "2B030000002231151", "PT−INR", "", (0.85, 1.15), 1.0, 0.07, 2),
        _lab("aptt", "2B020000002231101", "APTT", "秒", (24.0, 34.0), 29.0, 2.5, 1),
        _lab("bnp", "4Q015000002227101", "BNP", "pg/ml", (0.0, 18.4), 12, 1.0, 1, log=True),
        _lab("tsh", "4A055000002327101", "TSH", "μIU/ml", (0.61, 4.23), 1.8, 0.5, 2, log=True),
        _lab("ft4", "4A060000002327101", "FT4", "ng/dl", (0.75, 1.45), 1.1, 0.15, 2),
    )
}


@dataclass(frozen=True, slots=True)
class Battery:
    code: str
    name: str
    specimen: str  # JLAC10 specimen code^name
    items: tuple[str, ...]


BATTERIES: dict[str, Battery] = {
    "chem": Battery(
        "E002",
        "生化学的検査",
        "023^血清",
        (
            "tp",
            "alb",
            "ag",
            "tbil",
            "ast",
            "alt",
            "ldh",
            "alp",
            "ggt",
            "bun",
            "cre",
            "ua",
            "egfr",
            "na",
            "k",
            "cl",
        ),
    ),
    "cbc": Battery("E001", "血液学的検査", "019^全血", ("wbc", "rbc", "hb", "ht", "plt")),
    "lipid": Battery("E003", "脂質検査", "023^血清", ("tc", "tg", "hdl", "ldl")),
    "dm": Battery("E004", "糖代謝検査", "019^全血", ("glu", "hba1c")),
    "coag": Battery("E005", "凝固検査", "022^血漿", ("ptinr", "aptt")),
    "crp": Battery("E006", "免疫血清検査", "023^血清", ("crp",)),
    "thyroid": Battery("E007", "内分泌検査", "023^血清", ("tsh", "ft4")),
    "bnp": Battery("E008", "心機能マーカー", "022^血漿", ("bnp",)),
    "extra": Battery("E009", "生化学追加", "023^血清", ("ck", "amy", "ca")),
}

# Condition profiles shift lab distributions: profile -> item -> (mean, sd).
LAB_PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "dm": {"hba1c": (7.6, 1.1), "glu": (158, 45)},
    "ckd": {"cre": (1.9, 0.7), "bun": (32, 9), "egfr": (34, 11), "k": (4.8, 0.45), "hb": (11.2, 1.2)},
    "lipid": {"ldl": (162, 30), "tc": (245, 32), "tg": (180, 0.45)},
    "liver": {"ast": (62, 25), "alt": (78, 30), "ggt": (110, 0.6), "plt": (150, 40)},
    "hf": {"bnp": (320, 1.0), "na": (137, 2.5)},
    "warfarin": {"ptinr": (2.3, 0.45)},
    "gout": {"ua": (8.4, 1.0)},
    "anemia": {"hb": (9.4, 1.1), "ht": (29.5, 3.5), "rbc": (3.4, 0.35)},
    "thyroid_low": {"tsh": (9.5, 0.6), "ft4": (0.7, 0.12)},
    "thyroid_high": {"tsh": (0.02, 0.8), "ft4": (2.8, 0.6)},
    "inflammation": {"crp": (6.5, 0.8), "wbc": (12.5, 3.0)},
    "steroid": {"glu": (128, 30)},
}


# ------------------------------------------------------------------------------------------- diagnoses
@dataclass(frozen=True, slots=True)
class Diagnosis:
    key: str
    medis: str  # MEDIS disease exchange code (8 digits)
    name: str
    icd10: str
    chronic: bool
    weight: float  # relative prevalence in an adult outpatient population
    min_age: int
    sex: str  # "" any, "M" or "F" only
    dept: str
    drugs: tuple[str, ...]  # candidate oral drugs
    labs: tuple[str, ...]  # lab batteries ordered at visits
    profile: str = ""  # LAB_PROFILES key
    age_slope: float = 1.0  # how strongly prevalence rises with age


DIAGNOSES: dict[str, Diagnosis] = {
    d.key: d
    for d in (
        Diagnosis(
            "dm",
            "20057734",
            "糖尿病",
            "E14",
            True,
            10,
            30,
            "",
            "05",
            ("metformin", "sitagliptin", "glimepiride", "dapagliflozin"),
            ("dm", "chem"),
            "dm",
            1.5,
        ),
        Diagnosis(
            "t2dm",
            "20063287",
            "２型糖尿病",
            "E11",
            True,
            14,
            30,
            "",
            "05",
            ("metformin", "sitagliptin", "empagliflozin", "linagliptin", "vildagliptin", "voglibose"),
            ("dm", "chem", "lipid"),
            "dm",
            1.5,
        ),
        Diagnosis(
            "t1dm", "20063272", "１型糖尿病", "E10", True, 0.6, 5, "", "05", (), ("dm", "chem"), "dm", 0
        ),
        Diagnosis(
            "htn",
            "20059853",
            "本態性高血圧症",
            "I10",
            True,
            30,
            30,
            "",
            "02",
            ("amlodipine", "norvasc", "candesartan", "olmesartan", "telmisartan", "azilsartan"),
            ("chem",),
            "",
            2,
        ),
        Diagnosis(
            "dyslipidemia",
            "20081226",
            "脂質異常症",
            "E785",
            True,
            20,
            30,
            "",
            "01",
            ("atorvastatin", "rosuvastatin", "pitavastatin", "ezetimibe"),
            ("lipid", "chem"),
            "lipid",
            1.2,
        ),
        Diagnosis(
            "hypercholesterolemia",
            "20059327",
            "高コレステロール血症",
            "E780",
            True,
            6,
            30,
            "",
            "01",
            ("rosuvastatin", "atorvastatin"),
            ("lipid",),
            "lipid",
            1.0,
        ),
        Diagnosis(
            "hyperuricemia",
            "20058763",
            "高尿酸血症",
            "E790",
            True,
            5,
            30,
            "M",
            "01",
            ("febuxostat", "allopurinol"),
            ("chem",),
            "gout",
            1.0,
        ),
        Diagnosis(
            "gout",
            "20069021",
            "痛風",
            "M109",
            True,
            2,
            30,
            "M",
            "09",
            ("febuxostat", "celecoxib"),
            ("chem",),
            "gout",
            0.8,
        ),
        Diagnosis(
            "af",
            "20051287",
            "心房細動",
            "I489",
            True,
            5,
            50,
            "",
            "02",
            ("apixaban", "edoxaban", "rivaroxaban", "warfarin", "dabigatran", "bisoprolol"),
            ("coag", "cbc", "chem"),
            "",
            3,
        ),
        Diagnosis(
            "chf",
            "20062194",
            "慢性心不全",
            "I509",
            True,
            4,
            55,
            "",
            "02",
            ("furosemide", "spironolactone", "carvedilol", "sacubitril", "dapagliflozin"),
            ("bnp", "chem"),
            "hf",
            3,
        ),
        Diagnosis(
            "angina",
            "20063512",
            "狭心症",
            "I209",
            True,
            4,
            45,
            "",
            "02",
            ("aspirin", "clopidogrel", "bisoprolol", "amlodipine"),
            ("chem", "lipid"),
            "",
            2.5,
        ),
        Diagnosis(
            "old_mi",
            "20085164",
            "陳旧性心筋梗塞",
            "I252",
            True,
            2,
            50,
            "",
            "02",
            ("aspirin", "clopidogrel", "rosuvastatin", "carvedilol"),
            ("chem", "lipid"),
            "",
            2.5,
        ),
        Diagnosis(
            "cerebral_inf",
            "20068132",
            "脳梗塞",
            "I639",
            True,
            3,
            55,
            "",
            "07",
            ("clopidogrel", "aspirin", "atorvastatin"),
            ("chem", "coag"),
            "",
            3,
        ),
        Diagnosis(
            "cerebral_seq",
            "20087432",
            "脳梗塞後遺症",
            "I693",
            True,
            2,
            60,
            "",
            "07",
            ("clopidogrel", "aspirin"),
            ("chem",),
            "",
            3,
        ),
        Diagnosis(
            "dvt",
            "20070153",
            "深部静脈血栓症",
            "I802",
            True,
            0.8,
            40,
            "",
            "02",
            ("edoxaban", "rivaroxaban", "warfarin"),
            ("coag", "cbc"),
            "",
            1.5,
        ),
        Diagnosis(
            "asthma",
            "20054563",
            "気管支喘息",
            "J459",
            True,
            6,
            3,
            "",
            "04",
            ("montelukast", "theophylline"),
            ("cbc", "crp"),
            "",
            0,
        ),
        Diagnosis(
            "copd",
            "20082357",
            "慢性閉塞性肺疾患",
            "J449",
            True,
            3,
            50,
            "M",
            "04",
            ("theophylline",),
            ("cbc", "crp"),
            "",
            2.5,
        ),
        Diagnosis(
            "pneumonia",
            "20061453",
            "肺炎",
            "J189",
            False,
            2,
            0,
            "",
            "04",
            ("levofloxacin", "amoxicillin", "clarithromycin"),
            ("cbc", "crp", "chem"),
            "inflammation",
            1.5,
        ),
        Diagnosis(
            "uri",
            "20054801",
            "急性上気道炎",
            "J069",
            False,
            6,
            0,
            "",
            "01",
            ("acetaminophen", "carbocisteine", "kakkonto"),
            ("cbc",),
            "",
            0,
        ),
        Diagnosis(
            "influenza",
            "20061872",
            "インフルエンザ",
            "J111",
            False,
            2,
            0,
            "",
            "01",
            ("oseltamivir", "acetaminophen"),
            ("crp",),
            "inflammation",
            0,
        ),
        Diagnosis(
            "gastritis",
            "20054174",
            "胃炎",
            "K297",
            True,
            6,
            15,
            "",
            "03",
            ("rebamipide", "famotidine", "lansoprazole"),
            ("cbc", "chem"),
            "",
            0.5,
        ),
        Diagnosis(
            "gerd",
            "20071235",
            "逆流性食道炎",
            "K210",
            True,
            6,
            20,
            "",
            "03",
            ("vonoprazan", "esomeprazole", "lansoprazole"),
            ("chem",),
            "",
            1,
        ),
        Diagnosis(
            "gastric_ulcer",
            "20054216",
            "胃潰瘍",
            "K259",
            True,
            2,
            20,
            "",
            "03",
            ("vonoprazan", "rebamipide"),
            ("cbc", "chem"),
            "",
            1,
        ),
        Diagnosis(
            "constipation",
            "20060734",
            "便秘症",
            "K590",
            True,
            6,
            0,
            "",
            "03",
            ("magmitt", "mgo_powder"),
            (),
            "",
            1.2,
        ),
        Diagnosis(
            "ckd",
            "20080865",
            "慢性腎臓病",
            "N189",
            True,
            5,
            40,
            "",
            "06",
            ("olmesartan", "febuxostat", "dapagliflozin"),
            ("chem", "cbc"),
            "ckd",
            3,
        ),
        Diagnosis(
            "osteoporosis",
            "20056432",
            "骨粗鬆症",
            "M819",
            True,
            8,
            50,
            "F",
            "09",
            ("alendronate", "eldecalcitol"),
            ("extra",),
            "",
            2.5,
        ),
        Diagnosis(
            "knee_oa",
            "20052917",
            "変形性膝関節症",
            "M179",
            True,
            6,
            45,
            "",
            "09",
            ("loxoprofen", "celecoxib"),
            (),
            "",
            2,
        ),
        Diagnosis(
            "lss",
            "20079216",
            "腰部脊柱管狭窄症",
            "M4806",
            True,
            3,
            50,
            "",
            "09",
            ("pregabalin", "celecoxib"),
            (),
            "",
            2,
        ),
        Diagnosis(
            "ra",
            "20058812",
            "関節リウマチ",
            "M069",
            True,
            1.2,
            25,
            "F",
            "09",
            ("prednisolone", "celecoxib"),
            ("cbc", "crp", "chem"),
            "steroid",
            0.5,
        ),
        Diagnosis(
            "hypothyroid",
            "20056185",
            "甲状腺機能低下症",
            "E039",
            True,
            2,
            20,
            "F",
            "05",
            ("levothyroxine",),
            ("thyroid",),
            "thyroid_low",
            0.8,
        ),
        Diagnosis(
            "graves",
            "20064728",
            "バセドウ病",
            "E050",
            True,
            0.8,
            15,
            "F",
            "05",
            ("thiamazole",),
            ("thyroid", "cbc"),
            "thyroid_high",
            0,
        ),
        Diagnosis(
            "insomnia",
            "20062817",
            "不眠症",
            "G470",
            True,
            6,
            20,
            "",
            "14",
            ("zolpidem", "brotizolam", "suvorexant"),
            (),
            "",
            1.2,
        ),
        Diagnosis(
            "depression",
            "20063916",
            "うつ病",
            "F329",
            True,
            3,
            15,
            "",
            "14",
            ("escitalopram", "etizolam"),
            (),
            "",
            0,
        ),
        Diagnosis(
            "dementia",
            "20089713",
            "アルツハイマー型認知症",
            "G309",
            True,
            3,
            65,
            "",
            "07",
            ("donepezil",),
            ("chem",),
            "",
            4,
        ),
        Diagnosis(
            "parkinson",
            "20061628",
            "パーキンソン病",
            "G20",
            True,
            1,
            55,
            "",
            "07",
            ("levodopa",),
            ("chem",),
            "",
            3,
        ),
        Diagnosis(
            "epilepsy", "20055493", "てんかん", "G409", True, 1, 0, "", "07", ("valproate",), ("chem",), "", 0
        ),
        Diagnosis(
            "bph", "20067319", "前立腺肥大症", "N40", True, 6, 50, "M", "11", ("tamsulosin",), (), "", 3
        ),
        Diagnosis(
            "oab", "20076341", "過活動膀胱", "N328", True, 3, 50, "", "11", ("solifenacin",), (), "", 2
        ),
        Diagnosis("cataract", "20053912", "白内障", "H259", True, 6, 55, "", "12", (), (), "", 3),
        Diagnosis("glaucoma", "20054027", "緑内障", "H409", True, 3, 40, "", "12", (), (), "", 2),
        Diagnosis(
            "allergic_rhinitis",
            "20052387",
            "アレルギー性鼻炎",
            "J304",
            True,
            8,
            3,
            "",
            "13",
            ("fexofenadine", "levocetirizine", "montelukast"),
            (),
            "",
            0,
        ),
        Diagnosis(
            "atopic",
            "20051834",
            "アトピー性皮膚炎",
            "L209",
            True,
            3,
            0,
            "",
            "10",
            ("fexofenadine", "levocetirizine"),
            (),
            "",
            0,
        ),
        Diagnosis(
            "zoster",
            "20060118",
            "帯状疱疹",
            "B029",
            False,
            1.5,
            20,
            "",
            "10",
            ("valacyclovir", "acetaminophen"),
            ("cbc",),
            "",
            1.5,
        ),
        Diagnosis(
            "ida",
            "20056912",
            "鉄欠乏性貧血",
            "D509",
            True,
            3,
            15,
            "F",
            "01",
            ("ferrous",),
            ("cbc",),
            "anemia",
            0,
        ),
        Diagnosis(
            "hcv", "20071856", "慢性Ｃ型肝炎", "B182", True, 1, 40, "", "03", (), ("chem", "cbc"), "liver", 2
        ),
        Diagnosis(
            "fatty_liver",
            "20057291",
            "脂肪肝",
            "K760",
            True,
            5,
            30,
            "",
            "03",
            (),
            ("chem", "lipid"),
            "liver",
            1,
        ),
        Diagnosis("gallstone", "20058137", "胆石症", "K802", True, 2, 40, "", "03", (), ("chem",), "", 1.5),
        Diagnosis(
            "colon_polyp", "20072534", "大腸ポリープ", "K635", True, 3, 40, "", "03", (), ("cbc",), "", 2
        ),
        Diagnosis(
            "uti",
            "20061932",
            "尿路感染症",
            "N390",
            False,
            2,
            0,
            "F",
            "11",
            ("levofloxacin", "cefcapene"),
            ("cbc", "crp"),
            "inflammation",
            1.5,
        ),
        Diagnosis(
            "lung_ca",
            "20050781",
            "肺癌",
            "C349",
            True,
            1,
            50,
            "",
            "04",
            ("loxoprofen",),
            ("cbc", "chem", "crp"),
            "",
            3,
        ),
        Diagnosis(
            "gastric_ca",
            "20050692",
            "胃癌",
            "C169",
            True,
            1,
            50,
            "",
            "08",
            ("lansoprazole",),
            ("cbc", "chem"),
            "anemia",
            3,
        ),
        Diagnosis(
            "colon_ca",
            "20050865",
            "大腸癌",
            "C189",
            True,
            1,
            50,
            "",
            "08",
            ("magmitt",),
            ("cbc", "chem"),
            "",
            3,
        ),
        Diagnosis(
            "breast_ca", "20050542", "乳癌", "C509", True, 1.2, 35, "F", "08", (), ("cbc", "chem"), "", 1
        ),
        Diagnosis(
            "prostate_ca", "20050918", "前立腺癌", "C61", True, 1.2, 60, "M", "11", (), ("chem",), "", 3
        ),
    )
}

# Drugs whose use shifts labs (beyond the diagnosis profile).
DRUG_LAB_PROFILES: dict[str, str] = {"warfarin": "warfarin", "prednisolone": "steroid"}


# -------------------------------------------------------------------------------------------- allergens
@dataclass(frozen=True, slots=True)
class Allergen:
    category: str  # HL7 0127 code
    category_name: str
    code: str
    name: str
    system: str  # HOT9, JC10, 99XYZ
    reactions: tuple[str, ...]
    weight: float


ALLERGENS: tuple[Allergen, ...] = (
    Allergen(
        "DA", "薬剤アレルギー", "1", "ペニシリン", "99XYZ", ("発疹", "じんましん", "アナフィラキシー"), 6
    ),
    Allergen(
        "DA", "薬剤アレルギー", "100417401", "サワシリンカプセル２５０", "HOT9", ("発疹", "じんましん"), 3
    ),
    Allergen(
        "DA", "薬剤アレルギー", "104592901", "ロキソニン錠６０ｍｇ", "HOT9", ("喘息発作", "じんましん"), 4
    ),
    Allergen("DA", "薬剤アレルギー", "119404501", "クラビット錠５００ｍｇ", "HOT9", ("発疹", "めまい"), 2),
    Allergen("DA", "薬剤アレルギー", "108718701", "フロモックス錠１００ｍｇ", "HOT9", ("発疹", "下痢"), 2),
    Allergen("DA", "薬剤アレルギー", "111435801", "バイアスピリン錠１００ｍｇ", "HOT9", ("喘息発作",), 1),
    Allergen("DA", "薬剤アレルギー", "106824501", "アリナミン", "HOT9", ("のどの渇きが止まらない",), 1),
    Allergen("DA", "薬剤アレルギー", "2", "ヨード造影剤", "99XYZ", ("嘔吐", "じんましん", "血圧低下"), 3),
    Allergen(
        "FA", "食物アレルギー", "5A1002411023006", "ソバ", "JC10", ("湿疹", "呼吸困難", "アナフィラキシー"), 3
    ),
    Allergen("FA", "食物アレルギー", "5A1002401023006", "卵白", "JC10", ("湿疹", "嘔吐"), 4),
    Allergen("FA", "食物アレルギー", "5A1002402023006", "牛乳", "JC10", ("下痢", "湿疹"), 3),
    Allergen(
        "FA", "食物アレルギー", "5A1002404023006", "小麦", "JC10", ("じんましん", "アナフィラキシー"), 3
    ),
    Allergen("FA", "食物アレルギー", "5A1002413023006", "エビ", "JC10", ("じんましん", "口唇腫脹"), 3),
    Allergen("FA", "食物アレルギー", "5A1002414023006", "カニ", "JC10", ("じんましん",), 2),
    Allergen(
        "FA", "食物アレルギー", "5A1002418023006", "ピーナッツ", "JC10", ("呼吸困難", "アナフィラキシー"), 2
    ),
    Allergen("FA", "食物アレルギー", "5A1002420023006", "大豆", "JC10", ("湿疹",), 1),
    Allergen(
        "LA", "花粉アレルギー", "5A1002216023023", "スギ", "JC10", ("目のかゆみ", "くしゃみ", "鼻水"), 12
    ),
    Allergen("LA", "花粉アレルギー", "5A1002217023023", "ヒノキ", "JC10", ("目のかゆみ", "くしゃみ"), 5),
    Allergen("LA", "花粉アレルギー", "5A1002203023023", "ブタクサ", "JC10", ("くしゃみ", "鼻閉"), 2),
    Allergen("EA", "環境アレルギー", "5A1102700023023", "ハウスダスト", "JC10", ("くしゃみ", "咳"), 6),
    Allergen(
        "EA", "環境アレルギー", "5A1102701023023", "ヤケヒョウヒダニ", "JC10", ("くしゃみ", "喘息発作"), 4
    ),
    Allergen("EA", "環境アレルギー", "5A1102702023023", "ネコ皮屑", "JC10", ("目のかゆみ", "じんましん"), 2),
    Allergen("MA", "その他アレルギー", "3", "ラテックス", "99XYZ", ("接触皮膚炎", "じんましん"), 1),
)

SEVERITIES: tuple[tuple[str, str], ...] = (("MI", "軽度"), ("MO", "中等度"), ("SV", "重症"))
