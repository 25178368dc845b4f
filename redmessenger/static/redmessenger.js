/*
 * RedMessenger's browser library (SPEC §9), served by the daemon at /redmessenger.js.
 * Plain ES2017, no dependency. The wire protocol it speaks is docs/protocol.md's
 * "Version 1" and "Channels" over a WebSocket.
 *
 *   <meta name="redmessenger-url" content="wss://rm.example.com/rm">   (the Python library's page_tags())
 *   <meta name="redmessenger-pkey" content="...">
 *   <script src="https://rm.example.com/redmessenger.js"></script>
 *
 *   const rm = new RedMessenger({clientAuth: "session token"});
 *   const room = await rm.subscribe("room", (data, envelope) => show(data));   // rejected when denied
 *   await room.publish({text: "hi"});
 *   await room.unsubscribe();                       // the last one: the connection closes (lazy)
 *
 * Personal messages (the uid's, with their bubble): new RedMessenger({uid, key | identityGrant}) and
 * rm.onMessage((envelope) => ...); rm.notify(envelope, title) raises a desktop notification only where
 * envelope.bubble is true (one tab of the user's).
 *
 * Each message reaches its handler once (ids), one at a time, and is acknowledged after the handler
 * returned (or its promise settled, every listener's): a message whose handler did not finish is delivered
 * again. Over long-polling, where the next poll confirms what came before it, the next poll waits for the
 * handlers of what the last one brought.
 */
