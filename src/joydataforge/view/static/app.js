// joyforge view: the page's whole script. Plain DOM, no framework, no build step, nothing loaded from elsewhere.
// Views are routed by the URL hash (#/ records, #/record/<rid>, #/summary) so that a reload or the back button
// keeps filters, search and page. Every piece of data reaches the page through textContent, never as HTML.
'use strict';

const PAGE_SIZE = 50;
const state = { info: null, fields: null, values: {}, polling: false, phase: null };

// ------------------------------------------------------------------ small helpers

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function fmt(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'number') return Number.isInteger(value) ? value.toLocaleString('en') : String(+value.toFixed(4));
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function pretty(value) { return JSON.stringify(value, null, 2); }
// replaceChildren with h()'s rules: arrays flattened, null/false left out.
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter(c => c !== null && c !== undefined && c !== false));
  return node;
}
function main() { return document.getElementById('main'); }
function panel(type, title, ...body) {
  return h('section', { class: 'panel', 'data-type': type }, h('h3', { text: title }), h('div', { class: 'body' }, body));
}
function kv(pairs) {
  const list = h('dl', { class: 'kv' });
  for (const [key, value] of pairs) {
    if (value === undefined || value === null || value === '') continue;
    list.append(h('dt', { text: key }), h('dd', {}, value instanceof Node ? value : fmt(value)));
  }
  return list;
}
function jsonBlock(value, summary) {
  return h('details', {}, h('summary', { text: summary || 'JSON' }), h('pre', { class: 'json', text: pretty(value) }));
}
function statusBadge(status) { return h('span', { class: `status ${status}`, text: status }); }
function reviewBadges(review) {
  if (!review) return [];
  const out = [];
  if (review.status) out.push(h('span', { class: `badge ${review.status}`, text: review.status }));
  if (review.edited) out.push(h('span', { class: 'badge edited', text: 'edited' }));
  if (review.note) out.push(h('span', { class: 'badge noted', text: 'note', title: review.note }));
  return out;
}
function segments(list) {
  return h('span', {}, (list || []).map(([piece, kind]) => h('span', { class: `seg-${kind}`, text: piece })));
}
function recordLink(rid, text) { return h('a', { href: `#/record/${rid}`, text: text || `#${rid}` }); }
function refList(refs, empty) {
  if (!refs || !refs.length) return h('p', { class: 'muted', text: empty || 'none' });
  return h('div', { class: 'links' }, refs.map(r => h('div', {}, recordLink(r.rid, r.id), ' ', h('span', { class: 'muted', text: r.text }))));
}

// ------------------------------------------------------------------ routing

function parseHash() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const cut = hash.indexOf('?');
  return { path: cut < 0 ? hash : hash.slice(0, cut), params: new URLSearchParams(cut < 0 ? '' : hash.slice(cut + 1)) };
}

function listParams(params) {
  const out = new URLSearchParams();
  for (const f of params.getAll('f')) out.append('f', f);
  if (params.get('q')) out.set('q', params.get('q'));
  return out;
}

function go(path, params) {
  const query = params ? params.toString() : '';
  location.hash = `#${path}${query ? '?' + query : ''}`;
}

async function route() {
  const { path, params } = parseHash();
  try {
    if (path.startsWith('/record/')) await showRecord(Number(path.split('/')[2]), params);
    else if (path === '/summary') await showSummary();
    else await showRecords(params);
  } catch (error) {
    main().replaceChildren(h('p', { class: 'error', id: 'view-error', text: `Error: ${error.message}` }));
  }
}

// ------------------------------------------------------------------ header: progress and review counts

async function refreshInfo() {
  state.info = await api('/api/info');
  const info = state.info;
  document.title = `${info.title} · joyforge view`;
  document.getElementById('title').textContent = `joyforge view · ${info.title}`;
  const p = info.progress;
  const progress = document.getElementById('progress');
  if (p.phase === 'failed') progress.textContent = `index failed: ${p.error}`;
  else if (p.phase !== 'done') {
    const share = p.total_bytes ? Math.floor((100 * p.done_bytes) / p.total_bytes) : 0;
    progress.textContent = `indexing (${p.phase}): ${p.rows.toLocaleString('en')} records, ${share}%`;
  } else progress.textContent = `${p.rows.toLocaleString('en')} records indexed` + (p.search === 'scan' ? ' (search scans)' : '');
  progress.dataset.phase = p.phase;
  const r = info.review;
  document.getElementById('review-counts').textContent =
    `review: ${r.accepted} accepted, ${r.rejected} rejected, ${r.edited} edited, ${r.noted} noted`;
  const banner = document.getElementById('banner');
  banner.hidden = !info.stale;
  banner.textContent = info.stale ? 'The data changed since it was indexed: restart joyforge view to see the new records.' : '';
  document.getElementById('nav-summary').hidden = !(info.summary || info.reports);
  return info;
}

