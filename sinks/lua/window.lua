-- Shared by the apply and roll scripts (prepended when they are registered): move the window of
-- the boards to end at now_minute by rebuilding them from the per-minute buckets it covers.
-- KEYS from index b: board, board:from, board:updated, then n_types typed boards; from index w:
-- per minute of the window (oldest first) its bucket, then its n_types typed buckets
-- (sinks/redis_keys.py: board_keys, window_keys).
-- Returns the first minute in the window and whether it moved.
local function move_window(b, w, now_minute, window, n_types)
  local board, from_key = KEYS[b], KEYS[b + 1]
  local first = now_minute - window + 1
  local from = tonumber(redis.call('GET', from_key) or '-1')
  if first <= from then return from, false end
  local keys = {}
  for m = 0, window - 1 do keys[#keys + 1] = KEYS[w + m * (n_types + 1)] end
  -- Buckets keep members at zero (leaderboard_apply.lua); the boards do not show them.
  redis.call('ZUNIONSTORE', board, #keys, unpack(keys))
  redis.call('ZREMRANGEBYSCORE', board, '-1e-6', '1e-6')
  for t = 1, n_types do
    local typed = {}
    for m = 0, window - 1 do typed[#typed + 1] = KEYS[w + m * (n_types + 1) + t] end
    redis.call('ZUNIONSTORE', KEYS[b + 2 + t], #typed, unpack(typed))
    redis.call('ZREMRANGEBYSCORE', KEYS[b + 2 + t], '-1e-6', '1e-6')
  end
  redis.call('SET', from_key, first)
  return first, true
end
