-- Content metadata hashes from content changes, with source positions, atomically.
-- ARGV: offsets_key, n_partitions, then per partition: partition_key, next_offset, n_changes, then per
-- change 7 fields: offset, content_id, deleted ('1' or '0'), title, slug, content_type, length_seconds
local offsets_key = ARGV[1]
local i = 3
local applied = 0
for _ = 1, tonumber(ARGV[2]) do
  local part, next_offset, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local stored = tonumber(redis.call('HGET', offsets_key, part) or '-1')
  for _ = 1, n do
    if tonumber(ARGV[i]) >= stored then
      local key = 'content:' .. ARGV[i + 1]
      if ARGV[i + 2] == '1' then
        redis.call('DEL', key)
      else
        redis.call('HSET', key, 'title', ARGV[i + 3], 'slug', ARGV[i + 4], 'content_type', ARGV[i + 5],
          'length_seconds', ARGV[i + 6])
      end
      applied = applied + 1
    end
    i = i + 7
  end
  if next_offset > stored then redis.call('HSET', offsets_key, part, next_offset) end
end
return applied