async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    while (true) {
      const before = state.phase;
      const info = await refreshInfo();
      state.phase = info.progress.phase;
      if (before && before !== state.phase && parseHash().path === '/') { state.fields = null; await route(); }
      if (info.progress.phase === 'done' || info.progress.phase === 'failed') break;
      await new Promise(resolve => setTimeout(resolve, 1000));
    }
  } finally { state.polling = false; }
}

// ------------------------------------------------------------------ records table

async function fields() {
  if (!state.fields) state.fields = (await api('/api/fields')).fields;
  return state.fields;
}

async function valuesOf(path) {
  if (!state.values[path]) state.values[path] = await api('/api/values?field=' + encodeURIComponent(path));
  return state.values[path];
}

function withFilter(params, filter, replacePrefix) {
  const next = listParams(params);
  const kept = next.getAll('f').filter(f => !(replacePrefix && f.startsWith(replacePrefix)));
  next.delete('f');
  for (const f of kept) next.append('f', f);
  if (filter && !kept.includes(filter)) next.append('f', filter);
  return next;
}

function filterBar(params, info, fieldList) {
  const active = params.getAll('f');
  const statusNow = (active.find(f => f.startsWith('status=')) || '').slice(7);
  const statusChips = [h('span', {
    class: 'chip' + (statusNow ? '' : ' on'), 'data-status': 'all', text: 'all',
    onclick: () => go('/', withFilter(params, null, 'status=')),
  })];
  for (const status of ['kept', 'failed', 'dropped', 'bad']) {
    const count = (info.counts || {})[status] || 0;
    if (!count && status !== 'kept' && statusNow !== status) continue;
    statusChips.push(h('span', {
      class: 'chip' + (statusNow === status ? ' on' : ''), 'data-status': status,
      text: info.progress.phase === 'done' ? `${status} ${count.toLocaleString('en')}` : status,
      onclick: () => go('/', withFilter(params, `status=${status}`, 'status=')),
    }));
  }
  const kindChips = Object.entries(info.kinds || {}).sort((a, b) => b[1] - a[1]).map(([kind, count]) => h('span', {
    class: 'chip' + (active.includes(`kind=${kind}`) ? ' on' : ''), 'data-kind': kind, text: `${kind} ${count.toLocaleString('en')}`,
    onclick: () => go('/', withFilter(params, `kind=${kind}`, 'kind=')),
  }));
  const reviewSelect = h('select', { id: 'review-filter', onchange: e => go('/', withFilter(params, e.target.value ? `review=${e.target.value}` : null, 'review=')) },
    h('option', { value: '', text: 'review: any' }),
    ['accepted', 'rejected', 'edited', 'noted', 'reviewed', 'unreviewed'].map(v => h('option', { value: v, text: `review: ${v}`, selected: active.includes(`review=${v}`) })));

  const search = h('input', { id: 'search', type: 'search', placeholder: 'search ids, prompts, answers…', value: params.get('q') || '' });
  const doSearch = () => { const next = listParams(params); if (search.value.trim()) next.set('q', search.value.trim()); else next.delete('q'); go('/', next); };
  search.addEventListener('keydown', e => { if (e.key === 'Enter') doSearch(); });

  const filterable = fieldList.filter(f => f.filterable);
  const fieldSelect = h('select', { id: 'filter-field' }, h('option', { value: '', text: 'field…' }),
    filterable.map(f => h('option', { value: f.path, text: `${f.path} (${f.kind})` })));
  const opSelect = h('select', { id: 'filter-op' }, ['=', '!=', '>=', '<=', '>', '<', '~', '?', '!?'].map(op => h('option', { value: op, text: op })));
  const valueList = h('datalist', { id: 'filter-values' });
  const valueInput = h('input', { id: 'filter-value', list: 'filter-values', placeholder: 'value' });
  fieldSelect.addEventListener('change', async () => {
    valueList.replaceChildren();
    if (!fieldSelect.value) return;
    const found = await valuesOf(fieldSelect.value);
    if (found.range) valueInput.placeholder = `${fmt(found.range.min)} … ${fmt(found.range.max)}`;
    else valueInput.placeholder = 'value';
    for (const [value, count] of found.values) valueList.append(h('option', { value: fmt(value), text: `${fmt(value)} (${count})` }));
  });
  const addStructured = () => {
    if (!fieldSelect.value) return;
    const op = opSelect.value;
    go('/', withFilter(params, `${fieldSelect.value}${op}${op === '?' || op === '!?' ? '' : valueInput.value}`));
  };
  valueInput.addEventListener('keydown', e => { if (e.key === 'Enter') addStructured(); });
  const typed = h('input', { id: 'filter-text', placeholder: 'or type a filter: score>=60', list: 'field-names' });
  const names = h('datalist', { id: 'field-names' }, filterable.map(f => h('option', { value: f.path })));
  typed.addEventListener('keydown', e => { if (e.key === 'Enter' && typed.value.trim()) go('/', withFilter(params, typed.value.trim())); });

  const chips = active.map(f => h('span', { class: 'chip on filter-chip', 'data-filter': f }, f,
    h('button', { class: 'x', title: 'remove', text: '×', onclick: () => {
      const next = listParams(params); next.delete('f');
      for (const other of active) if (other !== f) next.append('f', other);
      go('/', next);
    } })));
  return h('div', { class: 'filters' },
    h('div', { class: 'line' }, statusChips, reviewSelect),
    kindChips.length ? h('div', { class: 'line' }, kindChips) : null,
    h('div', { class: 'line' }, search, h('button', { id: 'search-go', text: 'Search', onclick: doSearch })),
    h('div', { class: 'line' }, fieldSelect, opSelect, valueInput, valueList,
      h('button', { id: 'filter-add', text: 'Add filter', onclick: addStructured }), typed, names),
    chips.length ? h('div', { class: 'line', id: 'active-filters' }, chips,
      h('a', { href: '#/', text: 'clear all' })) : null);
}

