// search.js: ranking as restore/search/index.py scores candidates (name 50, birth date 35, sex 5, same
// reasons), over every patient of the disk (a scan of 100k rows: tens of milliseconds), plus a prefix
// match so a desk can type the first kana of a name.

const W_NAME = 50;
const W_BIRTH = 35;
const W_SEX = 5;
const SEX_MISMATCH = -10;
const MAX_RESULTS = 100;

class QueryError extends Error {}

function partOf(s) {
  if (isKana(s)) return { kana: true, strict: kanaKey(s), loose: kanaLoose(s) };
  return { kana: false, strict: nameAsWritten(s), loose: foldKanji(s) };
}

/** What the desk typed → {parts, birth, sex}; QueryError when nothing usable was typed. */
function parseQuery(name, birthText, sex) {
  let birth = null;
  if (strip(birthText)) {
    birth = parseDate(birthText);
    if (birth === null) {
      throw new QueryError('生年月日を読み取れません。例: 1980-04-01、19800401、S55.4.1、昭和55年4月1日');
    }
  }
  const parts = splitName(name).map(partOf);
  if (!parts.length && birth === null) throw new QueryError('');
  return { parts, birth, sex: sex === 'M' || sex === 'F' ? sex : '' };
}

/** Levenshtein distance of a and b is exactly 1 (no allocation: it runs for most rows of a scan). */
function withinOne(a, b) {
  if (a.length > b.length) {
    const t = a;
    a = b;
    b = t;
  }
  const la = a.length;
  const lb = b.length;
  if (lb - la > 1 || a === b) return false;
  let i = 0;
  while (i < la && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  const skip = la === lb ? 1 : 0; // a substitution skips one in both, an insertion one in b only
  for (let j = i + skip; j < la; j++) if (a.charCodeAt(j) !== b.charCodeAt(j + 1 - skip)) return false;
  return true;
}

// Outcomes are shared constants: a scan of 100k patients allocates nothing for those that do not match.
const outcome = (w, r) => Object.freeze({ w, r });
const NO_MATCH = outcome(0, '');
const KANA_EXACT = outcome(1, 'カナ一致');
const KANA_LOOSE = outcome(0.9, 'カナ類似（長音・小書き・濁点の違い）');
const KANA_ONE = outcome(0.55, 'カナ1文字違い');
const KANA_PREFIX = outcome(0.5, 'カナ前方一致');
const KANJI_EXACT = outcome(1, '漢字一致');
const KANJI_VARIANT = outcome(0.95, '漢字異体字一致');
const KANJI_ONE = outcome(0.45, '漢字1文字違い');
const KANJI_PREFIX = outcome(0.45, '漢字前方一致');

/** How one typed part matches one stored name (strict and loose forms). */
function matchPart(part, strict, loose) {
  if (!loose && !strict) return NO_MATCH;
  if (part.kana) {
    if (part.strict === strict) return KANA_EXACT;
    if (part.loose === loose) return KANA_LOOSE;
    if (loose.length >= 3 && withinOne(part.loose, loose)) return KANA_ONE;
    if (part.loose.length >= 2 && loose.startsWith(part.loose)) return KANA_PREFIX;
    return NO_MATCH;
  }
  if (part.strict === strict) return KANJI_EXACT;
  if (part.loose === loose) return KANJI_VARIANT;
  if (loose.length >= 2 && withinOne(part.loose, loose)) return KANJI_ONE;
  if (part.loose.length >= 2 && loose.startsWith(part.loose)) return KANJI_PREFIX;
  return NO_MATCH;
}

/** One index part with its elided keys resolved once (see media/viewer.py INDEX_COLUMNS): plain arrays
 * that share the display strings wherever a key equals them. */
class IndexPart {
  constructor(doc) {
    const c = doc.columns;
    const n = doc.n;
    const resolve = (col, base) => {
      const out = new Array(n);
      for (let i = 0; i < n; i++) out[i] = col[i] === null ? base[i] : col[i];
      return out;
    };
    this.n = n;
    this.c = c;
    this.fr = resolve(c.fr, c.fj);
    this.gr = resolve(c.gr, c.gj);
    this.fk = resolve(c.fk, this.fr);
    this.gk = resolve(c.gk, this.gr);
    this.fa = resolve(c.fa, c.fn);
    this.ga = resolve(c.ga, c.gn);
    this.fl = resolve(c.fl, this.fa);
    this.gl = resolve(c.gl, this.ga);
    this.full = null; // full-name keys, made on the first one-word query
    this.dates = null; // birth dates as YYYYMMDD and numbers, made on the first date query
  }

  births() {
    if (this.dates === null) {
      const n = this.n;
      const b8 = new Array(n);
      const y = new Int16Array(n);
      const m = new Int8Array(n);
      const d = new Int8Array(n);
      for (let i = 0; i < n; i++) {
        const b = this.c.b[i];
        const ok = b.length === 10 && b[4] === '-' && b[7] === '-';
        b8[i] = ok ? b.slice(0, 4) + b.slice(5, 7) + b.slice(8) : '';
        if (ok) {
          y[i] = Number(b.slice(0, 4));
          m[i] = Number(b.slice(5, 7));
          d[i] = Number(b.slice(8));
        }
      }
      this.dates = { b8, y, m, d };
    }
    return this.dates;
  }

  fullNames() {
    if (this.full === null) {
      const cat = (a, b) => a.map((x, i) => x + b[i]);
      this.full = { a: cat(this.fa, this.ga), l: cat(this.fl, this.gl), r: cat(this.fr, this.gr), k: cat(this.fk, this.gk) };
    }
    return this.full;
  }

  row(i) {
    const c = this.c;
    return {
      id: c.id[i], fj: c.fj[i], gj: c.gj[i], fn: c.fn[i], gn: c.gn[i], birth: c.b[i], sex: c.x[i],
      chunk: c.c[i], pos: c.p[i],
    };
  }
}

const NO_NAME = Object.freeze({ total: 0, reasons: [] });

/** The name part of a candidate's score: {total, reasons} (NO_NAME when nothing matches). */
function nameScore(q, part, i) {
  if (q.parts.length === 2) {
    const [fam, giv] = q.parts;
    const f = fam.kana ? matchPart(fam, part.fa[i], part.fl[i]) : matchPart(fam, part.fr[i], part.fk[i]);
    const g = giv.kana ? matchPart(giv, part.ga[i], part.gl[i]) : matchPart(giv, part.gr[i], part.gk[i]);
    if (f.w === 0 && g.w === 0) { // typed given name first?
      const sf = fam.kana ? matchPart(fam, part.ga[i], part.gl[i]) : matchPart(fam, part.gr[i], part.gk[i]);
      const sg = giv.kana ? matchPart(giv, part.fa[i], part.fl[i]) : matchPart(giv, part.fr[i], part.fk[i]);
      if (sf.w > 0 && sg.w > 0) {
        return { total: ((0.8 * (sf.w + sg.w)) / 2) * W_NAME, reasons: ['氏名: 姓と名が逆順', `姓: ${sg.r}`, `名: ${sf.r}`] };
      }
      return NO_NAME;
    }
    if (f.w === 1 && g.w === 1) {
      if (fam.kana && giv.kana) return { total: W_NAME, reasons: ['カナ氏名一致'] };
      return { total: W_NAME, reasons: [!(fam.kana || giv.kana) ? '漢字氏名一致' : '氏名一致'] };
    }
    if (f.r === g.r && f.w > 0) return { total: ((f.w + g.w) / 2) * W_NAME, reasons: [`氏名: ${f.r}`] };
    const reasons = [f.r ? `姓: ${f.r}` : '姓不一致', g.r ? `名: ${g.r}` : '名不一致'];
    if (f.w === 0 && g.w >= 0.9) reasons[0] = '姓不一致（改姓の可能性）';
    return { total: ((f.w + g.w) / 2) * W_NAME, reasons };
  }
  const p = q.parts[0];
  const full = part.fullNames();
  const fg = p.kana ? matchPart(p, full.a[i], full.l[i]) : matchPart(p, full.r[i], full.k[i]);
  if (fg === KANA_EXACT || fg === KANJI_EXACT) return { total: W_NAME, reasons: [p.kana ? 'カナ氏名一致' : '漢字氏名一致'] };
  const f = p.kana ? matchPart(p, part.fa[i], part.fl[i]) : matchPart(p, part.fr[i], part.fk[i]);
  const g = p.kana ? matchPart(p, part.ga[i], part.gl[i]) : matchPart(p, part.gr[i], part.gk[i]);
  let best = fg.w;
  let label = '氏名';
  let why = fg.r;
  if (f.w * 0.6 > best) [best, label, why] = [f.w * 0.6, '姓のみ入力', f.r];
  if (g.w * 0.4 > best) [best, label, why] = [g.w * 0.4, '名のみ入力', g.r];
  if (best === 0) return NO_NAME;
  return { total: best * W_NAME, reasons: [`${label}: ${why}`] };
}

/** Ranked candidates over every index part: {total, shown: [{row, score, reasons}]}. */
function searchIndex(parts, q) {
  const hits = [];
  const near = [];
  // Without a name only the typed date and its day/month swap count (nearer dates only when none
  // matches), as restore's blocking keys do: a birth date alone must not list a thousand neighbours.
  const dateOnly = q.parts.length === 0;
  for (const part of parts) {
    const dates = q.birth === null ? null : part.births();
    if (q.parts.length === 1) part.fullNames();
    for (let i = 0; i < part.n; i++) {
      let name = NO_NAME;
      if (!dateOnly) {
        name = nameScore(q, part, i);
        if (name.total === 0 && q.birth === null) continue;
      }
      let total = name.total;
      let why = null;
      if (q.birth !== null) {
        const date = compareDates(q.birth, dates.b8[i], dates.y[i], dates.m[i], dates.d[i]);
        if (dateOnly && date.w < 0.8) {
          if (date.w >= 0.6) near.push({ part, i, score: date.w * W_BIRTH, reasons: [date.r] });
          continue;
        }
        if (!dateOnly && name.total === 0 && date.w < 0.6) continue;
        total += date.w * W_BIRTH;
        why = date.r;
      }
      let sexWhy = null;
      if (q.sex) {
        const sex = part.c.x[i];
        if (sex === q.sex) {
          total += W_SEX;
          sexWhy = '性別一致';
        } else if (sex === 'M' || sex === 'F') {
          total += SEX_MISMATCH;
          sexWhy = '性別不一致';
        }
      }
      if (total > 0) {
        const reasons = name.reasons.slice();
        if (why) reasons.push(why);
        if (sexWhy) reasons.push(sexWhy);
        hits.push({ part, i, score: Math.round(total * 10) / 10, reasons });
      }
    }
  }
  const found = hits.length ? hits : near;
  for (const h of found) h.key = h.part.fa[h.i] + h.part.ga[h.i] + '\u0000' + h.part.c.id[h.i];
  found.sort((a, b) => b.score - a.score || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return {
    total: found.length,
    shown: found.slice(0, MAX_RESULTS).map((h) => ({ row: h.part.row(h.i), score: h.score, reasons: h.reasons })),
  };
}
