# An HTTP load balancer on 127.0.0.1:8080 in front of the `web` pool (see
# ../localdr_service/resource.tf), following it as it scales. Health checks use the seed's
# Kong defaults: active every 10 s (healthy after 2 successes with 200/302, unhealthy after
# 3 failures), passive unhealthy after 5 HTTP failures or 2 timeouts/connection failures;
# a target ejected by live traffic is re-admitted by the active checks.
resource "localdr_balancer" "web" {
  name      = "web"
  listen    = "127.0.0.1:8080"
  service   = localdr_service.web.name
  algorithm = "least-connections"
  retries   = 5

  rate_limit {
    requests_per_minute = 600
    burst               = 100
    by                  = "ip"
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
}

output "web_admin" {
  # GET /status, /targets, /health, /metrics; POST /targets/<addr>/drain
  value = localdr_balancer.web.admin_address
}
