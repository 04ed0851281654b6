# Queue mode (seed 000's file balancer): request files dropped in incoming/ go round-robin
# to the healthy replicas of the pool. Each file is claimed by an atomic rename into
# workers/<worker>/; the command runs on it (with LOCALDR_WORKER, LOCALDR_WORKER_ADDRESS
# and LOCALDR_WORKER_PORT set), and the item ends in workers/<worker>/processed/ on exit 0
# or in errors/ beside <item>.reason.json otherwise. An agent killed mid-way loses and
# repeats nothing. Try: localdr loadgen --queue-dir queue/incoming --files 100
resource "localdr_balancer" "jobs" {
  name    = "jobs"
  mode    = "queue"
  service = localdr_service.web.name

  queue {
    incoming_dir  = "${abspath(path.root)}/queue/incoming"
    workers_dir   = "${abspath(path.root)}/queue/workers"
    errors_dir    = "${abspath(path.root)}/queue/errors"
    log_dir       = "${abspath(path.root)}/queue/logs" # load_<worker>.jsonl; default under the state dir
    poll_interval = "5s"                               # a full scan; inotify is sooner
    timeout       = "60s"
    command       = ["python3", "-c", "import json,sys; json.load(open(sys.argv[1]))", "{file}"]
  }
}

# Without `command`, the dispatcher only delivers: each worker consumes its own
# workers/<worker>/ directory.
