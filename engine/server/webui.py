"""The chat page served at `/`: one HTML file, no build step. Streams replies over the API itself,
shows reasoning folded away from the answer, and each reply's tokens per second."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ggufpy chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;max-width:760px;margin:0 auto;padding:1em;background:#fafafa}
 #log .msg{margin:.6em 0;padding:.6em .8em;border-radius:8px;white-space:pre-wrap}
 .user{background:#dbeafe}.assistant{background:#fff;border:1px solid #ddd}
 details{color:#666;font-size:.9em}.speed{color:#888;font-size:.8em}
 form{display:flex;gap:.5em;margin-top:1em} textarea{flex:1;height:3em}
</style></head><body>
<h1>ggufpy</h1>
<label>model <select id="model"></select></label>
<div id="log"></div>
<form id="form"><textarea id="input" placeholder="Say something"></textarea><button id="send">Send</button></form>
<script>
const log = document.getElementById('log'), input = document.getElementById('input');
const history = [];
async function loadModels() {
  const r = await fetch('/v1/models'); const j = await r.json();
  for (const m of j.data) { const o = document.createElement('option'); o.value = o.textContent = m.id;
    document.getElementById('model').appendChild(o); }
}
function bubble(role) { const d = document.createElement('div'); d.className = 'msg ' + role; log.appendChild(d); return d; }
document.getElementById('form').onsubmit = async (ev) => {
  ev.preventDefault(); const text = input.value.trim(); if (!text) return; input.value = '';
  history.push({role: 'user', content: text}); bubble('user').textContent = text;
  const box = bubble('assistant');
  const think = document.createElement('details'); const sum = document.createElement('summary');
  sum.textContent = 'reasoning'; const thinkText = document.createElement('div'); think.append(sum, thinkText);
  const answer = document.createElement('div'); answer.className = 'answer';
  const speed = document.createElement('div'); speed.className = 'speed'; box.append(think, answer, speed);
  think.style.display = 'none';
  const r = await fetch('/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({model: document.getElementById('model').value, messages: history, stream: true})});
  const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
  while (true) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true}); let i;
    while ((i = buf.indexOf('\\n\\n')) >= 0) {
      const line = buf.slice(0, i).trim(); buf = buf.slice(i + 2);
      if (!line.startsWith('data: ')) continue; const data = line.slice(6); if (data === '[DONE]') continue;
      const j = JSON.parse(data); if (j.error) { answer.textContent += '[error] ' + j.error.message; continue; }
      const d = (j.choices[0] || {}).delta || {};
      if (d.reasoning_content) { think.style.display = ''; thinkText.textContent += d.reasoning_content; }
      if (d.content) answer.textContent += d.content;
      if (j.timings) speed.textContent = j.timings.predicted_per_second.toFixed(1) + ' tokens/s';
    }
  }
  history.push({role: 'assistant', content: answer.textContent});
};
loadModels();
</script></body></html>
"""
