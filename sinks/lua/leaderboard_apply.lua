-- Apply engagement contributions and record source positions, atomically (one script = one
-- transaction in Redis, and one entry in the AOF). Contributions at offsets below a partition's
-- stored position were applied before (a replay after a crash) and are skipped.
--
-- ARGV: now_minute, window, horizon_minute, metrics_ttl_s, bucket_ttl_minutes, board, offsets_key,
--       n_partitions, then per partition: partition_key, next_offset, n_contributions, then per
--       contribution 8 fields: offset, content_id, content_type, minute, event_type, seconds, pct, sign
--       (seconds and pct are '' when NULL).
local now_minute = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local metrics_ttl = tonumber(ARGV[4])
local bucket_ttl_minutes = tonumber(ARGV[5])
local board = ARGV[6]
local offsets_key = ARGV[7]
local types = {'podcast', 'newsletter', 'video', 'unknown'}
local counters = {play = 'plays', pause = 'pauses', finish = 'finishes', click = 'clicks'}
local EPSILON = 1e-6

-- Move the window first, so that "in the window" below means the same as for the board.
local function rebuild(first)
  local keys = {}
  for m = first, now_minute do keys[#keys + 1] = 'engagement:minute:' .. m end
  redis.call('ZUNIONSTORE', board, #keys, unpack(keys))
  for _, t in ipairs(types) do
    local typed = {}
    for m = first, now_minute do typed[#typed + 1] = 'engagement:minute:' .. m .. ':' .. t end
    redis.call('ZUNIONSTORE', board .. ':' .. t, #typed, unpack(typed))
  end
end
local first = now_minute - window + 1
local from = tonumber(redis.call('GET', board .. ':from') or '-1')
if first > from then
  rebuild(first)
  redis.call('SET', board .. ':from', first)
  from = first
end

local function zadd_delta(key, delta, member)
  local score = tonumber(redis.call('ZINCRBY', key, delta, member))
  if math.abs(score) < EPSILON then redis.call('ZREM', key, member) end
end

local applied, skipped = 0, 0
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  local part, next_offset, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local stored = tonumber(redis.call('HGET', offsets_key, part) or '-1')
  for _ = 1, n do
    local offset = tonumber(ARGV[i])
    if offset >= stored then
      local content_id, ctype, minute = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
      local event_type, seconds, pct, sign = ARGV[i + 4], tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
      if ctype == '' then ctype = 'unknown' end
      local metrics = 'engagement:content:' .. content_id
      redis.call('HINCRBY', metrics, 'events', sign)
      local counter = counters[event_type]
      if counter then redis.call('HINCRBY', metrics, counter, sign) end
      if seconds then
        redis.call('HINCRBYFLOAT', metrics, 'total_seconds', sign * seconds)
        if minute >= horizon then
          local bucket = 'engagement:minute:' .. minute
          zadd_delta(bucket, sign * seconds, content_id)
          zadd_delta(bucket .. ':' .. ctype, sign * seconds, content_id)
          redis.call('EXPIREAT', bucket, (minute + bucket_ttl_minutes) * 60)
          redis.call('EXPIREAT', bucket .. ':' .. ctype, (minute + bucket_ttl_minutes) * 60)
          if minute >= from and minute <= now_minute then
            zadd_delta(board, sign * seconds, content_id)
            zadd_delta(board .. ':' .. ctype, sign * seconds, content_id)
          end
        end
      end
      if pct then
        local pct_sum = tonumber(redis.call('HINCRBYFLOAT', metrics, 'pct_sum', sign * pct))
        local pct_count = redis.call('HINCRBY', metrics, 'pct_count', sign)
        if pct > 100 then redis.call('HINCRBY', metrics, 'over_100', sign) end
        if pct_count > 0 then
          redis.call('HSET', metrics, 'avg_pct', pct_sum / pct_count)
        else
          redis.call('HDEL', metrics, 'avg_pct')
        end
      end
      redis.call('EXPIRE', metrics, metrics_ttl)
      applied = applied + 1
    else
      skipped = skipped + 1
    end
    i = i + 8
  end
  if next_offset > stored then redis.call('HSET', offsets_key, part, next_offset) end
end
return {applied, skipped}
