// summary.js: the one-page Japanese summary of one patient (media/viewer_summary.py makes its data).
// Every text goes through textContent / text nodes: no HTML string is ever built from data (and the
// page's Trusted Types policy would refuse one).

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false || c === '') continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const SEX_LABEL = { M: '男性', F: '女性', O: 'その他', U: '不明' };
const SEX_SHORT = { M: '男', F: '女', O: '他', U: '不明' };
const ERA_FORMAT = (() => {
  try {
    return new Intl.DateTimeFormat('ja-JP-u-ca-japanese', { era: 'long', year: 'numeric', month: 'long', day: 'numeric', timeZone: 'UTC' });
  } catch (e) {
    return null;
  }
})();

function ymd(text) {
  const m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})/.exec(text || '');
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

/** 和暦 of an ISO date (1980-04-01 → 昭和55年4月1日), '' when not a full date. */
function japaneseDate(text) {
  const d = ymd(text);
  if (!d || ERA_FORMAT === null) return '';
  return ERA_FORMAT.format(new Date(Date.UTC(d[0], d[1] - 1, d[2])));
}

/** Age in whole years today (this PC's clock), '' when the birth date is not a full date. */
function ageOf(birth, today = new Date()) {
  const d = ymd(birth);
  if (!d) return '';
  let age = today.getFullYear() - d[0];
  if (today.getMonth() + 1 < d[1] || (today.getMonth() + 1 === d[1] && today.getDate() < d[2])) age -= 1;
  return age >= 0 ? `${age}歳` : '';
}

function birthText(birth) {
  const era = japaneseDate(birth);
  return era ? `${birth}（${era}）` : birth || '不明';
}

function fullName(family, given) {
  return [family, given].filter((x) => x).join('\u3000');
}

function dateTime(text) {
  const m = /^([0-9]{4}-[0-9]{2}-[0-9]{2})(?:T([0-9]{2}:[0-9]{2}))?/.exec(text || '');
  return m ? (m[2] ? `${m[1]} ${m[2]}` : m[1]) : text || '';
}

function postal(code) {
  return /^[0-9]{7}$/.test(code) ? `〒${code.slice(0, 3)}-${code.slice(3)} ` : code ? `〒${code} ` : '';
}

function emptyNote(empty, what) {
  if (!empty) return `対象期間内の${what}なし`;
  if (empty.code === 'nilknown') return '記録なし';
  return empty.text || `${what}の記録なし`;
}

function table(head, rows, cls) {
  return el('table', { class: cls },
    el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows));
}

// ------------------------------------------------------------------------------------ sections
function headerSection(s, config) {
  const p = s.patient;
  const src = s.source || {};
  const fact = (term, ...value) => [el('dt', {}, term), el('dd', {}, ...value)];
  const wide = (term, ...value) => [el('dt', {}, term), el('dd', { class: 'wide' }, ...value)];
  return el('header', { class: 'sum-head' },
    el('div', { class: 'sum-names' },
      el('p', { class: 'sum-kana' }, fullName(p.family_kana, p.given_kana)),
      el('h2', { class: 'sum-kanji', id: 'summary-title', tabindex: '-1' }, fullName(p.family_kanji, p.given_kanji) || fullName(p.family_kana, p.given_kana) || '（氏名なし）')),
    el('dl', { class: 'sum-facts' },
      fact('患者ID', el('strong', {}, p.id)),
      fact('性別', el('strong', {}, SEX_LABEL[p.sex] || '不明')),
      wide('生年月日', birthText(p.birth), '　', el('strong', {}, ageOf(p.birth))),
      wide('住所', postal(p.postal || ''), p.address || '記録なし'),
      wide('元病院', src.hospital || '', src.code ? `（医療機関コード ${src.code}）` : ''),
      wide('データ時点', dateTime(s.as_of), config.disk_id ? `　ディスク ${config.disk_id}` : '')));
}

