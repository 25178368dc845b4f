'use strict';
/*
 * One load-generating process of the RedMessenger benchmarks: holds many
 * client sockets and checks every envelope they receive.
 *
 *   node bench/client.js '{"base": "http://127.0.0.1:8080", "route": "/rm", "dialect": "socketio", "client": "lean"}'
 *
 * The runner (bench/run.py) drives it with one JSON command per line on stdin;
 * it answers with one JSON event per line on stdout.  One process by default
 * (`--workers N` for more; case d uses four): on a two-core machine more
 * processes take CPU from the daemon, so the clients themselves are kept cheap.
 *
 * Payloads are "phase|seq|publish time in ms|padding"; seq counts from 0 per
 * phase and channel.  Every envelope is checked as it arrives: its phase is one
 * we expect, its seq is the next one on its (socket, channel), its bubble is
 * true on the user's oldest socket here and false on the others.  `report`
 * then checks each socket got exactly what it should: nothing missing, doubled
 * or out of order.  The checks are the same whichever driver delivered.
 *
 * Client drivers (see DRIVERS), per dialect; `client` in the spec picks one
 * (default: the first), and the `started` event names the one running:
 *   plain     ws                Node's `ws`: the identifier frame, then one envelope per frame.
 *   plain-v1  ws                Node's `ws`, protocol version 1 (docs/protocol.md): a JSON hello,
 *                               the welcome awaited, then `{"type":"message","id":...}` frames,
 *                               each acknowledged once checked: `ack` in the spec is `every`
 *                               (default: an ack per message, as the browser library acks after
 *                               each handler returns), `burst` (one ack, of the last id, per
 *                               socket and event-loop turn: acks are cumulative) or `sync` (an
 *                               ack of the last id only when the server asks: {"type":"sync"}).
 *   socketio  lean              Engine.IO 4 + Socket.IO 5 spoken directly over `ws` (WebSocket
 *                               transport only): the default, about as cheap as `ws` for plain.
 *             socket.io-client  socket.io-client 4, as browsers' code uses it (WebSocket transport
 *                               only): about a third more CPU per envelope.
 * Adding one is adding an entry.
 *
 * Channels (plain-v1 only; bench/run.py cases sub, resub, pub): `requests`
 * sends channel requests (`subscribe`, `unsubscribe`) from the newest socket of
 * each uid, at most `concurrency` sockets waiting for replies at once (0: all at
 * once), and reports each request's time from its frame sent to its reply
 * received, and every reply that was not `ok` (or not the mode expected).  The
 * grants that replies carry are kept per uid and channel; `"grants": true`
 * presents them in later subscribes (after the daemon restarted).  `connect`
 * with `subscribe` sends a socket's subscribes as soon as it is welcomed (the
 * resubscribe burst).  `client_publish` publishes `count` messages from one
 * socket, all at once, each `"phase|seq|ms|padding"` as a JSON string; a phase
 * announced with `channel: true` expects bubble false and decodes a payload that
 * is JSON text (what a client published), and with `sender` the envelope's
 * sender uid (null: none).  `server_closes` marks every socket as about to be
 * closed by the server (a restart), and reports once all are closed.
 *
 * The soak (bench/soak.py) adds users that reconnect now and then (`churn`):
 * they are tallied per user across their sockets, and a message a socket closed
 * without acknowledging comes again on the next one (same id, same seq): such a
 * copy is counted (`copies`), not an error.  A gap or a message out of order
 * still is.  `progress` reports a phase's counts while it runs.
 */

const readline = require('readline');
const { performance, monitorEventLoopDelay } = require('perf_hooks');

const opts = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms resolution
const MAX_ERRORS = 20;
// How late this process's event loop ran: a late loop inflates the latencies measured here.
// (The histogram holds the whole interval between its ticks, lateness included.)
const LOOP_TICK_MS = 10;
const loopDelay = monitorEventLoopDelay({ resolution: LOOP_TICK_MS });
loopDelay.enable();
const lateness = (ns) => Math.max(0, ns / 1e6 - LOOP_TICK_MS);

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

// -- client drivers: how one dialect connects, identifies and receives ---------

const wsBase = opts.base.replace(/^http/, 'ws');
const ACK_MODE = opts.ack || 'every';
if (ACK_MODE !== 'every' && ACK_MODE !== 'burst' && ACK_MODE !== 'sync') throw new Error(`unknown ack mode ${ACK_MODE}`);

