variable "name" {
  description = "Prefix for the backup names (`<name>-state`, `<name>-data`)."
  type        = string
}

variable "tfstate_path" {
  description = "Terraform state file to protect; null to skip."
  type        = string
  default     = null
}

variable "data_path" {
  description = "File or directory to protect; null to skip."
  type        = string
  default     = null
}

variable "vault" {
  description = "Primary vault directory."
  type        = string
}

variable "dr_vault" {
  description = "DR vault directory for verified copies; null for none."
  type        = string
  default     = null
}

variable "keep_last" {
  description = "Keep the N newest snapshots."
  type        = number
  default     = 7
  validation {
    condition     = var.keep_last >= 1
    error_message = "The keep_last must be at least 1."
  }
}

variable "keep_daily" {
  description = "Keep one snapshot per day for N days."
  type        = number
  default     = 7
}

variable "keep_weekly" {
  description = "Keep one snapshot per ISO week for N weeks."
  type        = number
  default     = 4
}

variable "dr_keep_last" {
  description = "Snapshots kept in the DR vault."
  type        = number
  default     = 3
}

variable "compression_level" {
  description = "zstd level for the data backup (1-22)."
  type        = number
  default     = 3
}

variable "triggers" {
  description = "Any change takes new snapshots."
  type        = map(string)
  default     = {}
}

variable "delete_snapshots_on_destroy" {
  description = "Delete snapshots on destroy (tests, ephemeral environments)."
  type        = bool
  default     = false
}
