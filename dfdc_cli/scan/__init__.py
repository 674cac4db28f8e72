"""Stage 3, scanning: which members judge, what is scored (extracted in memory or an index), the streaming scanner, ensemble arithmetic, results and the score cache."""
