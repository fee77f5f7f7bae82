-- Store positions only (a batch whose records were all skipped or dead-lettered, or a sink that
-- commits after an acknowledged write). ARGV: positions_key, then the block of positions.lua.
local positions_key = ARGV[1]
local _, parts_or_conflict = check_positions(positions_key, 2)
if _ == nil then return parts_or_conflict end
store_positions(positions_key, parts_or_conflict)
return {1}