async function showRecords(params) {
  const info = state.info || await refreshInfo();
  const fieldList = await fields();
  const page = Math.max(1, Number(params.get('page') || 1));
  const query = listParams(params);
  query.set('offset', String((page - 1) * PAGE_SIZE));
  query.set('limit', String(PAGE_SIZE));
  if (params.get('sort')) { query.set('sort', params.get('sort')); if (params.get('desc')) query.set('desc', '1'); }
  const bar = filterBar(params, info, fieldList);
  const table = h('div', { id: 'table-wrap' }, h('p', { class: 'muted', text: 'Loading…' }));
  main().replaceChildren(bar, table);
  let data;
  try { data = await api('/api/records?' + query.toString()); } catch (error) {
    table.replaceChildren(h('p', { class: 'error', id: 'filter-error', text: error.message }));
    return;
  }
  const first = data.total ? data.offset + 1 : 0;
  const last = data.offset + data.rows.length;
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  const pageLink = (n, label) => {
    const next = listParams(params); next.set('page', String(n));
    if (params.get('sort')) next.set('sort', params.get('sort'));
    if (params.get('desc')) next.set('desc', '1');
    return h('button', { text: label, disabled: n < 1 || n > pages, onclick: () => go('/', next) });
  };
  const pager = h('div', { class: 'pager' }, pageLink(page - 1, '‹ Prev'),
    h('span', { id: 'total', 'data-total': data.total, text: `${first.toLocaleString('en')}–${last.toLocaleString('en')} of ${data.total.toLocaleString('en')}` }),
    pageLink(page + 1, 'Next ›'),
    params.get('sort') ? h('span', { class: 'muted', id: 'sorted' },
      `sorted by ${params.get('sort')}${params.get('desc') ? ' (descending)' : ''}: records without it are left out · `,
      h('a', { href: `#/?${listParams(params)}`, text: 'unsort' })) : null);
  const recordParams = listParams(params);
  const head = h('tr', {}, ['#', 'status', 'id', 'input', 'output'].map(t => h('th', { text: t })),
    data.columns.map(c => h('th', {}, h('a', { href: '#', text: c, title: 'sort by ' + c, onclick: e => {
      e.preventDefault(); const next = listParams(params); next.set('sort', c);
      if (params.get('sort') === c && !params.get('desc')) next.set('desc', '1'); go('/', next);
    } }))), h('th', { text: 'review' }));
  const body = h('tbody', {}, data.rows.map(row => h('tr', {
    'data-rid': row.rid, 'data-status': row.status,
    onclick: () => go(`/record/${row.rid}`, recordParams),
  },
  h('td', { class: 'mono', text: row.rid }), h('td', {}, statusBadge(row.status)),
  h('td', { class: 'id mono', text: row.id, title: row.id }),
  h('td', { class: 'text', text: row.input, title: row.input }), h('td', { class: 'text', text: row.output, title: row.output }),
  data.columns.map(c => h('td', { text: fmt(row.cells[c]) })),
  h('td', { class: 'review-cell' }, reviewBadges(row.review)))));
  fill(table, pager, h('table', { id: 'records' }, h('thead', {}, head), body),
    data.rows.length ? null : h('p', { class: 'muted', id: 'no-records', text: 'No record matches.' }));
}

