// Runs the seed's browser client (redmessenger-client.js, unmodified) in Node.js
// with a real socket.io-client, and reports what happens, for the Python tests.
//
//   node seed_client.js '{"url": "http://127.0.0.1:8080/rm", "uid": "user1", "key": "",
//                         "generation": "v4" | "v2" | "v1", "options": {...io() options...}}'
//
// stdout: one JSON object per line, {"event": NAME, ...}: log (the seed's console.log),
// open, upgrade, connect, message, error, connect_error, disconnect, reconnect_attempt, ping, pong.
// stdin: one JSON command per line: {"cmd": "emit", "args": [...]}, {"cmd": "freeze_page"}, {"cmd": "close"},
// {"cmd": "exit"}.
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");
const vm = require("vm");

const args = JSON.parse(process.argv[2]);
const MODULES = { v4: "socket.io-client", v2: "socket.io-client-v2", v1: "socket.io-client-v1" };
const realIo = require(MODULES[args.generation]);

function report(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event: event }, fields || {})) + "\n");
}

let socket = null;

function observe(s) {
  const manager = s.io;
  manager.on("open", function () {
    const engine = manager.engine;
    report("open", { transport: engine.transport.name });
    engine.on("upgrade", function (transport) {
      report("upgrade", { transport: transport.name });
    });
  });
  // heartbeats: 4.x reports each ping of the server (it answers it), 2.x each pong to its own ping
  manager.on("ping", function () {
    report("ping");
  });
  manager.on("pong", function () {
    report("pong");
  });
  manager.on("reconnect_attempt", function (attempt) {
    report("reconnect_attempt", { attempt: attempt });
  });
  s.on("connect", function () {
    report("connect", { transport: manager.engine.transport.name });
  });
  s.on("connect_error", function (err) {
    report("connect_error", { message: String((err && err.message) || err), data: (err && err.data) || null });
  });
  s.on("error", function (data) {
    report("error", { data: data instanceof Error ? { message: data.message } : data });
  });
  s.on("disconnect", function (reason) {
    report("disconnect", { reason: String(reason) });
  });
}

// The page's environment: `io` with the test's options (transports, forceJSONP...),
// so that the seed code itself stays as it is.
global.io = function (url, options) {
  socket = realIo(url, Object.assign({}, args.options || {}, options || {}));
  observe(socket);
  return socket;
};
console.log = function () {
  report("log", { text: Array.prototype.join.call(arguments, " ") });
};

const seedFile = path.join(__dirname, "redmessenger-client.js");
vm.runInThisContext(fs.readFileSync(seedFile, "utf8"), { filename: seedFile });

const client = new RedMessenger(args.url, args.uid, args.key);
client.onMessage = function (message) {
  report("message", { message: message });
};

readline.createInterface({ input: process.stdin }).on("line", function (line) {
  const command = JSON.parse(line);
  if (command.cmd === "emit") {
    socket.emit.apply(socket, command.args);
  } else if (command.cmd === "freeze_page") {
    // A page frozen in the browser's back/forward cache: its JavaScript runs no
    // more, but the browser keeps the WebSocket and answers WebSocket pings by
    // itself (here: the ws library does, before any JavaScript of ours).
    const engine = socket.io.engine;
    engine.transport.onData = function (data) {
      report("ignored", { packet: String(data).slice(0, 1) });
    };
    if (engine.transport.ws && engine.transport.ws.on) {
      engine.transport.ws.on("ping", function () {
        report("ws_ping");
      });
    }
    report("frozen", { transport: engine.transport.name });
  } else if (command.cmd === "close") {
    socket.close();
  } else if (command.cmd === "exit") {
    process.exit(0);
  }
});
report("started", { generation: args.generation });
