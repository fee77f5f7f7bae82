-- Apply one batch of net increments and store the sink's positions, atomically (one script is one
-- transaction in Redis and one entry in the AOF).
--
-- Exactly once: replays and re-sends were dropped before the call, and the positions are a
-- compare-and-set (positions.lua): if the stored ones are not those the batch was computed against,
-- nothing is applied and {-1, field, stored} is returned; the caller reloads and computes again.
--
-- KEYS (sinks/redis_keys.py, built in sinks/redis_leaderboard.py):
--   1-4: the block of positions.lua (positions, parked ids, pause, fence);
--   5 board, 6 board:from, 7 board:updated, then n_types typed boards;
--   then the window's buckets (window.lua); then engagement:content:{id} per content;
--   then per bucket 3 keys: the minute's bucket, its typed bucket, the typed board.
-- ARGV: now_minute, window, horizon_minute, metrics_ttl_s (0: no TTL), bucket_ttl_minutes,
--   now_ms, the newest commit_ts_ms of the batch, n_changes (the board's freshness, see below),
--   n_types, the block of positions.lua;
--   n_content, then per content 9 fields: events, total_seconds, plays, pauses, finishes, clicks,
--     pct_sum, pct_count, over_100;
--   n_buckets, then per bucket 4 fields: minute, added (after-images), taken (before-images),
--     content_id; '' where the batch has no such part.
local now_minute = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local metrics_ttl = tonumber(ARGV[4])
local bucket_ttl_minutes = tonumber(ARGV[5])
local now_ms, newest_commit_ms, n_changes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local n_types = tonumber(ARGV[9])
local board, updated = KEYS[5], KEYS[7]
local window_at = 8 + n_types
local content_at = window_at + window * (n_types + 1)
local EPSILON = 1e-6

local i, parts = check_positions(1, 10)
if i == nil then return parts end

-- Move the window first (window.lua), so that "in the window" below means the same as for the board.
local from = move_window(5, window_at, now_minute, window, n_types)

local function zadd_delta(key, delta, member)
  local score = tonumber(redis.call('ZINCRBY', key, delta, member))
  if math.abs(score) < EPSILON then redis.call('ZREM', key, member) end
end

local fields = {'events', 'total_seconds', 'plays', 'pauses', 'finishes', 'clicks', 'pct_sum', 'pct_count', 'over_100'}
local float_field = {total_seconds = true, pct_sum = true}
local n_content = tonumber(ARGV[i])
i = i + 1
for c = 1, n_content do
  local key = KEYS[content_at + c - 1]
  for f = 1, 9 do
    local delta = tonumber(ARGV[i + f - 1])
    if delta ~= 0 then
      if float_field[fields[f]] then
        redis.call('HINCRBYFLOAT', key, fields[f], delta)
      else
        redis.call('HINCRBY', key, fields[f], delta)
      end
    end
  end
  if tonumber(ARGV[i + 6]) ~= 0 or tonumber(ARGV[i + 7]) ~= 0 then
    local pct_sum = tonumber(redis.call('HGET', key, 'pct_sum') or '0')
    local pct_count = tonumber(redis.call('HGET', key, 'pct_count') or '0')
    if pct_count > 0 then redis.call('HSET', key, 'avg_pct', pct_sum / pct_count) else redis.call('HDEL', key, 'avg_pct') end
  end
  if metrics_ttl > 0 then redis.call('EXPIRE', key, metrics_ttl) else redis.call('PERSIST', key) end
  i = i + 9
end

local n_buckets = tonumber(ARGV[i])
i = i + 1
local k = content_at + n_content
for _ = 1, n_buckets do
  local minute, added, taken = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local bucket, typed_bucket, typed_board = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local content_id = ARGV[i + 3]
  if minute >= horizon then
    -- What after-images add counts whatever its sign (a negative duration is valid data). What
    -- before-images take back counts only where the bucket holds the member or this batch adds to
    -- it: otherwise it takes back an event that never got a bucket (beyond the clock skew then,
    -- sinks/redis_leaderboard.py).
    local seconds, touched = 0, false
    if added ~= '' then seconds, touched = tonumber(added), true end
    if taken ~= '' and (touched or redis.call('ZSCORE', bucket, content_id)) then
      seconds, touched = seconds + tonumber(taken), true
    end
    if touched then
      -- Buckets keep a member at zero: it still has a bucket, for what is taken back later.
      redis.call('ZINCRBY', bucket, seconds, content_id)
      redis.call('ZINCRBY', typed_bucket, seconds, content_id)
      redis.call('EXPIREAT', bucket, (minute + bucket_ttl_minutes) * 60)
      redis.call('EXPIREAT', typed_bucket, (minute + bucket_ttl_minutes) * 60)
      if seconds ~= 0 and minute >= from and minute <= now_minute then
        zadd_delta(board, seconds, content_id)
        zadd_delta(typed_board, seconds, content_id)
      end
    end
  end
  i = i + 4
  k = k + 3
end

-- Freshness for the status view and the live page, in the same transaction as the data: when the
-- board last took changes, the commit time of the newest one, and a running count (a rate over time).
if n_changes > 0 then
  local held = tonumber(redis.call('HGET', updated, 'commit_ts_ms') or '0')
  redis.call('HSET', updated, 'applied_ms', now_ms, 'commit_ts_ms', math.max(held, newest_commit_ms))
  redis.call('HINCRBY', updated, 'changes', n_changes)
end

store_positions(parts)
return {n_content, n_buckets}
