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
            # A resumed run continues its logs (append); a new run with the same RUN_ID keeps the earlier ones.
            if not append:
                self._keep_earlier(log_dir, run_id)
            for p in (self.txt_path, self.jsonl_path):
                open(p, "a").close()

    def _keep_earlier(self, log_dir: str, run_id: str):
        """Rename an earlier run's logs of this RUN_ID to `<RUN_ID>.earlier-N.txt` / `.jsonl` (the first free N),
        said in one line: a new run never overwrites them."""
        old = [p for p in (self.txt_path, self.jsonl_path) if os.path.isfile(p) and os.path.getsize(p) > 0]
        if not old:
            return
        n = 1
        while any(os.path.exists(os.path.join(log_dir, f"{run_id}.earlier-{n}{ext}")) for ext in (".txt", ".jsonl")):
            n += 1
        for p in (self.txt_path, self.jsonl_path):
            if os.path.isfile(p):
                os.replace(p, os.path.join(log_dir, f"{run_id}.earlier-{n}{os.path.splitext(p)[1]}"))
        print(f"logs: the earlier run {run_id}'s {' and '.join(old)} kept as {os.path.join(log_dir, run_id)}"
              f".earlier-{n}.txt/.jsonl", flush=True)

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

