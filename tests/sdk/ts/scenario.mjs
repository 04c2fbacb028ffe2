// A short scenario of Honcho's TypeScript SDK (@honcho-ai/sdk 2.x, unmodified) against a Rapport server:
// RAPPORT_URL and RAPPORT_ADMIN_KEY name it. tests/api/test_sdk_v3.py installs the SDK (npm ci) and runs
// this with Node; each step prints "ok <name>", and a failure exits non-zero.
import assert from "node:assert/strict";
import { Honcho } from "@honcho-ai/sdk";

const url = process.env.RAPPORT_URL;
const admin = process.env.RAPPORT_ADMIN_KEY;
const honcho = new Honcho({ baseURL: url, apiKey: admin, workspaceId: "ts-shop", maxRetries: 0 });

async function peersSessionsAndMessages() {
  const alice = await honcho.peer("alice", { metadata: { role: "customer" } });
  const bob = await honcho.peer("bob");
  const session = await honcho.session("ts-support", { peers: [alice, bob] });
  const stored = await session.addMessages([
    alice.message("my parcel with the red kettle is late"),
    bob.message("let me look up the kettle order"),
    alice.message("thank you"),
  ]);
  assert.deepEqual(stored.map((m) => m.content), [
    "my parcel with the red kettle is late",
    "let me look up the kettle order",
    "thank you",
  ]);
  assert.equal(stored[1].peerId, "bob");
  const members = (await session.peers()).map((p) => p.id).sort();
  assert.deepEqual(members, ["alice", "bob"]);
  const page = await session.messages({ filters: { peer_id: "alice" }, size: 1 });
  assert.equal(page.total, 2);
  assert.equal(page.items[0].content, "my parcel with the red kettle is late");
  const peers = await honcho.peers({ filters: { metadata: { role: "customer" } } });
  assert.deepEqual(peers.items.map((p) => p.id), ["alice"]);
}

async function searchContextAndConclusions() {
  const session = await honcho.session("ts-support");
  let found = [];
  for (let i = 0; i < 120 && found.length < 2; i++) {
    found = await session.search("kettle", { limit: 2 });
    if (found.length < 2) await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(found.length, 2);
  const context = await session.context({ tokens: 1000 });
  assert.equal(context.messages.length, 3);
  const alice = await honcho.peer("alice");
  await alice.conclusions.create([{ content: "Alice is waiting for a red kettle" }]);
  const listed = await alice.conclusions.list();
  assert.deepEqual(listed.items.map((c) => c.content), ["Alice is waiting for a red kettle"]);
  await alice.setCard(["Name: Alice"]);
  assert.deepEqual(await alice.getCard(), ["Name: Alice"]);
  const representation = await alice.representation();
  assert.match(representation, /Alice is waiting for a red kettle/);
  const status = await honcho.queueStatus();
  assert.equal(typeof status.totalWorkUnits ?? status.total_work_units, "number");
}

async function cloneAndDelete() {
  const session = await honcho.session("ts-support");
  const copy = await session.clone();
  assert.equal((await copy.messages()).total, 3);
  await copy.delete();
  const ids = (await honcho.sessions()).items.map((s) => s.id);
  assert.ok(!ids.includes(copy.id));
}

let failed = 0;
for (const step of [peersSessionsAndMessages, searchContextAndConclusions, cloneAndDelete]) {
  try {
    await step();
    console.log(`ok   ${step.name}`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${step.name}`);
    console.error(error);
  }
}
process.exit(failed ? 1 : 0);
