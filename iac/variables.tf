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

variable "web_replicas" {
  description = "Replicas of the web tier."
  type        = number
  default     = 3
}

variable "web_base_port" {
  description = "Replica i of the web tier listens on 127.0.0.1:(web_base_port + i)."
  type        = number
  default     = 18080
}

variable "night_window" {
  description = "Scale the web tier to zero from 01:00 to 05:00 UTC."
  type        = bool
  default     = true
}

variable "database" {
  description = "A PostgreSQL database to back up (the demo starts a throwaway server); null to skip."
  type = object({
    port          = number
    name          = string
    password_file = string
  })
  default = null
}

variable "web_listen_port" {
  description = "The web tier's load balancer listens on 127.0.0.1:web_listen_port."
  type        = number
  default     = 18000
}