/* ack: burst: the sockets with an ack to send at the end of this event-loop turn. */
let ackBacklog = [];
/** plain-v1: acks sent since the last report (how many messages an ack covered). */
let acksSent = 0;
function flushAcks() {
  const backlog = ackBacklog;
  ackBacklog = [];
  for (const state of backlog) {
    state.queued = false;
    if (state.ws.readyState === 1) {
      state.ws.send(JSON.stringify({ type: 'ack', id: state.id }));
      acksSent += 1;
    }
  }
}

const DRIVERS = {
  plain: {
    /* The plain dialect: the first text frame is the identifier, then one envelope per frame. */
    ws(sock, on) {
      const WebSocket = require('ws');
      const ws = new WebSocket(wsBase + opts.route, { handshakeTimeout: 30000 });
      ws.on('open', () => {
        ws.send(sock.uid);
        on.ready();
      });
      ws.on('message', (data) => on.envelope(JSON.parse(data)));
      ws.on('close', (code, reason) => on.close(`${code} ${reason}`));
      ws.on('error', (err) => on.error(err.message));
      return () => ws.close(1000);
    },
  },
  'plain-v1': {
    /*
     * Protocol version 1 of the plain dialect (docs/protocol.md, redmessenger/dialects/plain/frames.py):
     *   client {"type":"hello","v":1,"uid":"..."}          first frame
     *   server {"type":"welcome","v":1,"uid":"..."}        before anything else: ready
     *   server {"type":"message","id":"...",...envelope}   the queue, then live messages
     *   client {"type":"ack","id":"..."}                   once the envelope is checked (cumulative)
     * The ack is built as a client library would (JSON.stringify of an object); it is what the
     * daemon's fast path reads (`{"type":"ack"` first).  Nothing but acks confirms: WebSocket pings
     * (answered by `ws` itself) only show the peer is there.
     */
    ws(sock, on) {
      const WebSocket = require('ws');
      const ws = new WebSocket(wsBase + opts.route, { handshakeTimeout: 30000 });
      let helloAt = 0;
      let welcomed = false;
      const acks = { ws, id: null, queued: false }; // ack: burst; sync: the last id, acked when asked
      const ack = ACK_MODE === 'sync'
        ? (id) => { acks.id = id; }
        : ACK_MODE === 'every'
        ? (id) => {
          ws.send(JSON.stringify({ type: 'ack', id }));
          acksSent += 1;
        }
        : (id) => {
          acks.id = id;
          if (!acks.queued) {
            acks.queued = true;
            if (ackBacklog.length === 0) setImmediate(flushAcks);
            ackBacklog.push(acks);
          }
        };
      ws.on('open', () => {
        helloAt = now();
        ws.send(JSON.stringify({ type: 'hello', v: 1, uid: sock.uid }));
      });
      // channel requests (subscribe, unsubscribe, publish): see request() and replied()
      sock.sendFrame = (frame) => ws.send(JSON.stringify(frame));
      ws.on('message', (data, isBinary) => {
        if (isBinary) return on.problem(`${sock.uid}: unexpected binary frame`);
        let frame;
        try {
          frame = JSON.parse(data);
        } catch (err) {
          return on.problem(`${sock.uid}: unparsable frame ${String(data).slice(0, 200)}`);
        }
        if (frame.type === 'message') {
          if (!welcomed) on.problem(`${sock.uid}: a message before the welcome`);
          if (typeof frame.id !== 'string' || !frame.id) return on.problem(`${sock.uid}: a message without an id`);
          on.envelope(frame);
          if (ws.readyState === 1) ack(frame.id); // not on a socket we are closing
        } else if (frame.type === 'reply') {
          on.reply(frame);
        } else if (frame.type === 'sync') {
          // The server asks what was handled: every mode answers (every and burst have acked already, harmlessly).
          if (acks.id !== null && ws.readyState === 1) {
            ws.send(JSON.stringify({ type: 'ack', id: acks.id }));
            acksSent += 1;
          }
        } else if (frame.type === 'welcome') {
          if (welcomed || frame.v !== 1 || frame.uid !== sock.uid) {
            return on.problem(`${sock.uid}: unexpected welcome ${String(data).slice(0, 200)}`);
          }
          welcomed = true;
          on.ready(helloAt);
        } else {
          on.problem(`${sock.uid}: unexpected frame ${String(data).slice(0, 200)}`);
        }
      });
      ws.on('close', (code, reason) => on.close(`${code} ${reason}`));
      ws.on('error', (err) => on.error(err.message));
      return () => ws.close(1000);
    },
  },
  socketio: {
    /*
     * Socket.IO 5 over Engine.IO 4, WebSocket transport only, straight on `ws`
     * (redmessenger/socketio.py, engineio.py); the namespace is the route (rm_route).
     *   server 0{"sid":...}           Engine.IO open  -> client 40/rm,
     *   server 40/rm,{"sid":...}      CONNECT ack     -> client 42/rm,["identifier","uid"]; ready
     *   server 42/rm,["message",{..}] an envelope, as an object
     *   server 2                      Engine.IO ping  -> client 3 at once (else the server ends
     *                                                    the session: ping timeout)
     *   server 42/rm,["error",{..}], 41/rm,, 44/rm,{..}: refused, disconnected, namespace refused
     * Over WebSocket every Engine.IO packet is a text frame of its own (payloads
     * joined by \x1e are polling only).  Delivery is confirmed by WebSocket-level
     * pings, which `ws` answers by itself.  The hot path: one toString, one
     * startsWith, one JSON.parse of the envelope between `42/rm,["message",` and
     * the final `]` (the daemon writes exactly that); any other event goes the
     * general way, one JSON.parse of what follows the namespace prefix.
     */
    lean(sock, on) {
      const WebSocket = require('ws');
      const nsp = opts.route; // "/rm"; the namespace "/" would have no prefix at all
      const sep = nsp === '/' ? '' : nsp + ',';
      const EVENT = '42' + sep;
      const MESSAGE = EVENT + '["message",';
      const ws = new WebSocket(`${wsBase}/socket.io/?EIO=4&transport=websocket`, {
        handshakeTimeout: 30000,
        perMessageDeflate: false, // the daemon declines it anyway (unless configured)
      });
      let opened = false; // Engine.IO open packet seen
      let connected = false; // namespace CONNECT acknowledged
      let why = null; // what the server said before the socket ended, for the close reason
      const fail = (message) => {
        if (!connected) on.error(message);
        else why = why || message;
        ws.terminate();
      };
      const parse = (json, text) => {
        try {
          return JSON.parse(json);
        } catch (err) {
          fail(`unparsable packet ${text.slice(0, 200)}`);
          return undefined;
        }
      };
      ws.on('message', (data, isBinary) => {
        if (isBinary) return fail('unexpected binary frame');
        const text = data.toString();
        if (text.startsWith(MESSAGE)) {
          const env = parse(text.slice(MESSAGE.length, -1), text);
          if (env !== undefined) on.envelope(env);
          return;
        }
        if (text.startsWith(EVENT)) {
          const args = parse(text.slice(EVENT.length), text);
          if (args === undefined) return;
          if (args[0] === 'message') on.envelope(args[1]);
          else if (args[0] === 'error') why = `error event ${JSON.stringify(args[1])}`;
          return;
        }
        switch (text.charCodeAt(0)) {
          case 0x32: // "2": Engine.IO ping
            ws.send(text.length > 1 ? '3' + text.slice(1) : '3');
            return;
          case 0x30: // "0": Engine.IO open
            if (opened) return fail(`second open packet ${text.slice(0, 100)}`);
            opened = true;
            ws.send('40' + sep);
            return;
          case 0x34: // "4": Engine.IO message carrying a Socket.IO packet other than an event
            if (!connected && (text === '40' + sep.slice(0, -1) || text.startsWith('40' + sep))) {
              connected = true;
              ws.send(`${EVENT}["identifier",${JSON.stringify(sock.uid)}]`);
              on.ready();
            } else if (text === '41' + sep || text === '41' + sep.slice(0, -1)) {
              why = why || 'io server disconnect';
            } else if (text.startsWith('44')) {
              fail(`connect error ${text.slice(2, 200)}`);
            }
            return;
          default: // "1" close, "3" pong, "6" noop: nothing to do
        }
      });
      ws.on('close', (code, reason) => on.close(`${why || 'transport close'} (${code} ${reason})`));
      ws.on('error', (err) => on.error(err.message));
      return () => {
        // as socket.disconnect(): leave the namespace, then close the transport
        if (ws.readyState === WebSocket.OPEN) ws.send('41' + sep);
        ws.close(1000);
      };
    },

    /*
     * socket.io-client 4 (Engine.IO 4), WebSocket transport only: what browsers' code uses.  About a
     * third more CPU per envelope than `lean`: in case b it saturates its core, the bottleneck.
     */
    'socket.io-client'(sock, on) {
      const { io } = require('socket.io-client');
      const socket = io(opts.base + opts.route, {
        transports: ['websocket'],
        forceNew: true, // one Engine.IO connection per socket, as separate browsers have
        reconnection: false,
        timeout: 30000,
      });
      socket.on('connect', () => {
        socket.emit('identifier', sock.uid);
        on.ready();
      });
      socket.on('message', (env) => on.envelope(typeof env === 'string' ? JSON.parse(env) : env));
      socket.on('disconnect', (reason) => on.close(reason));
      socket.on('connect_error', (err) => on.error(err.message));
      return () => socket.disconnect();
    },
  },
};

