-- Shared by every script that stores positions (prepended when a script is registered): a pause
-- check, a fencing check and a compare-and-set of the sink's positions hash, so a write from a
-- stale instance (its token older than the lock's generation, sinks/fencing.py) or whose expected
-- positions are stale (a retried write that landed after all, a second writer) applies nothing, and
-- nothing is written while a rebuild swaps its keys in (sinks/redis_swap.py).
-- KEYS from index k (sinks/redis_store.py, position_keys): positions, parked ids, pause, fence
-- ('' when unfenced).
-- ARGV from index i: token ('' = unfenced); then n, then n x 3 fields: field ("topic:partition"),
-- expected ('' = absent), new.
-- Then the parking ids: n_claims, claims (origin ids of returning parked events, each must be
-- in the parked set and is removed), n_parks, parks (ids to add), keep_ms.
-- Returns the index after the block and the pairs to store, or nil and the refusal:
-- {-1, field, stored} for positions, {-2, generation} for the fence, {-3, id...} for claims gone,
-- {-4, pttl} while paused.
local function check_positions(k, i)
  local positions_key, parked_key, pause_key, fence_key = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  if redis.call('EXISTS', pause_key) == 1 then return nil, {-4, redis.call('PTTL', pause_key)} end
  local token = ARGV[i]
  if token ~= '' then
    local generation = tonumber(redis.call('GET', fence_key) or '0')
    if generation > tonumber(token) then return nil, {-2, generation} end
  end
  i = i + 1
  local parts = {positions_key = positions_key, parked_key = parked_key}
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local field, expected, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local stored = redis.call('HGET', positions_key, field) or ''
    if stored ~= expected then return nil, {-1, field, stored} end
    parts[#parts + 1] = {field, new}
    i = i + 3
  end
  -- Parking (sinks/parking.py): claims must all still be parked, or nothing is applied.
  local gone = {-3}
  parts.claims = {}
  for _ = 1, tonumber(ARGV[i]) do
    i = i + 1
    if not redis.call('ZSCORE', parked_key, ARGV[i]) then gone[#gone + 1] = ARGV[i] end
    parts.claims[#parts.claims + 1] = ARGV[i]
  end
  if #gone > 1 then return nil, gone end
  i = i + 1
  parts.parks = {}
  for _ = 1, tonumber(ARGV[i]) do
    i = i + 1
    parts.parks[#parts.parks + 1] = ARGV[i]
  end
  parts.keep_ms = tonumber(ARGV[i + 1])
  return i + 2, parts
end

local function store_positions(parts)
  for _, p in ipairs(parts) do redis.call('HSET', parts.positions_key, p[1], p[2]) end
  local parked_key = parts.parked_key
  for _, id in ipairs(parts.claims) do redis.call('ZREM', parked_key, id) end
  if #parts.parks > 0 then
    -- Scored by when they were parked: ids older than the parking topic's retention cannot come
    -- back (their records are gone) and are dropped, so timed-out parks do not pile up.
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    for _, id in ipairs(parts.parks) do redis.call('ZADD', parked_key, now_ms, id) end
    redis.call('ZREMRANGEBYSCORE', parked_key, '-inf', now_ms - parts.keep_ms)
  end
end
