"""What one array task runs: `hpcxfer run-task STUDY_DIR TASK` -> `main.run_task`.

Its exit statuses (README, "Exit statuses"), here so that backends can read them
without importing torch: 0 done, 1 failed for a real error, 2 bad input, 73 another live
worker holds the task (its running.json; nothing was touched), 75 checkpointed on
request, resume me (EX_TEMPFAIL).
"""

from hpcxfer.states import Exit

# Old names of hpcxfer.states.Exit, until every caller uses the enum.
EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_RESUME = Exit.DONE, Exit.FAILED, Exit.USAGE, Exit.BUSY, Exit.RESUME