const dialectDrivers = DRIVERS[opts.dialect];
if (!dialectDrivers) throw new Error(`unknown dialect ${opts.dialect}`);
const clientName = opts.client || Object.keys(dialectDrivers)[0];
const openDriver = dialectDrivers[clientName];
if (!openDriver) throw new Error(`unknown client ${clientName} for dialect ${opts.dialect} (${Object.keys(dialectDrivers).join(', ')})`);

// -- sockets and what they received ---------------------------------------------

/** uid -> its live sockets here, oldest first (the oldest carries the bubble). */
const users = new Map();
const phases = new Map();

/** What one socket (or, for users that reconnect, one user) received: per channel the last seq, and a count. */
class Tally {
  constructor() {
    this.streams = new Map(); // source -> {phase, seq}: the last seq seen on that channel in that phase
    this.phase = null; // the phase counted in `count`
    this.count = 0;
  }

  received(name) {
    return this.phase === name ? this.count : 0;
  }
}

class Sock extends Tally {
  constructor(uid, live) {
    super();
    this.uid = uid;
    this.live = live; // the uid's live sockets here, oldest first (shared)
    this.ready = false;
    this.closing = false;
    this.closed = false;
    this.identSentAt = 0;
    this.close = null;
    this.sendFrame = null; // plain-v1: sends a channel request
    this.nextRef = 0;
    this.waiting = null; // ref -> {resolve, sentAt}: channel requests waiting for their reply
  }
}

