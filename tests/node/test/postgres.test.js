// testcontainers-node's PostgreSQL module and the pg client.
const assert = require("node:assert/strict");
const { after, before, test } = require("node:test");
const { PostgreSqlContainer } = require("@testcontainers/postgresql");
const { Client } = require("pg");

let container;
let client;

before(async () => {
  container = await new PostgreSqlContainer("postgres:16")
    .withDatabase("shop")
    .withUsername("tester")
    .withPassword("secret")
    .start();
  client = new Client({ connectionString: container.getConnectionUri() });
  await client.connect();
});

after(async () => {
  await client?.end();
  await container?.stop();
});

test("postgres table round trip", async () => {
  await client.query("CREATE TABLE item (id serial PRIMARY KEY, name text)");
  await client.query("INSERT INTO item (name) VALUES ($1), ($2)", ["kettle", "cup"]);
  const result = await client.query("SELECT name FROM item ORDER BY id");
  assert.deepEqual(
    result.rows.map((row) => row.name),
    ["kettle", "cup"],
  );
});

test("postgres session identity", async () => {
  const result = await client.query("SELECT current_user AS role, current_database() AS db");
  assert.equal(result.rows[0].role, "tester");
  assert.equal(result.rows[0].db, "shop");
});
