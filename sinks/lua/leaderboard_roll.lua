-- Move the window of the leaderboard to end at now_minute (move_window, window.lua). Called about
-- four times a second by every sink, so minutes that leave the window leave the board within a
-- second even when no events arrive. Idempotent and atomic: concurrent callers and the apply
-- script always see a consistent board.
-- ARGV: now_minute, window, board
local _, moved = move_window(ARGV[3], tonumber(ARGV[1]), tonumber(ARGV[2]))
if moved then return 1 end
return 0