/** uid -> its Tally, for the users of a phase tallied per user (the soak's reconnecting users). */
const userTallies = new Map();
function userTally(uid) {
  let tally = userTallies.get(uid);
  if (tally === undefined) userTallies.set(uid, (tally = new Tally()));
  return tally;
}

function phaseError(phase, text) {
  phase.errorCount += 1;
  if (phase.errors.length < MAX_ERRORS) phase.errors.push(text);
}

let strayCount = 0;
const strays = [];

/* Kept lean: with two processes on a two-core machine, every microsecond here is taken from the daemon. */
function received(sock, env) {
  const t = now();
  let payload = env.payload;
  if (payload.charCodeAt(0) === 34) {
    // '"': what a client published, as JSON text (a string here)
    try {
      payload = JSON.parse(payload);
    } catch (err) {
      strayCount += 1;
      if (strays.length < MAX_ERRORS) strays.push(`${sock.uid}: payload not JSON ${payload.slice(0, 100)}`);
      return;
    }
  }
  const bar1 = payload.indexOf('|');
  const bar2 = payload.indexOf('|', bar1 + 1);
  const name = payload.slice(0, bar1);
  const seq = +payload.slice(bar1 + 1, bar2);
  const phase = phases.get(name);
  if (phase === undefined) {
    strayCount += 1;
    if (strays.length < MAX_ERRORS) strays.push(`${sock.uid}: unexpected ${JSON.stringify(env).slice(0, 200)}`);
    return;
  }
  const tally = phase.perUser !== null && phase.perUser.has(sock.uid) ? userTally(sock.uid) : sock;
  let stream = tally.streams.get(env.source);
  if (stream === undefined) {
    stream = { phase: name, seq: -1 };
    tally.streams.set(env.source, stream);
  } else if (stream.phase !== name) {
    stream.phase = name;
    stream.seq = -1;
  }
  const last = stream.seq;
  if (seq !== last + 1) {
    if (seq <= last && tally !== sock) {
      // sent again after a socket of this user closed without acknowledging it: a copy
      phase.copies += 1;
      return;
    }
    phaseError(phase, seq <= last
      ? `${sock.uid}: ${env.source} seq ${seq} after ${last} (doubled or out of order)`
      : `${sock.uid}: ${env.source} seq ${seq} after ${last} (missing or out of order)`);
  }
  if (seq > last) stream.seq = seq;
  if (phase.channel) {
    // a channel's message to a subscriber: never the bubble
    if (env.bubble !== false) phaseError(phase, `${sock.uid}: bubble ${env.bubble} on a channel message`);
    if (phase.sender !== undefined) {
      const s = env.sender;
      if (phase.sender === null ? s !== undefined : (!s || s.uid !== phase.sender || typeof s.client_id !== 'string')) {
        phaseError(phase, `${sock.uid}: sender ${JSON.stringify(s)}, expected uid ${phase.sender}`);
      }
    }
  } else {
    const oldest = sock.live[0] === sock;
    if (env.bubble !== oldest) phaseError(phase, `${sock.uid}: bubble ${env.bubble} on a socket that is ${oldest ? '' : 'not '}the oldest`);
  }
  if (typeof env.timestamp !== 'number') phaseError(phase, `${sock.uid}: no numeric timestamp`);
  if (tally.phase !== name) {
    tally.phase = name;
    tally.count = 0;
  }
  tally.count += 1;
  if (phase.latencies !== null) phase.latencies.push(t - parseFloat(payload.slice(bar2 + 1)));
  if (phase.count === 0) phase.first = t;
  phase.count += 1;
  phase.last = t;
  if (phase.count === phase.expect) emit({ event: 'done', phase: name });
}

