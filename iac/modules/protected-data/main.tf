# protected-data: back up a Terraform state and a data directory into a vault, with
# restic-style retention and a verified copy in a second (DR) vault.

terraform {
  required_version = ">= 1.0.3"
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

resource "localdr_backup" "state" {
  count   = var.tfstate_path == null ? 0 : 1
  name    = "${var.name}-state"
  tfstate = var.tfstate_path
  vault   = var.vault

  retention {
    keep_last   = var.keep_last
    keep_daily  = var.keep_daily
    keep_weekly = var.keep_weekly
  }

  dynamic "copy" {
    for_each = var.dr_vault == null ? [] : [var.dr_vault]
    content {
      vault = copy.value
      retention {
        keep_last = var.dr_keep_last
      }
    }
  }

  triggers                    = var.triggers
  delete_snapshots_on_destroy = var.delete_snapshots_on_destroy
}

resource "localdr_backup" "data" {
  count             = var.data_path == null ? 0 : 1
  name              = "${var.name}-data"
  path              = var.data_path
  vault             = var.vault
  compression_level = var.compression_level

  retention {
    keep_last   = var.keep_last
    keep_daily  = var.keep_daily
    keep_weekly = var.keep_weekly
  }

  dynamic "copy" {
    for_each = var.dr_vault == null ? [] : [var.dr_vault]
    content {
      vault = copy.value
      retention {
        keep_last = var.dr_keep_last
      }
    }
  }

  triggers                    = var.triggers
  delete_snapshots_on_destroy = var.delete_snapshots_on_destroy
}
