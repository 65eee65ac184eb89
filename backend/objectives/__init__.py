"""Layer 5: what each training objective needs and how TRL trains it.

Owns which method/objective pairs can train (validate), GRPO/RLOO's prompts and rewards (online_rl)
and the alignment trainers built from a RunConfig (trainers). The names and families themselves are
data in backend.core.catalog. May import backend.core, data, runs and methods.
"""
