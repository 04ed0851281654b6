# What the vault holds, checked on every plan: the newest good snapshot of "prod-state",
# its age (the recovery point) and how many DR vaults hold a copy. Read after the backup
# resource has run, so a first apply sees its snapshot.
data "localdr_backups" "state" {
  vault      = localdr_backup.state.vault
  name       = localdr_backup.state.name
  depends_on = [localdr_backup.state]
}

output "state_recovery_point_seconds" {
  value = data.localdr_backups.state.latest_age_seconds
}

output "state_latest_in_dr" {
  value = data.localdr_backups.state.latest_copies > 0
}

# With Terraform >= 1.5, hold an RPO in HCL: plan and apply warn when it is missed.
#
# check "state_rpo" {
#   assert {
#     condition     = coalesce(data.localdr_backups.state.latest_age_seconds, 1e9) < 900
#     error_message = "No good snapshot of prod-state in the last 15 minutes."
#   }
# }
