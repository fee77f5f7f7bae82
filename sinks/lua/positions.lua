-- Shared by every script that stores positions (prepended when a script is registered): a
-- compare-and-set of the sink's positions hash, so a write whose expected positions are stale
-- (a retried write that landed after all, a second writer) applies nothing.
-- ARGV from index i: n, then n x 3 fields: field ("topic:partition"), expected ('' = absent), new.
-- Returns the index after the block and the pairs to store, or nil and {-1, field, stored}.
local function check_positions(positions_key, i)
  local parts = {}
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local field, expected, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local stored = redis.call('HGET', positions_key, field) or ''
    if stored ~= expected then return nil, {-1, field, stored} end
    parts[#parts + 1] = {field, new}
    i = i + 3
  end
  return i, parts
end

local function store_positions(positions_key, parts)
  for _, p in ipairs(parts) do redis.call('HSET', positions_key, p[1], p[2]) end
end
