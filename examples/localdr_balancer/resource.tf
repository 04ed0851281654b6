terraform {
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

provider "localdr" {
  state_dir = "${path.root}/.localdr"
}

# The pool behind the balancer: three static file servers on 127.0.0.1:8081-8083.
resource "localdr_service" "web" {
  name      = "web"
  command   = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
  replicas  = 3
  base_port = 8081
}

# A standby pool on 127.0.0.1:8085, used only when no replica of `web` is available.
resource "localdr_service" "standby" {
  name      = "standby"
  command   = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
  replicas  = 1
  base_port = 8085
}

# An HTTP load balancer on 127.0.0.1:8080 in front of the pool, following it as it
# scales. Every block below is optional; the values shown are the defaults (seed 001's
# Kong set-up) except where a comment says otherwise.
resource "localdr_balancer" "web" {
  name      = "web"
  listen    = "127.0.0.1:8080"
  service   = localdr_service.web.name
  algorithm = "least-connections" # default round-robin (weights honoured)
  retries   = 5                   # idempotent requests, or nothing sent; ≤ ~20% of traffic

  backup_service = localdr_service.standby.name # default none
  drain_timeout  = "30s"                        # how long a drain waits for requests in flight

  healthchecks {
    active {
      type        = "http"
      http_path   = "/" # GET / every 10 s while healthy, every 10 s while not
      timeout     = "1s"
      concurrency = 10 # probes open at once
      healthy {
        interval      = "10s"
        successes     = 2
        http_statuses = [200, 302]
      }
      unhealthy {
        interval      = "10s"
        http_failures = 3
        tcp_failures  = 3
        timeouts      = 3
        http_statuses = [429, 404, 500, 501, 502, 503, 504, 505]
      }
    }
    # Counted on live traffic: past a threshold the target is ejected, and the active
    # checks re-admit it (Kong and HAProxy cannot re-admit on passive checks alone).
    passive {
      unhealthy {
        http_failures = 5
        tcp_failures  = 2
        timeouts      = 2
        http_statuses = [500, 502, 503, 504]
      }
    }
  }

  # Envoy-style outlier ejection: out for base × (number of ejections), capped at
  # max_ejection_time; never more than half of the targets at once.
  circuit_breaker {
    base_ejection_time   = "30s"
    max_ejection_time    = "300s"
    max_ejection_percent = 50
  }

  slow_start = "20s" # default 0s: a re-admitted target ramps from 10% of its weight

  timeouts {
    connect = "5s" # defaults 60s each
    read    = "30s"
    write   = "30s"
    client  = "15s" # request head and keep-alive idle limit for clients
  }

  rate_limit {
    requests_per_minute = 600
    burst               = 100
    by                  = "ip"  # or "header:X-Api-Key"
    hour                = 20000 # limits combine: a request must fit each
  }
}

# Static targets with weights, and a failover target used only when all are down.
resource "localdr_balancer" "api" {
  name   = "api"
  listen = "127.0.0.1:8090"

  target {
    address = "127.0.0.1:9100"
    weight  = 3
  }
  target {
    address = "127.0.0.1:9101"
    weight  = 1
  }
  backup_target {
    address = "127.0.0.1:9200"
  }

  # Kong's rate-limiting shape: counted per API key; a client without one, by its IP.
  rate_limit {
    second      = 10
    hour        = 10000
    limit_by    = "header"
    header_name = "X-Api-Key"
  }
}

output "web_url" {
  value = localdr_balancer.web.url # http://127.0.0.1:8080
}

output "web_admin" {
  # GET /status, /targets, /health, /metrics; POST /targets/<addr>/drain
  value = localdr_balancer.web.admin_url
}
