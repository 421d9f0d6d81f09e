"""The Lua scripts Redis runs for the fleet: each is atomic on the server, so limits hold across processes.

Time is Redis's own (``TIME``): every process's lease is measured on one clock. Keys (all under
``railgate:``): ``bucket:{tenant}`` (hash tokens, at), ``quota:{tenant}:{day}`` (rows leased today),
``usage:{tenant}`` (hash requests, inferences, spend_nanos), ``today:{day}`` (hash tenant -> rows
answered), ``batch:{id}`` (a committed batch, so a replay counts nothing twice), ``ledger`` (a stream,
one entry per batch: its id and its rows as JSON, ``[[tenant, model, backend, rows, spend_nanos,
request_id, at], ...]``), ``members`` (sorted set: process id -> last heartbeat).
"""

from __future__ import annotations

PREFIX = "railgate:"

# KEYS[1] bucket; ARGV rate, burst, want, ttl_s -> {granted, seconds until a token is there}
LEASE_TOKENS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if tokens == nil or at == nil then tokens, at = burst, now end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local granted = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local wait = 0
if granted == 0 then wait = (1 - tokens) / rate end
return {granted, tostring(wait)}
"""

# KEYS[1] bucket; ARGV burst, tokens -> the bucket's tokens after taking back what a process did not use
RETURN_TOKENS = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens == nil then return 0 end
tokens = math.min(tonumber(ARGV[1]), tokens + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens))
return tostring(tokens)
"""

# KEYS[1] quota:{tenant}:{day}; ARGV quota, want, ttl_s -> {granted, rows leased today after this}
LEASE_QUOTA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = math.max(0, math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - used))
if granted > 0 then redis.call('INCRBY', KEYS[1], granted) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {granted, used + granted}
"""

# KEYS[1] batch:{id}, KEYS[2] ledger, KEYS[3] today:{day}
# ARGV prefix, batch id, n tenants, (tenant, requests, inferences, spend_nanos) x n, the batch's rows (JSON)
#   -> 1 written, 0 seen before. The rows go into one stream entry per batch: the server's work per
#   batch stays the same however many calls it answered.
COMMIT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 604800) then return 0 end
local prefix, batch = ARGV[1], ARGV[2]
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local key = prefix .. 'usage:' .. ARGV[i]
  redis.call('HINCRBY', key, 'requests', ARGV[i + 1])
  redis.call('HINCRBY', key, 'inferences', ARGV[i + 2])
  redis.call('HINCRBY', key, 'spend_nanos', ARGV[i + 3])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 2])
  i = i + 4
end
redis.call('EXPIRE', KEYS[3], 259200)
redis.call('XADD', KEYS[2], '*', 'batch', batch, 'rows', ARGV[i])
return 1
"""

# KEYS[1] members; ARGV process id, window_s -> processes that beat within the window
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZCARD', KEYS[1])
"""
