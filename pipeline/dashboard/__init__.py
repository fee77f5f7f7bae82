"""The live leaderboard page: ``reader`` fetches, ``snapshot`` shapes, ``app`` serves (SSE)."""
