-- Content metadata hashes from content changes, with the sink's positions, atomically.
-- ARGV: positions_key, the block of positions.lua, n_changes, then per change 6 fields:
--   content_id, deleted ('1' or '0'), title, slug, content_type, length_seconds
-- Replays were dropped before the call; the compare-and-set refuses a stale batch.
local positions_key = ARGV[1]
local i, parts = check_positions(positions_key, 2)
if i == nil then return parts end
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local key = 'content:' .. ARGV[i]
  if ARGV[i + 1] == '1' then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'title', ARGV[i + 2], 'slug', ARGV[i + 3], 'content_type', ARGV[i + 4],
      'length_seconds', ARGV[i + 5])
  end
  i = i + 6
end
store_positions(positions_key, parts)
return {n}
