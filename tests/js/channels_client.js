// A channel client on a real socket.io-client (4.x, 2.x or 1.x), speaking version 1 as
// docs/protocol.md (*Channels*) says: a hello event with an ack, then requests with acks.
//
//   node channels_client.js '{"url": "http://127.0.0.1:8080/rm", "generation": "v4", "hello": {"v": 1, ...}}'
//
// stdout: one JSON object per line: {"event": "welcome", "data": ...} (the hello's ack),
// {"event": "reply", "ref": R, "data": ...} (a request's ack), {"event": "message", "message": ...},
// {"event": "error", ...}, {"event": "disconnect", ...}.
// stdin: one JSON command per line: {"cmd": "request", "ref": R, "name": "subscribe", "data": {...}}, {"cmd": "exit"}.
"use strict";

const readline = require("readline");

const args = JSON.parse(process.argv[2]);
const MODULES = { v4: "socket.io-client", v2: "socket.io-client-v2", v1: "socket.io-client-v1" };
const io = require(MODULES[args.generation || "v4"]);

function report(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event: event }, fields || {})) + "\n");
}

const socket = io(args.url, Object.assign({ transports: ["websocket"], reconnection: false, forceNew: true }, args.options || {}));
socket.on("connect", function () {
  socket.emit("hello", args.hello, function (data) {
    report("welcome", { data: data });
  });
});
socket.on("message", function (message) {
  report("message", { message: message });
});
socket.on("error", function (data) {
  report("error", { data: data });
});
socket.on("disconnect", function (reason) {
  report("disconnect", { reason: String(reason) });
});

readline.createInterface({ input: process.stdin }).on("line", function (line) {
  const command = JSON.parse(line);
  if (command.cmd === "request") {
    socket.emit(command.name, command.data, function (data) {
      report("reply", { ref: command.ref, data: data });
    });
  } else if (command.cmd === "exit") {
    socket.close();
    process.exit(0);
  }
});
