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

locals {
  # One backup per source that is set: "state" (a Terraform state) and "data" (a path).
  sources = {
    for key, src in {
      state = { tfstate = var.tfstate_path, path = null }
      data  = { tfstate = null, path = var.data_path }
    } : key => src if src.tfstate != null || src.path != null
  }
}

resource "localdr_backup" "this" {
  for_each          = local.sources
  name              = "${var.name}-${each.key}"
  tfstate           = each.value.tfstate
  path              = each.value.path
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
