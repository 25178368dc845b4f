// Unit tests of the browser library's own logic (redmessenger/static/redmessenger.js) in Node's test
// runner, with a scripted WebSocket: ids and duplicates, acks after the handler, grants on reconnect,
// refusals. Run by tests/test_browser_library.py (node --test).
"use strict";

const test = require("node:test");
const assert = require("node:assert");
const path = require("path");

const LIBRARY = path.join(__dirname, "..", "..", "redmessenger", "static", "redmessenger.js");

function load() {
  delete require.cache[require.resolve(LIBRARY)];
  require(LIBRARY);
  return globalThis.RedMessenger;
}

// A WebSocket the test plays the server of: sent frames are recorded, server frames pushed with deliver().
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.opened.push(this);
    setImmediate(() => {
      if (FakeSocket.refuse) this.drop(1006);  // FakeSocket.refuse: connections fail before they open
      else { this.readyState = 1; this.onopen && this.onopen(); }
    });
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code) { this.readyState = 3; this.closedWith = code; }
  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  drop(code, reason) { this.readyState = 3; this.onclose({ code: code, reason: reason || "" }); }
  last(type) { return this.sent.filter((f) => f.type === type).pop(); }
}
FakeSocket.opened = [];

const tick = () => new Promise((resolve) => setImmediate(resolve));

