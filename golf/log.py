"""The challenge's log lines (stdout + logs/<RUN_ID>.txt) and a JSON-lines metrics file, rank 0 only."""
import json
import os
import time


class Logger:
    def __init__(self, log_dir: str, run_id: str, enabled: bool = True, append: bool = False):
        self.enabled = enabled
        self.txt_path = os.path.join(log_dir, f"{run_id}.txt")
        self.jsonl_path = os.path.join(log_dir, f"{run_id}.jsonl")
        if enabled:
            os.makedirs(log_dir, exist_ok=True)
            # A new run with the same RUN_ID replaces the old log; a resumed run continues it (append).
            for p in (self.txt_path, self.jsonl_path):
                open(p, "a" if append else "w").close()

    def __call__(self, line: str = "", console: bool = True):
        """One log line: to stdout (unless console=False) and to the .txt log."""
        if not self.enabled:
            return
        if console:
            print(line, flush=True)
        with open(self.txt_path, "a") as f:
            f.write(line + "\n")

    def metrics(self, **record):
        """One JSON object per line: what results tables and plots read."""
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")

