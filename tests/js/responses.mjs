// The Responses API as Mindcraft's GPT class calls it, with the openai npm package v4:
// `responses.create({model, instructions, input: messages})`, then `output_text`; on a
// failure, `err.code` (Mindcraft looks for 'context_length_exceeded') and `err.status`.
//
// BASE_URL, API_KEY, MODEL and MODE (create | stream | error | broken) come from the
// environment; the last line of stdout is the JSON result.
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const model = process.env.MODEL;
const instructions = 'You are a Minecraft bot. Answer briefly.';
const messages = [
    { role: 'user', content: 'hello bot' },
    { role: 'assistant', content: 'hello player' },
    { role: 'user', content: process.env.PROMPT || 'collect some wood' },
];

async function create() {
    const response = await client.responses.create({ model, instructions, input: messages });
    return { output_text: response.output_text, model: response.model, status: response.status, id: response.id };
}

async function stream() {
    const events = await client.responses.create({ model, instructions, input: messages, stream: true });
    const types = [];
    const sequence = [];
    let deltas = '';
    let final = null;
    for await (const event of events) {
        types.push(event.type);
        sequence.push(event.sequence_number);
        if (event.type === 'response.output_text.delta') deltas += event.delta;
        if (event.type === 'response.completed') final = event.response;
    }
    const text = final === null ? null : final.output
        .filter((item) => item.type === 'message')
        .flatMap((item) => item.content)
        .filter((part) => part.type === 'output_text')
        .map((part) => part.text)
        .join('');
    return { deltas, final_text: text, types, sequence, status: final && final.status };
}

async function failing(streamed) {
    const types = [];
    try {
        if (streamed) {
            const events = await client.responses.create({ model, instructions, input: messages, stream: true });
            for await (const event of events) types.push(event.type);
        } else {
            await client.responses.create({ model, instructions, input: messages });
        }
        return { threw: false, types };
    } catch (err) {
        return { threw: true, code: err.code ?? null, status: err.status ?? null, message: err.message, types };
    }
}

const modes = { create, stream, error: () => failing(false), broken: () => failing(true) };
const result = await modes[process.env.MODE || 'create']();
console.log(JSON.stringify(result));