async function until(condition, what) {
  for (let turns = 0; turns < 10000; turns++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  throw new Error("timed out waiting for " + what);
}

async function connected(options) {
  FakeSocket.opened = [];
  const RedMessenger = load();
  const rm = new RedMessenger(Object.assign({ url: "ws://x/rm", WebSocket: FakeSocket, reconnectDelay: 1 }, options));
  return rm;
}

async function subscribed(rm, name, handler, grant) {
  const promise = rm.subscribe(name, handler);
  await tick();
  const socket = FakeSocket.opened[FakeSocket.opened.length - 1];
  if (socket.last("hello") && !socket.welcomed) { socket.welcomed = true; socket.deliver({ type: "welcome", v: 1, uid: null }); }
  await tick();
  const request = socket.last("subscribe");
  socket.deliver(Object.assign({ type: "reply", ref: request.ref, ok: true, mode: "read_write" }, grant ? { grant } : {}));
  return { channel: await promise, socket, request };
}

function message(id, payload, channel) {
  return { type: "message", id: id, source: "rm.channels." + (channel || "room"), timestamp: 1, bubble: false,
           payload: JSON.stringify(payload) };
}

test("a message delivered twice reaches its handler once, and both are acknowledged", async () => {
  const rm = await connected();
  const got = [];
  const { socket } = await subscribed(rm, "room", (data) => got.push(data));
  socket.deliver(message("r.1", { n: 1 }));
  socket.deliver(message("r.1", { n: 1 }));
  socket.deliver(message("r.2", { n: 2 }));
  await tick();
  assert.deepStrictEqual(got, [{ n: 1 }, { n: 2 }]);
  assert.deepStrictEqual(socket.sent.filter((f) => f.type === "ack").map((f) => f.id), ["r.1", "r.1", "r.2"]);
});

test("a message is acknowledged only after its handler's promise settles, one at a time", async () => {
  const rm = await connected();
  const finish = [];
  const started = [];
  const { socket } = await subscribed(rm, "room", (data) => {
    started.push(data.n);
    return new Promise((resolve) => finish.push(resolve));
  });
  socket.deliver(message("r.1", { n: 1 }));
  socket.deliver(message("r.2", { n: 2 }));
  await tick();
  assert.deepStrictEqual(started, [1], "the second waits for the first");
  assert.strictEqual(socket.last("ack"), undefined, "nothing acknowledged before the handler is done");
  socket.deliver({ type: "sync" });
  assert.strictEqual(socket.last("ack"), undefined, "a sync while a handler runs acknowledges nothing new");
  finish[0]();
  await tick();
  assert.strictEqual(socket.last("ack").id, "r.1");
  assert.deepStrictEqual(started, [1, 2]);
  finish[1]();
  await tick();
  assert.strictEqual(socket.last("ack").id, "r.2");
});

test("after a drop the library reconnects and resubscribes with its grant; an expired grant asks again", async () => {
  const rm = await connected({ clientAuth: "token" });
  const { socket, request } = await subscribed(rm, "room", () => {}, "GRANT-1");
  assert.strictEqual(request.client_auth, "token");
  socket.drop(1006);
  assert.strictEqual(rm.state, "reconnecting");
  await until(() => FakeSocket.opened.length === 2 && FakeSocket.opened[1].last("hello"), "the second connection's hello");
  const again = FakeSocket.opened[FakeSocket.opened.length - 1];
  assert.notStrictEqual(again, socket);
  again.deliver({ type: "welcome", v: 1, uid: null });
  await tick();
  const resubscribe = again.last("subscribe");
  assert.deepStrictEqual([resubscribe.channel, resubscribe.grant, resubscribe.client_auth], ["room", "GRANT-1", undefined]);
  again.deliver({ type: "reply", ref: resubscribe.ref, ok: false, error: { code: "bad_grant", reason: "invalid grant: expired" } });
  await tick();
  const asked = again.last("subscribe");
  assert.deepStrictEqual([asked.grant, asked.client_auth], [undefined, "token"], "asked the application again");
  assert.strictEqual(rm.state, "connected");
});

test("a refusal of the connection (4401) is reported and not retried; requests waiting are rejected", async () => {
  const rm = await connected({ uid: "alice", key: "wrong" });
  const errors = [];
  rm.on("error", (error) => errors.push(error.code));
  const pending = rm.subscribe("room", () => {});
  await tick();
  const socket = FakeSocket.opened[0];
  assert.deepStrictEqual(socket.last("hello"), { type: "hello", v: 1, uid: "alice", key: "wrong" });
  socket.drop(4401, "authentication failed");
  await assert.rejects(pending, (error) => error.code === 4401);
  assert.strictEqual(rm._timer, null, "no second attempt scheduled");
  assert.strictEqual(FakeSocket.opened.length, 1);
  assert.deepStrictEqual(errors, [4401]);
  assert.strictEqual(rm.state, "disconnected");
});

test("a denied subscribe rejects with the code and reason, and the last subscription's end closes the socket", async () => {
  const rm = await connected();
  const { channel, socket } = await subscribed(rm, "room", () => {});
  const denied = rm.subscribe("secret", () => {});
  await tick();
  const ask = socket.last("subscribe");
  socket.deliver({ type: "reply", ref: ask.ref, ok: false, error: { code: "denied", reason: "members only" } });
  await assert.rejects(denied, (error) => error.code === "denied" && error.message === "members only");
  const leaving = channel.unsubscribe();
  await tick();
  socket.deliver({ type: "reply", ref: socket.last("unsubscribe").ref, ok: true });
  await leaving;
  assert.strictEqual(socket.closedWith, 1000);
  assert.strictEqual(rm.state, "disconnected");
});

test("notify() raises a notification only where the message carries the bubble", async () => {
  const rm = await connected();
  const shown = [];
  globalThis.Notification = function (title, options) { shown.push([title, options.body]); };
  globalThis.Notification.permission = "granted";
  try {
    assert.strictEqual(rm.notify({ bubble: false, payload: "x" }, "t"), null);
    rm.notify({ bubble: true, payload: "hello" }, "New message");
    assert.deepStrictEqual(shown, [["New message", "hello"]]);
  } finally {
    delete globalThis.Notification;
  }
});

test("twenty subscribes at once ask the application at most eight at a time", async () => {
  const rm = await connected();
  const promises = [];
  for (let i = 0; i < 20; i++) promises.push(rm.subscribe("c" + i, () => {}));
  await tick();
  const socket = FakeSocket.opened[0];
  socket.deliver({ type: "welcome", v: 1, uid: null });
  await tick();
  let answered = 0;
  while (answered < 20) {
    const asked = socket.sent.filter((f) => f.type === "subscribe");
    assert.ok(asked.length - answered <= 8, `${asked.length - answered} waiting at once`);
    assert.ok(asked.length > answered, "the next one was asked");
    socket.deliver({ type: "reply", ref: asked[answered].ref, ok: true, mode: "read_write" });
    answered++;
    await tick();
  }
  assert.strictEqual((await Promise.all(promises)).length, 20);
});

test("a message sent again after a reconnect while its handler still runs reaches it once, in order", async () => {
  const rm = await connected();
  const started = [];
  const finish = {};
  const { socket } = await subscribed(rm, "room", (data) => {
    started.push(data.n);
    return new Promise((resolve) => { finish[data.n] = resolve; });
  });
  socket.deliver(message("r.1", { n: 1 }));
  socket.deliver(message("r.2", { n: 2 }));
  await tick();
  assert.deepStrictEqual(started, [1]);
  socket.drop(1006);  // the network went away: r.1 and r.2 were not acknowledged, the daemon sends them again
  await until(() => FakeSocket.opened.length === 2 && FakeSocket.opened[1].last("hello"), "the second connection's hello");
  const again = FakeSocket.opened[1];
  again.deliver({ type: "welcome", v: 1, uid: null });
  await tick();
  again.deliver({ type: "reply", ref: again.last("subscribe").ref, ok: true, mode: "read_write" });
  again.deliver(message("r.1", { n: 1 }));
  again.deliver(message("r.2", { n: 2 }));
  again.deliver(message("r.3", { n: 3 }));
  await tick();
  assert.deepStrictEqual(started, [1], "nothing runs beside the first handler, and r.1 does not start again");
  finish[1]();
  await until(() => started.length === 2, "the second message");
  assert.deepStrictEqual(socket.sent.filter((f) => f.type === "ack"), [], "no ack on the dead socket");
  finish[2]();
  await until(() => started.length === 3, "the third message");
  finish[3]();
  await until(() => (again.last("ack") || {}).id === "r.3", "the last ack");
  assert.deepStrictEqual(started, [1, 2, 3]);
  const acks = again.sent.filter((f) => f.type === "ack").map((f) => f.id);
  assert.deepStrictEqual(acks, ["r.1", "r.2", "r.3"], "each acknowledged on the socket it came by, in order");
});

test("a transport that never opened gives way to the next; one that opened before is tried again", async () => {
  // the daemon's address refuses connections: polling's fetch fails, and Node has no document for JSONP
  const rm = await connected({ url: "ws://127.0.0.1:1/rm", maxReconnectDelay: 2 });
  const failedWith = [];
  rm.on("state", (state) => { if (state === "reconnecting") failedWith.push(rm.transport); });
  FakeSocket.refuse = true;
  try {
    rm.connect();
    await until(() => failedWith.length >= 4, "four failed attempts");
    assert.deepStrictEqual(failedWith.slice(0, 4), ["websocket", "polling", "jsonp", "websocket"]);
    FakeSocket.refuse = false;  // the WebSocket gets through once: from then on a failure is the daemon away
    await until(() => rm.transport === "websocket" && rm._socket && rm._socket.last && rm._socket.last("hello"), "an open WebSocket");
    rm._socket.deliver({ type: "welcome", v: 1, uid: null });
    assert.strictEqual(rm.state, "connected");
    FakeSocket.refuse = true;
    failedWith.length = 0;
    rm._socket.drop(1006);
    await until(() => failedWith.length >= 5, "five more failed attempts");
    assert.deepStrictEqual(failedWith.slice(0, 5), ["websocket", "websocket", "websocket", "websocket", "websocket"]);
  } finally {
    FakeSocket.refuse = false;
    rm.disconnect();
  }
});

async function welcomed(socket) {
  await until(() => socket.last("hello"), "the hello");
  socket.deliver({ type: "welcome", v: 1, uid: null });
  await tick();
}

test("a second drop while resubscribing keeps the channel: it is asked for again on the next connection", async () => {
  const rm = await connected();
  const errors = [];
  rm.on("error", (error) => errors.push(error.code));
  const got = [];
  const { socket } = await subscribed(rm, "room", (data) => got.push(data), "GRANT-1");
  socket.drop(1006);
  await until(() => FakeSocket.opened.length === 2, "the second connection");
  const second = FakeSocket.opened[1];
  await welcomed(second);
  assert.strictEqual(second.sent.filter((f) => f.type === "subscribe").length, 1, "resubscribing");
  second.drop(1006);  // before the reply
  await until(() => FakeSocket.opened.length === 3, "the third connection");
  const third = FakeSocket.opened[2];
  await welcomed(third);
  const asked = third.sent.filter((f) => f.type === "subscribe");
  assert.deepStrictEqual(asked.map((f) => [f.channel, f.grant]), [["room", "GRANT-1"]], "asked again, once, with its grant");
  third.deliver({ type: "reply", ref: asked[0].ref, ok: true, mode: "read_write" });
  third.deliver(message("r.1", { n: 1 }));
  await until(() => (third.last("ack") || {}).id === "r.1", "the message handled");
  assert.deepStrictEqual(got, [{ n: 1 }]);
  assert.deepStrictEqual(errors, []);
  assert.deepStrictEqual(Object.keys(rm._channels), ["room"]);
  rm.disconnect();
});

test("a resubscribe refused for now (unavailable) is asked again; only a definitive refusal drops the channel", async () => {
  const rm = await connected({ clientAuth: "token" });
  const errors = [];
  rm.on("error", (error) => errors.push(error.code));
  const { socket } = await subscribed(rm, "room", () => {});
  socket.drop(1006);
  await until(() => FakeSocket.opened.length === 2, "the second connection");
  const again = FakeSocket.opened[1];
  await welcomed(again);
  const asks = () => again.sent.filter((f) => f.type === "subscribe");
  again.deliver({ type: "reply", ref: asks()[0].ref, ok: false, error: { code: "unavailable", reason: "Redis is unreachable" } });
  await until(() => asks().length === 2, "asked again on the same connection");
  assert.deepStrictEqual(errors, [], "a transient refusal is not reported");
  assert.ok(rm._channels.room, "and the channel is kept");
  again.deliver({ type: "reply", ref: asks()[1].ref, ok: false, error: { code: "denied", reason: "members only" } });
  await until(() => errors.length === 1, "the error event");
  assert.deepStrictEqual(errors, ["denied"]);
  assert.strictEqual(rm._channels.room, undefined, "a denial drops it");
  assert.strictEqual(asks().length, 2, "and it is not asked again");
  assert.strictEqual(rm.state, "disconnected", "the last subscription gone: the connection closes");
});

async function allSettled(promises) {
  const outcomes = new Array(promises.length);
  promises.forEach((promise, i) => promise.then(() => { outcomes[i] = "ok"; }, (error) => { outcomes[i] = error.code; }));
  await until(() => outcomes.filter((o) => o !== undefined).length === promises.length, "every request settled");
  return outcomes;
}

test("a fatal close rejects every request with its code, the subscribes waiting for their turn too", async () => {
  // before the welcome: refused at the hello (a wrong public key)
  let rm = await connected({ publicKey: "wrong" });
  let promises = [];
  for (let i = 0; i < 10; i++) promises.push(rm.subscribe("c" + i, () => {}));
  await until(() => FakeSocket.opened[0].last("hello"), "the hello");
  FakeSocket.opened[0].drop(4401, "wrong or missing public key");
  assert.deepStrictEqual(await allSettled(promises), new Array(10).fill(4401));
  assert.strictEqual(FakeSocket.opened.length, 1, "not tried again");
  // after the welcome: eight asked, two waiting their turn, then closed with 4429
  rm = await connected();
  promises = [];
  for (let i = 0; i < 10; i++) promises.push(rm.subscribe("c" + i, () => {}));
  const socket = FakeSocket.opened[0];
  await welcomed(socket);
  assert.strictEqual(socket.sent.filter((f) => f.type === "subscribe").length, 8);
  socket.drop(4429, "too many sockets");
  assert.deepStrictEqual(await allSettled(promises), new Array(10).fill(4429));
  assert.strictEqual(socket.sent.filter((f) => f.type === "subscribe").length, 8, "the two waiting were never sent");
  // disconnect() while ten wait for the application
  rm = await connected();
  promises = [];
  for (let i = 0; i < 10; i++) promises.push(rm.subscribe("c" + i, () => {}));
  await welcomed(FakeSocket.opened[0]);
  rm.disconnect();
  assert.deepStrictEqual(await allSettled(promises), new Array(10).fill("disconnected"));
  assert.strictEqual(rm.state, "disconnected");
});

test("with several message listeners, a message is acknowledged once every listener's promise settled", async () => {
  const rm = await connected({ uid: "alice" });
  let finishSlow;
  const calls = [];
  rm.onMessage((envelope) => { calls.push("slow " + envelope.id); return new Promise((resolve) => { finishSlow = resolve; }); });
  rm.onMessage((envelope) => { calls.push("quick " + envelope.id); return Promise.resolve(); });
  rm.onMessage((envelope) => { calls.push("sync " + envelope.id); });
  const socket = FakeSocket.opened[0];
  await welcomed(socket);
  socket.deliver({ type: "message", id: "m.1", source: "rm.users.alice", timestamp: 1, bubble: true, payload: "x" });
  for (let i = 0; i < 5; i++) await tick();
  assert.deepStrictEqual(calls, ["slow m.1", "quick m.1", "sync m.1"]);
  assert.strictEqual(socket.last("ack"), undefined, "the first listener has not finished");
  finishSlow();
  await until(() => socket.last("ack"), "the ack");
  assert.deepStrictEqual(socket.sent.filter((f) => f.type === "ack").map((f) => f.id), ["m.1"]);
  rm.disconnect();
});

test("a daemon that closes each session right after its welcome is asked ever more slowly; a lasting one resets", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "Date"] });
  const rm = await connected({ reconnectDelay: 100, maxReconnectDelay: 100000 });
  rm.connect();
  // the next attempt comes between delay/2 and delay after the close (jitter): none before low, one by 2 * low
  const nextAfter = (low, what) => {
    const before = FakeSocket.opened.length;
    t.mock.timers.tick(low - 1);
    assert.strictEqual(FakeSocket.opened.length, before, what + ": no attempt before " + low + " ms");
    t.mock.timers.tick(low + 1);
    assert.strictEqual(FakeSocket.opened.length, before + 1, what + ": an attempt by " + 2 * low + " ms");
  };
  const admittedThenClosed = async (lasting) => {
    const socket = FakeSocket.opened[FakeSocket.opened.length - 1];
    await tick();  // it opens (setImmediate: not a mocked timer) and says hello
    assert.ok(socket.last("hello"));
    socket.deliver({ type: "welcome", v: 1, uid: null });
    assert.strictEqual(rm.state, "connected");
    if (lasting) t.mock.timers.tick(lasting);
    socket.drop(1013, "try again later");
  };
  for (const low of [50, 100, 200, 400, 800]) {
    await admittedThenClosed(0);
    nextAfter(low, "closed at once");
  }
  await admittedThenClosed(5000);  // up for five seconds: the back-off starts again
  nextAfter(50, "after a lasting connection");
  await admittedThenClosed(4999);  // not quite
  nextAfter(100, "after a short one");
  rm.disconnect();
});

