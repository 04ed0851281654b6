variable "app_tfstate" {
  description = "State file to protect (default: ./app/terraform.tfstate)."
  type        = string
  default     = null
}

variable "app_data" {
  description = "Data directory to protect (default: ./demo/data)."
  type        = string
  default     = null
}

variable "vault" {
  description = "Primary vault (default: ./demo/vault)."
  type        = string
  default     = null
}

variable "dr_vault" {
  description = "DR vault (default: ./demo/dr-vault)."
  type        = string
  default     = null
}

variable "release" {
  description = "Bump to take new snapshots (e.g. before a risky apply)."
  type        = string
  default     = "1"
}
