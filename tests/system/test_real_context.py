"""End to end on real inference: a host whose managed llama-server is sized with
``join --ctx-size 8192`` (per slot: it runs with ``-c 16384 -np 2``) answers a bot with a
Mindcraft-sized system prompt (a profile and 48 command docs, about 8,000 characters,
over 2,048 tokens: it did not fit the slots of ``-c 4096 -np 2``), the pool reports the
context it serves (8192, from llama-server's ``/props``), and a prompt over it is a 400
``context_length_exceeded`` with llama-server's own token count. Clients: the ``openai``
package and plain HTTP."""

from __future__ import annotations

import os
from typing import Any

import httpx
import openai
import pytest

from andy_host.tools.llama_build import find_llama_server
from tests.harness.procs import Processes, wait_models

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m:latest"
SHORT = "smollm2-135m"

PROFILE = (
    "You are a playful Minecraft bot named Andy that can converse with players, see, move, mine, build, and "
    "interact with the world by using commands. Act human-like, as if you were a typical Minecraft player, rather "
    "than an AI. Be very brief in your responses, don't apologize constantly, don't give instructions or make "
    "lists unless asked, and don't refuse requests. Don't pretend to act, use commands immediately when requested. "
    "Do NOT say this: 'Sure, I've stopped.', instead say this: 'Sure, I'll stop. !stop'. Do NOT say this: 'On my "
    "way! Give me a moment.', instead say this: 'On my way! !goToPlayer(\"playername\", 3)'. Respond only as Andy, "
    "never output '(FROM OTHER BOT)' or pretend to be someone else. This is extremely important to me, take a deep "
    "breath and have fun :)\nSummarized memory: 'Spawned near a birch forest; found iron at y=12; promised Steve a "
    "house by the river.'\nSTATS\n- Position: x: 104.50, y: 64.00, z: -231.30\n- Gamemode: survival\n- Health: 20 / "
    "20\n- Hunger: 18 / 20\n- Biome: birch_forest\n- Weather: Clear\n- Time: Morning\n- Other Players: Steve, Alex\n"
    "INVENTORY\n- oak_log: 12\n- cobblestone: 40\n- iron_ingot: 3\n- bread: 5\n- stone_pickaxe: 1\nWEAR: nothing\n"
)
VERBS = ["go to", "collect", "craft", "smelt", "place", "attack", "follow", "guard", "build", "search for", "equip",
         "discard"]
THINGS = ["player", "block", "item", "mob", "chest", "furnace", "bed", "crop", "villager", "door", "tree", "ore"]


def command_docs(count: int = 48) -> str:
    """``count`` made-up ``!command`` docs in Mindcraft's style, each with its params."""
    lines = ["*COMMAND DOCS\n You can use the following commands to perform actions and get information about the "
             "world. Use the commands with the syntax: !commandName or !commandName(\"arg1\", 1.2, ...) if the "
             "command takes arguments.\n Do not use codeblocks. Use double quotes for strings. Only use one command "
             "in each response, trailing commands and comments will be ignored."]
    for i in range(count):
        verb, thing = VERBS[i % len(VERBS)], THINGS[(i * 5) % len(THINGS)]
        name = "".join(w.capitalize() for w in f"{verb} {thing}".split())
        name = name[0].lower() + name[1:] + (str(i // len(VERBS)) if i >= len(VERBS) else "")
        lines.append(f"!{name}: {verb.capitalize()} the nearest {thing} you can reach, then say what happened.")
        if i % 2 == 0:  # about half of Mindcraft's commands take arguments
            lines.append(f"Params:\n{thing}_name: (string) The name of the {thing}.\n"
                         "distance: (number) How far to look, in blocks.")
    return "\n".join(lines) + "\n*\n"


EXAMPLES = (
    "Examples of how to respond:\nExample 1:\nUser input: miner_32: Hey! What are you up to?\nYour output:\n"
    "Nothing much miner_32, what do you need?\nExample 2:\nUser input: grombo_Xx: What do you see?\nYour output:\n"
    "Let me see... !nearbyBlocks\nSystem output: NEARBY_BLOCKS\n- oak_log\n- dirt\n- cobblestone\nYour output:\n"
    "I see some oak logs, dirt, and cobblestone.\n"
)
SYSTEM = PROFILE + command_docs() + EXAMPLES + "Conversation Begin:"


@pytest.fixture(scope="module")
def pool(module_procs: Processes) -> dict[str, Any]:
    if find_llama_server() is None:
        if os.environ.get("ANDY_HOST_SKIP_E2E") == "1":
            pytest.skip("llama-server not installed and ANDY_HOST_SKIP_E2E=1")
        pytest.fail("llama-server is not installed: run scripts/setup (or scripts/install-llama-server)")
    coordinator = module_procs.coordinator(name="context-coordinator")
    module_procs.agent(coordinator.url, "llamacpp", None, "context-host", "--managed", "--model", SHORT,
                       "--ctx-size", "8192", "--max-concurrency", "2",
                       env={"ANDY_HOST_BACKEND_THREADS": "2", "ANDY_HOST_BACKEND_PARALLEL": "2"}, timeout=120)
    wait_models(coordinator.url, {MODEL: 1}, timeout=60)
    client = openai.OpenAI(base_url=coordinator.url + "/api/andy/v1", api_key=coordinator.key, max_retries=0,
                           timeout=180)
    return {"url": coordinator.url, "key": coordinator.key, "client": client}


def test_the_pool_reports_the_context_the_host_serves(pool: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {pool['key']}"}
    shown = httpx.post(pool["url"] + "/api/show", json={"model": SHORT}, headers=headers, timeout=10).json()
    arch = shown["model_info"]["general.architecture"]
    assert shown["model_info"][f"{arch}.context_length"] == 8192
    model = httpx.get(f"{pool['url']}/api/andy/v1/models/{SHORT}", headers=headers, timeout=10).json()
    assert model["max_model_len"] == 8192


def test_a_mindcraft_sized_system_prompt_is_answered(pool: dict[str, Any]) -> None:
    assert 7_500 <= len(SYSTEM) <= 8_500 and SYSTEM.count("\n!") == 48
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Steve: hi Andy, can you come to me?"}]
    reply = pool["client"].chat.completions.create(model=SHORT, messages=messages, max_tokens=32, temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage is not None and 2_048 < reply.usage.prompt_tokens < 8_192  # over the old slot, under the new
    print(f"\nMindcraft-sized prompt: {len(SYSTEM)} characters, {reply.usage.prompt_tokens} prompt tokens; "
          f"answer: {reply.choices[0].message.content!r}")


def test_a_prompt_over_the_context_is_400_with_llama_servers_count(pool: dict[str, Any]) -> None:
    too_long = [{"role": "system", "content": SYSTEM * 4}, {"role": "user", "content": "hi"}]  # about 9,000 tokens
    with pytest.raises(openai.BadRequestError) as err:
        pool["client"].chat.completions.create(model=SHORT, messages=too_long, max_tokens=8)
    body: Any = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert body["message"].startswith("This model's context is 8192 tokens per request on the hosts serving it; "
                                      "your prompt is ")
    counted = int(body["message"].split("your prompt is ")[1].split()[0])
    assert counted > 8192
