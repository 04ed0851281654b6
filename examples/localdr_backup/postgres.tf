# A PostgreSQL database, dumped with pg_dump every night at 03:00 UTC by the localdr agent
# (and once at apply), kept 7 daily + 4 weekly, with a verified copy in a DR vault.
# `localdr drill --vault /var/backups/localdr --backup shop` restores the newest snapshot
# into a scratch database, compares row counts, and checks the RPO/RTO objectives below.
variable "shop_db_password" {
  type      = string
  sensitive = true
}

resource "localdr_backup" "shop" {
  name  = "shop"
  vault = "/var/backups/localdr"

  postgres {
    host        = "127.0.0.1"
    port        = 5432
    database    = "shop"
    user        = "backup"
    password    = var.shop_db_password # or password_file = "/run/secrets/shop-db"
    dump_format = "custom"             # pg_dump -Fc; "plain" for SQL
  }

  schedule     = "0 3 * * *"
  start_window = "1h"

  retention {
    keep_daily  = 7
    keep_weekly = 4
  }

  copy {
    vault = "/mnt/dr/localdr"
  }

  rpo = "24h"
  rto = "30m"
}
