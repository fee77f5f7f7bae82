-- The fault-injection sink's write: per record, its row (idempotent by record id) and a delivery count.
-- KEYS: rows, deliveries. ARGV: record_id, row, record_id, row, ...
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
end
return #ARGV / 2
