"""Reports: a record's protocol, leaderboard tables in every registered format, plots, and the
regression check against a stored leaderboard."""
