"""Layer 1, the ground: what every other layer stands on.

Owns the RunConfig (config), the catalog of method/objective/optimizer names and families (catalog),
the precision policy (precision), model references and loading (models), GPU facts (gpu), presets,
errors, atomic file writes (io), the one file lock (locks), path safety (security), the project's own
paths (paths) and train.log lines (log). Imports nothing of the project outside this package.
"""
