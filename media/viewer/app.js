// app.js: the three screens (passphrase, search, summary), keyboard handling and the lock.

const config = JSON.parse(document.getElementById('hakobune-config').textContent);
const disk = new Disk(config);
const $ = (id) => document.getElementById(id);
const IDLE_LOCK_MS = 30 * 60 * 1000;
const LABELS = [
  ['hospital_name', '元病院'], ['hospital', '元病院コード'],
  ['recipient_name', '受入病院'], ['recipient', '受入病院'],
  ['order_id', '開示指示'], ['order', '開示指示'],
  ['created_at', '作成日時'], ['disk_id', 'ディスクID'],
];

let index = [];
let patients = 0;
let results = [];
let lastOpened = null;
let busy = false;
let searchTimer = 0;
let idleTimer = 0;
let timing = null;

function show(screen) {
  for (const name of ['unlock', 'search', 'summary']) $(`screen-${name}`).hidden = name !== screen;
  document.body.dataset.state = screen === 'unlock' ? 'locked' : screen;
}

function say(id, text, kind) {
  const e = $(id);
  e.textContent = text;
  e.className = kind ? `message ${kind}` : 'message';
}

function showLabel() {
  const label = { disk_id: config.disk_id, ...(config.label || {}) };
  const dl = $('disk-label');
  const seen = new Set();
  const rows = [];
  for (const [key, term] of LABELS) {
    if (label[key] && !seen.has(term)) {
      seen.add(term);
      rows.push(el('dt', {}, term), el('dd', {}, String(label[key])));
    }
  }
  for (const [key, value] of Object.entries(label)) {
    if (!LABELS.some(([k]) => k === key) && value) rows.push(el('dt', {}, key), el('dd', {}, String(value)));
  }
  dl.replaceChildren(...rows);
}

// ------------------------------------------------------------------------------------------ unlock
const OPEN_ERRORS = {
  passphrase: 'パスフレーズが違います',
  wrap: 'このディスクの鍵情報を読めません（viewer.html が壊れている可能性があります）。',
  unsupported: 'このブラウザでは開けません。Microsoft Edge・Google Chrome・Firefox の新しい版で開いてください。',
  missing: 'データファイルが見つかりません。viewer フォルダが viewer.html と同じ場所にあるか確認してください。',
  corrupt: 'データファイルが壊れているか、このディスクのものではありません。',
};

async function unlock(ev) {
  ev.preventDefault();
  if (busy) return;
  const input = $('passphrase');
  if (!normalizePassphrase(input.value)) {
    say('unlock-message', 'パスフレーズを入力してください', 'error');
    input.focus();
    return;
  }
  busy = true;
  $('unlock-button').disabled = true;
  say('unlock-message', '');
  $('unlock-progress').textContent = '鍵を確認しています…';
  const t0 = performance.now();
  try {
    await disk.unlock(input.value);
    const t1 = performance.now();
    input.value = '';
    let done = 0;
    const total = config.index.length;
    $('unlock-progress').textContent = '患者索引を読み込んでいます…';
    let buildMs = 0;
    const parts = config.index.map((name) => disk.open(name).then((doc) => {
      done += 1;
      $('unlock-progress').textContent = `患者索引を読み込んでいます… ${done}/${total}`;
      const t = performance.now();
      const part = new IndexPart(doc);
      buildMs += performance.now() - t;
      return part;
    }));
    const [meta, ...loaded] = await Promise.all([disk.open(config.meta), ...parts]);
    setVariants(meta.variants);
    index = loaded;
    patients = meta.patients;
    const t2 = performance.now();
    timing = { unlockMs: t1 - t0, indexMs: t2 - t1, buildMs, readyMs: t2 - t0, patients, chunks: { ...disk.stats } };
  } catch (e) {
    disk.lock();
    index = [];
    const kind = e instanceof ViewerError ? e.kind : 'corrupt';
    say('unlock-message', OPEN_ERRORS[kind] || OPEN_ERRORS.corrupt, 'error');
    $('unlock-progress').textContent = '';
    input.focus();
    input.select();
    return;
  } finally {
    busy = false;
    $('unlock-button').disabled = false;
  }
  $('unlock-progress').textContent = '';
  $('bar-status').textContent = `収録患者 ${patients.toLocaleString('ja-JP')} 人`;
  $('lock').hidden = false;
  show('search');
  say('search-message', patients ? '氏名または生年月日を入力してください。' : 'このディスクには患者が収録されていません。');
  $('q-name').focus();
  resetIdle();
}

function lock(reason) {
  disk.lock();
  index = [];
  results = [];
  patients = 0;
  lastOpened = null;
  timing = null;
  setVariants({});
  $('results').replaceChildren();
  $('summary').replaceChildren();
  for (const id of ['q-name', 'q-birth', 'passphrase']) $(id).value = '';
  $('q-sex').value = '';
  $('bar-status').textContent = '';
  $('lock').hidden = true;
  say('search-message', '');
  say('unlock-message', reason || '', reason ? 'info' : '');
  show('unlock');
  $('passphrase').focus();
  clearTimeout(idleTimer);
}

function resetIdle() {
  clearTimeout(idleTimer);
  if (document.body.dataset.state !== 'locked') {
    idleTimer = setTimeout(() => lock('一定時間操作がなかったためロックしました。もう一度パスフレーズを入力してください。'), IDLE_LOCK_MS);
  }
}

