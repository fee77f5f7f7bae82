-- Content metadata hashes from content changes, with the sink's positions, atomically.
-- KEYS: the block of positions.lua (4 keys), then content:{id} per change.
-- ARGV: the block of positions.lua, n_changes, then per change 5 fields:
--   deleted ('1' or '0'), title, slug, content_type, length_seconds
-- Replays were dropped before the call; the compare-and-set refuses a stale batch.
local i, parts = check_positions(1, 1)
if i == nil then return parts end
local n = tonumber(ARGV[i])
i = i + 1
for c = 1, n do
  local key = KEYS[4 + c]
  if ARGV[i] == '1' then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 'title', ARGV[i + 1], 'slug', ARGV[i + 2], 'content_type', ARGV[i + 3],
      'length_seconds', ARGV[i + 4])
  end
  i = i + 5
end
store_positions(parts)
return {n}
