"""
The Lua scripts the daemon runs in Redis: each is one atomic step, so a daemon
killed between two steps leaves every queue whole (at worst delivered twice).
"""

from __future__ import annotations

# A key holding something that is not a list (another program's) is renamed
# to KEY:invalid:<server time in microseconds>, never overwritten or deleted.
KEEP_ASIDE = b"""
local function keep_aside(key)
  local now = redis.call('TIME')
  local kept = key .. ':invalid:' .. now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('RENAME', key, kept)
  return kept
end
"""

# Appends entries to users' queues, in order.  KEYS: the queues of every
# entry, entry after entry; ARGV: expiry, length cap, then for each entry the
# entry, how many of KEYS are its queues, and "1" if it may be there already
# (a message read again from the intake stream after a crash: not pushed twice).
# Returns {dropped, renamed}: lists of {key, entries the length cap dropped}
# and of {key, kept-aside name}.
ENQUEUE = KEEP_ASIDE + b"""
local ttl, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2])
local dropped, renamed, touched = {}, {}, {}
local k = 0
for i = 3, #ARGV, 3 do
  local entry, count, again = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  for j = k + 1, k + count do
    local key = KEYS[j]
    if not touched[key] then
      local kind = redis.call('TYPE', key)['ok']
      if kind ~= 'list' and kind ~= 'none' then
        renamed[#renamed + 1] = {key, keep_aside(key)}
      end
      touched[key] = 0
    end
    if not (again and redis.call('LPOS', key, entry)) then
      local length = redis.call('RPUSH', key, entry)
      if length > maxlen then
        redis.call('LTRIM', key, length - maxlen, -1)
        touched[key] = touched[key] + length - maxlen
      end
    end
  end
  k = k + count
end
for key, count in pairs(touched) do
  redis.call('EXPIRE', key, ttl)
  if count > 0 then dropped[#dropped + 1] = {key, count} end
end
return {dropped, renamed}
"""

# Drops the ARGV[1] entries the previous batch delivered, then returns
# {length, the next ARGV[2] entries}; {-1, kept-aside name} if the key was not a
# list (kept aside, and the handover ends).
TAKE = KEEP_ASIDE + b"""
local delivered, batch = tonumber(ARGV[1]), tonumber(ARGV[2])
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0, {}} end
if kind ~= 'list' then return {-1, keep_aside(KEYS[1])} end
if delivered > 0 then redis.call('LTRIM', KEYS[1], delivered, -1) end
return {redis.call('LLEN', KEYS[1]), redis.call('LRANGE', KEYS[1], 0, batch - 1)}
"""

# A group's members: {0, members} for a set (or no key), {1, kept-aside name}
# for a key of another type (the application's mistake: kept aside, and the
# message reaches nobody, rather than an error for every message).
MEMBERS = KEEP_ASIDE + b"""
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'set' then return {0, redis.call('SMEMBERS', KEYS[1])} end
if kind == 'none' then return {0, {}} end
return {1, keep_aside(KEYS[1])}
"""

# Acknowledges intake entries and removes them from the stream (XACK + XDEL),
# and keeps the ones that cannot be delivered in a list first.  KEYS: the
# stream, the list for invalid entries; ARGV: the group, the number of good
# ids, the good ids, then (id, JSON of its fields) pairs of invalid entries.
# Returns {ids acknowledged, kept-aside name or nil}: a list key holding
# something else (another program's) is kept aside, rather than failing the
# whole call and leaving every id in it pending.
INTAKE_DONE = KEEP_ASIDE + b"""
local group, good = ARGV[1], tonumber(ARGV[2])
local ids, kept = {}, false
for i = 3, 2 + good do ids[#ids + 1] = ARGV[i] end
if #ARGV > 2 + good then
  local kind = redis.call('TYPE', KEYS[2])['ok']
  if kind ~= 'list' and kind ~= 'none' then kept = keep_aside(KEYS[2]) end
end
for i = 3 + good, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2], ARGV[i + 1])
  ids[#ids + 1] = ARGV[i]
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return {#ids, kept}
"""