(function (root) {
  "use strict";

  var FATAL = { 1003: true, 1009: true, 4400: true, 4401: true, 4409: true, 4422: true, 4429: true };
  var SEEN_KEPT = 5000;
  // Subscribe requests waiting for the application at once: the daemon refuses more than 16 per connection.
  var ASKING_AT_ONCE = 8;
  // A connection that stayed up this long after its welcome starts the back-off again from reconnectDelay; one
  // that ends sooner (the daemon refusing the session after admitting it: 1013, 4413) keeps doubling it.
  var STABLE_AFTER = 5000;
  // Refusals of a resubscribe that may pass: the channel is kept and asked for again (reply codes; close codes too).
  var TRANSIENT = { disconnected: true, unavailable: true, rate_limited: true, not_ready: true };

  function meta(name) {
    var tag = typeof document !== "undefined" && document.querySelector('meta[name="' + name + '"]');
    return tag ? tag.getAttribute("content") : null;
  }

  function RequestError(code, reason) {
    var error = new Error(reason);
    error.name = "RedMessengerError";
    error.code = code;
    return error;
  }

  function Channel(client, name, handler) {
    this.name = name;
    this.mode = null;
    this._client = client;
    this._handler = handler;
    this._grant = null;
  }

  /** Publish any JSON value on the channel; resolves (with nothing) once the daemon took it, rejects with {code, message}. */
  Channel.prototype.publish = function (message) {
    return this._client._request({ type: "publish", channel: this.name, message: message }).then(function () {});
  };

  /** Stop receiving the channel; the last subscription closes the connection (unless connect() was called). */
  Channel.prototype.unsubscribe = function () {
    return this._client._unsubscribe(this);
  };

  /*
   * Long-polling, for networks that block WebSockets: the daemon's Engine.IO 4 endpoint (/socket.io/) with
   * the same requests as Socket.IO events with acknowledgements (docs/protocol.md, "Channels" over Socket.IO).
   * It looks like a WebSocket to the rest of the library: send() takes version-1 frames, onmessage gets
   * version-1 frames. Messages are confirmed by the next poll (and by the pong to a ping after them), as Engine.IO
   * does; acks are not sent. So the next poll, and a pong, wait until the library acknowledged (handled) every
   * message the socket handed it: a message whose handler did not finish is never confirmed. The handlers of what
   * one poll brought have, together, until the session would end on the daemon's side (pingTimeout after a ping
   * the pong waits for, pingInterval + pingTimeout at most): past that the socket ends (1006), and what was not
   * confirmed comes again on the next connection (each handled once: ids). A request (publish, subscribe) lets the
   * poll go at once, since its reply can only come with one: a handler that makes a request, and the messages
   * behind it, count as received from then on.
   *
   * With jsonp, the same over Engine.IO 3's JSONP polling, for pages that may not connect() to the daemon at all
   * (a Content-Security-Policy connect-src without it, a proxy that strips CORS headers): polls are <script>
   * elements (___eio[N]("...")), posts are forms submitted into a hidden iframe, and the client pings.
   */
  var jsonpSockets = 0;

  function PollingSocket(url, jsonp) {
    var parts = new URL(url);
    this._jsonp = !!jsonp;
    this._base = (parts.protocol === "wss:" ? "https:" : "http:") + "//" + parts.host + "/socket.io/?EIO=" +
      (jsonp ? "3&transport=polling&b64=1" : "4&transport=polling");
    if (jsonp) {
      var callbacks = root.___eio = root.___eio || [];
      this._index = callbacks.length;
      callbacks.push(null);
      this._base += "&j=" + this._index;
      this._name = "redmessenger_jsonp_" + (++jsonpSockets);
      this._posts = 0;
    }
    this._nsp = parts.pathname.replace(/\/+$/, "") || "/";
    this._sid = null;
    this._acks = {};
    this._ackId = 0;
    this._outbox = [];
    this._posting = false;
    this._pinger = null;
    this._unhandled = [];  // ids of the messages handed to the library and not yet acknowledged by it, in order
    this._asked = false;  // a request was sent since the last poll went: the next one goes, handled or not
    this._held = false;  // the next poll waits for them
    this._pongDue = false;  // so does the pong to a ping that came after them
    this._holdTimer = null;
    this._holdLimit = 45000;  // pingInterval + pingTimeout, from the handshake
    this._pingTimeout = 20000;  // from the handshake too
    this._holdUntil = 0;
    this.readyState = 0;
    var self = this;
    setTimeout(function () { self._handshake(); });
  }

  PollingSocket.prototype._url = function () {
    return this._base + (this._sid ? "&sid=" + encodeURIComponent(this._sid) : "") + "&t=" + Date.now().toString(36);
  };

  /** One poll (or the handshake): the response's text. */
  PollingSocket.prototype._get = function () {
    var url = this._url();
    if (!this._jsonp) {
      return fetch(url).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      });
    }
    var index = this._index;
    return new Promise(function (resolve, reject) {
      var script = document.createElement("script"), answered = false;
      var callback = function (text) { answered = true; resolve(text); };
      var finish = function () {  // by then the next poll may have put its own callback in the slot
        script.onload = script.onerror = null;
        if (script.parentNode) script.parentNode.removeChild(script);
        if (root.___eio[index] === callback) root.___eio[index] = null;
      };
      root.___eio[index] = callback;
      script.onload = function () { finish(); if (!answered) reject(new Error("JSONP: no answer")); };
      script.onerror = function () { finish(); reject(new Error("JSONP: the request failed")); };
      script.async = true;
      script.src = url;
      (document.head || document.body).appendChild(script);
    });
  };

  /** One post of packets, in order with the others (the caller waits for each). */
  PollingSocket.prototype._write = function (packets) {
    var url = this._url();
    if (!this._jsonp) {
      return fetch(url, { method: "POST", body: packets.join("\x1e"), headers: { "content-type": "text/plain;charset=UTF-8" } })
        .then(function (response) { if (!response.ok) throw new Error("HTTP " + response.status); });
    }
    var name = this._name + "_" + (++this._posts);  // its own frame: the last one may still be in the page
    var body = packets.map(function (packet) { return packet.length + ":" + packet; }).join("");
    return new Promise(function (resolve) {
      var frame = document.createElement("iframe"), form = document.createElement("form");
      var field = document.createElement("textarea");
      frame.name = name;
      frame.style.display = form.style.display = "none";
      form.method = "POST";
      form.action = url;
      form.target = name;
      form.acceptCharset = "utf-8";
      field.name = "d";
      // newlines escaped as engine.io-client does (a form would send CR LF): backslash-n as \\n, a newline as \n
      field.value = body.replace(/\\n/g, "\\\n").replace(/\n/g, "\\n");
      form.appendChild(field);
      document.body.appendChild(frame);
      document.body.appendChild(form);
      frame.onload = function () {  // the daemon answered (a form cannot tell how): the next post may go
        frame.onload = null;
        setTimeout(function () { frame.parentNode.removeChild(frame); form.parentNode.removeChild(form); });
        resolve();
      };
      form.submit();
    });
  };

  /** The packets of a response: Engine.IO 4 separates them with \x1e, Engine.IO 3 prefixes their lengths. */
  PollingSocket.prototype._split = function (text) {
    if (!this._jsonp) return text.split("\x1e");
    var packets = [], at = 0;
    while (at < text.length) {
      var colon = text.indexOf(":", at), length = Number(text.slice(at, colon));
      if (colon < 0 || !(length >= 0)) throw new Error("a malformed payload");
      packets.push(text.substr(colon + 1, length));
      at = colon + 1 + length;
    }
    return packets;
  };

  PollingSocket.prototype._handshake = function () {
    var self = this;
    this._get().then(function (text) {
      var packets = self._split(text), open = JSON.parse(packets[0].slice(1));
      self._sid = open.sid;
      if (open.pingInterval && open.pingTimeout) {
        self._holdLimit = open.pingInterval + open.pingTimeout;
        self._pingTimeout = open.pingTimeout;
      }
      if (self._jsonp) {  // Engine.IO 3: the client pings; its handshake connected it to "/" already
        self._pinger = setInterval(function () { self._post("2"); }, open.pingInterval || 25000);
        if (self._nsp === "/") packets.slice(1).forEach(function (packet) { self._packet(packet); });
        else self._post("40" + self._prefix());
      } else {
        self._post("40" + self._prefix());
      }
      self._poll();
    }).catch(function () { self._end(1006, "the polling handshake failed"); });
  };

  PollingSocket.prototype._prefix = function () {
    return this._nsp === "/" ? "" : this._nsp + ",";
  };

  PollingSocket.prototype._poll = function () {
    if (this.readyState === 3) return;
    var self = this;
    this._get().then(function (text) {
      self._split(text).forEach(function (packet) { self._packet(packet); });
      self._next();
    }).catch(function () { self._end(1006, "the polling connection was lost"); });
  };

  /** The next poll confirms what this one brought: it goes once the library has handled all of it. */
  PollingSocket.prototype._next = function () {
    if (this.readyState === 3) return;
    if (!this._unhandled.length || this._asked) {  // (a request's reply comes with a poll: see send())
      this._asked = false;
      return this._poll();
    }
    this._held = true;
    this._hold();
  };

  /**
   * The session ends on the daemon's side if the wait lasts: pingInterval + pingTimeout after a poll it did not get,
   * pingTimeout after a ping it had no pong for (``limit``). Past that the socket ends (1006) and reconnects.
   */
  PollingSocket.prototype._hold = function (limit) {
    var until = Date.now() + (limit === undefined ? this._holdLimit : limit);
    if (this._holdTimer && this._holdUntil <= until) return;
    clearTimeout(this._holdTimer);
    this._holdUntil = until;
    var self = this;
    this._holdTimer = setTimeout(function () {  // the daemon has ended the session by now (its heartbeat)
      self._holdTimer = null;
      self._end(1006, "the handlers ran longer than the session's heartbeat allows");
    }, until - Date.now());
  };

  /** The library acknowledged up to this id: once all it was handed is handled, the pong and the poll go. */
  PollingSocket.prototype._handled = function (id) {
    var at = this._unhandled.indexOf(id);
    if (at < 0) return;
    this._unhandled.splice(0, at + 1);
    if (this._unhandled.length || this.readyState === 3) return;
    clearTimeout(this._holdTimer);
    this._holdTimer = null;
    if (this._pongDue) { this._pongDue = false; this._post("3"); }
    if (this._held) { this._held = false; this._poll(); }
  };

  PollingSocket.prototype._packet = function (packet) {
    var kind = packet.charAt(0);
    if (kind === "2") {  // Engine.IO ping: pong, which confirms what came before it (so not before it is handled)
      if (!this._unhandled.length) return this._post("3");
      this._pongDue = true;
      return this._hold(this._pingTimeout);
    }
    if (kind === "1") return this._end(1001, "the server closed the session");
    if (kind !== "4") return;
    var sio = packet.slice(1), type = sio.charAt(0), rest = sio.slice(1), prefix = this._prefix();
    if (prefix && rest.indexOf(prefix) !== 0) return;  // "/" (Engine.IO 3 connects it at the handshake)
    rest = rest.slice(prefix.length);
    var match = /^(\d*)([\[{].*)?$/.exec(rest);
    var id = match && match[1] ? Number(match[1]) : null;
    var data = match && match[2] ? JSON.parse(match[2]) : null;
    if (type === "0") {  // connected to the namespace: the "WebSocket" is open
      this.readyState = 1;
      if (this.onopen) this.onopen();
    } else if (type === "2" && data) {
      if (data[0] === "message") {
        if (data[1] && data[1].id !== undefined) this._unhandled.push(data[1].id);
        this._deliver(Object.assign({ type: "message" }, data[1]));
      }
      else if (data[0] === "error") this._refused = data[1];
    } else if (type === "3" && id !== null && this._acks[id]) {
      var answer = this._acks[id];
      delete this._acks[id];
      answer(data ? data[0] : null);
    } else if (type === "1" || type === "4") {
      var report = this._refused || (type === "4" ? data : null) || {};
      this._end(report.code || 1000, report.message || "disconnected");
    }
  };

  PollingSocket.prototype._deliver = function (frame) {
    if (this.onmessage) this.onmessage({ data: JSON.stringify(frame) });
  };

  PollingSocket.prototype.send = function (text) {
    var frame = JSON.parse(text), self = this;
    if (frame.type === "ack") return this._handled(frame.id);  // confirmed by the next poll, which this lets go
    var name = frame.type, fields = Object.assign({}, frame), ref = frame.ref;
    delete fields.type;
    delete fields.ref;
    var id = ++this._ackId;
    this._acks[id] = function (answer) {
      answer = answer || {};
      if (name === "hello") self._deliver({ type: "welcome", v: 1, uid: answer.uid === undefined ? null : answer.uid });
      else self._deliver(Object.assign({ type: "reply", ref: ref }, answer));
    };
    this._post("42" + this._prefix() + id + JSON.stringify([name, fields]));
    // Its reply can only come with a poll, and a handler may be waiting for it (an awaited publish()): the next
    // poll goes without waiting for the handlers, now if it was held, and confirms what they still hold (over
    // polling, a handler that makes a request gives up being delivered again if the connection drops after it).
    // Held, the poll would wait for that very handler.
    this._asked = true;
    if (this._held) {
      this._held = false;
      this._asked = false;
      if (!this._pongDue) { clearTimeout(this._holdTimer); this._holdTimer = null; }
      this._poll();
    }
  };

  PollingSocket.prototype._post = function (packet) {
    if (packet !== undefined) this._outbox.push(packet);
    if (this._posting || this._ended || !this._outbox.length) return;  // after close(): its "1" still goes
    this._posting = true;
    var batch = this._outbox, self = this;
    this._outbox = [];
    this._write(batch).then(function () {
      self._posting = false;
      self._post();  // what was written meanwhile: the next post, in order
    }).catch(function () { self._end(1006, "the polling connection was lost"); });
  };

  PollingSocket.prototype.close = function () {
    if (this.readyState === 3) return;
    clearInterval(this._pinger);
    clearTimeout(this._holdTimer);
    if (this._sid) this._post("1");
    this.readyState = 3;
  };

  PollingSocket.prototype._end = function (code, reason) {
    if (this.readyState === 3 && this._ended) return;
    clearInterval(this._pinger);
    clearTimeout(this._holdTimer);
    this._ended = true;
    this.readyState = 3;
    if (this.onclose) this.onclose({ code: code, reason: reason });
  };

  function RedMessenger(options) {
    options = options || {};
    this.url = options.url || meta("redmessenger-url");
    this.publicKey = options.publicKey || meta("redmessenger-pkey");
    this.clientAuth = options.clientAuth || null;
    this.uid = options.uid || null;
    this.key = options.key || null;
    this.identityGrant = options.identityGrant || null;
    this.state = "disconnected";
    this._WebSocket = options.WebSocket || root.WebSocket;
    /** Tried in this order: "websocket", then "polling" where it does not get through, then "jsonp". */
    this.transports = options.transports || ["websocket", "polling", "jsonp"];
    this.transport = null;
    this._tried = 0;  // this.transports[_tried % length] is the next to try
    this._worked = {};  // the transports that opened at least once in this page
    this._backoff = { first: options.reconnectDelay || 500, max: options.maxReconnectDelay || 15000, attempt: 0 };
    this._connectTimeout = options.connectTimeout || 10000;
    this._channels = {};
    this._pending = {};
    this._ref = 0;
    this._socket = null;
    this._forced = false;
    this._timer = null;
    this._welcomed = null;  // when the current connection's welcome came (Date.now())
    this._listeners = { state: [], error: [], message: [] };
    this._seen = new Set();
    this._inbox = [];
    this._handling = false;
    this._lastHandled = null;
    this._queued = [];  // requests made while connecting: sent after the welcome
    this._asking = 0;
    this._waitingToAsk = [];
    if (!this.url) throw new Error("RedMessenger: no URL (the redmessenger-url meta tag, or {url})");
  }

  RedMessenger.prototype.on = function (event, listener) {
    if (!this._listeners[event]) throw new Error("RedMessenger: unknown event " + event);
    this._listeners[event].push(listener);
    return this;
  };

  /** Personal messages (rm.users.<uid>): listener(envelope); connects if needed. */
  RedMessenger.prototype.onMessage = function (listener) {
    this.on("message", listener);
    this._ensureConnected();
    return this;
  };

  RedMessenger.prototype._emit = function (event, value) {
    this._listeners[event].forEach(function (listener) {
      try { listener(value); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  RedMessenger.prototype._setState = function (state) {
    if (this.state !== state) { this.state = state; this._emit("state", state); }
  };

  /** Subscribe: resolves with the Channel once granted, rejects with an Error carrying the refusal's code. */
  RedMessenger.prototype.subscribe = function (name, handler) {
    if (this._channels[name]) return Promise.reject(RequestError("already_subscribed", "already subscribed to " + name));
    var channel = new Channel(this, name, handler || function () {});
    this._channels[name] = channel;
    this._ensureConnected();
    var self = this;
    return this._askFor(channel).then(function () { return channel; }, function (error) {
      if (self._channels[name] === channel) delete self._channels[name];
      self._idle();
      throw error;
    });
  };

  RedMessenger.prototype._askFor = function (channel) {
    var request = { type: "subscribe", channel: channel.name };
    if (channel._grant) request.grant = channel._grant;
    else if (this.clientAuth) request.client_auth = this.clientAuth;
    var self = this;
    var asked = channel._grant ? this._request(request) : this._throttled(request);
    return asked.then(function (reply) {
      channel.mode = reply.mode;
      if (reply.grant) channel._grant = reply.grant;
      return channel;
    }, function (error) {
      if (error.code === "bad_grant" && channel._grant) {  // expired: ask the application again
        channel._grant = null;
        return self._askFor(channel);
      }
      throw error;
    });
  };

  // A subscribe that asks the application waits its turn: at most ASKING_AT_ONCE at a time.
  RedMessenger.prototype._throttled = function (request) {
    var self = this;
    return new Promise(function (resolve, reject) {
      var go = function () {
        self._asking++;
        var answered = self._request(request);
        var next = function () {
          self._asking--;
          var waiting = self._waitingToAsk.shift();
          if (waiting) waiting.go();
        };
        answered.then(next, next);
        resolve(answered);
      };
      if (self._asking < ASKING_AT_ONCE) go();
      else self._waitingToAsk.push({ go: go, reject: reject });  // rejected where the queued requests are
    });
  };

  RedMessenger.prototype._unsubscribe = function (channel) {
    if (this._channels[channel.name] !== channel) return Promise.resolve();
    delete this._channels[channel.name];
    var done = this.state === "connected"
      ? this._request({ type: "unsubscribe", channel: channel.name }).catch(function () {})
      : Promise.resolve();
    var self = this;
    return done.then(function () { self._idle(); });
  };

  /** Connect now and stay connected (until disconnect()), with or without subscriptions. */
  RedMessenger.prototype.connect = function () {
    this._forced = true;
    this._ensureConnected();
  };

  RedMessenger.prototype.disconnect = function () {
    this._forced = false;
    this._channels = {};
    this._listeners.message = [];
    this._close();
  };

  /** A desktop notification for a personal message, only on the tab that carries its bubble. */
  RedMessenger.prototype.notify = function (envelope, title, options) {
    if (!envelope || !envelope.bubble || typeof Notification === "undefined") return null;
    if (Notification.permission !== "granted") return null;
    var body = typeof envelope.payload === "string" ? envelope.payload : JSON.stringify(envelope.payload);
    return new Notification(title || "RedMessenger", Object.assign({ body: body }, options || {}));
  };

  RedMessenger.prototype._wanted = function () {
    return this._forced || Object.keys(this._channels).length > 0 || this._listeners.message.length > 0;
  };

  RedMessenger.prototype._idle = function () {
    if (!this._wanted()) this._close();
  };

  RedMessenger.prototype._close = function () {
    clearTimeout(this._timer);
    this._timer = null;
    this._welcomed = null;
    this._backoff.attempt = 0;  // closed on purpose: a later connection starts afresh
    var socket = this._socket;
    this._socket = null;
    this._failPending("disconnected", "the connection was closed");
    if (socket) { socket.onclose = null; socket.close(1000); }
    this._setState("disconnected");
  };

  RedMessenger.prototype._ensureConnected = function () {
    if (this._socket || this._timer) return;
    this._open();
  };

  RedMessenger.prototype._open = function () {
    var self = this;
    this._timer = null;
    this._setState("connecting");
    var transport = this.transports[this._tried % this.transports.length], socket;
    try {
      if (transport === "websocket") {
        if (!this._WebSocket) throw new Error("no WebSocket here");
        socket = new this._WebSocket(this.url);
      } else {
        socket = new PollingSocket(this.url, transport === "jsonp");
      }
    } catch (e) {  // a WebSocket constructor that throws (blocked, or none): an attempt that failed
      socket = { readyState: 3, close: function () {} };
      setTimeout(function () { if (socket.onclose) socket.onclose({ code: 1006, reason: String(e) }); });
    }
    this.transport = transport;
    socket._opened = false;
    this._socket = socket;
    socket.onopen = function () {
      socket._opened = true;
      clearTimeout(socket._opening);
      self._worked[transport] = true;
      var hello = { type: "hello", v: 1 };
      if (self.publicKey) hello.pkey = self.publicKey;
      if (self.uid) {
        hello.uid = self.uid;
        if (self.identityGrant) hello.grant = self.identityGrant;
        else if (self.key) hello.key = self.key;
      }
      socket.send(JSON.stringify(hello));
    };
    socket.onmessage = function (event) { if (self._socket === socket) self._frame(event.data); };
    socket.onclose = function (event) { clearTimeout(socket._opening); self._closed(socket, event); };
    // A connection refused by the page's Content-Security-Policy: Chromium fires "error" and never "close".
    socket.onerror = function () {
      if (!socket._opened) setTimeout(function () { if (socket.onclose) socket.onclose({ code: 1006, reason: "the connection failed" }); });
    };
    // A proxy that holds the upgrade, or a polling handshake that never ends: give up after connectTimeout.
    socket._opening = setTimeout(function () {
      if (socket._opened || self._socket !== socket || !socket.onclose) return;
      socket.onclose({ code: 1006, reason: "no connection after " + self._connectTimeout + " ms" });
      socket.onclose = null;
      socket.close();
    }, this._connectTimeout);
  };

  RedMessenger.prototype._frame = function (text) {
    var frame;
    try { frame = JSON.parse(text); } catch (e) { return; }
    if (frame.type === "message") {
      frame._via = this._socket;
      this._inbox.push(frame);
      this._drain();
    } else if (frame.type === "reply") {
      var pending = this._pending[frame.ref];
      if (!pending) return;
      delete this._pending[frame.ref];
      if (frame.ok) pending.resolve(frame);
      else pending.reject(RequestError(frame.error.code, frame.error.reason));
    } else if (frame.type === "sync") {
      if (this._lastHandled && !this._handling) this._send({ type: "ack", id: this._lastHandled });
    } else if (frame.type === "welcome") {
      this._welcomed = Date.now();  // the back-off starts again only if this connection lasts (see _closed)
      this._setState("connected");
      this._resubscribe();
    }
  };

  RedMessenger.prototype._resubscribe = function () {
    var self = this;
    Object.keys(this._channels).forEach(function (name) {
      var channel = self._channels[name];
      if (channel.mode === null) return;  // its first subscribe is on its way (sent once connected)
      self._resubscribeTo(channel);
    });
    // requests made while connecting wait for the welcome
    var queued = this._queued;
    this._queued = [];
    queued.forEach(function (request) { request.send(); });
  };

  /**
   * Ask again for a channel held before (a new connection, or a transient refusal). A refusal that may pass (the
   * connection dropped again, Redis unavailable, rate limited) keeps the channel: asked again at the next welcome,
   * or after a pause on this connection. Only a definitive one (denied, invalid_channel, too_many_subscriptions,
   * ...) drops it, with an "error" event.
   */
  RedMessenger.prototype._resubscribeTo = function (channel) {
    if (channel._asking) return;  // already on its way (a bad_grant's second asking, or a retry)
    channel._asking = true;
    var self = this, name = channel.name;
    this._askFor(channel).then(function () {
      channel._asking = false;
      channel._retries = 0;
    }, function (error) {
      channel._asking = false;
      if (self._channels[name] !== channel) return;  // unsubscribed meanwhile
      if (typeof error.code === "number" || TRANSIENT[error.code]) {
        if (error.code === "disconnected" || self.state !== "connected") return;  // the next welcome asks again
        var socket = self._socket, backoff = self._backoff;
        var delay = Math.min(backoff.max, backoff.first * Math.pow(2, channel._retries = (channel._retries || 0) + 1));
        setTimeout(function () {
          if (self._channels[name] === channel && self._socket === socket && self.state === "connected") self._resubscribeTo(channel);
        }, delay / 2 + Math.random() * delay / 2);
        return;
      }
      delete self._channels[name];
      self._emit("error", error);
      self._idle();
    });
  };

  RedMessenger.prototype._request = function (request) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (self.state !== "connected" && !self._socket && !self._timer) {  // nothing connects: it would wait for ever
        return reject(RequestError("disconnected", "not connected"));
      }
      var send = function () {
        var ref = ++self._ref;
        request.ref = ref;
        self._pending[ref] = { resolve: resolve, reject: reject };
        self._send(request);
      };
      if (self.state === "connected") send();
      else self._queued.push({ send: send, reject: reject });
    });
  };

  RedMessenger.prototype._send = function (frame) {
    if (this._socket && this._socket.readyState === 1) this._socket.send(JSON.stringify(frame));
  };

  RedMessenger.prototype._drain = function () {
    if (this._handling) return;
    var frame = this._inbox.shift();
    if (!frame) return;
    var self = this;
    if (this._seen.has(frame.id)) {  // delivered again (after a reconnect): handled already
      this._acked(frame);
      return this._drain();
    }
    this._handling = true;
    var done = function () {
      self._remember(frame.id);
      self._handling = false;
      self._acked(frame);
      self._drain();  // what came meanwhile, by a new connection too: in order, one at a time
    };
    var result;
    try { result = this._dispatch(frame); } catch (e) { setTimeout(function () { throw e; }); }
    if (result && typeof result.then === "function") result.then(done, function (e) { done(); setTimeout(function () { throw e; }); });
    else done();
  };

  RedMessenger.prototype._dispatch = function (frame) {
    var source = frame.source || "";
    var envelope = { id: frame.id, source: source, timestamp: frame.timestamp, bubble: frame.bubble,
                     payload: frame.payload, sender: frame.sender || null };
    if (source.indexOf("rm.channels.") === 0) {
      var channel = this._channels[source.slice("rm.channels.".length)];
      if (channel) return channel._handler(decode(frame.payload), envelope);
      return null;
    }
    // every listener runs; the message is handled once all their promises settled
    var waits = [];
    this._listeners.message.slice().forEach(function (listener) {
      var result;
      try { result = listener(envelope); } catch (e) { setTimeout(function () { throw e; }); return; }
      if (result && typeof result.then === "function") waits.push(result);
    });
    if (waits.length < 2) return waits[0] || null;
    return Promise.all(waits.map(function (wait) {
      return Promise.resolve(wait).then(null, function (e) { setTimeout(function () { throw e; }); });
    }));
  };

  RedMessenger.prototype._remember = function (id) {
    this._seen.add(id);
    if (this._seen.size > SEEN_KEPT) this._seen.delete(this._seen.values().next().value);
  };

  /** Acks are cumulative and per socket: a message that came by a closed socket is acked when it comes again. */
  RedMessenger.prototype._acked = function (frame) {
    if (frame._via !== this._socket) return;
    this._lastHandled = frame.id;
    this._send({ type: "ack", id: frame.id });
  };

  /**
   * The requests sent and not answered fail; with everything (a fatal close), or when no connection is wanted any
   * more, those waiting to be sent (after the welcome, or for their turn to ask the application) fail too.
   */
  RedMessenger.prototype._failPending = function (code, reason, everything) {
    var pending = this._pending, failing = [];
    this._pending = {};
    if (everything || (this._socket === null && !this._wanted())) {
      // taken first: a request rejected here lets the next in line go, and none is left to go
      failing = this._waitingToAsk.concat(this._queued);
      this._waitingToAsk = [];
      this._queued = [];
    }
    Object.keys(pending).forEach(function (ref) { failing.push(pending[ref]); });
    failing.forEach(function (request) { request.reject(RequestError(code, reason)); });
  };

  RedMessenger.prototype._closed = function (socket, event) {
    if (socket !== this._socket) return;
    // A connection that opened: the next one starts again with the first transport. One that did not: the
    // daemon is away (where this transport opened before: try it again) or the transport is blocked (the next).
    if (socket._opened) {
      this._tried = 0;
    } else if (!this._worked[this.transport]) {
      this._tried++;
    }
    this._socket = null;
    // A connection that lasted STABLE_AFTER after its welcome starts the back-off again; a daemon that admits the
    // session and closes it at once (1013, 4413) is not asked again every reconnectDelay, but ever more slowly.
    if (this._welcomed !== null && Date.now() - this._welcomed >= STABLE_AFTER) this._backoff.attempt = 0;
    this._welcomed = null;
    this._inbox = [];  // not acknowledged: the daemon sends them again
    this._lastHandled = null;
    // a handler still running goes on; what the next connection brings waits for it (the same message included)
    if (FATAL[event.code]) {  // refused (a wrong key, a bad frame): trying again would not help
      // every request made settles, with the close's code: sent, waiting for the welcome, or for its turn
      this._failPending(event.code, event.reason || "refused", true);
      this._emit("error", RequestError(event.code, event.reason || "refused"));
      this._setState("disconnected");
      return;
    }
    this._failPending("disconnected", "the connection closed (" + event.code + ")");
    if (!this._wanted()) { this._setState("disconnected"); return; }
    this._setState("reconnecting");
    var backoff = this._backoff;
    var delay = Math.min(backoff.max, backoff.first * Math.pow(2, backoff.attempt++));
    var self = this;
    this._timer = setTimeout(function () { self._open(); }, delay / 2 + Math.random() * delay / 2);
  };

  function decode(payload) {
    try { return JSON.parse(payload); } catch (e) { return payload; }
  }

  RedMessenger.RequestError = RequestError;
  root.RedMessenger = RedMessenger;
})(typeof window !== "undefined" ? window : globalThis);