test("publish() resolves with nothing once the daemon took it", async () => {
  const rm = await connected();
  const { channel, socket } = await subscribed(rm, "room", () => {});
  const published = channel.publish({ text: "hi" });
  await tick();
  const request = socket.last("publish");
  assert.deepStrictEqual([request.channel, request.message], ["room", { text: "hi" }]);
  socket.deliver({ type: "reply", ref: request.ref, ok: true });
  assert.strictEqual(await published, undefined);
  rm.disconnect();
});

test("over long-polling, a pong held for a running handler ends the socket pingTimeout after the ping", async (t) => {
  // A scripted Engine.IO 4 server behind fetch: the handshake, the namespace, the hello, then what respond() gives.
  let pending = null;
  const queue = [];
  const respond = (text) => { if (pending) { const r = pending; pending = null; r(text); } else queue.push(text); };
  const realFetch = globalThis.fetch;
  globalThis.fetch = (url, options) => {
    if (options && options.method === "POST") {
      for (const packet of String(options.body).split("\x1e")) {
        const hello = /^42\/rm,(\d+)\["hello"/.exec(packet);
        if (hello) respond("43/rm," + hello[1] + '[{"uid":"u"}]');
        if (packet === "40/rm,") respond("40/rm,");
      }
      return Promise.resolve({ ok: true, text: () => Promise.resolve("ok") });
    }
    return new Promise((resolve) => {
      const done = (text) => resolve({ ok: true, text: () => Promise.resolve(text) });
      if (!url.includes("sid=")) return done('0{"sid":"s","pingInterval":10000,"pingTimeout":300}');
      if (queue.length) return done(queue.shift());
      pending = done;
    });
  };
  t.after(() => { globalThis.fetch = realFetch; });
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
  const RedMessenger = load();
  const rm = new RedMessenger({ url: "ws://x/rm", transports: ["polling"], uid: "u" });
  const handling = [];
  rm.onMessage(() => new Promise(() => { handling.push(1); }));  // a handler that runs on and on
  rm.connect();
  const settle = async (what, condition) => {  // timers due now run, promises settle; the clock does not move
    for (let turns = 0; turns < 1000 && !condition(); turns++) { t.mock.timers.tick(0); await tick(); }
    assert.ok(condition(), what);
  };
  await settle("connected", () => rm.state === "connected");
  respond('42/rm,["message",{"id":"a","source":"rm.users.u","timestamp":1,"bubble":true,"payload":"x"}]\x1e2');
  await settle("the handler running", () => handling.length === 1);
  t.mock.timers.tick(299);
  await tick();
  assert.strictEqual(rm.state, "connected", "the pong may wait pingTimeout");
  t.mock.timers.tick(2);
  await settle("the socket ended, the session being gone on the daemon's side", () => rm.state !== "connected");
  rm.disconnect();
});