// ------------------------------------------------------------------ record page

async function showRecord(rid, params) {
  const query = listParams(params);
  const data = await api(`/api/record/${rid}?` + query.toString());
  const nav = (target, label, key) => target ? h('a', { href: `#/record/${target}?${query}`, id: key, text: label }) : h('span', { class: 'muted', text: label });
  const back = new URLSearchParams(query);
  const head = h('div', { class: 'record-head', id: 'record-head', 'data-rid': data.rid },
    h('a', { href: `#/?${back}`, id: 'back', text: '← records' }), nav(data.previous, '‹ previous', 'prev'), nav(data.next, 'next ›', 'next'),
    statusBadge(data.status), h('h2', { id: 'record-id', text: data.id }),
    h('span', { class: 'muted mono', text: `${data.file}:${data.line}` }),
    data.kinds.map(k => h('span', { class: 'badge', text: k })));
  const parts = [head];
  if (data.reviewable) parts.push(reviewBox(data));
  if (data.error) parts.push(panel('bad', 'Unreadable line', h('p', { class: 'error', text: data.error }), h('pre', { text: data.raw || '' })));
  for (const p of data.panels) {
    const render = RENDERERS[p.type];
    if (render) parts.push(render(p, data));
  }
  if (data.record) {
    parts.push(h('section', { class: 'panel', 'data-type': 'raw' }, h('details', {}, h('summary', { text: 'Record (JSON)' }),
      h('pre', { class: 'json body', id: 'raw-json', text: pretty(data.record) }))));
  }
  fill(main(), parts);
  window.scrollTo(0, 0);
}