function allergySection(s) {
  const items = s.allergies || [];
  const box = el('section', { class: items.length ? 'allergy has' : 'allergy none', 'aria-labelledby': 'h-allergy' });
  if (items.length) {
    box.append(el('h3', { id: 'h-allergy' }, `⚠ アレルギー（${items.length}件）`));
    box.append(el('ul', {}, items.map((a) => el('li', { class: a.critical ? 'critical' : null },
      a.category ? el('span', { class: 'cat' }, a.category) : null,
      el('strong', { class: 'substance' }, a.substance),
      a.reactions.length ? ` — ${a.reactions.join('、')}` : '',
      a.severity ? `（${a.severity}）` : '',
      a.critical ? el('span', { class: 'tag' }, '重篤') : null,
      a.onset ? el('span', { class: 'muted' }, ` 発症 ${a.onset}`) : null))));
    return box;
  }
  const empty = (s.empty || {}).allergies;
  box.append(el('h3', { id: 'h-allergy' }, 'アレルギー'));
  if (empty && empty.code === 'nilknown') {
    box.append(el('p', { class: 'none-main' }, 'アレルギー情報なし'));
    box.append(el('p', { class: 'none-note' }, '元病院の記録にアレルギーの登録がありません（記録なし）。アレルギーが無いことの確認ではありません。本人・家族に確認してください。'));
  } else {
    box.append(el('p', { class: 'none-main' }, '記録なし'));
    box.append(el('p', { class: 'none-note' }, `${empty && empty.text ? empty.text : 'このサマリーにアレルギー情報が含まれていません'}。本人・家族に確認してください。`));
  }
  return box;
}

function problemSection(s) {
  const items = s.problems || [];
  const body = items.length
    ? table(['病名', 'ICD-10', '発症', '状態'], items.map((c) => el('tr', { class: c.status === 'active' ? null : 'done' },
      el('td', {}, c.name), el('td', {}, c.icd10), el('td', {}, c.onset),
      el('td', {}, c.status === 'active' ? '継続' : c.resolved ? `解決 ${c.resolved}` : '解決'))), 'grid')
    : el('p', { class: 'empty' }, emptyNote((s.empty || {}).problems, '病名'));
  return el('section', { class: 'block', 'aria-labelledby': 'h-problems' }, el('h3', { id: 'h-problems' }, '病名'), body);
}

const ORDER_STATUS = { active: '処方中', completed: '期間終了', stopped: '中止', 'on-hold': '保留', cancelled: '取消' };
const GIVEN_STATUS = { completed: '投与済', stopped: '中断', 'not-done': '未実施', 'in-progress': '投与中' };

function statusText(m) {
  if (m.event === 'given') return GIVEN_STATUS[m.status] || '投与';
  return ORDER_STATUS[m.status] || m.status || '';
}

function period(start, end) {
  if (!start) return '';
  return end && end !== start ? `${start}〜${end}` : start;
}

function medicationSection(s) {
  const items = (s.medications || []).slice().sort((a, b) => (a.status === 'active' ? 0 : 1) - (b.status === 'active' ? 0 : 1));
  const body = items.length
    ? table(['薬剤', '1回量', '1日量', '用法', '日数', '期間', '状態'], items.map((m) => el('tr', { class: m.status === 'active' ? 'current' : 'done' },
      el('td', {}, m.drug, m.route ? el('span', { class: 'muted' }, `（${m.route}）`) : null),
      el('td', {}, m.dose), el('td', {}, m.daily), el('td', {}, m.usage),
      el('td', {}, m.days ? `${m.days}日` : ''), el('td', {}, period(m.start, m.end)),
      el('td', {}, statusText(m)))), 'grid')
    : el('p', { class: 'empty' }, (s.injections || []).length ? '対象期間内の処方なし' : emptyNote((s.empty || {}).medications, '処方'));
  return el('section', { class: 'block', 'aria-labelledby': 'h-meds' }, el('h3', { id: 'h-meds' }, '処方（内服・外用）'), body);
}

function injectionSection(s) {
  const items = (s.injections || []).slice().sort((a, b) => (a.status === 'active' ? 0 : 1) - (b.status === 'active' ? 0 : 1));
  const body = items.length
    ? table(['薬剤', '総量', '速度', '経路', '指示', '期間', '状態'], items.map((j) => el('tr', { class: j.status === 'active' ? 'current' : 'done' },
      el('td', {}, j.drugs.map((d, i) => (i ? [el('br'), d] : d))),
      el('td', {}, j.total), el('td', {}, j.rate), el('td', {}, j.route), el('td', {}, j.instructions),
      el('td', {}, period(j.start, j.end)), el('td', {}, statusText(j)))), 'grid')
    : el('p', { class: 'empty' }, (s.medications || []).length ? '対象期間内の注射なし' : emptyNote((s.empty || {}).medications, '注射'));
  return el('section', { class: 'block', 'aria-labelledby': 'h-inj' }, el('h3', { id: 'h-inj' }, '注射'), body);
}

