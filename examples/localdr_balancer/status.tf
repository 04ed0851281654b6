# What the agent runs right now, for outputs or checks. `depends_on` reads them after the
# resources are in place; on later plans they are read fresh.
data "localdr_balancer_status" "web" {
  name       = localdr_balancer.web.name
  depends_on = [localdr_balancer.web]
}

data "localdr_service_status" "web" {
  name       = localdr_service.web.name
  depends_on = [localdr_service.web]
}

output "web_health" {
  value = {
    balancer_running  = data.localdr_balancer_status.web.running
    available_targets = data.localdr_balancer_status.web.available_targets
    healthy_replicas  = data.localdr_service_status.web.healthy
    replicas          = [for r in data.localdr_service_status.web.replicas : "${r.index}: ${r.state}/${r.health}, ${r.restarts} restarts"]
  }
}
