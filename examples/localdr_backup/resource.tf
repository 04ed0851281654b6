terraform {
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

# Protect a Terraform state: validated on every snapshot, serial and lineage recorded, so
# `localdr restore` refuses to roll it back or swap in another state's history.
resource "localdr_backup" "state" {
  name    = "prod-state"
  tfstate = "${path.module}/terraform.tfstate.d/prod/terraform.tfstate"
  vault   = "/var/backups/localdr"

  retention {
    keep_last    = 10
    keep_daily   = 7
    keep_weekly  = 4
    keep_monthly = 6
  }

  # A verified copy on another disk, with its own, shorter retention.
  copy {
    vault = "/mnt/dr/localdr"
    retention {
      keep_last = 3
    }
  }
}

# Protect a data directory; a new snapshot whenever the release changes.
resource "localdr_backup" "uploads" {
  name              = "uploads"
  path              = "/srv/app/uploads"
  vault             = "/var/backups/localdr"
  compression_level = 1

  retention {
    keep_within = "7d"
  }

  triggers = {
    release = var.release
  }
}

variable "release" {
  type    = string
  default = "2025.06.1"
}

output "latest_state_snapshot" {
  value = localdr_backup.state.snapshot_id
}
