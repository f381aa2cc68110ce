// Real parts for the browser test: redis-server on a free port, the
// tidings-gateway and tidings-publisher binaries cargo built, headless
// Debian Chromium driven by playwright-core. Every wait is a condition with a
// deadline, never a sleep.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** Where cargo put the binaries: TIDINGS_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug. */
export const binDir = process.env.TIDINGS_BIN_DIR ?? join(process.env.CARGO_TARGET_DIR ?? join(repo, "target"), "debug");
/** Screenshots for people to look at. */
export const screenshotDir = join(repo, "target", "e2e");

export function bin(name) {
  const path = join(binDir, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run cargo build --workspace first (or set TIDINGS_BIN_DIR)`);
  return path;
}

export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export async function waitFor(what, check, timeoutMs = 15000, everyMs = 25) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A child process whose output is kept for the failure report. */
class Proc {
  constructor(name, command, args, env) {
    this.name = name;
    this.output = "";
    this.child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((r) => this.child.once("exit", (code, signal) => r({ code, signal })));
    for (const s of [this.child.stdout, this.child.stderr]) s.on("data", (d) => (this.output += d));
  }
  async stop(signal = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

async function httpOk(url) {
  try {
    return (await fetch(url)).ok;
  } catch {
    return false;
  }
}

export class Stack {
  static async start() {
    const stack = new Stack();
    stack.dir = mkdtempSync(join(tmpdir(), "tidings-e2e-"));
    stack.redisPort = await freePort();
    stack.redis = new Proc("redis", "redis-server", ["--port", String(stack.redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", stack.dir], {});
    stack.redisUrl = `redis://127.0.0.1:${stack.redisPort}`;
    stack.secret = "e2e-secret-e2e-secret-e2e-secret";
    stack.publishToken = "e2e-publish-token";
    await waitFor("redis-server", () => stack.redis.output.includes("Ready to accept connections"));
    stack.gatewayPort = await freePort();
    await stack.startGateway();
    const publisherPort = await freePort();
    stack.publisherUrl = `http://127.0.0.1:${publisherPort}`;
    stack.publisher = new Proc("publisher", bin("tidings-publisher"), [], {
      TIDINGS_LISTEN: `127.0.0.1:${publisherPort}`,
      TIDINGS_REDIS_URL: stack.redisUrl,
      TIDINGS_PUBLISH_TOKEN: stack.publishToken,
    });
    await waitFor("the publisher ready", () => httpOk(`${stack.publisherUrl}/readyz`));
    return stack;
  }

  get gatewayUrl() {
    return `http://127.0.0.1:${this.gatewayPort}`;
  }

  /** (Re)starts the gateway on the same port, so the page comes back to the same address. */
  async startGateway() {
    this.gateway = new Proc("gateway", bin("tidings-gateway"), [], {
      TIDINGS_LISTEN: `127.0.0.1:${this.gatewayPort}`,
      TIDINGS_REDIS_URL: this.redisUrl,
      TIDINGS_JWT_SECRET: this.secret,
      TIDINGS_DASHBOARD: "true",
      TIDINGS_DRAIN_SECS: "1",
    });
    await waitFor("the gateway ready", () => httpOk(`${this.gatewayUrl}/readyz`));
  }

  token(workspace) {
    return execFileSync(bin("tidings"), ["token", "--workspace", workspace, "--ttl", "1h"], { env: { ...process.env, TIDINGS_JWT_SECRET: this.secret } })
      .toString()
      .trim();
  }

  /** Publishes through the publisher's HTTP API; resolves to the ids. */
  async publish(workspace, events) {
    const response = await fetch(`${this.publisherUrl}/v1/workspaces/${workspace}/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.publishToken}`, "Content-Type": "application/json" },
      body: JSON.stringify(events),
    });
    const body = await response.json();
    if (response.status !== 202) throw new Error(`publish answered ${response.status}: ${JSON.stringify(body)}`);
    return body.ids;
  }

  logs() {
    return [this.redis, this.gateway, this.publisher].filter(Boolean).map((p) => `--- ${p.name}\n${p.output.slice(-4000)}`).join("\n");
  }

  async stop() {
    await Promise.all([this.gateway, this.publisher].filter(Boolean).map((p) => p.stop("SIGKILL")));
    await this.redis?.stop("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Debian's Chromium, headless, with the flags this machine's closed network needs. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
  if (!executablePath) throw new Error("no Chromium: apt-get install chromium (scripts/test does)");
  return chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}
