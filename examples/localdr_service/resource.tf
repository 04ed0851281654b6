terraform {
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

# `agent = "auto"` (the default) starts `localdr agent --daemon` on the state dir when
# none runs; with "external" you run it yourself (systemd, a container entrypoint).
provider "localdr" {
  state_dir = "${path.root}/.localdr"
  agent     = "auto"
}

# Three static file servers on 127.0.0.1:8081-8083, restarted with backoff when they die,
# health-checked over HTTP, scaled to zero on weekday nights and back in the morning.
resource "localdr_service" "web" {
  name      = "web"
  command   = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
  replicas  = 3
  base_port = 8081

  working_dir = "public"
  env = {
    PYTHONUNBUFFERED = "1"
  }

  health_check {
    type                = "http"
    path                = "/"
    interval            = "5s"
    timeout             = "2s"
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  restart {
    policy          = "always"
    max_restarts    = 5
    window          = "60s"
    backoff_initial = "100ms"
    backoff_max     = "30s"
  }

  schedule {
    name         = "night"
    cron         = "0 22 * * 1-5"
    timezone     = "Europe/Madrid"
    min_replicas = 0
    max_replicas = 0
  }
  schedule {
    name         = "day"
    cron         = "0 7 * * 1-5"
    timezone     = "Europe/Madrid"
    min_replicas = 3
    max_replicas = 3
  }

  cost_per_replica_hour = 0.05
}

# A pool that follows load: in-flight requests per replica near 4, between 1 and 6 replicas.
resource "localdr_service" "api" {
  name      = "api"
  command   = ["./bin/api", "--listen", "127.0.0.1:{port}"]
  base_port = 9100

  autoscaling {
    min_replicas       = 1
    max_replicas       = 6
    target_utilization = 4
    scale_out_cooldown = "30s"
    scale_in_cooldown  = "5m"
  }

  health_check {
    type = "tcp"
  }
}

output "web_endpoints" {
  value = localdr_service.web.endpoints
}