function reviewBox(data) {
  let review = data.review || { status: null, note: '', edited: null };
  const stateLine = h('div', { class: 'review-state', id: 'review-state' });
  const note = h('textarea', { id: 'review-note', rows: 2, placeholder: 'a note for this record (kept in the review file)' });
  note.value = review.note || '';
  const editor = h('textarea', { id: 'review-json', spellcheck: false });
  editor.value = pretty(review.edited || data.record);
  const message = h('span', { id: 'review-message', class: 'muted' });
  const show = () => {
    const parts = [];
    parts.push(review.status ? `${review.status}` : 'not reviewed');
    if (review.edited) parts.push('edited');
    if (review.note) parts.push('with a note');
    if (review.at) parts.push(`· ${review.at}`);
    fill(stateLine, h('strong', { text: 'Review: ' }), reviewBadges(review), ' ', parts.join(', '));
    stateLine.dataset.status = review.status || '';
  };
  const save = async (changes) => {
    const body = { status: review.status, note: note.value, edited: review.edited, ...changes };
    try {
      const reply = await api(`/api/review/${data.rid}`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      review = reply.review || { status: null, note: '', edited: null };
      message.textContent = 'saved';
      message.className = 'muted';
      show();
      refreshInfo();
    } catch (error) { message.textContent = error.message; message.className = 'error'; }
  };
  const saveEdit = () => {
    let edited;
    try { edited = JSON.parse(editor.value); } catch (error) { message.textContent = `not JSON: ${error.message}`; message.className = 'error'; return; }
    if (!edited || typeof edited !== 'object' || Array.isArray(edited)) { message.textContent = 'the record must be a JSON object'; message.className = 'error'; return; }
    save({ edited });
  };
  show();
  return h('section', { class: 'panel review', id: 'review', 'data-type': 'review' }, h('h3', { text: 'Human review' }), h('div', { class: 'body' },
    stateLine,
    h('div', { class: 'buttons' },
      h('button', { class: 'accept', id: 'review-accept', text: 'Accept (a)', onclick: () => save({ status: 'accepted' }) }),
      h('button', { class: 'reject', id: 'review-reject', text: 'Reject (r)', onclick: () => save({ status: 'rejected' }) }),
      h('button', { id: 'review-clear', text: 'Undecided', onclick: () => save({ status: null }) }),
      h('button', { id: 'review-save-note', text: 'Save note', onclick: () => save({}) }), message),
    note,
    h('details', { id: 'review-edit' }, h('summary', { text: 'Edit the record (the data file stays as it is; export --reviewed applies the edit)' }),
      editor, h('div', { class: 'buttons' },
        h('button', { class: 'primary', id: 'review-save-edit', text: 'Save edit', onclick: saveEdit }),
        h('button', { id: 'review-drop-edit', text: 'Discard edit', onclick: () => { editor.value = pretty(data.record); save({ edited: null }); } })))));
}

document.addEventListener('keydown', e => {
  if (!parseHash().path.startsWith('/record/')) return;
  const tag = (e.target && e.target.tagName) || '';
  if (tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || e.ctrlKey || e.metaKey || e.altKey) return;
  const click = id => { const el = document.getElementById(id); if (el) el.click(); };
  if (e.key === 'a') click('review-accept');
  else if (e.key === 'r') click('review-reject');
  else if (e.key === 'ArrowRight' || e.key === 'j') click('next');
  else if (e.key === 'ArrowLeft' || e.key === 'k') click('prev');
});

// ------------------------------------------------------------------ panels, one renderer per kind

function messages(list) {
  return h('div', { class: 'dialogue' }, (list || []).map(m => h('div', { class: `msg ${m.role}` },
    h('div', { class: 'role', text: m.role }), h('pre', { text: typeof m.content === 'string' ? m.content : pretty(m.content) }))));
}

function sourceLine(source) {
  if (!source) return '';
  const params = source.params ? Object.entries(source.params).map(([k, v]) => `${k}=${v}`).join(' ') : '';
  return [source.origin, source.model, params, source.sample !== undefined ? `sample ${source.sample}` : '']
    .filter(Boolean).join(' · ');
}

function renderDpo(p) {
  const side = name => {
    const s = p.sides[name];
    return h('div', { class: `side ${name}`, 'data-side': name },
      h('h4', { text: `${name} · score ${fmt(s.score)} · ${fmt(s.length)} chars` }),
      h('div', { class: 'muted', text: sourceLine(s.source) }), h('pre', { class: 'answer', text: s.text }));
  };
  const judges = [];
  for (const j of p.pairwise || []) {
    const verdict = j.verdict_for_chosen;
    const said = verdict === null || verdict === undefined ? 'no verdict (a judgement failed)'
      : verdict > 0 ? 'prefers the chosen answer' : verdict < 0 ? 'prefers the rejected answer' : 'tie: the two orders disagree';
    judges.push(h('div', { class: 'judge', 'data-judge': j.judge },
      h('h4', { text: `${j.judge}: ${said}${j.consistent ? ' (same in both orders)' : ''}` }),
      j.orders.map(o => h('div', { class: 'order', 'data-order': o.order },
        h('strong', { text: `${o.order === 'ij' ? 'Order 1' : 'Order 2 (swapped)'}: ${o.shown_first} shown first as A` }),
        ' → ', o.error ? h('span', { class: 'error', text: `failed: ${o.error}` })
          : h('span', { class: 'winner', text: `winner ${o.winner}${o.prefers ? ' = ' + o.prefers : ''}` }),
        o.rationale ? h('pre', { class: 'rationale', text: o.rationale }) : null,
        o.raw ? h('pre', { class: 'muted', text: o.raw }) : null))));
  }
  for (const j of p.pointwise || []) {
    const names = [...new Set([...(j.chosen ? j.chosen.aspects : []), ...(j.rejected ? j.rejected.aspects : [])].map(a => a.name))];
    const cell = (sideData, aspect) => {
      if (!sideData) return h('td', { text: '–' });
      const found = sideData.aspects.find(a => a.name === aspect);
      return h('td', {}, found ? [h('strong', { text: fmt(found.score) }), ' ', found.rationale || ''] : '–');
    };
    judges.push(h('div', { class: 'judge', 'data-judge': j.judge },
      h('h4', { text: `${j.judge}: chosen ${fmt(j.chosen && j.chosen.score)} vs rejected ${fmt(j.rejected && j.rejected.score)}` }),
      ['chosen', 'rejected'].map(s => j[s] && j[s].error ? h('p', { class: 'error', text: `${s}: ${j[s].error}` }) : null),
      names.length ? h('table', { class: 'aspects' }, h('tr', {}, h('th', { text: 'aspect' }), h('th', { text: 'chosen' }), h('th', { text: 'rejected' })),
        names.map(a => h('tr', {}, h('td', { text: a }), cell(j.chosen, a), cell(j.rejected, a)))) : null));
  }
  return panel('dpo', `Preference pair (${p.scorer || 'scored'}${p.rule ? ', ' + p.rule : ''})`,
    p.prompt.length ? h('div', {}, h('h4', { text: 'Prompt' }), messages(p.prompt)) : null,
    h('div', { class: 'sides' }, side('chosen'), side('rejected')),
    judges.length ? h('div', { class: 'judges' }, judges) : h('p', { class: 'muted', text: 'no judge rationale recorded' }));
}

function renderDpoScores(p) {
  return panel('dpo_scores', 'Candidates and scores', p.candidates.map(c => h('div', { class: 'member' },
    h('strong', { text: `#${c.index} · score ${fmt(c.score)}` }), ' ', h('span', { class: 'muted', text: sourceLine(c.source) }),
    c.source && c.source.skipped ? h('span', { class: 'badge', text: `skipped: ${c.source.skipped}` }) : null,
    h('pre', { text: c.text || '' }), c.judgements && c.judgements.length ? jsonBlock(c.judgements, 'judgements') : null)),
  p.pairwise && p.pairwise.length ? jsonBlock(p.pairwise, 'pairwise verdicts') : null);
}

function renderVote(p) {
  const s = p.summary || {};
  const rows = p.voters.map(v => h('tr', { 'data-voter': v.voter }, h('td', { text: v.voter }),
    h('td', {}, v.error ? h('span', { class: 'error', text: v.error }) : h('strong', { text: fmt(v.label) })),
    h('td', { text: v.reason || '' }), h('td', {}, v.raw ? h('pre', { text: v.raw }) : Object.keys(v.extra || {}).length ? h('pre', { text: pretty(v.extra) }) : '')));
  return panel('vote', 'Vote',
    kv([['outcome', s.outcome], ['label', s.label], ['agreement', s.agreement], ['support', s.support], ['required', s.required],
      ['voters', s.voters], ['valid votes', s.valid], ['failed voters', s.failed_voters && s.failed_voters.length ? s.failed_voters.join(', ') : null],
      ['counts', s.counts ? Object.entries(s.counts).map(([k, v]) => `${k}: ${fmt(v)}`).join(', ') : null]]),
    rows.length ? h('table', { class: 'voters' }, h('tr', {}, ['voter', 'label', 'reason', 'raw / more'].map(t => h('th', { text: t }))), rows) : null,
    p.cascade ? h('div', {}, h('h4', { text: 'Cascade' }), kv(Object.entries(p.cascade))) : null,
    Object.keys(p.final || {}).length ? h('div', {}, h('h4', { text: 'Final' }), kv(Object.entries(p.final))) : null);
}

function evolNode(node) {
  const badges = [];
  if (node.round !== null && node.round !== undefined) badges.push(`r${node.round}`);
  if (node.operation) badges.push(node.operation);
  if (node.state) badges.push(node.state);
  if (node.valid !== null && node.valid !== undefined) badges.push(`valid ${node.valid}`);
  if (node.score !== null && node.score !== undefined) badges.push(`score ${node.score}`);
  if (node.reason) badges.push(node.reason);
  const line = h('div', { class: `evol-node state-${(node.state || '').replace(/ /g, '-')}${node.current ? ' current' : ''}`, 'data-node': node.id || '' },
    badges.map(b => h('span', { class: 'badge', text: b })),
    node.rid && !node.current ? recordLink(node.rid, '→ record') : null,
    h('div', { class: 'evol-text', text: node.text || '' }),
    node.detail ? h('div', { class: 'muted', text: node.detail }) : null,
    node.answer ? h('details', {}, h('summary', { text: 'answer' }), h('pre', { text: node.answer })) : null);
  return h('li', {}, line, node.children && node.children.length ? h('ul', {}, node.children.map(evolNode)) : null);
}

function renderEvol(p) {
  return panel('evol', `Evol-Instruct tree (${p.mode}, ${p.count} instruction${p.count === 1 ? '' : 's'})`,
    h('ul', { class: 'tree evol-tree' }, evolNode(p.tree)),
    p.rounds && p.rounds.length ? h('details', {}, h('summary', { text: 'rounds' }), h('pre', { text: pretty(p.rounds) })) : null);
}

function renderRewrite(p) {
  const parent = p.parent ? jsonBlock(p.parent, 'parent record')
    : h('p', { class: 'muted', text: p.has_inputs ? 'the parent is not in the input file' : 'the parent is the run\'s input: open the viewer with --input INPUT to see it' });
  return panel('rewrite', `Rewrite (${p.rewrite_type || '?'}) of ${p.parent_id}`, parent,
    p.changes.length ? h('div', {}, h('h4', { text: 'What changed' }), p.changes.map(c => h('div', { class: 'member change', 'data-field': c.field },
      h('strong', { text: c.field }), c.segments ? h('div', {}, h('div', { class: 'muted', text: `before: ${fmt(c.before)}` }), h('div', {}, 'after: ', segments(c.segments)))
        : h('pre', { text: `${fmt(c.before)}\n→ ${fmt(c.after)}` })))) : null,
    h('h4', { text: 'Other cases of the same parent' }), refList(p.siblings));
}

function renderMagpie(p) {
  return panel('magpie', 'Magpie sample',
    kv([['slot', p.slot], ['model', p.model], ['template', `${p.template || ''} ${p.template_spec ? '(' + p.template_spec + ')' : ''}`], ['template from', p.template_origin],
      ['sample', p.sample], ['attempt', p.attempt], ['choice', p.n ? `${p.choice} of ${p.n}` : null], ['finish', p.finish_reason],
      ['params', p.params ? Object.entries(p.params).map(([k, v]) => `${k}=${v}`).join(' ') : null], ['control task', p.control_task]]),
    h('h4', { text: 'Pre-query template (what the model continued)' }), h('pre', { class: 'order', text: p.pre_query || '' }),
    h('h4', { text: 'Raw completion' }), h('pre', { class: 'order magpie-raw', text: p.raw || '' }),
    p.edits && p.edits.length ? h('div', {}, h('h4', { text: 'Cleaning' }), h('ul', {}, p.edits.map(e => h('li', { text: typeof e === 'string' ? e : pretty(e) })))) : null,
    h('h4', { text: 'Instruction' }), h('pre', { class: 'magpie-instruction', text: p.instruction || '' }),
    p.response ? h('div', {}, h('h4', { text: 'Response' }), h('pre', { text: p.response })) : null,
    Object.keys(p.tags || {}).length ? h('div', {}, h('h4', { text: 'Tags' }), kv(Object.entries(p.tags))) : null,
    p.siblings && p.siblings.length ? h('div', {}, h('h4', { text: 'Other samples of this slot' }), refList(p.siblings)) : null);
}

function renderDedup(p) {
  if (!p.members.length) return panel('dedup', 'Near-duplicates', h('p', { class: 'muted', text: 'no near-duplicate: this record is the only one of its cluster' }));
  return panel('dedup', `Near-duplicate cluster ${p.cluster_id || p.duplicate_of}`,
    h('p', { class: 'muted', text: 'Each member marked where it differs from the cluster\'s first record.' }),
    p.members.map(m => h('div', { class: `member${m.current ? ' current' : ''}`, 'data-rid': m.rid },
      m.first ? h('span', { class: 'badge', text: 'first' }) : null, recordLink(m.rid, m.id), ' ',
      m.segments ? segments(m.segments) : h('span', { text: m.text }))));
}

function renderCritique(p) {
  return panel('critique', 'Critique rounds', p.summary ? kv(Object.entries(p.summary)) : null,
    p.rounds.map(r => h('div', { class: 'member' }, h('strong', { text: `round ${fmt(r.round)} · ${r.approved ? 'approved' : 'not approved'}` }),
      h('h4', { text: 'answer' }), h('pre', { text: fmt(r.answer) }),
      h('h4', { text: 'critique' }), h('pre', { text: typeof r.critique === 'string' ? r.critique : pretty(r.critique) }),
      r.revision ? h('div', {}, h('h4', { text: 'revision' }), h('pre', { text: r.revision })) : null)));
}

function renderJoint(p) {
  return panel('joint', `Drafts (${p.mode} by ${p.fuser})`, p.reason ? h('p', { text: `reason: ${p.reason}` }) : null,
    p.drafts.map(d => h('div', { class: 'member' }, h('strong', { text: `#${d.index} ${d.model || ''} sample ${fmt(d.sample)}` }),
      d.used ? h('span', { class: 'badge', text: 'used' }) : null, p.best === d.index ? h('span', { class: 'badge accepted', text: 'best' }) : null,
      d.error ? h('span', { class: 'error', text: d.error }) : null, h('pre', { text: d.text || '' }))),
    p.result ? h('div', {}, h('h4', { text: 'Result' }), h('pre', { text: p.result })) : null);
}

function renderFailure(p) {
  return panel('failure', `Failed in step ${p.step || '?'}`,
    kv([['error type', p.error_type], ['location', p.location]]), h('pre', { class: 'error', text: p.error || '' }),
    h('h4', { text: 'Raw reply' }), p.raw === null || p.raw === undefined ? h('p', { class: 'muted', text: 'none recorded' })
      : h('pre', { class: 'order raw-reply', text: p.raw_json !== null && p.raw_json !== undefined && typeof p.raw_json === 'object' ? pretty(p.raw_json) : String(p.raw) }),
    p.input ? jsonBlock(p.input, 'input record') : null);
}

function renderDropped(p) {
  return panel('dropped', 'Dropped by a filter step',
    h('p', { text: `The ledger marks input ${p.id} as filtered: a filter step kept none of its outputs.` }),
    p.input ? jsonBlock(p.input, 'input record') : h('p', { class: 'muted', text: p.has_inputs ? 'not found in the input file' : 'open the viewer with --input INPUT to see the input record' }));
}

function renderSource(p) {
  return panel('source', `Lineage: from input ${p.source_id}`,
    p.input ? jsonBlock(p.input, 'input record') : (p.has_inputs ? h('p', { class: 'muted', text: 'not found in the input file' }) : null),
    h('h4', { text: 'Other outputs of this input' }), refList(p.siblings));
}

function renderCalls(p) {
  const t = p.totals;
  return panel('calls', `Model calls (${t.calls}: ${t.prompt_tokens} + ${t.completion_tokens} tokens, ${t.cached} cached)`,
    h('table', {}, h('tr', {}, ['step', 'model', 'role', 'prompt', 'completion', 'cached'].map(x => h('th', { text: x }))),
      p.calls.map(c => h('tr', {}, [c.step, c.model, c.role, c.prompt_tokens, c.completion_tokens, c.cached].map(x => h('td', { text: fmt(x) }))))));
}

const RENDERERS = {
  dpo: renderDpo, dpo_scores: renderDpoScores, vote: renderVote, evol: renderEvol, rewrite: renderRewrite,
  magpie: renderMagpie, dedup: renderDedup, critique: renderCritique, joint: renderJoint, failure: renderFailure,
  dropped: renderDropped, source: renderSource, calls: renderCalls,
  dialogue: p => panel('dialogue', 'Conversation', messages(p.messages)),
};

// ------------------------------------------------------------------ summary and eval

function table(headers, rows) {
  return h('table', {}, h('tr', {}, headers.map(x => h('th', { text: x }))), rows.map(r => h('tr', {}, r.map(x => h('td', { text: fmt(x) })))));
}

async function showSummary() {
  const [summary, reports] = await Promise.all([api('/api/summary'), api('/api/eval')]);
  const parts = [];
  const s = summary.summary;
  if (s) {
    const headline = ['records_in', 'records_out', 'inputs_done', 'filtered', 'failed', 'bad_input', 'skipped', 'tokens', 'cost', 'cache_hits', 'seconds', 'exit_status', 'stopped'];
    parts.push(panel('summary', 'Run summary', kv(headline.filter(k => k in s).map(k => [k, s[k]]))));
    if (s.models && Object.keys(s.models).length) {
      const keys = [...new Set(Object.values(s.models).flatMap(m => Object.keys(m).filter(k => typeof m[k] !== 'object')))];
      parts.push(panel('models', 'Models', table(['model', ...keys], Object.entries(s.models).map(([name, m]) => [name, ...keys.map(k => m[k])]))));
    }
    if (s.steps && Object.keys(s.steps).length) {
      parts.push(panel('steps', 'Steps', Object.entries(s.steps).map(([name, counters]) => h('div', {}, h('h4', { text: name }),
        table(['counter', 'value'], Object.entries(counters).map(([k, v]) => [k, v]))))));
    }
    parts.push(jsonBlock(s, 'summary.json'));
  } else parts.push(h('p', { class: 'muted', text: summary.error || 'No summary.json here.' }));
  for (const r of reports.reports) {
    parts.push(panel('eval', `Evaluation: ${r.name}`,
      r.pairs.length ? table(['metric', 'value'], r.pairs) : jsonBlock(r.metrics, 'metrics'),
      r.html ? h('p', {}, h('a', { href: `/eval/${r.number}`, target: '_blank', rel: 'noopener', text: 'open the full report' })) : null,
      r.html ? h('iframe', { class: 'report', src: `/eval/${r.number}`, sandbox: 'allow-scripts', title: r.name }) : null));
  }
  fill(main(), parts);
}

// ------------------------------------------------------------------ start

window.addEventListener('hashchange', route);
refreshInfo().then(() => { route(); poll(); }).catch(error => {
  main().replaceChildren(h('p', { class: 'error', text: `Cannot reach the viewer: ${error.message}` }));
});