function openSocket(uid) {
  let list = users.get(uid);
  if (list === undefined) users.set(uid, (list = []));
  const sock = new Sock(uid, list);
  list.push(sock);
  return new Promise((resolve) => {
    let settled = false;
    const settle = (ok) => {
      if (!settled) {
        settled = true;
        resolve(ok);
      }
    };
    sock.close = openDriver(sock, {
      /* identified; `sentAt`: when the identifier went (version 1 waits for the welcome) */
      ready(sentAt) {
        sock.ready = true;
        sock.identSentAt = sentAt || now();
        settle(true);
      },
      /* the server broke the protocol (after the socket opened) */
      problem(text) {
        strayCount += 1;
        if (strays.length < MAX_ERRORS) strays.push(text);
      },
      envelope(env) {
        received(sock, env);
      },
      reply(frame) {
        replied(sock, frame);
      },
      close(why) {
        if (sock.closed) return;
        sock.closed = true;
        const live = users.get(uid);
        const i = live.indexOf(sock);
        if (i >= 0) live.splice(i, 1);
        if (!sock.closing) {
          strayCount += 1;
          if (strays.length < MAX_ERRORS) strays.push(`${uid}: socket closed unexpectedly (${why})`);
        }
        if (sock.waiting !== null) {
          // requests that will never be answered
          const at = now();
          for (const w of sock.waiting.values()) w.resolve({ reply: null, sentAt: w.sentAt, at, why });
          sock.waiting = null;
        }
        if (sock.onClosed) sock.onClosed();
        settle(false);
      },
      error(message) {
        if (!sock.ready) {
          strayCount += 1;
          if (strays.length < MAX_ERRORS) strays.push(`${uid}: ${message}`);
          sock.closed = true;
          const live = users.get(uid);
          const i = live.indexOf(sock);
          if (i >= 0) live.splice(i, 1);
          settle(false);
        }
      },
    });
  });
}

/**
 * Open one more socket for each uid, at most `concurrency` handshakes at a time.
 * `subscribe` (plain-v1): the requests spec (see `requests`) each socket sends as soon as it is
 * welcomed, without holding up the next connection; reported as `requests_done` once all are answered.
 */
async function connect(uids, concurrency, subscribe) {
  const t0 = now();
  let next = 0;
  let failed = 0;
  const batch = subscribe ? new Batch() : null;
  const asked = [];
  async function lane() {
    while (next < uids.length) {
      const uid = uids[next++];
      if (!(await openSocket(uid))) failed += 1;
      else if (batch !== null) asked.push(sockRequests(newest(uid), subscribe, batch));
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, uids.length) }, lane));
  emit({ event: 'connected', opened: uids.length - failed, failed, t0, t1: now() });
  if (batch !== null) {
    await Promise.all(asked);
    emit({ event: 'requests_done', phase: subscribe.phase, t0, ...batch.summary(subscribe.latencies) });
  }
}

