-- Move the window of the leaderboard to end at now_minute (move_window, window.lua). Called about
-- four times a second by every sink, so minutes that leave the window leave the board within a
-- second even when no events arrive. Idempotent and atomic: concurrent callers and the apply
-- script always see a consistent board.
-- KEYS: the board keys, then the window's buckets (window.lua). ARGV: now_minute, window, n_types
local n_types = tonumber(ARGV[3])
local _, moved = move_window(1, 4 + n_types, tonumber(ARGV[1]), tonumber(ARGV[2]), n_types)
if moved then return 1 end
return 0