# Creates the intake's consumer group ARGV[1] on the stream KEYS[1], reading
# from its start (the stream made if there is none; a group there already is
# left as it is).  A key of another type (another program's) is kept aside
# first, rather than the intake stopping at WRONGTYPE.  Returns the kept-aside
# name, or nil.
INTAKE_GROUP_CREATE = KEEP_ASIDE + b"""
local kept = false
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'stream' and kind ~= 'none' then kept = keep_aside(KEYS[1]) end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(created.err)
end
return kept
"""

# A subscription request for the application (SPEC §7.1), added to the stream
# KEYS[1] only if an application reads it (a consumer group exists); returns 1
# if added, 0 if nobody listens.  ARGV: the stream's approximate length cap,
# then the entry's fields and values.
REQUEST = b"""
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then
  return 0
end
if #redis.call('XINFO', 'GROUPS', KEYS[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2))
return 1
"""

# A node's heartbeat (docs/scale-out.md): its entry in the sorted set KEYS[1]
# scored with its expiry (Redis's clock, so hosts' clocks do not matter) and its
# open sockets in the hash KEYS[2]; expired entries dropped from both, and the
# live nodes returned with their sockets ({ids}, {counts}).  When the list
# changed (a node joined, left or expired), the change is published on the
# channel ARGV[5] in the same step, so that every subscriber hears it at the
# same place among the PUBLISHes: JSON {"epoch": the change's number (INCR of
# KEYS[3]), "node": the calling node, "joined"/"left": whether it did,
# "restarted": whether it is listed already under another run (KEYS[4], a hash
# of each node's run: killed and started again before its entry expired),
# "expired": [ids], "nodes": [ids], "run": the node's run, "sig": the change
# signed with the secret KEYS[5] (sha1hex(secret .. sha1hex(epoch, node, run,
# joined, left and restarted as "1"/"0", the nodes joined by commas; joined by
# newlines)), set to
# ARGV[7] if it has none}: a daemon takes only what is signed (redis_edge/nodes.py).
# Returns {ids}, {counts}, {runs}, the secret.  ARGV: node id, seconds it stays
# listed without another heartbeat, "beat" or "leave" (removes it), its open
# sockets, the channel, its run, a secret to set if none is, the last epoch the
# node took (KEYS[3] is raised to it first: a Redis failover that lost the last
# INCRs would number the next changes as ones the daemons took already, and they
# would ignore them as replays).
HEARTBEAT = b"""
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', seconds)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seconds)
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('HDEL', KEYS[4], unpack(expired))
end
local joined, left, restarted = false, false, false
if ARGV[3] == 'leave' then
  left = redis.call('ZREM', KEYS[1], ARGV[1]) == 1
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
else
  joined = redis.call('ZADD', KEYS[1], seconds + tonumber(ARGV[2]), ARGV[1]) == 1
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] or '0')
  if ARGV[6] then
    local run = redis.call('HGET', KEYS[4], ARGV[1])
    restarted = not joined and run ~= false and run ~= ARGV[6]
    redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
  end
end
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1)
local known = tonumber(ARGV[8] or '')
if known and known > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], known)
end
local secret = redis.call('GET', KEYS[5])
if not secret and ARGV[7] then
  secret = ARGV[7]
  redis.call('SET', KEYS[5], secret)
end
if (joined or left or restarted or #expired > 0) and ARGV[5] then
  local epoch = redis.call('INCR', KEYS[3])
  local run = ARGV[6] or ''
  local signed = table.concat({epoch, ARGV[1], run, joined and '1' or '0', left and '1' or '0',
    restarted and '1' or '0', table.concat(nodes, ',')}, '\\n')
  redis.call('PUBLISH', ARGV[5], cjson.encode({epoch = epoch, node = ARGV[1], joined = joined, left = left,
    restarted = restarted, expired = expired, nodes = nodes, run = run,
    sig = redis.sha1hex((secret or '') .. redis.sha1hex(signed))}))
end
local listed = joined and 1 or 0
if #nodes == 0 then
  return {nodes, {}, {}, secret, listed}
end
return {nodes, redis.call('HMGET', KEYS[2], unpack(nodes)), redis.call('HMGET', KEYS[4], unpack(nodes)), secret, listed}
"""