const FLAGS = {
  H: ['↑', 'high', '高値'], L: ['↓', 'low', '低値'],
  HH: ['↑↑', 'high crit', '異常高値'], HU: ['↑↑', 'high crit', '著しい高値'],
  LL: ['↓↓', 'low crit', '異常低値'], LU: ['↓↓', 'low crit', '著しい低値'],
  A: ['＊', 'abn', '異常'], AA: ['＊＊', 'abn crit', '重大な異常'],
};

function labValue(r) {
  if (!r) return '';
  const f = FLAGS[r.flag];
  if (!f) return el('span', {}, r.value, r.flag && r.flag !== 'N' ? ` ${r.flag}` : '');
  return el('span', { class: `flag ${f[1]}`, title: f[2] }, r.value, ` ${f[0]}${r.flag}`);
}

function monthDay(date) {
  return /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(date || '') ? date.slice(5) : date || '';
}

function labSection(s) {
  const groups = s.labs || [];
  const latest = groups.reduce((d, g) => (g.results[0] && g.results[0].date > d ? g.results[0].date : d), '');
  const title = latest ? `検査（最新 ${latest}、↑高値 ↓低値、日付は月-日）` : '検査';
  const section = el('section', { class: 'block', 'aria-labelledby': 'h-labs' }, el('h3', { id: 'h-labs' }, title));
  if (!groups.length) {
    section.append(el('p', { class: 'empty' }, '対象期間内の検査結果なし'));
    return section;
  }
  const older = (r) => (r ? [labValue(r), el('span', { class: 'muted' }, ` ${monthDay(r.date)}`)] : '');
  const rows = groups.map((g) => {
    const [last, prev, prev2] = g.results;
    return el('tr', { class: last && FLAGS[last.flag] ? 'flagged' : null },
      el('th', { scope: 'row' }, g.name),
      el('td', { class: 'val' }, labValue(last), g.unit ? el('span', { class: 'unit' }, ` ${g.unit}`) : null),
      el('td', {}, g.range),
      el('td', {}, last ? monthDay(last.date) : ''),
      el('td', { class: 'prev' }, older(prev)),
      el('td', { class: 'prev' }, older(prev2)));
  });
  const head = ['項目', '結果', '基準値', '日付', '前回', '前々回'];
  if (rows.length <= 12) {
    section.append(table(head, rows, 'grid labs'));
  } else {
    const half = Math.ceil(rows.length / 2);
    section.append(el('div', { class: 'two' }, table(head, rows.slice(0, half), 'grid labs'), table(head, rows.slice(half), 'grid labs')));
  }
  return section;
}

/** The summary article's content for summary `s`. */
function renderSummary(container, s, config) {
  container.replaceChildren(
    headerSection(s, config),
    allergySection(s),
    problemSection(s),
    medicationSection(s),
    injectionSection(s),
    labSection(s),
    el('footer', { class: 'sum-foot' },
      el('p', {}, '災害時の診療継続のため元病院の記録から自動作成した要約です。処方・アレルギーは必ず本人・家族・お薬手帳等で確認してください。'),
      el('p', { class: 'muted' }, `表示・印刷 ${dateTime(new Date(Date.now() - new Date().getTimezoneOffset() * 60000).toISOString())}`)));
}

/** Scale the summary so that it prints on one A4 page.  The paper is laid out on screen at its printed
 * size, so the scale is found here: zoom, measure, repeat (text does not shrink quite linearly), then
 * leave the zoom to the print style sheet (--fit). */
function fitToPage(container) {
  container.style.removeProperty('--fit');
  container.style.removeProperty('zoom');
  const pageHeight = (297 * 96) / 25.4 - 6; // CSS px of an A4 page, less a rounding margin
  let fit = 1;
  for (let i = 0; i < 6; i++) {
    const height = container.getBoundingClientRect().height;
    if (height <= pageHeight || fit <= 0.4) break;
    fit = Math.max(0.4, fit * (pageHeight / height) * 0.995);
    container.style.setProperty('zoom', String(fit));
  }
  container.style.removeProperty('zoom');
  if (fit < 1) container.style.setProperty('--fit', String(fit));
}
