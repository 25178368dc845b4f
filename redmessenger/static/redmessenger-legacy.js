/*
 * RedMessenger's legacy browser client: the Node.js RedMessenger's
 * RedMessenger(url, userId, userKey), served by the daemon at
 * /redmessenger-legacy.js.  It needs the page's own socket.io-client (any of
 * 1.x to 4.x, loaded first: it uses the global `io`).
 *
 *   var messenger = new RedMessenger("http://host:8080/rm", "user1", "key");
 *   messenger.onMessage = function (message) { ... };   // {source, timestamp, bubble, payload}
 *   messenger.onError = function (error) { ... };       // {code, name, message}, e.g. 4401 BAD_KEY
 *
 * What the seed's client did, unchanged, plus onError: without it a wrong key
 * or uid is invisible to the page (docs/protocol.md lists the codes).
 */
function RedMessenger(url, userId, userKey) {
  this.url = url;
  this.userId = userId;
  this.userKey = userKey || '';
  var socket; // Our sockets.io socket
  if (typeof io !== 'undefined' && io) {
    socket = io(this.url);
    this.socket = socket;
    socket.on('connect', function () {
      console.log("Connected to RedMessenger!");
      var identifier = this.generateIdentifier();
      console.log("Authenticating...");
      socket.emit('identifier', identifier);
    }.bind(this));
    socket.on('message', function (message) {
      this.onMessage(message);
    }.bind(this));
    socket.on('error', function (error) {
      this.onError(typeof error === 'object' && error !== null ? error : {code: 0, name: 'ERROR', message: String(error)});
    }.bind(this));
    socket.on('connect_error', function (error) {
      this.onError({code: 0, name: 'CONNECT_ERROR', message: String(error && error.message || error)});
    }.bind(this));
  } else {
    console.error("RedMessenger: load socket.io-client before redmessenger-legacy.js (no global io)");
  }
  this.onMessage = function (message) {
    console.log("Message from " + message.source + ": " + message.payload);
  };
  this.onError = function (error) {
    console.error("RedMessenger error " + error.code + " " + error.name + ": " + error.message);
  };
  this.generateIdentifier = function () {
    return this.userId + ":" + this.userKey;
  };
}
