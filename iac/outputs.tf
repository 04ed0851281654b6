output "state_snapshot_id" {
  value = module.app_backups.state_snapshot_id
}

output "data_snapshot_id" {
  value = module.app_backups.data_snapshot_id
}

output "snapshots" {
  value = module.app_backups.snapshots
}

output "valid" {
  value = module.app_backups.valid
}

output "web_endpoints" {
  value = localdr_service.web.endpoints
}

output "db_snapshot_id" {
  value = one(localdr_backup.db[*].snapshot_id)
}

output "web_url" {
  value = "http://${localdr_balancer.web.listen}/"
}

output "web_admin" {
  value = localdr_balancer.web.admin_address
}
