-- Shared by the apply and roll scripts (prepended when they are registered): move the window of
-- the boards to end at now_minute by rebuilding them from the per-minute buckets it covers.
-- Returns the first minute in the window and whether it moved.
local function move_window(board, now_minute, window)
  local first = now_minute - window + 1
  local from = tonumber(redis.call('GET', board .. ':from') or '-1')
  if first <= from then return from, false end
  local keys = {}
  for m = first, now_minute do keys[#keys + 1] = 'engagement:minute:' .. m end
  redis.call('ZUNIONSTORE', board, #keys, unpack(keys))
  for _, t in ipairs({'podcast', 'newsletter', 'video', 'unknown'}) do
    local typed = {}
    for m = first, now_minute do typed[#typed + 1] = 'engagement:minute:' .. m .. ':' .. t end
    redis.call('ZUNIONSTORE', board .. ':' .. t, #typed, unpack(typed))
  end
  redis.call('SET', board .. ':from', first)
  return first, true
end
