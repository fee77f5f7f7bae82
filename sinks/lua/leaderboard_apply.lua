-- Apply one batch of net increments and record source positions, atomically (one script is one
-- transaction in Redis and one entry in the AOF).
--
-- Exactly once: for every partition in the batch, the stored position must not be past the batch's
-- first offset; otherwise nothing is applied and {-1, partition, stored} is returned, and the caller
-- drops what is below the stored position and retries.
--
-- ARGV: now_minute, window, horizon_minute, metrics_ttl_s, bucket_ttl_minutes, board, offsets_key,
--   n_partitions, then per partition 3 fields: key, first_offset, next_offset;
--   n_content, then per content 10 fields: id, events, total_seconds, plays, pauses, finishes, clicks,
--     pct_sum, pct_count, over_100;
--   n_buckets, then per bucket 4 fields: minute, content_id, content_type, seconds.
local now_minute = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local metrics_ttl = tonumber(ARGV[4])
local bucket_ttl_minutes = tonumber(ARGV[5])
local board = ARGV[6]
local offsets_key = ARGV[7]
local EPSILON = 1e-6

local i = 9
local parts = {}
for _ = 1, tonumber(ARGV[8]) do
  local key, first, next_offset = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local stored = tonumber(redis.call('HGET', offsets_key, key) or '-1')
  if stored > first then return {-1, key, stored} end
  parts[#parts + 1] = {key, next_offset}
  i = i + 3
end

-- Move the window first (window.lua), so that "in the window" below means the same as for the board.
local from = move_window(board, now_minute, window)

local function zadd_delta(key, delta, member)
  local score = tonumber(redis.call('ZINCRBY', key, delta, member))
  if math.abs(score) < EPSILON then redis.call('ZREM', key, member) end
end

local fields = {'events', 'total_seconds', 'plays', 'pauses', 'finishes', 'clicks', 'pct_sum', 'pct_count', 'over_100'}
local float_field = {total_seconds = true, pct_sum = true}
local n_content = tonumber(ARGV[i])
i = i + 1
for _ = 1, n_content do
  local key = 'engagement:content:' .. ARGV[i]
  for f = 1, 9 do
    local delta = tonumber(ARGV[i + f])
    if delta ~= 0 then
      if float_field[fields[f]] then
        redis.call('HINCRBYFLOAT', key, fields[f], delta)
      else
        redis.call('HINCRBY', key, fields[f], delta)
      end
    end
  end
  if tonumber(ARGV[i + 7]) ~= 0 or tonumber(ARGV[i + 8]) ~= 0 then
    local pct_sum = tonumber(redis.call('HGET', key, 'pct_sum') or '0')
    local pct_count = tonumber(redis.call('HGET', key, 'pct_count') or '0')
    if pct_count > 0 then redis.call('HSET', key, 'avg_pct', pct_sum / pct_count) else redis.call('HDEL', key, 'avg_pct') end
  end
  redis.call('EXPIRE', key, metrics_ttl)
  i = i + 10
end

local n_buckets = tonumber(ARGV[i])
i = i + 1
for _ = 1, n_buckets do
  local minute, content_id, ctype, seconds = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if minute >= horizon and seconds ~= 0 then
    local bucket = 'engagement:minute:' .. minute
    zadd_delta(bucket, seconds, content_id)
    zadd_delta(bucket .. ':' .. ctype, seconds, content_id)
    redis.call('EXPIREAT', bucket, (minute + bucket_ttl_minutes) * 60)
    redis.call('EXPIREAT', bucket .. ':' .. ctype, (minute + bucket_ttl_minutes) * 60)
    if minute >= from and minute <= now_minute then
      zadd_delta(board, seconds, content_id)
      zadd_delta(board .. ':' .. ctype, seconds, content_id)
    end
  end
  i = i + 4
end

for _, p in ipairs(parts) do redis.call('HSET', offsets_key, p[1], p[2]) end
return {n_content, n_buckets}
