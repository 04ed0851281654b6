output "state_snapshot_id" {
  description = "Newest snapshot of the Terraform state."
  value       = one(localdr_backup.state[*].snapshot_id)
}

output "data_snapshot_id" {
  description = "Newest snapshot of the data directory."
  value       = one(localdr_backup.data[*].snapshot_id)
}

output "state_serial_protected" {
  description = "Checksum of the newest state snapshot's manifest."
  value       = one(localdr_backup.state[*].checksum)
}

output "snapshots" {
  description = "Snapshots kept per backup name."
  value = merge(
    { for b in localdr_backup.state : b.name => b.snapshots },
    { for b in localdr_backup.data : b.name => b.snapshots },
  )
}

output "data_file_count" {
  description = "Files in the newest data snapshot."
  value       = one(localdr_backup.data[*].file_count)
}

output "data_size_bytes" {
  description = "Bytes in the newest data snapshot."
  value       = one(localdr_backup.data[*].size_bytes)
}

output "valid" {
  description = "True when every newest snapshot and its DR copy verified."
  value       = alltrue(concat(localdr_backup.state[*].ensure_valid, localdr_backup.data[*].ensure_valid))
}
