// normalize.js: the query side of restore/search/normalize.py, repeated in JavaScript.  The disk's index
// holds keys made by the Python functions; a typed query must be folded the same way, so every function
// here mirrors one there (tests/media/test_viewer_browser.py compares them on the same inputs).

// Python's str.isspace() characters, spelled out (JavaScript's \s differs at U+001C-1F and U+FEFF).
const SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const NAME_SEPARATORS = new RegExp(`[${SPACE}・･,、，.'’\\-‐]+`, 'gu');
const SPLIT_NAME = new RegExp(`[${SPACE},、，・･]+`, 'u');
const STRIP = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, 'gu');
const VARIATION_SELECTORS = /[\uFE00-\uFE0F\u{E0100}-\u{E01EF}]/gu;

function strip(s) {
  return s.replace(STRIP, '');
}

function translator(from, to) {
  const map = new Map();
  const a = Array.from(from);
  const b = Array.from(to);
  a.forEach((c, i) => map.set(c, b[i]));
  return map;
}

function translate(s, map) {
  let out = '';
  for (const c of s) {
    const t = map.get(c);
    out += t === undefined ? c : t;
  }
  return out;
}

const SMALL = translator(
  'ァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ',
  'アイウエオツヤユヨワカケクシストヌハヒフヘホムラリルレロ',
);
const OLD_KANA = new Map(Object.entries({ ヂ: 'ジ', ヅ: 'ズ', ヲ: 'オ', ヰ: 'イ', ヱ: 'エ', ヴ: 'ブ', ヷ: 'バ', ヸ: 'ビ', ヹ: 'ベ', ヺ: 'ボ' }));
const VOWELS = { ア: 'a', イ: 'i', ウ: 'u', エ: 'e', オ: 'o' };
const ROWS = {
  a: 'アカサタナハマヤラワガザダバパ',
  i: 'イキシチニヒミリギジヂビピ',
  u: 'ウクスツヌフムユルグズヅブプヴ',
  e: 'エケセテネヘメレゲゼデベペ',
  o: 'オコソトノホモヨロヲゴゾドボポ',
};
const VOWEL_OF = new Map();
for (const [v, chars] of Object.entries(ROWS)) for (const c of chars) VOWEL_OF.set(c, v);

/** NFKC without variation selectors (glyph choices only). */
function nfkc(s) {
  return s.normalize('NFKC').replace(VARIATION_SELECTORS, '');
}

/** Hiragana to katakana (U+3041-3096 shift by 0x60, ゝゞ to ヽヾ). */
function toKatakana(s) {
  let out = '';
  for (const c of s) {
    const cp = c.codePointAt(0);
    if (cp >= 0x3041 && cp <= 0x3096) out += String.fromCodePoint(cp + 0x60);
    else if (cp === 0x309d || cp === 0x309e) out += String.fromCodePoint(cp + 0x60);
    else out += c;
  }
  return out;
}

/** NFKC, case folded, katakana, separators removed, recomposed (normalize.py _clean). */
function clean(s) {
  const t = toKatakana(nfkc(nfkc(s).toLowerCase()));
  return t.replace(NAME_SEPARATORS, '').normalize('NFC');
}

const kanaKey = clean;
const nameAsWritten = clean;

function isKana(s) {
  const body = nfkc(s).replace(NAME_SEPARATORS, '');
  if (!body) return false;
  for (const c of body) {
    const cp = c.codePointAt(0);
    if (!((cp >= 0x3041 && cp <= 0x309f) || (cp >= 0x30a0 && cp <= 0x30ff))) return false;
  }
  return true;
}

function dropVoicing(s) {
  const d = s.normalize('NFD');
  if (!d.includes('\u3099') && !d.includes('\u309a')) return s.normalize('NFC');
  return d.replace(/[\u3099\u309a]/g, '').normalize('NFC');
}

