// panel.js — the Q&A webview's script. Messages: see
// extension/src/webview_protocol.ts (ToWebview in, FromWebview out).
// Text from the model is never parsed as HTML: the markdown subset below
// builds DOM nodes and sets textContent.
// @ts-check
(function () {
  // @ts-ignore acquireVsCodeApi is provided by VS Code
  const vscode = acquireVsCodeApi();
  const log = /** @type {HTMLElement} */ (document.getElementById('log'));
  const form = /** @type {HTMLFormElement} */ (document.getElementById('form'));
  const input = /** @type {HTMLTextAreaElement} */ (document.getElementById('question'));
  const stop = /** @type {HTMLButtonElement} */ (document.getElementById('stop'));
  const askButton = /** @type {HTMLButtonElement} */ (document.getElementById('ask'));

  /** @type {Set<string>} */
  let knownPaths = new Set();
  /** @type {Map<string, string>} file name → path, for names that are unique */
  let byName = new Map();
  /** @type {Map<number, {root: HTMLElement, body: HTMLElement, text: string}>} */
  const answers = new Map();

  function setFiles(/** @type {string[]} */ paths) {
    knownPaths = new Set(paths);
    const counts = new Map();
    for (const p of paths) {
      const n = p.slice(p.lastIndexOf('/') + 1);
      counts.set(n, (counts.get(n) || 0) + 1);
      byName.set(n, p);
    }
    for (const [n, c] of counts) if (c > 1) byName.delete(n);
  }

  function fileLink(/** @type {string} */ path, /** @type {string} */ label, /** @type {number | undefined} */ line) {
    const a = document.createElement('a');
    a.href = '#';
    a.className = 'file';
    a.textContent = label;
    a.title = line ? `${path}:${line}` : path;
    a.dataset.path = path;
    if (line) a.dataset.line = String(line);
    return a;
  }

  /** Appends text to `parent`, turning known file paths into links. */
  function appendLinked(/** @type {HTMLElement} */ parent, /** @type {string} */ text) {
    const re = /[\w./-]+\.[A-Za-z0-9]+/g;
    let last = 0;
    let m;
    while ((m = re.exec(text))) {
      const word = m[0].replace(/^\.\//, '').replace(/[.]+$/, '');
      const path = knownPaths.has(word) ? word : byName.get(word);
      if (!path) continue;
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      parent.appendChild(fileLink(path, m[0], undefined));
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  /** Inline markdown: `code`, **bold**, *em*. */
  function appendInline(/** @type {HTMLElement} */ parent, /** @type {string} */ text) {
    const re = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*/g;
    let last = 0;
    let m;
    while ((m = re.exec(text))) {
      if (m.index > last) appendLinked(parent, text.slice(last, m.index));
      if (m[1] !== undefined) {
        const code = document.createElement('code');
        appendLinked(code, m[1]);
        parent.appendChild(code);
      } else {
        const el = document.createElement(m[2] !== undefined ? 'strong' : 'em');
        appendLinked(el, m[2] !== undefined ? m[2] : m[3]);
        parent.appendChild(el);
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) appendLinked(parent, text.slice(last));
  }

  /** Block markdown: fenced code, headings, lists, paragraphs. */
  function renderMarkdown(/** @type {HTMLElement} */ root, /** @type {string} */ md) {
    root.textContent = '';
    const lines = md.split('\n');
    /** @type {HTMLElement | null} */
    let para = null;
    /** @type {HTMLElement | null} */
    let list = null;
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = /^\s*```\s*([\w+#.-]*)\s*$/.exec(line);
      if (fence) {
        para = list = null;
        const pre = document.createElement('pre');
        const code = document.createElement('code');
        if (fence[1]) code.dataset.lang = fence[1];
        const body = [];
        i++;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
        code.textContent = body.join('\n');
        pre.appendChild(code);
        root.appendChild(pre);
        continue;
      }
      const heading = /^(#{1,4})\s+(.*)$/.exec(line);
      if (heading) {
        para = list = null;
        const h = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
        appendInline(h, heading[2]);
        root.appendChild(h);
        continue;
      }
      const item = /^\s*(?:[-*+]|\d+[.)])\s+(.*)$/.exec(line);
      if (item) {
        para = null;
        if (!list) {
          list = document.createElement(/^\s*\d/.test(line) ? 'ol' : 'ul');
          root.appendChild(list);
        }
        const li = document.createElement('li');
        appendInline(li, item[1]);
        list.appendChild(li);
        continue;
      }
      if (line.trim() === '') {
        para = list = null;
        continue;
      }
      list = null;
      if (!para) {
        para = document.createElement('p');
        root.appendChild(para);
      } else {
        para.appendChild(document.createElement('br'));
      }
      appendInline(para, line);
    }
  }

  function addQuestion(/** @type {number} */ id, /** @type {string} */ question) {
    const root = document.createElement('section');
    root.className = 'exchange';
    root.dataset.id = String(id);
    const q = document.createElement('div');
    q.className = 'question';
    q.textContent = question;
    const body = document.createElement('div');
    body.className = 'answer streaming';
    root.append(q, body);
    log.appendChild(root);
    answers.set(id, { root, body, text: '' });
    root.scrollIntoView({ block: 'end' });
  }

  function busy(/** @type {boolean} */ on) {
    stop.disabled = !on;
    askButton.disabled = on;
  }

  window.addEventListener('message', (event) => {
    const msg = event.data;
    if (!msg || typeof msg.type !== 'string') return;
    switch (msg.type) {
      case 'files':
        setFiles(Array.isArray(msg.paths) ? msg.paths.filter((/** @type {unknown} */ p) => typeof p === 'string') : []);
        break;
      case 'start':
        addQuestion(msg.id, String(msg.question));
        busy(true);
        break;
      case 'delta': {
        const a = answers.get(msg.id);
        if (!a) break;
        a.text += String(msg.text);
        renderMarkdown(a.body, a.text);
        a.root.scrollIntoView({ block: 'end' });
        break;
      }
      case 'done': {
        const a = answers.get(msg.id);
        busy(false);
        if (!a) break;
        a.text = String(msg.text || a.text);
        renderMarkdown(a.body, a.text);
        a.body.classList.remove('streaming');
        if (msg.stopReason === 'cancelled') a.body.classList.add('stopped');
        const cites = Array.isArray(msg.citations) ? msg.citations : [];
        if (cites.length) {
          const box = document.createElement('div');
          box.className = 'citations';
          const label = document.createElement('span');
          label.textContent = 'Sources: ';
          box.appendChild(label);
          for (const c of cites) {
            const link = fileLink(String(c.path), c.line ? `${c.path}:${c.line}` : String(c.path), c.line);
            link.classList.add('citation');
            link.title = `${c.path}${c.line ? `:${c.line}` : ''} — ${c.how === 'mention' ? 'named in the answer' : c.how === 'overlap' ? 'shares rare words with the question and answer' : 'most attention'}`;
            box.appendChild(link);
          }
          a.root.appendChild(box);
        }
        const stats = document.createElement('div');
        stats.className = 'stats';
        stats.textContent = `${msg.stopReason === 'cancelled' ? 'stopped · ' : ''}${String(msg.stats || '')}`;
        a.root.appendChild(stats);
        a.root.scrollIntoView({ block: 'end' });
        break;
      }
      case 'error': {
        busy(false);
        const a = answers.get(msg.id);
        const box = document.createElement('div');
        box.className = 'error';
        box.textContent = String(msg.message) + (msg.hint ? ` — ${msg.hint}` : '');
        (a ? a.root : log).appendChild(box);
        if (a) a.body.classList.remove('streaming');
        break;
      }
    }
  });

  log.addEventListener('click', (event) => {
    const t = /** @type {HTMLElement} */ (event.target);
    const a = t.closest && t.closest('a.file');
    if (!(a instanceof HTMLElement) || !a.dataset.path) return;
    event.preventDefault();
    vscode.postMessage({ type: 'open', path: a.dataset.path, line: a.dataset.line ? Number(a.dataset.line) : undefined });
  });

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question) return;
    vscode.postMessage({ type: 'ask', question });
    input.value = '';
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener('click', () => vscode.postMessage({ type: 'stop' }));
  vscode.postMessage({ type: 'ready' });
})();
