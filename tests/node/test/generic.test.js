// testcontainers-node's GenericContainer against the server in DOCKER_HOST.
const assert = require("node:assert/strict");
const net = require("node:net");
const { after, before, test } = require("node:test");
const { GenericContainer, Wait } = require("testcontainers");

const SCRIPT = "echo hello from busybox; while true; do echo pong | nc -l -p 8080; done";

let container;

before(async () => {
  container = await new GenericContainer("busybox:latest")
    .withCommand(["sh", "-c", SCRIPT])
    .withExposedPorts(8080)
    .withWaitStrategy(Wait.forLogMessage("hello from busybox"))
    .withStartupTimeout(60_000)
    .start();
});

after(async () => {
  await container?.stop({ timeout: 1_000 });
});

// Resolves with the first line that the listener in the container sends.
function readLine(host, port) {
  return new Promise((resolve, reject) => {
    let text = "";
    const socket = net.connect(port, host);
    socket.setTimeout(5_000, () => socket.destroy(new Error(`timed out reading from ${host}:${port}`)));
    socket.on("data", (chunk) => {
      text += chunk.toString();
      if (text.includes("\n")) {
        socket.destroy();
        resolve(text);
      }
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(text));
  });
}

test("busybox logs", async () => {
  const stream = await container.logs();
  // testcontainers unrefs the log socket, so the timer is what keeps the
  // event loop alive until the first line arrives.
  const text = await new Promise((resolve, reject) => {
    let received = "";
    const timer = setTimeout(() => reject(new Error(`no log line in 10 s: ${JSON.stringify(received)}`)), 10_000);
    stream.on("data", (chunk) => {
      received += chunk.toString();
      if (received.includes("\n")) {
        clearTimeout(timer);
        resolve(received);
      }
    });
    stream.on("error", reject);
  });
  stream.destroy();
  assert.equal(text, "hello from busybox\n");
});

test("busybox exec output", async () => {
  const result = await container.exec(["sh", "-c", "echo out; echo err >&2; exit 3"]);
  assert.equal(result.exitCode, 3);
  assert.equal(result.stdout, "out\n");
  assert.equal(result.stderr, "err\n");
});

test("busybox mapped port", async () => {
  const port = container.getMappedPort(8080);
  // nc restarts between connections, so a first attempt may find no listener.
  let reply = "";
  for (let attempt = 0; attempt < 20 && reply !== "pong\n"; attempt += 1) {
    reply = await readLine(container.getHost(), port).catch(() => "");
    if (reply !== "pong\n") await new Promise((resolve) => setTimeout(resolve, 250));
  }
  assert.equal(reply, "pong\n");
});
