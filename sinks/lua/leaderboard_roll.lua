-- Move the window of the leaderboard to end at now_minute: rebuild it (and the per-type boards)
-- from the per-minute buckets in the window. Called about four times a second by every sink, so
-- minutes that leave the window leave the board within a second even when no events arrive.
-- Idempotent and atomic: concurrent callers and the apply script always see a consistent board.
-- ARGV: now_minute, window, board
local now_minute, window, board = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local first = now_minute - window + 1
local from = tonumber(redis.call('GET', board .. ':from') or '-1')
if first <= from then return 0 end
local keys = {}
for m = first, now_minute do keys[#keys + 1] = 'engagement:minute:' .. m end
redis.call('ZUNIONSTORE', board, #keys, unpack(keys))
for _, t in ipairs({'podcast', 'newsletter', 'video', 'unknown'}) do
  local typed = {}
  for m = first, now_minute do typed[#typed + 1] = 'engagement:minute:' .. m .. ':' .. t end
  redis.call('ZUNIONSTORE', board .. ':' .. t, #typed, unpack(typed))
end
redis.call('SET', board .. ':from', first)
return 1
