# The reference stack: protect a real Terraform state (the stand-in application in ./app)
# and its data directory, with retention and a verified copy in a DR vault.
# `bash scripts/demo.sh` prepares ./demo, applies this, and walks through drift and repair.

terraform {
  required_version = ">= 1.0.3"
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

provider "localdr" {}

locals {
  demo = "${path.root}/demo"
}

module "app_backups" {
  source = "./modules/protected-data"

  name         = "app"
  tfstate_path = coalesce(var.app_tfstate, "${path.root}/app/terraform.tfstate")
  data_path    = coalesce(var.app_data, "${local.demo}/data")
  vault        = coalesce(var.vault, "${local.demo}/vault")
  dr_vault     = coalesce(var.dr_vault, "${local.demo}/dr-vault")

  keep_last    = 5
  keep_daily   = 7
  keep_weekly  = 4
  dr_keep_last = 3

  triggers = {
    release = var.release
  }
}

# The application's web tier: three replicas serving the data directory, kept running by
# the localdr agent (started on demand by `terraform apply`), health-checked, restarted
# with backoff, and scaled to zero in a nightly window to save cost.
resource "localdr_service" "web" {
  name        = "web"
  command     = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
  working_dir = "${local.demo}/data"
  replicas    = var.web_replicas
  base_port   = var.web_base_port

  health_check {
    path     = "/"
    interval = "5s"
    timeout  = "2s"
  }

  restart {
    max_restarts    = 5
    window          = "60s"
    backoff_initial = "100ms"
    backoff_max     = "10s"
  }

  dynamic "schedule" {
    for_each = var.night_window ? [1] : []
    content {
      name         = "night"
      cron         = "0 1 * * *"
      min_replicas = 0
      max_replicas = 0
    }
  }
  dynamic "schedule" {
    for_each = var.night_window ? [1] : []
    content {
      name         = "day"
      cron         = "0 5 * * *"
      min_replicas = var.web_replicas
      max_replicas = var.web_replicas
    }
  }

  cost_per_replica_hour = 0.05
  stop_timeout          = "5s"
}

# The application's database: a pg_dump into the same vault, once per apply and nightly by
# the agent, with the recovery objectives `localdr drill` checks.
resource "localdr_backup" "db" {
  count = var.database == null ? 0 : 1

  name  = "app-db"
  vault = coalesce(var.vault, "${local.demo}/vault")

  postgres {
    port          = var.database.port
    database      = var.database.name
    password_file = var.database.password_file
  }

  schedule = "0 3 * * *"
  retention {
    keep_daily  = 7
    keep_weekly = 4
  }
  copy {
    vault = coalesce(var.dr_vault, "${local.demo}/dr-vault")
  }

  rpo = "24h"
  rto = "5m"
}

# The web tier's front door: a health-checked load balancer over the pool, following it as
# it scales; admin API (status, targets, Prometheus metrics) on a loopback port.
resource "localdr_balancer" "web" {
  name    = "web"
  listen  = "127.0.0.1:${var.web_listen_port}"
  service = localdr_service.web.name
  retries = 5

  rate_limit {
    requests_per_minute = 6000
    burst               = 500
  }
}

# Request files (seed 000's simulate_requests.sh) dispatched round-robin to the web pool's
# healthy replicas: each is claimed atomically and processed by app/process_request.py;
# a malformed request lands in errors/ beside its reason. Per-worker logs in queue/logs.
resource "localdr_balancer" "requests" {
  name    = "requests"
  mode    = "queue"
  service = localdr_service.web.name

  queue {
    incoming_dir = "${abspath(local.demo)}/queue/incoming"
    workers_dir  = "${abspath(local.demo)}/queue/workers"
    errors_dir   = "${abspath(local.demo)}/queue/errors"
    log_dir      = "${abspath(local.demo)}/queue/logs"
    command      = ["python3", "${abspath(path.module)}/app/process_request.py", "{file}"]
  }
}
