"""What one array task runs: `hpcxfer run-task STUDY_DIR TASK` -> `main.run_task`."""