// ------------------------------------------------------------------------------------------ search
function runSearch() {
  clearTimeout(searchTimer);
  if (!index.length) return;
  let q;
  try {
    q = parseQuery($('q-name').value, $('q-birth').value, $('q-sex').value);
  } catch (e) {
    if (!(e instanceof QueryError)) throw e;
    $('results').replaceChildren();
    results = [];
    say('search-message', e.message || '氏名または生年月日を入力してください。', e.message ? 'error' : '');
    return;
  }
  const t0 = performance.now();
  const found = searchIndex(index, q);
  const t1 = performance.now();
  results = found.shown;
  $('results').replaceChildren(...results.map((r, n) => el('li', {}, resultButton(r, n))));
  if (timing) timing.lastSearch = { scanMs: t1 - t0, drawMs: performance.now() - t1, found: found.total };
  if (!found.total) say('search-message', '該当する患者が見つかりません。カナ・漢字・生年月日の書き方を変えてお試しください。', 'error');
  else if (found.total > results.length) say('search-message', `${found.total.toLocaleString('ja-JP')} 件該当。上位 ${results.length} 件を表示しています。生年月日などを加えて絞り込んでください。`);
  else say('search-message', `${found.total} 件該当（点数の高い順）。本人確認のうえ開いてください。`);
}

function resultButton(r, n) {
  const p = r.row;
  return el('button', { type: 'button', class: 'result', 'data-n': n },
    el('span', { class: 'r-name' },
      el('span', { class: 'r-kanji' }, fullName(p.fj, p.gj) || '（漢字氏名なし）'),
      el('span', { class: 'r-kana' }, fullName(p.fn, p.gn))),
    el('span', { class: 'r-birth' }, birthText(p.birth), ' ', el('strong', {}, ageOf(p.birth))),
    el('span', { class: 'r-sex' }, SEX_SHORT[p.sex] || '不明'),
    el('span', { class: 'r-id' }, 'ID ', p.id),
    el('span', { class: 'r-why' }, `${r.score}点 ${r.reasons.join(' / ')}`));
}

function scheduleSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(runSearch, 200);
}

async function openPatient(n) {
  const r = results[n];
  if (!r) return;
  lastOpened = n;
  say('search-message', 'サマリーを読み込んでいます…');
  let s;
  try {
    const chunk = await disk.summaries(r.row.chunk);
    s = chunk[r.row.pos];
    if (!s || !s.patient || s.patient.id !== r.row.id) throw new ViewerError('corrupt');
  } catch (e) {
    const kind = e instanceof ViewerError ? e.kind : 'corrupt';
    if (kind === 'locked') return;
    say('search-message', OPEN_ERRORS[kind] || OPEN_ERRORS.corrupt, 'error');
    return;
  }
  say('search-message', '');
  const article = $('summary');
  renderSummary(article, s, config);
  show('summary');
  fitToPage(article);
  $('summary-title').focus();
  window.scrollTo(0, 0);
}

function backToSearch() {
  show('search');
  const button = lastOpened === null ? null : document.querySelector(`#results button[data-n="${lastOpened}"]`);
  (button || $('q-name')).focus();
}

function moveInResults(ev) {
  const buttons = Array.from(document.querySelectorAll('#results button.result'));
  const at = buttons.indexOf(document.activeElement);
  if (ev.key === 'ArrowDown' && buttons.length) {
    ev.preventDefault();
    buttons[Math.min(at + 1, buttons.length - 1)].focus();
  } else if (ev.key === 'ArrowUp' && at >= 0) {
    ev.preventDefault();
    if (at === 0) $('q-name').focus();
    else buttons[at - 1].focus();
  } else if (ev.key === 'Escape' && at >= 0) {
    ev.preventDefault();
    $('q-name').focus();
  }
}

function printSummary() {
  fitToPage($('summary'));
  window.print();
}

// ------------------------------------------------------------------------------------------ wiring
showLabel();
$('unlock-form').addEventListener('submit', unlock);
$('show-passphrase').addEventListener('change', (ev) => {
  $('passphrase').type = ev.target.checked ? 'text' : 'password';
});
$('search-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  runSearch();
  const first = document.querySelector('#results button.result');
  if (first && results.length === 1) first.focus();
});
for (const id of ['q-name', 'q-birth']) {
  $(id).addEventListener('input', scheduleSearch);
  $(id).addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowDown') {
      runSearch();
      moveInResults(ev);
    }
  });
}
$('q-sex').addEventListener('change', runSearch);
$('results').addEventListener('click', (ev) => {
  const button = ev.target.closest('button.result');
  if (button) openPatient(Number(button.dataset.n));
});
$('results').addEventListener('keydown', moveInResults);
$('back').addEventListener('click', backToSearch);
$('print').addEventListener('click', printSummary);
$('lock').addEventListener('click', () => lock(''));
window.addEventListener('beforeprint', () => fitToPage($('summary')));
document.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape' && document.body.dataset.state === 'summary') {
    ev.preventDefault();
    backToSearch();
  }
});
for (const type of ['keydown', 'pointerdown', 'wheel', 'touchstart']) {
  document.addEventListener(type, resetIdle, { passive: true });
}
show('unlock');
$('passphrase').focus();

// For tests and the benchmark: timings and the query-side normalizers (no patient data).
window.hakobuneViewer = Object.freeze({
  timing: () => timing,
  normalize: Object.freeze({ kanaKey, kanaLoose, foldKanji, nameAsWritten, isKana, splitName, parseDate }),
});
