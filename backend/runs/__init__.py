"""Layer 3: the run-directory protocol and the processes that follow it.

Owns a run's folder and its files (rundir: status.json, events.jsonl, config.yaml, checkpoints), the
event types written there (events), starting/stopping/resuming the training subprocess (runner), the
queue of waiting configs (queue), the end-of-run webhook (notify) and reading any run file the
studio ships or writes for the command line (run_files). Starts the trainer by command
line, never by import. May import backend.core and backend.data.
"""
