// The pool called the way Mindcraft's model classes call it today, written for these
// tests (not copied): each mode prints one JSON line with what the class would read.
// BASE_URL is the pool's root (http://127.0.0.1:PORT); API_KEY may be empty.
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const base = process.env.BASE_URL;
const key = process.env.API_KEY || '';
const model = process.env.MODEL || '';
const mode = process.argv[2];
const system = process.env.SYSTEM || 'You are a Minecraft bot. Reply with one command.';
const turns = JSON.parse(process.env.TURNS || '[{"role":"user","content":"hello there"}]');

async function fetchJson(url, init) {
  const res = await fetch(url, init);
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  return { status: res.status, body, retryAfter: res.headers.get('retry-after') };
}

const modes = {
  // Mindcraft-CE's Andy class: plain fetch to <url>/api/v1/..., model "auto".
  async 'andy-fetch'() {
    const headers = { 'Content-Type': 'application/json' };
    if (key) headers.Authorization = `Bearer ${key}`;
    const messages = [{ role: 'system', content: system }, ...turns];
    const chat = await fetchJson(`${base}/api/v1/chat/completions`, {
      method: 'POST', headers, body: JSON.stringify({ model: model || 'auto', messages, stop: ['***'] }),
    });
    const embed = await fetchJson(`${base}/api/v1/embeddings`, {
      method: 'POST', headers, body: JSON.stringify({ model: process.env.EMBED_MODEL || 'auto', input: 'a crafting table' }),
    });
    return {
      chat_status: chat.status, chat_model: chat.body?.model ?? null,
      content: chat.body?.choices?.[0]?.message?.content ?? null, chat_error: chat.body?.error ?? null,
      embed_status: embed.status, embed_model: embed.body?.model ?? null,
      embedding_length: embed.body?.data?.[0]?.embedding?.length ?? null, embed_error: embed.body?.error ?? null,
    };
  },
  // The older Andy class: the openai SDK v4 on <url>/api/andy/v1, a dummy key, stop "***",
  // finish_reason "length" or code context_length_exceeded read as "too long"; and its
  // pool check, a keyless GET of /api/andy/pool_status.
  async 'andy-sdk'() {
    const openai = new OpenAI({ baseURL: `${base}/api/andy/v1`, apiKey: key || 'no-key-needed', maxRetries: 0 });
    const out = {};
    try {
      const completion = await openai.chat.completions.create({
        model: model || 'andy-4', messages: [{ role: 'system', content: system }, ...turns], stop: '***',
      });
      out.content = completion.choices[0].message.content;
      out.finish_reason = completion.choices[0].finish_reason;
      out.model = completion.model;
      out.usage = completion.usage ?? null;
    } catch (err) {
      out.error = { status: err.status ?? null, code: err.code ?? null, message: err.message };
    }
    const status = await fetchJson(`${base}/api/andy/pool_status`);
    out.pool_status = status.status;
    out.pool = status.body ? {
      total_hosts: status.body.total_hosts, active_hosts: status.body.active_hosts,
      total_models: status.body.total_models, load: status.body.load, has_hosts: 'hosts' in status.body,
    } : null;
    return out;
  },
  // The older Andy class's answer to a long history: on context_length_exceeded (or a
  // "length" finish) it drops the oldest turn and asks again, until one fits.
  async 'andy-sdk-history'() {
    const openai = new OpenAI({ baseURL: `${base}/api/andy/v1`, apiKey: key || 'no-key-needed', maxRetries: 0 });
    const started = Date.now();
    const codes = [];
    const ask = async (history) => {
      try {
        const completion = await openai.chat.completions.create({
          model: model || 'andy-4', messages: [{ role: 'system', content: system }, ...history], stop: '***',
        });
        if (completion.choices[0].finish_reason === 'length') throw new Error('Context length exceeded');
        return { content: completion.choices[0].message.content, turns: history.length };
      } catch (err) {
        codes.push(err.code ?? err.message);
        if ((err.message === 'Context length exceeded' || err.code === 'context_length_exceeded') && history.length > 1) {
          return ask(history.slice(1));
        }
        return { content: null, turns: history.length, error: err.message };
      }
    };
    const answer = await ask(turns);
    return { ...answer, codes, elapsed_ms: Date.now() - started };
  },
  // Mindcraft's Ollama class: plain fetch, no headers at all, stream false; embeddings
  // through the older /api/embeddings with `input` (it reads `embedding`).
  async 'ollama-fetch'() {
    const send = async (path, body) => {
      const request = new Request(new URL(path, base), { method: 'POST', headers: new Headers(), body: JSON.stringify(body) });
      const res = await fetch(request);
      return { status: res.status, body: await res.json() };
    };
    const chat = await send('/api/chat', {
      model: model || 'sweaterdog/andy-4', messages: [{ role: 'system', content: system }, ...turns], stream: false,
    });
    const embed = await send('/api/embeddings', { model: process.env.EMBED_MODEL || model || 'sweaterdog/andy-4', input: 'a crafting table' });
    return {
      chat_status: chat.status, content: chat.body?.message?.content ?? null, chat_error: chat.body?.error ?? null,
      embed_status: embed.status, embedding_length: Array.isArray(embed.body?.embedding) ? embed.body.embedding.length : null,
      embed_error: embed.body?.error ?? null,
    };
  },
  // The ollama npm client, as an Ollama-profile bot built on it would call it.
  async 'ollama-client'() {
    const client = new Ollama({ host: base, headers: key ? { Authorization: `Bearer ${key}` } : {} });
    const whole = await client.chat({ model: model || 'sweaterdog/andy-4', messages: [{ role: 'system', content: system }, ...turns] });
    let streamed = '';
    for await (const part of await client.chat({ model: model || 'sweaterdog/andy-4', messages: turns, stream: true })) {
      streamed += part.message.content;
    }
    const embedded = await client.embed({ model: process.env.EMBED_MODEL || 'nomic-embed-text', input: ['a', 'b'] });
    return { content: whole.message.content, done_reason: whole.done_reason, streamed, vectors: embedded.embeddings.length };
  },
};

const run = modes[mode];
if (!run) { console.error(`unknown mode ${mode}`); process.exit(2); }
console.log(JSON.stringify(await run()));