// -- channel requests (plain-v1) ------------------------------------------------------

function newest(uid) {
  const live = users.get(uid) || [];
  return live[live.length - 1];
}

/** Send a channel request on `sock`: resolves with {reply, sentAt, at} (reply null: the socket closed first). */
function request(sock, fields) {
  if (!sock || sock.sendFrame === null || sock.closed) {
    return Promise.resolve({ reply: null, sentAt: now(), at: now(), why: 'no open plain-v1 socket' });
  }
  sock.nextRef += 1;
  const ref = sock.nextRef;
  if (sock.waiting === null) sock.waiting = new Map();
  return new Promise((resolve) => {
    const sentAt = now();
    sock.waiting.set(ref, { resolve, sentAt });
    sock.sendFrame({ ...fields, ref });
  });
}

function replied(sock, frame) {
  const waiting = sock.waiting && sock.waiting.get(frame.ref);
  if (!waiting) {
    strayCount += 1;
    if (strays.length < MAX_ERRORS) strays.push(`${sock.uid}: a reply to no request ${JSON.stringify(frame).slice(0, 200)}`);
    return;
  }
  sock.waiting.delete(frame.ref);
  waiting.resolve({ reply: frame, sentAt: waiting.sentAt, at: now() });
}

/** uid -> channel -> the grant a subscribe's reply carried (presented again with `grants: true`). */
const grantsByUid = new Map();

/** What a batch of requests got: answers, refusals, times. */
class Batch {
  constructor() {
    this.sent = 0;
    this.ok = 0;
    this.grants = 0; // replies that carried a grant
    this.errors = [];
    this.errorCount = 0;
    this.latencies = [];
    this.first = null; // first request sent
    this.last = null; // last reply received
  }

  error(text) {
    this.errorCount += 1;
    if (this.errors.length < MAX_ERRORS) this.errors.push(text);
  }

  add(sock, channel, spec, result) {
    const { reply, sentAt, at } = result;
    if (this.first === null || sentAt < this.first) this.first = sentAt;
    if (this.last === null || at > this.last) this.last = at;
    this.latencies.push(at - sentAt);
    const what = `${sock ? sock.uid : '?'}: ${spec.kind} ${channel}`;
    if (reply === null) return this.error(`${what}: no reply (${result.why})`);
    if (reply.ok !== true) return this.error(`${what}: ${JSON.stringify(reply).slice(0, 200)}`);
    if (spec.kind === 'subscribe') {
      if (spec.mode && reply.mode !== spec.mode) return this.error(`${what}: mode ${reply.mode}, expected ${spec.mode}`);
      if (typeof reply.grant === 'string') {
        this.grants += 1;
        let grants = grantsByUid.get(sock.uid);
        if (grants === undefined) grantsByUid.set(sock.uid, (grants = new Map()));
        grants.set(channel, reply.grant);
      } else if (spec.expect_grant) {
        return this.error(`${what}: no grant in the reply`);
      }
    }
    this.ok += 1;
  }

  /* What the batch got, and the problems seen since the last report (they are this batch's now). */
  summary(withLatencies) {
    const errorCount = this.errorCount + strayCount;
    strayCount = 0;
    return {
      sent: this.sent,
      ok: this.ok,
      grants: this.grants,
      first: this.first,
      last: this.last,
      errors: this.errors.concat(strays.splice(0)),
      error_count: errorCount,
      latencies: withLatencies ? this.latencies.map((x) => Math.round(x * 1000) / 1000) : undefined,
      loop_delay_p99_ms: lateness(loopDelay.percentile(99)),
      loop_delay_max_ms: lateness(loopDelay.max),
    };
  }
}

/** One socket's requests of a spec, one per channel, sent together; resolves once all are answered. */
function sockRequests(sock, spec, batch) {
  return Promise.all(spec.channels.map((channel) => {
    const fields = { type: spec.kind, channel };
    if (spec.client_auth) fields.client_auth = spec.client_auth;
    if (spec.grants) {
      const grant = sock && (grantsByUid.get(sock.uid) || new Map()).get(channel);
      if (grant === undefined) batch.error(`${sock ? sock.uid : '?'}: no grant kept for ${channel}`);
      else fields.grant = grant;
    }
    batch.sent += 1;
    return request(sock, fields).then((result) => batch.add(sock, channel, spec, result));
  }));
}

