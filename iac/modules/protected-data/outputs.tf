output "state_snapshot_id" {
  description = "Newest snapshot of the Terraform state (null when not protected)."
  value       = try(localdr_backup.this["state"].snapshot_id, null)
}

output "data_snapshot_id" {
  description = "Newest snapshot of the data directory (null when not protected)."
  value       = try(localdr_backup.this["data"].snapshot_id, null)
}

output "snapshots" {
  description = "Snapshots kept per backup name."
  value       = { for b in localdr_backup.this : b.name => b.snapshots }
}

output "checksums" {
  description = "BLAKE3 checksum of each newest snapshot's manifest, per backup name."
  value       = { for b in localdr_backup.this : b.name => b.checksum }
}

output "data_file_count" {
  description = "Files in the newest data snapshot."
  value       = try(localdr_backup.this["data"].file_count, null)
}

output "data_size_bytes" {
  description = "Bytes in the newest data snapshot."
  value       = try(localdr_backup.this["data"].size_bytes, null)
}

output "valid" {
  description = "True when every newest snapshot and its DR copy verified."
  value       = alltrue([for b in localdr_backup.this : b.ensure_valid])
}
