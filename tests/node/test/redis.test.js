// testcontainers-node's Redis module and the redis client.
const assert = require("node:assert/strict");
const { after, before, test } = require("node:test");
const { RedisContainer } = require("@testcontainers/redis");
const { createClient } = require("redis");

let container;
let client;

before(async () => {
  container = await new RedisContainer("redis:7").start();
  client = createClient({ url: container.getConnectionUrl() });
  await client.connect();
});

after(async () => {
  await client?.quit();
  await container?.stop();
});

test("redis set and get", async () => {
  assert.equal(await client.set("greeting", "hello"), "OK");
  assert.equal(await client.get("greeting"), "hello");
});

test("redis missing key", async () => {
  assert.equal(await client.get("absent"), null);
});
