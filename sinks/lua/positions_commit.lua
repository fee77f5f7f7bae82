-- Store positions only (a batch whose records were all skipped or dead-lettered, or a sink that
-- commits after an acknowledged write). KEYS: the block of positions.lua. ARGV: its block.
local _, parts_or_refusal = check_positions(1, 1)
if _ == nil then return parts_or_refusal end
store_positions(parts_or_refusal)
return {1}