/** Tolerant reading key: small kana, voicing marks, old kana and long vowels folded. */
function kanaLoose(s) {
  const t = dropVoicing(translate(translate(kanaKey(s), SMALL), OLD_KANA));
  let out = '';
  let prev = null;
  for (const c of t) {
    if (c === 'ー') continue;
    const v = VOWELS[c];
    if (v !== undefined && prev !== null && (v === prev || (prev === 'o' && v === 'u') || (prev === 'e' && v === 'i'))) {
      continue;
    }
    out += c;
    prev = VOWEL_OF.has(c) ? VOWEL_OF.get(c) : null;
  }
  return out;
}

// The disk's part of the kanji-variant table (variant → canonical), set from the meta chunk.
let KANJI = new Map([['ヶ', 'ケ'], ['ヵ', 'カ']]);

function setVariants(variants) {
  KANJI = new Map(Object.entries(variants || {}));
  KANJI.set('ヶ', 'ケ');
  KANJI.set('ヵ', 'カ');
}

/** Kanji name key: as written, 々 spelled out, variants folded to the canonical character. */
function foldKanji(s) {
  const chars = Array.from(clean(s));
  const spelled = chars.map((c, i) => (c === '々' && i > 0 ? chars[i - 1] : c));
  return translate(spelled.join(''), KANJI);
}

/** Family and given name when separated, else the whole (normalize.py split_name). */
function splitName(s) {
  const parts = strip(nfkc(s)).split(SPLIT_NAME).filter((p) => p);
  if (parts.length <= 1) return parts;
  return [parts[0], parts.slice(1).join('')];
}

// ------------------------------------------------------------------------------------------- dates
const KANJI_DIGITS = { 〇: 0, 零: 0, 一: 1, 二: 2, 三: 3, 四: 4, 五: 5, 六: 6, 七: 7, 八: 8, 九: 9 };
const KANJI_UNITS = { 十: 10, 百: 100, 千: 1000 };
const KANJI_NUMBER = /[〇零一二三四五六七八九十百千]+/g;

function kanjiNumber(s) {
  const chars = Array.from(s);
  if (chars.every((c) => c in KANJI_DIGITS)) return Number(chars.map((c) => KANJI_DIGITS[c]).join(''));
  let total = 0;
  let digit = 0;
  for (const c of chars) {
    if (c in KANJI_DIGITS) digit = KANJI_DIGITS[c];
    else {
      total += (digit || 1) * KANJI_UNITS[c];
      digit = 0;
    }
  }
  return total + digit;
}

const ERAS = { M: 1867, T: 1911, S: 1925, H: 1988, R: 2018 };
const ERA_NAMES = [
  ['明治', 'M'], ['大正', 'T'], ['昭和', 'S'], ['平成', 'H'], ['令和', 'R'],
  ['明', 'M'], ['大', 'T'], ['昭', 'S'], ['平', 'H'], ['令', 'R'],
];
const SEP = '\\s*(?:[./\\-年月]\\s*)?';
const ERA_RE = new RegExp(`^([MTSHR])\\s*([0-9]{1,2})${SEP}(?:([0-9]{1,2})${SEP}(?:([0-9]{1,2})\\s*日?)?)?$`, 'i');
const WEST_RE = new RegExp(`^([0-9]{4})${SEP}(?:([0-9]{1,2})${SEP}(?:([0-9]{1,2})\\s*日?)?)?$`);
const COMPACT_RE = /^([0-9]{4})([0-9]{2})([0-9]{2})$/;
const ISO_RE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/;