/** Each item through `work`, at most `concurrency` at a time (0: all at once). */
async function inLanes(items, concurrency, work) {
  let next = 0;
  async function lane() {
    while (next < items.length) await work(items[next++]);
  }
  const lanes = concurrency > 0 ? Math.min(concurrency, items.length) : items.length;
  await Promise.all(Array.from({ length: lanes }, lane));
}

function closeSockets(socks) {
  return Promise.all(socks.map((sock) => new Promise((resolve) => {
    if (sock.closed) return resolve();
    sock.closing = true;
    sock.onClosed = resolve;
    sock.close();
  })));
}

function report(name, withLatencies) {
  const phase = phases.get(name);
  const missing = [];
  for (const uid of phase.uids) {
    const live = users.get(uid) || [];
    if (live.length !== phase.tabs) phaseError(phase, `${uid}: ${live.length} live sockets, expected ${phase.tabs}`);
    const tallies = phase.perUser !== null && phase.perUser.has(uid) ? [userTally(uid)] : live;
    for (const tally of tallies) {
      const got = tally.received(name);
      if (got !== phase.perSocket) missing.push(`${uid}: received ${got} of ${phase.perSocket}`);
    }
  }
  for (const text of missing.slice(0, MAX_ERRORS)) phaseError(phase, text);
  phase.errorCount += Math.max(0, missing.length - MAX_ERRORS);
  let identFirst = Infinity;
  let identLast = 0;
  for (const uid of phase.uids) {
    for (const sock of users.get(uid) || []) {
      identFirst = Math.min(identFirst, sock.identSentAt);
      identLast = Math.max(identLast, sock.identSentAt);
    }
  }
  const rounded = withLatencies && phase.latencies ? phase.latencies.map((x) => Math.round(x * 1000) / 1000) : undefined;
  emit({
    event: 'report',
    phase: name,
    count: phase.count,
    expect: phase.expect,
    first: phase.first,
    last: phase.last,
    ident_first: identFirst === Infinity ? null : identFirst,
    ident_last: identLast || null,
    errors: phase.errors.concat(strays.splice(0)),
    error_count: phase.errorCount + strayCount,
    latencies: rounded,
    copies: phase.copies,
    reconnects: churn.reconnects,
    loop_delay_p99_ms: lateness(loopDelay.percentile(99)),
    loop_delay_max_ms: lateness(loopDelay.max),
    acks_sent: acksSent,
  });
  strayCount = 0;
  acksSent = 0;
  loopDelay.reset();
}

// -- churn (the soak): users that go away and come back ---------------------------

const churn = { running: false, uids: [], timers: new Set(), cycles: new Set(), reconnects: 0, failed: 0 };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function churnLater(uid, delayMs, everyMs, gapMs) {
  const timer = setTimeout(() => {
    churn.timers.delete(timer);
    const cycle = (async () => {
      await closeSockets((users.get(uid) || []).slice());
      await sleep(gapMs * Math.random()); // offline meanwhile: its messages are queued
      if (await openSocket(uid)) churn.reconnects += 1;
      else churn.failed += 1;
    })();
    churn.cycles.add(cycle);
    cycle.finally(() => {
      churn.cycles.delete(cycle);
      if (churn.running) churnLater(uid, everyMs * (0.5 + Math.random()), everyMs, gapMs);
    });
  }, delayMs);
  churn.timers.add(timer);
}

