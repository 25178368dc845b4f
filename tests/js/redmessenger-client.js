// The browser client of the Node.js RedMessenger, copied unmodified from its README
// (/work/shared/seeds/003_03afb1eed8b34e48.txt). It expects a global `io` (Socket.IO's client).
// Loaded as is by the tests: seed_client.js (Node.js) and the browser page (Chromium).
function RedMessenger(url, userId, userKey) {
this.url = url;
this.userId = userId;
this.userKey = userKey || '';
var socket; // Our sockets.io socket
if (io) {
socket = io(this.url);
socket.on('connect', function() {
console.log("Connected to RedMessenger!");
var identifier = this.generateIdentifier();
console.log("Authenticating...");
socket.emit('identifier', identifier);
}.bind(this));
socket.on('message', function(message) {
this.onMessage(message);
}.bind(this));
}
this.onMessage = function(message) {
console.log("Message from " + message.source + ": " + message.payload);
}
this.generateIdentifier = function () {
return this.userId + ":" + this.userKey;
}
}
