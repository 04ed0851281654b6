# The reference stack: protect a real Terraform state (the stand-in application in ./app)
# and its data directory, with retention and a verified copy in a DR vault.
# `bash scripts/demo.sh` prepares ./demo, applies this, and walks through drift and repair.

terraform {
  required_version = ">= 1.0.3"
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

provider "localdr" {}

locals {
  demo = "${path.root}/demo"
}

module "app_backups" {
  source = "./modules/protected-data"

  name         = "app"
  tfstate_path = coalesce(var.app_tfstate, "${path.root}/app/terraform.tfstate")
  data_path    = coalesce(var.app_data, "${local.demo}/data")
  vault        = coalesce(var.vault, "${local.demo}/vault")
  dr_vault     = coalesce(var.dr_vault, "${local.demo}/dr-vault")

  keep_last    = 5
  keep_daily   = 7
  keep_weekly  = 4
  dr_keep_last = 3

  triggers = {
    release = var.release
  }
}