const commands = {
  async connect(cmd) {
    await connect(cmd.uids, cmd.concurrency || 50, cmd.subscribe);
  },
  /*
   * Channel requests from the newest socket of each uid: {phase, kind, channels, uids, concurrency,
   * client_auth, mode (expected), expect_grant, grants (present the kept ones), latencies}.
   */
  async requests(cmd) {
    loopDelay.reset();
    const batch = new Batch();
    await inLanes(cmd.uids, cmd.concurrency || 0, (uid) => sockRequests(newest(uid), cmd, batch));
    emit({ event: 'requests_done', phase: cmd.phase, ...batch.summary(cmd.latencies) });
  },
  /* `count` publishes from the newest socket of `uid`, all at once; each message "phase|seq|ms|padding". */
  async client_publish(cmd) {
    const sock = newest(cmd.uid);
    const pad = 'x'.repeat(cmd.pad === undefined ? 40 : cmd.pad);
    const batch = new Batch();
    const spec = { kind: 'publish' };
    const answered = [];
    const tFirst = now();
    for (let seq = 0; seq < cmd.count; seq++) {
      const message = `${cmd.phase}|${seq}|${now().toFixed(3)}|${pad}`;
      batch.sent += 1;
      answered.push(request(sock, { type: 'publish', channel: cmd.channel, message })
        .then((result) => batch.add(sock, cmd.channel, spec, result)));
    }
    const tLast = now();
    await Promise.all(answered);
    emit({ event: 'client_published', phase: cmd.phase, t_first: tFirst, t_last: tLast, ...batch.summary(false) });
  },
  /* The server is about to close every socket here (a restart): not an error.  `closed` once all are. */
  async server_closes() {
    const all = [];
    for (const live of users.values()) all.push(...live);
    for (const sock of all) sock.closing = true;
    emit({ event: 'awaiting_close', sockets: all.length });
    await Promise.all(all.map((sock) => new Promise((resolve) => {
      if (sock.closed) resolve();
      else sock.onClosed = resolve;
    })));
    emit({ event: 'closed', sockets: all.length });
  },
  /* Announce a phase before it is published: its uids, sockets per uid, envelopes per socket. */
  expect(cmd) {
    loopDelay.reset();
    acksSent = 0;
    phases.set(cmd.phase, {
      uids: cmd.uids,
      tabs: cmd.tabs || 1,
      perSocket: cmd.per_socket,
      expect: cmd.uids.length * (cmd.tabs || 1) * cmd.per_socket,
      count: 0,
      first: null,
      last: null,
      errors: [],
      errorCount: 0,
      latencies: cmd.latency ? [] : null,
      // a channel's messages to its subscribers: bubble false; `sender`: the publishing client's uid (null: none)
      channel: Boolean(cmd.channel),
      sender: cmd.sender,
      // users tallied per user, across reconnections (the soak's churn); copies sent again
      perUser: cmd.per_user ? new Set(cmd.per_user) : null,
      copies: 0,
    });
    emit({ event: 'expecting', phase: cmd.phase });
  },
  /* A phase's counts so far, while it runs (the soak). */
  progress(cmd) {
    const phase = phases.get(cmd.phase);
    emit({
      event: 'progress',
      phase: cmd.phase,
      count: phase ? phase.count : 0,
      expect: phase ? phase.expect : 0,
      copies: phase ? phase.copies : 0,
      error_count: (phase ? phase.errorCount : 0) + strayCount,
      errors: (phase ? phase.errors : []).concat(strays).slice(0, 5),
      reconnects: churn.reconnects,
      reconnects_failed: churn.failed,
      acks_sent: acksSent,
    });
  },
  /* These users close their socket and open a new one every `every_s` (jittered), `gap_s` at most apart. */
  churn(cmd) {
    churn.running = true;
    churn.uids = cmd.uids;
    for (const uid of cmd.uids) churnLater(uid, cmd.every_s * 1000 * Math.random(), cmd.every_s * 1000, cmd.gap_s * 1000);
    emit({ event: 'churning', users: cmd.uids.length });
  },
  /* Stop reconnecting; once the cycles under way end, every churning user has a socket again. */
  async churn_stop() {
    churn.running = false;
    for (const timer of churn.timers) clearTimeout(timer);
    churn.timers.clear();
    await Promise.all([...churn.cycles]);
    for (const uid of churn.uids) {
      const live = users.get(uid) || [];
      if (live.length === 0 && !(await openSocket(uid))) churn.failed += 1;
    }
    emit({ event: 'churn_stopped', reconnects: churn.reconnects, failed: churn.failed });
  },
  report(cmd) {
    report(cmd.phase, cmd.latencies);
  },
  async close_oldest(cmd) {
    await closeSockets(cmd.uids.map((uid) => users.get(uid)[0]));
    emit({ event: 'closed' });
  },
  async close_all() {
    const all = [];
    for (const live of users.values()) all.push(...live);
    await closeSockets(all);
    emit({ event: 'closed' });
  },
  exit() {
    process.exit(0);
  },
};

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  Promise.resolve(commands[cmd.cmd](cmd)).catch((err) => {
    emit({ event: 'fatal', error: String(err && err.stack || err) });
    process.exit(1);
  });
});
process.stdin.on('end', () => process.exit(0));
emit({ event: 'started', pid: process.pid, dialect: opts.dialect, client: clientName, ack: opts.dialect === 'plain-v1' ? ACK_MODE : null });