/** A typed birth date {year, month, day} (month/day may be null), or null when it is not one. */
function parseDate(s) {
  let m = ISO_RE.exec(s);
  if (m) return withDigits({ year: Number(m[1]), month: Number(m[2]), day: Number(m[3]) });
  let t = strip(nfkc(s));
  for (const [name, initial] of ERA_NAMES) {
    if (t.startsWith(name)) {
      t = initial + t.slice(name.length);
      break;
    }
  }
  t = t.replace(/(?<=[MTSHRmtshr])\s*元/g, '1');
  t = strip(t.replace(KANJI_NUMBER, (x) => String(kanjiNumber(x))).replace(/日/g, ''));
  let year;
  let parts;
  if ((m = ERA_RE.exec(t))) {
    year = ERAS[m[1].toUpperCase()] + Number(m[2]);
    parts = [m[3], m[4]];
  } else if ((m = COMPACT_RE.exec(t) || WEST_RE.exec(t))) {
    year = Number(m[1]);
    parts = [m[2], m[3]];
  } else {
    return null;
  }
  const month = parts[0] ? Number(parts[0]) : null;
  const day = parts[1] && month !== null ? Number(parts[1]) : null;
  return withDigits({ year, month, day });
}

/** The date as YYYYMMDD text for digit comparisons (normalize.py compare_dates), '' when partial. */
function withDigits(q) {
  q.digits = q.month === null || q.day === null ? '' : pad(q.year, 4) + pad(q.month, 2) + pad(q.day, 2);
  return q;
}

function pad(n, width) {
  return String(n).padStart(width, '0');
}

const date = (w, r) => Object.freeze({ w, r });
const D_NONE = date(0, '');
const D_EXACT = date(1, '生年月日一致');
const D_SWAP = date(0.8, '生年月日: 月日入れ替え');
const D_DAY = date(0.75, '生年月日: 日が1違い');
const D_MONTH = date(0.72, '生年月日: 月が1違い');
const D_YEAR = date(0.72, '生年月日: 年が1違い');
const D_DIGIT = date(0.65, '生年月日: 1桁違い');
const D_ADJACENT = date(0.6, '生年月日: 隣り合う数字の入れ替え');
const D_TWO = date(0.45, '生年月日: 2項目一致');
const D_YEAR_MONTH_ONLY = date(0.35, '生年月一致');
const D_YEAR_ONLY_TYPED = date(0.2, '生年一致');
const D_YEAR_ONLY = date(0.15, '生年のみ一致');
const D_MISMATCH = date(0, '生年月日不一致');

/** How a typed date relates to a patient's birth date (YYYYMMDD text, '' when unknown, and its year,
 * month and day as numbers): {w: weight 0..1, r: reason}, as normalize.py compare_dates. */
function compareDates(q, birth, y, m, d) {
  if (birth.length !== 8) return D_NONE;
  if (q.month === null || q.day === null) {
    if (q.year === y && (q.month === null || q.month === m)) return q.month !== null ? D_YEAR_MONTH_ONLY : D_YEAR_ONLY_TYPED;
    return D_NONE;
  }
  const qy = q.year;
  const qm = q.month;
  const qd = q.day;
  if (qy === y && qm === m && qd === d) return D_EXACT;
  if (qy === y && qd === m && qm === d) return D_SWAP;
  const nSame = (qy === y) + (qm === m) + (qd === d);
  if (nSame === 2) {
    if (qd !== d && Math.abs(qd - d) === 1) return D_DAY;
    if (qm !== m && Math.abs(qm - m) === 1) return D_MONTH;
    if (qy !== y && Math.abs(qy - y) === 1) return D_YEAR;
  }
  const a = q.digits;
  if (a.length === 8) {
    let first = -1;
    let second = -1;
    let count = 0;
    for (let i = 0; i < 8; i++) {
      if (a[i] !== birth[i]) {
        count += 1;
        if (count === 1) first = i;
        else if (count === 2) second = i;
        else break;
      }
    }
    if (count === 1) return D_DIGIT;
    if (count === 2 && second === first + 1 && a[first] === birth[second] && a[second] === birth[first]) return D_ADJACENT;
  }
  if (nSame === 2) return D_TWO;
  if (qy === y) return D_YEAR_ONLY;
  return D_MISMATCH;
}
